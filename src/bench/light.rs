//! Light WebRTC clients for load runs, on str0m (sans-IO): a publisher that replays
//! pre-encoded RTP (encode once, send many) and subscribers that decrypt and count packets
//! without decoding. Each runs as one tokio task with its own UDP socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A pre-encoded RTP packet, ready to replay.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Audio or video.
    pub video: bool,
    /// When to send it, from the start of the clip.
    pub at: Duration,
    /// RTP timestamp relative to the clip's first packet of its kind.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload (no header).
    pub payload: Arc<[u8]>,
}

/// Parse an RTP packet into (pt, seq, ts, marker, payload). `None` if malformed.
pub fn parse_rtp(b: &[u8]) -> Option<(u8, u16, u32, bool, &[u8])> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(b[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    if b[0] & 0x10 != 0 {
        let len = usize::from(u16::from_be_bytes([*b.get(off + 2)?, *b.get(off + 3)?]));
        off += 4 + 4 * len;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        let pad = usize::from(*b.last()?);
        end = end.checked_sub(pad)?;
    }
    let payload = b.get(off..end)?;
    Some((
        b[1] & 0x7f,
        u16::from_be_bytes([b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        b[1] & 0x80 != 0,
        payload,
    ))
}

/// One str0m peer with its socket.
pub struct LightPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    mids: Vec<(Mid, MediaKind)>,
}

impl LightPeer {
    /// A peer offering `direction` audio and video; returns it and its SDP offer.
    pub async fn new(direction: Direction) -> anyhow::Result<(LightPeer, String)> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(|e| anyhow!("candidate: {e}"))?;
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        let v = api.add_media(MediaKind::Video, direction, None, None, None);
        let a = api.add_media(MediaKind::Audio, direction, None, None, None);
        let (offer, pending) = api.apply().context("no offer")?;
        Ok((
            LightPeer {
                rtc,
                socket,
                local,
                pending: Some(pending),
                mids: vec![(v, MediaKind::Video), (a, MediaKind::Audio)],
            },
            offer.to_sdp_string(),
        ))
    }

    /// Apply the server's answer.
    pub fn accept_answer(&mut self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| anyhow!("answer: {e}"))?;
        let pending = self.pending.take().context("no pending offer")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| anyhow!("answer refused: {e}"))
    }

    fn mid(&self, kind: MediaKind) -> Option<Mid> {
        self.mids.iter().find(|(_, k)| *k == kind).map(|(m, _)| *m)
    }

    fn pt(&self, codec: Codec) -> Option<Pt> {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    /// Drain output: send datagrams, hand events to `on_event`; returns the next timeout.
    async fn drain(&mut self, on_event: &mut impl FnMut(Event)) -> Option<Instant> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => on_event(e),
                Err(_) => return None,
            }
        }
    }

    fn input(&mut self, buf: &[u8], source: SocketAddr) -> bool {
        let Ok(contents) = buf.try_into() else {
            return true;
        };
        self.rtc
            .handle_input(Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.local,
                    contents,
                },
            ))
            .is_ok()
    }
}

/// What a subscriber counted.
#[derive(Debug, Default)]
pub struct SubStats {
    /// RTP packets received (all kinds).
    pub packets: AtomicU64,
    /// Payload bytes received.
    pub bytes: AtomicU64,
    /// Packets missing by sequence number (all kinds).
    pub lost: AtomicU64,
    /// Video gaps over 500 ms after the first video packet.
    pub freezes: AtomicU64,
    /// Microseconds from subscribe to the first video packet (0 until then).
    pub first_video_us: AtomicU64,
    /// Microseconds from subscribe to the first H.264 keyframe packet, i.e. the first frame a
    /// decoder could show (0 until then).
    pub first_keyframe_us: AtomicU64,
}

/// Whether an H.264 RTP payload carries the start of a keyframe (IDR or SPS).
pub fn is_h264_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        // STAP-A: first aggregated NAL after the 2-byte size.
        24 => p.get(3).is_some_and(|b| matches!(b & 0x1f, 5 | 7)),
        // FU-A with the start bit.
        28 => p
            .get(1)
            .is_some_and(|b| b & 0x80 != 0 && matches!(b & 0x1f, 5 | 7)),
        _ => false,
    }
}

/// Per-stream sequence tracking for loss: expected (first..=highest) minus received.
#[derive(Default)]
struct SeqTrack {
    first: Option<u64>,
    highest: u64,
    received: u64,
}

impl SeqTrack {
    fn see(&mut self, seq: u64) {
        let first = *self.first.get_or_insert(seq);
        if seq < first {
            self.first = Some(seq);
        }
        self.highest = self.highest.max(seq);
        self.received += 1;
    }

    fn lost(&self) -> u64 {
        match self.first {
            Some(f) => (self.highest - f + 1).saturating_sub(self.received),
            None => 0,
        }
    }
}

/// Run a subscriber until `stop` flips; counts into `stats`.
pub async fn run_subscriber(
    mut peer: LightPeer,
    started: Instant,
    stats: Arc<SubStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 2000];
    let mut seqs: std::collections::HashMap<u32, SeqTrack> = Default::default();
    let mut last_video: Option<Instant> = None;
    loop {
        let mut on_event = |e: Event| {
            if let Event::RtpPacket(p) = e {
                stats.packets.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                seqs.entry(*p.header.ssrc).or_default().see(*p.seq_no);
                if is_video(&p) {
                    let now = Instant::now();
                    if let Some(prev) = last_video
                        && now.duration_since(prev) > Duration::from_millis(500)
                    {
                        stats.freezes.fetch_add(1, Ordering::Relaxed);
                    }
                    let us = now.duration_since(started).as_micros().max(1) as u64;
                    if last_video.is_none() {
                        stats.first_video_us.store(us, Ordering::Relaxed);
                    }
                    if stats.first_keyframe_us.load(Ordering::Relaxed) == 0
                        && is_h264_keyframe(&p.payload)
                    {
                        stats.first_keyframe_us.store(us, Ordering::Relaxed);
                    }
                    last_video = Some(now);
                }
            }
        };
        let Some(timeout) = peer.drain(&mut on_event).await else {
            break;
        };
        let wait = tokio::time::Instant::from_std(timeout);
        tokio::select! {
            r = peer.socket.recv_from(&mut buf) => {
                if let Ok((n, src)) = r && !peer.input(&buf[..n], src) {
                    break;
                }
            }
            _ = tokio::time::sleep_until(wait) => {
                if peer.rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let lost: u64 = seqs.values().map(SeqTrack::lost).sum();
    stats.lost.store(lost, Ordering::Relaxed);
}

fn is_video(p: &str0m::rtp::RtpPacket) -> bool {
    // RTP mode gives no codec per packet; the clock rate tells: video runs at 90 kHz.
    p.time.frequency().get() == 90_000
}

/// Counters of the publisher.
#[derive(Debug, Default)]
pub struct PubStats {
    /// RTP packets written.
    pub packets: AtomicU64,
}

/// Replay `clip` in a loop, paced in real time, until `stop` flips.
pub async fn run_publisher(
    mut peer: LightPeer,
    clip: Arc<Vec<Recorded>>,
    clip_len: Duration,
    stats: Arc<PubStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let vmid = peer.mid(MediaKind::Video).context("video mid")?;
    let amid = peer.mid(MediaKind::Audio).context("audio mid")?;
    let mut buf = vec![0u8; 2000];
    let start = Instant::now();
    let (mut vseq, mut aseq) = (1u64, 1u64);
    let mut index = 0usize;
    let mut lap = 0u32;
    let mut ignore = |_e: Event| {};
    loop {
        let Some(timeout) = peer.drain(&mut ignore).await else {
            anyhow::bail!("the publisher's connection failed");
        };
        let item = &clip[index];
        let due = start + clip_len * lap + item.at;
        let wake = timeout.min(due);
        tokio::select! {
            r = peer.socket.recv_from(&mut buf) => {
                if let Ok((n, src)) = r && !peer.input(&buf[..n], src) {
                    anyhow::bail!("the publisher's connection failed");
                }
                continue;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            _ = stop.changed() => return Ok(()),
        }
        let now = Instant::now();
        if now >= due {
            let (mid, codec, seq, rate) = if item.video {
                (vmid, Codec::H264, &mut vseq, 90_000u64)
            } else {
                (amid, Codec::Opus, &mut aseq, 48_000u64)
            };
            let lap_ticks = (clip_len.as_secs_f64() * rate as f64) as u64 * u64::from(lap);
            // RTP time wraps at 32 bits by design.
            let ts = (u64::from(item.ts) + lap_ticks) as u32;
            if let Some(pt) = peer.pt(codec)
                && let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(mid, None)
            {
                tx.write_rtp(
                    RtpWrite::new(pt, (*seq).into(), ts, now, item.payload.clone())
                        .marker(item.marker)
                        .nackable(item.video),
                );
                *seq += 1;
                stats.packets.fetch_add(1, Ordering::Relaxed);
            }
            index += 1;
            if index == clip.len() {
                index = 0;
                lap += 1;
            }
        } else if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
            anyhow::bail!("the publisher's connection failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rtp_headers() {
        let mut p = vec![0x80, 0xe6, 0x01, 0x02, 0, 0, 0x10, 0x00, 1, 2, 3, 4];
        p.extend_from_slice(&[9, 9, 9]);
        let (pt, seq, ts, marker, payload) = parse_rtp(&p).unwrap();
        assert_eq!(
            (pt, seq, ts, marker, payload),
            (102, 258, 4096, true, &[9u8, 9, 9][..])
        );
        // With one CSRC and a one-word extension.
        let mut q = vec![
            0x91, 0x6f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 7, 7, 7, 7, 0xbe, 0xde, 0, 1, 1, 2, 3, 4,
        ];
        q.push(42);
        let (pt, _, _, marker, payload) = parse_rtp(&q).unwrap();
        assert_eq!((pt, marker, payload), (111, false, &[42u8][..]));
        assert!(parse_rtp(&[0x80, 0]).is_none());
        assert!(parse_rtp(&[0x40; 20]).is_none());
        assert!(parse_rtp(&[0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe]).is_none());
    }

    #[test]
    fn keyframe_detection() {
        assert!(is_h264_keyframe(&[0x65, 0]));
        assert!(is_h264_keyframe(&[0x67, 0]));
        assert!(!is_h264_keyframe(&[0x41, 0]));
        assert!(is_h264_keyframe(&[0x78, 0, 10, 0x67]));
        assert!(is_h264_keyframe(&[0x7c, 0x85]));
        assert!(!is_h264_keyframe(&[0x7c, 0x05]));
        assert!(!is_h264_keyframe(&[]));
    }

    #[test]
    fn loss_from_sequence_gaps() {
        let mut t = SeqTrack::default();
        for s in [10, 11, 14] {
            t.see(s);
        }
        assert_eq!(t.lost(), 2);
        t.see(12);
        assert_eq!(t.lost(), 1, "a late packet is not lost");
        assert_eq!(SeqTrack::default().lost(), 0);
    }
}
