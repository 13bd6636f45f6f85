//! `rtcroom bench soak`: members coming and going at a steady rate for a long time, with the
//! server's memory and file descriptors sampled, to show that nothing accumulates.
//!
//! Each of `--slots` loops runs cycles back to back: a publisher joins a room (rtc), publishes
//! the clip with a light client, a viewer joins and subscribes, media flows for `--hold`
//! seconds, then the viewer unsubscribes and leaves, the publisher unpublishes and leaves,
//! and both connections close. Slots use `--rooms` rooms in turn, so rooms are created and
//! dismissed too. Every `--sample` seconds the report records the server's RSS, open file
//! descriptors and threads; the verdict compares the samples after the warm-up (the first
//! fifth of the run) with each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rtcroom_protocol::signal::{ClientMessage, StreamType};
use rtcroom_protocol::{Role, UserId};
use serde_json::json;
use tokio::sync::watch;

use super::light::{self, PubStats, SubStats};
use super::media::{Signal, join, pre_encode};
use super::{CommonArgs, Target};

/// What the loops counted.
#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    failures: AtomicU64,
    /// Cycles whose viewer received no media.
    no_media: AtomicU64,
    packets: AtomicU64,
}

/// One sample of the server process.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Sample {
    t_s: f64,
    rss_bytes: u64,
    fds: u64,
    threads: u64,
    cycles: u64,
}

fn count_dir(path: &str) -> u64 {
    std::fs::read_dir(path).map_or(0, |d| d.count() as u64)
}

/// Growth from the first to the last third of `xs` (means), relative to the first; 0 for too
/// few samples.
pub fn growth(xs: &[f64]) -> f64 {
    let third = xs.len() / 3;
    if third == 0 {
        return 0.0;
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (a, b) = (mean(&xs[..third]), mean(&xs[xs.len() - third..]));
    if a > 0.0 { (b - a) / a } else { 0.0 }
}

/// Run the soak.
pub async fn soak(
    slots: usize,
    rooms: usize,
    hold: f64,
    sample_every: f64,
    common: CommonArgs,
) -> anyhow::Result<()> {
    if !(1..=100).contains(&slots) {
        bail!("--slots must be between 1 and 100");
    }
    if !(1..=1000).contains(&rooms) {
        bail!("--rooms must be between 1 and 1000");
    }
    if !(hold.is_finite() && (0.5..=60.0).contains(&hold)) {
        bail!("--hold must be between 0.5 and 60 seconds");
    }
    if !(sample_every.is_finite() && (1.0..=600.0).contains(&sample_every)) {
        bail!("--sample must be between 1 and 600 seconds");
    }
    if !(common.duration.is_finite() && (5.0..=86_400.0).contains(&common.duration)) {
        bail!("--duration must be between 5 and 86400 seconds");
    }
    eprintln!("soak: encoding the clip once...");
    let (clip, clip_len) = tokio::task::spawn_blocking(|| pre_encode(0)).await??;
    let clip = Arc::new(clip);
    let target = Arc::new(Target::new(&common).await?);
    let pid = target
        .child
        .as_ref()
        .map(|c| c.child.id())
        .context("soak samples the server's process: run it with the embedded server")?;
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut loops = Vec::new();
    for slot in 0..slots {
        let (target, counts, clip, stop) = (
            target.clone(),
            counts.clone(),
            clip.clone(),
            stop_rx.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                let room = format!("{}", 700_000 + (slot + n as usize * slots) % rooms);
                let res = tokio::time::timeout(
                    Duration::from_secs_f64(hold + 30.0),
                    cycle(&target, &room, slot, n, hold, clip.clone(), clip_len),
                )
                .await;
                match res {
                    Ok(Ok(packets)) => {
                        counts.packets.fetch_add(packets, Ordering::Relaxed);
                        if packets == 0 {
                            counts.no_media.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(e)) => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(slot, "soak cycle failed: {e:#}");
                    }
                    Err(_) => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(slot, "soak cycle timed out");
                    }
                }
                counts.cycles.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(sample_every));
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let stat = super::proc_stat(pid).context("the server process is gone")?;
        let s = Sample {
            t_s: t,
            rss_bytes: stat.rss_bytes,
            fds: count_dir(&format!("/proc/{pid}/fd")),
            threads: count_dir(&format!("/proc/{pid}/task")),
            cycles: counts.cycles.load(Ordering::Relaxed),
        };
        eprintln!(
            "soak: {:>6.0} s, {} cycles, {} failed, RSS {:.1} MB, {} fds, {} threads",
            t,
            s.cycles,
            counts.failures.load(Ordering::Relaxed),
            s.rss_bytes as f64 / 1e6,
            s.fds,
            s.threads
        );
        samples.push(s);
        if t >= common.duration {
            break;
        }
    }
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs_f64(hold + 35.0), l).await;
    }
    let warm = samples.len() / 5;
    let after: Vec<&Sample> = samples.iter().skip(warm).collect();
    let rss: Vec<f64> = after.iter().map(|s| s.rss_bytes as f64).collect();
    let fds: Vec<f64> = after.iter().map(|s| s.fds as f64).collect();
    let (rss_growth, fd_growth) = (growth(&rss), growth(&fds));
    let cycles = counts.cycles.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let report = json!({
        "scenario": "soak",
        "slots": slots,
        "rooms": rooms,
        "hold_s": hold,
        "duration_s": elapsed,
        "cycles": cycles,
        "cycles_per_min": cycles as f64 * 60.0 / elapsed,
        "failures": counts.failures.load(Ordering::Relaxed),
        "cycles_without_media": counts.no_media.load(Ordering::Relaxed),
        "packets_received": counts.packets.load(Ordering::Relaxed),
        "warm_up_samples": warm,
        "rss_growth_after_warm_up": rss_growth,
        "fd_growth_after_warm_up": fd_growth,
        "rss_bytes_max": samples.iter().map(|s| s.rss_bytes).max(),
        "fds_max": samples.iter().map(|s| s.fds).max(),
        "samples": samples,
    });
    println!("scenario              soak ({slots} slots over {rooms} rooms, {hold} s per cycle)");
    println!("duration              {elapsed:.0} s, {cycles} cycles");
    println!(
        "failures              {} (and {} cycles whose viewer got no media)",
        report["failures"], report["cycles_without_media"]
    );
    println!(
        "after warm-up         RSS {:+.1} %, fds {:+.1} % (last third against first third)",
        rss_growth * 100.0,
        fd_growth * 100.0
    );
    super::write_reports(&common, &report)?;
    Ok(())
}

/// One publisher-and-viewer cycle; returns the packets the viewer received.
async fn cycle(
    target: &Target,
    room: &str,
    slot: usize,
    n: u64,
    hold: f64,
    clip: Arc<Vec<light::Recorded>>,
    clip_len: Duration,
) -> anyhow::Result<u64> {
    let anchor = format!("soak-{slot}-{n}-a");
    let mut a = Signal::connect(&target.url).await?;
    a.request(ClientMessage::Join(join(
        target,
        &anchor,
        room,
        Role::Anchor,
    )?))
    .await?;
    let pub_peer = a.publish_light(target, true).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(light::run_publisher(
        pub_peer,
        clip,
        clip_len,
        Arc::new(PubStats::default()),
        stop_rx.clone(),
    ));
    let viewer = format!("soak-{slot}-{n}-v");
    let mut v = Signal::connect(&target.url).await?;
    v.request(ClientMessage::Join(join(
        target,
        &viewer,
        room,
        Role::Anchor,
    )?))
    .await?;
    let (sub_peer, _) = v.subscribe_light(target, &anchor, true, None).await?;
    let stats = Arc::new(SubStats::default());
    let receiving = tokio::spawn(light::run_subscriber(
        sub_peer,
        Instant::now(),
        stats.clone(),
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    v.request(ClientMessage::Unsubscribe {
        user_id: UserId::new(&anchor).map_err(|e| anyhow::anyhow!(e.message))?,
        stream_type: StreamType::Main,
    })
    .await?;
    a.request(ClientMessage::Unpublish {
        stream_type: StreamType::Main,
    })
    .await?;
    let _ = stop_tx.send(true);
    let _ = publishing.await;
    let _ = receiving.await;
    v.leave().await;
    a.leave().await;
    Ok(stats.packets.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_the_last_third_with_the_first() {
        assert_eq!(growth(&[]), 0.0);
        assert_eq!(growth(&[5.0, 5.0]), 0.0);
        assert_eq!(growth(&[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]), 0.0);
        let g = growth(&[10.0, 10.0, 12.0, 12.0, 15.0, 15.0]);
        assert!((g - 0.5).abs() < 1e-9, "{g}");
        assert!(growth(&[10.0, 9.0, 8.0]) < 0.0);
    }
}
