//! Taking the first valid connectivity check of a new peer as its nomination.
//!
//! The SFU is ICE-lite: the client (the controlling agent) runs the checks, and str0m sends
//! nothing but STUN answers until the client *nominates* a pair with a check carrying
//! USE-CANDIDATE. Browsers start DTLS as soon as a check has succeeded, but nominate only on a
//! later check (Chromium: its next ping, ~50 ms on loopback), so str0m held its DTLS answer
//! until then and every connection paid that wait before media could flow.
//!
//! As mediasoup's ICE-lite server does, the worker treats the first binding request that
//! authenticates with the peer's ICE password as a nomination: it adds USE-CANDIDATE to that
//! one request (recomputing MESSAGE-INTEGRITY and FINGERPRINT with the same password) before
//! str0m sees it. The path is proven: the request came from that address with the right
//! credentials, and the client accepts DTLS on any pair that has succeeded. The client's own
//! nomination later goes through unchanged and wins if it picks another pair. A request that
//! does not authenticate is left as it is (str0m refuses it), so this grants nothing to anyone
//! without the password.

use hmac::{Hmac, Mac};
use sha1::Sha1;

const HEADER: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const INTEGRITY_LEN: usize = 20;

/// Whether a datagram is a STUN message (RFC 7983: first byte 0..=3, magic cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn integrity(password: &[u8], header: &[u8], body: &[u8], length: usize) -> Option<[u8; 20]> {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(password).ok()?;
    mac.update(&header[..2]);
    mac.update(&u16::try_from(length).ok()?.to_be_bytes());
    mac.update(&header[4..HEADER]);
    mac.update(body);
    Some(mac.finalize().into_bytes().into())
}

/// `datagram` with USE-CANDIDATE added, if it is a binding request without one whose
/// MESSAGE-INTEGRITY verifies with `password` (the receiving agent's ICE password);
/// otherwise `None` (the datagram should be passed on as it is).
pub fn with_use_candidate(datagram: &[u8], password: &str) -> Option<Vec<u8>> {
    if !is_stun(datagram) || datagram[..2] != BINDING_REQUEST {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if HEADER + declared != datagram.len() || declared % 4 != 0 {
        return None;
    }
    // Walk the attributes up to MESSAGE-INTEGRITY.
    let mut at = HEADER;
    let mut integrity_at = None;
    while at + 4 <= datagram.len() {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let padded = len.div_ceil(4) * 4;
        if at + 4 + padded > datagram.len() {
            return None;
        }
        match kind {
            ATTR_USE_CANDIDATE => return None,
            ATTR_MESSAGE_INTEGRITY if len == INTEGRITY_LEN => {
                integrity_at = Some(at);
                break;
            }
            ATTR_MESSAGE_INTEGRITY | ATTR_FINGERPRINT => return None,
            _ => {}
        }
        at += 4 + padded;
    }
    let mi = integrity_at?;
    let header = &datagram[..HEADER];
    let before = &datagram[HEADER..mi];
    let given = &datagram[mi + 4..mi + 4 + INTEGRITY_LEN];
    let expected = integrity(
        password.as_bytes(),
        header,
        before,
        mi + 4 + INTEGRITY_LEN - HEADER,
    )?;
    // Not secret-dependent timing worth defending: a mismatch only leaves the request as is.
    if expected[..] != *given {
        return None;
    }
    // New body: the attributes before MESSAGE-INTEGRITY, USE-CANDIDATE, MESSAGE-INTEGRITY,
    // FINGERPRINT (attributes after MESSAGE-INTEGRITY other than FINGERPRINT are ignored by
    // receivers, RFC 8489 §14.5, so they are dropped).
    let mut out = Vec::with_capacity(mi + 4 + 4 + INTEGRITY_LEN + 8);
    out.extend_from_slice(header);
    out.extend_from_slice(before);
    out.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    let mi_at = out.len();
    let mac = integrity(
        password.as_bytes(),
        header,
        &out[HEADER..],
        mi_at + 4 + INTEGRITY_LEN - HEADER,
    )?;
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    out.extend_from_slice(&mac);
    let total = u16::try_from(out.len() + 8 - HEADER).ok()?;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    let fingerprint = crc32(&out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&fingerprint.to_be_bytes());
    Some(out)
}

/// The receiving agent's ufrag that a binding request names in its USERNAME
/// (`"<receiver's ufrag>:<sender's ufrag>"`, RFC 8445 §7.2.2), so that a check from a new
/// address finds its peer by one map lookup. `None` for anything else.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) || datagram[..2] != BINDING_REQUEST {
        return None;
    }
    let mut at = HEADER;
    while at + 4 <= datagram.len() {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value = datagram.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_request_names_the_receivers_ufrag() {
        let r = request("pw", false);
        assert_eq!(local_ufrag(&r), Some("srvU"));
        // Not a binding request, cut short, or no STUN at all: nothing.
        let mut response = r.clone();
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(local_ufrag(&response), None);
        assert_eq!(local_ufrag(&r[..HEADER + 6]), None);
        assert_eq!(
            local_ufrag(b"\x80\x60 an RTP packet, long enough to look at"),
            None
        );
    }

    /// A binding request as a browser sends it: USERNAME, ICE-CONTROLLING, PRIORITY, then
    /// MESSAGE-INTEGRITY and FINGERPRINT. (That str0m's ICE agent accepts the rewritten
    /// request is shown end to end: every media test's client connects through it.)
    fn request(password: &str, use_candidate: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        let username = b"srvU:cliU";
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        attrs.extend_from_slice(&[0, 0, 0]); // pad 9 → 12
        attrs.extend_from_slice(&0x802au16.to_be_bytes()); // ICE-CONTROLLING
        attrs.extend_from_slice(&8u16.to_be_bytes());
        attrs.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        attrs.extend_from_slice(&0x0024u16.to_be_bytes()); // PRIORITY
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&0x6e00_1effu32.to_be_bytes());
        if use_candidate {
            attrs.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
            attrs.extend_from_slice(&0u16.to_be_bytes());
        }
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_REQUEST);
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&attrs);
        let len = m.len() - HEADER + 24;
        let mac = integrity(password.as_bytes(), &m[..HEADER], &m[HEADER..], len).unwrap();
        m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        m.extend_from_slice(&20u16.to_be_bytes());
        m.extend_from_slice(&mac);
        let total = (m.len() + 8 - HEADER) as u16;
        m[2..4].copy_from_slice(&total.to_be_bytes());
        let fp = crc32(&m) ^ FINGERPRINT_XOR;
        m.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&fp.to_be_bytes());
        m
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn a_valid_check_becomes_a_nomination() {
        let plain = request("secret", false);
        let nominated = with_use_candidate(&plain, "secret").expect("rewritten");
        // Byte for byte what the client would have sent with USE-CANDIDATE itself.
        assert_eq!(nominated, request("secret", true));
        assert!(is_stun(&nominated));
    }

    #[test]
    fn nothing_else_is_touched() {
        let plain = request("secret", false);
        assert_eq!(with_use_candidate(&plain, "other"), None, "wrong password");
        assert_eq!(
            with_use_candidate(&request("secret", true), "secret"),
            None,
            "already a nomination"
        );
        let mut response = plain.clone();
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(
            with_use_candidate(&response, "secret"),
            None,
            "not a request"
        );
        let mut tampered = plain.clone();
        tampered[30] ^= 1;
        assert_eq!(with_use_candidate(&tampered, "secret"), None, "tampered");
        for cut in [0, 19, 20, 40, plain.len() - 1] {
            assert_eq!(with_use_candidate(&plain[..cut], "secret"), None);
        }
        assert!(!is_stun(&[
            0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        // A length field that lies about the attributes.
        let mut lying = plain.clone();
        lying[23] = 0xff;
        assert_eq!(with_use_candidate(&lying, "secret"), None);
    }
}
