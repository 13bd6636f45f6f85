//! An impaired link for the bench: the embedded server runs in a network namespace of its own,
//! reached over a veth pair, with random loss on its UDP (`iptables -m statistic`, both
//! directions) and a bandwidth limit on its downlink (`tc tbf`). Needs root (or
//! `CAP_NET_ADMIN`), `ip`, `iptables` and `tc` (Debian: `iproute2`, `iptables`; installed by
//! `scripts/setup-debian.sh`). This kernel has no `sch_netem`, so there is no delay here.
//!
//! Only signalling's TCP is spared the loss: TCP would retransmit anyway, and a lost join
//! would measure TCP, not media repair.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context as _, bail};

/// What to do to the link between the clients and the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Impairment {
    /// Percentage of UDP datagrams dropped at random, in each direction (0..=50).
    pub loss_pct: f64,
    /// Downlink (server → clients) limit in kbit/s.
    pub rate_kbit: Option<u32>,
}

impl Impairment {
    /// Check the figures a user gave.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.loss_pct.is_finite() && (0.0..=50.0).contains(&self.loss_pct)) {
            bail!("--loss must be a percentage between 0 and 50");
        }
        if let Some(r) = self.rate_kbit
            && !(64..=10_000_000).contains(&r)
        {
            bail!("--rate-kbit must be between 64 and 10000000");
        }
        Ok(())
    }
}

/// A namespace with one veth pair; removed (with the pair and its rules) on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// The host's end of the veth pair: clients bind here.
    pub host_ip: Ipv4Addr,
    /// The namespace's end: the server listens here.
    pub ns_ip: Ipv4Addr,
    ns_if: String,
}

/// The /30 a process uses, derived from its pid so that concurrent runs do not collide:
/// (host, namespace) addresses in 10.64.0.0/10.
pub fn addresses(pid: u32) -> (Ipv4Addr, Ipv4Addr) {
    let x = 64 + ((pid >> 14) & 63) as u8;
    let y = ((pid >> 6) & 255) as u8;
    let z = ((pid & 63) << 2) as u8;
    (
        Ipv4Addr::new(10, x, y, z + 1),
        Ipv4Addr::new(10, x, y, z + 2),
    )
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {} (is iproute2/iptables installed?)", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Create the namespace and the link, and impair it.
    pub fn create(imp: &Impairment) -> anyhow::Result<Netns> {
        imp.validate()?;
        let pid = std::process::id();
        let (host_ip, ns_ip) = addresses(pid);
        let ns = Netns {
            name: format!("rtcroom-bench-{pid}"),
            host_ip,
            ns_ip,
            ns_if: format!("rb{pid}n"),
        };
        let host_if = format!("rb{pid}h");
        // From here on, drop cleans up whatever was made.
        run(&["ip", "netns", "add", &ns.name]).context(
            "creating a network namespace (needs root or CAP_NET_ADMIN) for --loss/--rate-kbit",
        )?;
        let (n, nif) = (ns.name.as_str(), ns.ns_if.as_str());
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", nif, "netns", n,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            nif,
        ])?;
        run(&["ip", "-n", n, "link", "set", nif, "up"])?;
        run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        if imp.loss_pct > 0.0 {
            let p = format!("{:.4}", imp.loss_pct / 100.0);
            for chain in ["INPUT", "OUTPUT"] {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    n,
                    "iptables",
                    "-w",
                    "-A",
                    chain,
                    "-p",
                    "udp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])
                .context("adding the loss rule (is iptables installed?)")?;
            }
        }
        if let Some(rate) = imp.rate_kbit {
            // A burst of at least 10 ms at the rate (and one full-size packet), a queue of
            // at most 200 ms: what a congested access link looks like.
            let burst = (rate as u64 * 1000 / 8 / 100).max(3000);
            run(&[
                "tc",
                "-n",
                n,
                "qdisc",
                "add",
                "dev",
                nif,
                "root",
                "tbf",
                "rate",
                &format!("{rate}kbit"),
                "burst",
                &burst.to_string(),
                "latency",
                "200ms",
            ])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, which deletes the other, and
        // its rules and qdiscs go with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_host_and_a_namespace_end_of_one_slash_30() {
        for pid in [1u32, 63, 64, 4095, 16_384, 4_194_303] {
            let (h, n) = addresses(pid);
            let (h, n) = (u32::from(h), u32::from(n));
            assert_eq!(h & !3, n & !3, "same /30 for pid {pid}");
            assert_eq!((h & 3, n & 3), (1, 2), "usable ends for pid {pid}");
            assert_eq!(h >> 22, u32::from(Ipv4Addr::new(10, 64, 0, 0)) >> 22);
        }
        assert_ne!(addresses(100), addresses(101));
        assert_ne!(addresses(100), addresses(100 + 64));
    }

    #[test]
    fn impairments_out_of_range_are_refused() {
        let ok = Impairment {
            loss_pct: 10.0,
            rate_kbit: Some(400),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Impairment {
                loss_pct: -1.0,
                ..ok
            },
            Impairment {
                loss_pct: 60.0,
                ..ok
            },
            Impairment {
                loss_pct: f64::NAN,
                ..ok
            },
            Impairment {
                rate_kbit: Some(10),
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
