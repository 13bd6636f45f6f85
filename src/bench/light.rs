//! Light WebRTC clients for load runs, on str0m (sans-IO): a publisher that replays
//! pre-encoded RTP (encode once, send many) and subscribers that decrypt and count packets
//! without decoding. Each runs as one tokio task with its own UDP socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid};
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
    /// The first packet of a keyframe (where a replay may jump on a keyframe request).
    pub key: bool,
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

/// A socket on `bind_ip` and a str0m peer (RTP mode, Opus and H.264) with it as its host
/// candidate.
async fn bound_rtc(bind_ip: std::net::IpAddr) -> anyhow::Result<(UdpSocket, SocketAddr, Rtc)> {
    let socket = UdpSocket::bind((bind_ip, 0)).await?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    let candidate = Candidate::host(local, "udp").map_err(|e| anyhow!("candidate: {e}"))?;
    rtc.add_local_candidate(candidate);
    Ok((socket, local, rtc))
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
    /// A peer offering `direction` audio (and video when `video`); returns it and its offer.
    pub async fn new(
        direction: Direction,
        video: bool,
        bind_ip: std::net::IpAddr,
    ) -> anyhow::Result<(LightPeer, String)> {
        Self::with_layers(direction, video, &[], bind_ip).await
    }

    /// As [`LightPeer::new`], sending the video as simulcast layers with these rids (none:
    /// one layer).
    pub async fn with_layers(
        direction: Direction,
        video: bool,
        rids: &[&str],
        bind_ip: std::net::IpAddr,
    ) -> anyhow::Result<(LightPeer, String)> {
        let (socket, local, mut rtc) = bound_rtc(bind_ip).await?;
        let mut api = rtc.sdp_api();
        let mut mids = Vec::new();
        if video {
            let simulcast = (!rids.is_empty()).then(|| {
                let mut s = str0m::media::Simulcast::new();
                for rid in rids {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                }
                s
            });
            mids.push((
                api.add_media(MediaKind::Video, direction, None, None, simulcast),
                MediaKind::Video,
            ));
        }
        mids.push((
            api.add_media(MediaKind::Audio, direction, None, None, None),
            MediaKind::Audio,
        ));
        let (offer, pending) = api.apply().context("no offer")?;
        Ok((
            LightPeer {
                rtc,
                socket,
                local,
                pending: Some(pending),
                mids,
            },
            offer.to_sdp_string(),
        ))
    }

    /// A receive-only peer answering `offer` (a server that offers to its subscribers, as
    /// Janus does); returns it and its answer.
    pub async fn answer(
        offer: &str,
        bind_ip: std::net::IpAddr,
    ) -> anyhow::Result<(LightPeer, String)> {
        let (socket, local, mut rtc) = bound_rtc(bind_ip).await?;
        let parsed = SdpOffer::from_sdp_string(offer).map_err(|e| anyhow!("offer: {e}"))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| anyhow!("offer refused: {e}"))?;
        Ok((
            LightPeer {
                rtc,
                socket,
                local,
                pending: None,
                mids: offered_mids(offer),
            },
            answer.to_sdp_string(),
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

/// The audio and video media sections of an SDP, by mid, in order.
fn offered_mids(sdp: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            kind = if m.starts_with("video") {
                Some(MediaKind::Video)
            } else if m.starts_with("audio") {
                Some(MediaKind::Audio)
            } else {
                None
            };
        } else if let (Some(mid), Some(k)) = (line.strip_prefix("a=mid:"), kind) {
            out.push((Mid::from(mid), k));
        }
    }
    out
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
    /// Video packets received (each sequence number once, however often it arrived).
    pub video_packets: AtomicU64,
    /// Video packets missing by sequence number at the end (after any repair).
    pub video_lost: AtomicU64,
    /// Audio packets received (each sequence number once).
    pub audio_packets: AtomicU64,
    /// Audio packets missing by sequence number at the end.
    pub audio_lost: AtomicU64,
    /// Of those, how many the next packet's Opus in-band FEC recovers.
    pub audio_fec_recovered: AtomicU64,
    /// Video gaps over 500 ms after the first video packet.
    pub freezes: AtomicU64,
    /// Microseconds from subscribe to the first video packet (0 until then).
    pub first_video_us: AtomicU64,
    /// Microseconds from subscribe to the first complete H.264 keyframe (every packet from
    /// its first to its marker received), i.e. the first frame a decoder can show (0 until
    /// then).
    pub first_frame_us: AtomicU64,
    /// Microseconds from subscribe to the first audio packet (0 until then).
    pub first_audio_us: AtomicU64,
    /// Interarrival jitter of the video (or audio, if no video) in milliseconds × 1000, as
    /// str0m last measured it.
    pub jitter_us: AtomicU64,
    /// NACKs this subscriber sent (str0m asks for retransmission on gaps).
    pub nacks: AtomicU64,
    /// PLIs this subscriber sent.
    pub plis: AtomicU64,
    /// Keyframes whose first packet starts with an SPS, and a hash of the last one's SPS
    /// (it changes with the resolution: a simulcast layer switch).
    pub sps_keyframes: AtomicU64,
    /// See `sps_keyframes`.
    pub last_sps: AtomicU64,
    /// The measured window began: loss is counted from the next sequence number on (the
    /// warm-up's, handshakes and first keyframes included, is not part of it).
    pub opened: AtomicBool,
    /// The measured window is over: loss is counted among the sequence numbers seen so far
    /// (later ones are ignored), so that a packet lost just before the end is not counted
    /// lost while its repair is still under way (the bench waits a repair time before it
    /// stops).
    pub closed: AtomicBool,
}

/// A hash of the SPS an H.264 payload carries (alone, or in a STAP-A), if it does.
pub fn sps_hash(p: &[u8]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let sps = match p.first()? & 0x1f {
        7 => p,
        24 => {
            // 16-bit size, then the NAL unit, for each (an access unit delimiter may lead).
            let mut rest = p.get(1..)?;
            loop {
                let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                let nal = rest.get(2..2 + len)?;
                if nal.first()? & 0x1f == 7 {
                    break nal;
                }
                rest = rest.get(2 + len..)?;
            }
        }
        _ => return None,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sps.hash(&mut h);
    Some(h.finish())
}

/// Whether an H.264 RTP payload carries the start of a keyframe (IDR or SPS).
pub fn is_h264_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        // STAP-A: any aggregated NAL (each after its 2-byte size; an access unit delimiter
        // or SEI may come first).
        24 => {
            let mut i = 1;
            while let (Some(&hi), Some(&lo)) = (p.get(i), p.get(i + 1)) {
                let Some(&nal) = p.get(i + 2) else {
                    break;
                };
                if matches!(nal & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + (usize::from(hi) << 8 | usize::from(lo));
            }
            false
        }
        // FU-A with the start bit.
        28 => p
            .get(1)
            .is_some_and(|b| b & 0x80 != 0 && matches!(b & 0x1f, 5 | 7)),
        _ => false,
    }
}

/// Whether an Opus packet carries in-band FEC (LBRR) data for the frame before it: the SILK
/// layer's header flags (RFC 6716 §4.2.3: one VAD bit per SILK frame, then the LBRR flag,
/// per channel), read with the range decoder of §4.1. CELT-only packets carry none. Packets
/// of several frames (TOC code 2 and 3) are read as their first frame's flags only when code
/// 1 (equal sizes) and are otherwise counted as carrying none.
pub fn opus_has_fec(p: &[u8]) -> bool {
    let Some(&toc) = p.first() else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 || toc & 3 > 1 {
        return false;
    }
    let silk_frames = match config {
        // SILK-only: 10, 20, 40, 60 ms (one SILK frame per 20 ms, one for 10 ms).
        0..=11 => [1, 1, 2, 3][usize::from(config & 3)],
        // Hybrid: 10 or 20 ms.
        _ => 1,
    };
    let channels = if toc & 4 != 0 { 2 } else { 1 };
    let mut dec = RangeDecoder::new(&p[1..]);
    for _ in 0..channels {
        for _ in 0..silk_frames {
            dec.bit_logp(1);
        }
        if dec.bit_logp(1) {
            return true;
        }
    }
    false
}

/// The start of Opus's range decoder (RFC 6716 §4.1), enough to read flag bits.
struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    rng: u32,
    val: u32,
    rem: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut d = RangeDecoder {
            data,
            pos: 0,
            rng: 128,
            val: 0,
            rem: 0,
        };
        d.rem = d.byte();
        d.val = 127 - (d.rem >> 1);
        d.normalize();
        d
    }

    fn byte(&mut self) -> u32 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u32::from(b)
    }

    fn normalize(&mut self) {
        while self.rng <= 1 << 23 {
            self.rng <<= 8;
            let sym = self.rem;
            self.rem = self.byte();
            let sym = ((sym << 8) | self.rem) >> 1;
            self.val = ((self.val << 8) + (255 & !sym)) & 0x7fff_ffff;
        }
    }

    fn bit_logp(&mut self, logp: u32) -> bool {
        let s = self.rng >> logp;
        let bit = self.val < s;
        if bit {
            self.rng = s;
        } else {
            self.val -= s;
            self.rng -= s;
        }
        self.normalize();
        bit
    }
}

/// Per-stream sequence tracking for loss: expected (first..=highest) minus received, where a
/// sequence number that arrives twice (a resend of one that was not lost) counts once; and,
/// for Opus, how many of the lost packets the next packet's in-band FEC recovers.
#[derive(Default)]
struct SeqTrack {
    first: Option<u64>,
    highest: u64,
    received: u64,
    /// The last `SEEN_WINDOW` sequence numbers up to `highest`: (arrived, carries FEC).
    seen: std::collections::VecDeque<(bool, bool)>,
    /// Lost packets whose successor arrived carrying FEC, among those out of the window.
    fec_recovered: u64,
    /// Only repairs count from now on: sequence numbers above `highest` are ignored.
    closed: bool,
    /// Counting began here (see [`SeqTrack::open`]): older sequence numbers are ignored.
    floor: Option<u64>,
    /// [`SeqTrack::open`] was called.
    opened: bool,
}

/// How far back duplicates are recognised (resends arrive within a second or so).
const SEEN_WINDOW: u64 = 4096;

impl SeqTrack {
    fn see(&mut self, seq: u64, fec: bool) {
        if self.closed && (self.first.is_none() || seq > self.highest)
            || self.floor.is_some_and(|f| seq < f)
        {
            return;
        }
        let first = *self.first.get_or_insert(seq);
        if self.seen.is_empty() {
            self.highest = seq;
            self.seen.push_back((true, fec));
            self.received = 1;
            return;
        }
        if seq > self.highest {
            for _ in self.highest + 1..seq {
                self.seen.push_back((false, false));
            }
            self.seen.push_back((true, fec));
            self.highest = seq;
            while self.seen.len() as u64 > SEEN_WINDOW {
                self.pop_oldest();
            }
            self.received += 1;
            return;
        }
        let back = self.highest - seq;
        if back >= SEEN_WINDOW {
            return; // too old to tell a duplicate from a late one
        }
        if seq < first {
            // Older than the first one seen (which came out of order): the range starts here.
            for _ in seq + 1..first {
                self.seen.push_front((false, false));
            }
            self.seen.push_front((true, fec));
            self.first = Some(seq);
            self.received += 1;
            return;
        }
        let idx = self.seen.len() - 1 - back as usize;
        if !self.seen[idx].0 {
            self.seen[idx] = (true, fec);
            self.received += 1;
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((arrived, _)) = self.seen.pop_front()
            && !arrived
            && self.seen.front().is_some_and(|&(a, f)| a && f)
        {
            self.fec_recovered += 1;
        }
    }

    /// Count afresh from the next sequence number (what came or was lost before is
    /// forgotten, later repairs of it ignored).
    fn open(&mut self) {
        if self.opened {
            return;
        }
        *self = SeqTrack {
            floor: self.first.map(|_| self.highest + 1),
            opened: true,
            ..SeqTrack::default()
        };
    }

    /// From now on only repairs of sequence numbers already passed count.
    fn close(&mut self) {
        self.closed = true;
    }

    fn lost(&self) -> u64 {
        match self.first {
            Some(f) => (self.highest - f + 1).saturating_sub(self.received),
            None => 0,
        }
    }

    /// Lost packets the next packet's FEC recovers (a decoder with in-band FEC on plays them).
    fn recovered_by_fec(&self) -> u64 {
        let in_window = self
            .seen
            .iter()
            .zip(self.seen.iter().skip(1))
            .filter(|((a, _), (b, f))| !a && *b && *f)
            .count() as u64;
        self.fec_recovered + in_window
    }
}

/// Watches video packets for the first complete keyframe: every sequence number from the
/// keyframe's first packet to its marker packet received (in any order, resends included).
#[derive(Default, Debug)]
struct KeyframeAssembly {
    /// RTP timestamp of the keyframe being assembled.
    ts: Option<u32>,
    /// Its first packet (the lowest that starts a keyframe), its marker packet.
    first: Option<u64>,
    last: Option<u64>,
    got: std::collections::BTreeSet<u64>,
}

impl KeyframeAssembly {
    /// A video packet; returns true once a keyframe is complete.
    fn see(&mut self, seq: u64, ts: u32, marker: bool, key_start: bool) -> bool {
        if key_start && self.ts != Some(ts) {
            // A newer keyframe starts (or the first): assemble that one.
            *self = KeyframeAssembly {
                ts: Some(ts),
                ..Default::default()
            };
        }
        if self.ts != Some(ts) {
            return false;
        }
        if key_start {
            self.first = Some(self.first.map_or(seq, |f| f.min(seq)));
        }
        if marker {
            self.last = Some(seq);
        }
        self.got.insert(seq);
        match (self.first, self.last) {
            (Some(f), Some(l)) if l >= f => self.got.range(f..=l).count() as u64 == l - f + 1,
            _ => false,
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
    // Per SSRC: the sequence track and whether it is video.
    let mut seqs: std::collections::HashMap<u32, (SeqTrack, bool)> = Default::default();
    let mut last_video: Option<Instant> = None;
    let mut first_frame = KeyframeAssembly::default();
    let video_mid = peer.mid(MediaKind::Video);
    let mut nacks: std::collections::HashMap<Mid, u64> = Default::default();
    let mut plis: std::collections::HashMap<Mid, u64> = Default::default();
    loop {
        let mut on_event = |e: Event| {
            if let Event::MediaIngressStats(st) = &e {
                // Per mid; keep the video's figures when both report (video is mid 0).
                let rate = if video_mid == Some(st.mid) {
                    90.0
                } else {
                    48.0
                };
                if video_mid.is_none() || video_mid == Some(st.mid) {
                    let jitter_us = (f64::from(st.jitter) / rate * 1000.0) as u64;
                    stats.jitter_us.store(jitter_us, Ordering::Relaxed);
                }
                nacks.insert(st.mid, st.nacks);
                plis.insert(st.mid, st.plis);
                stats.nacks.store(nacks.values().sum(), Ordering::Relaxed);
                stats.plis.store(plis.values().sum(), Ordering::Relaxed);
            }
            if let Event::RtpPacket(p) = e {
                stats.packets.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                let video = is_video(&p);
                let fec = !video && opus_has_fec(&p.payload);
                let track = &mut seqs
                    .entry(*p.header.ssrc)
                    .or_insert_with(|| (SeqTrack::default(), video))
                    .0;
                if stats.opened.load(Ordering::Relaxed) {
                    track.open();
                }
                if stats.closed.load(Ordering::Relaxed) {
                    track.close();
                }
                track.see(*p.seq_no, fec);
                if !is_video(&p) && stats.first_audio_us.load(Ordering::Relaxed) == 0 {
                    let us = started.elapsed().as_micros().max(1) as u64;
                    stats.first_audio_us.store(us, Ordering::Relaxed);
                }
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
                    if stats.first_frame_us.load(Ordering::Relaxed) == 0
                        && first_frame.see(
                            *p.seq_no,
                            p.header.timestamp,
                            p.header.marker,
                            is_h264_keyframe(&p.payload),
                        )
                    {
                        stats.first_frame_us.store(us, Ordering::Relaxed);
                    }
                    if let Some(h) = sps_hash(&p.payload) {
                        stats.last_sps.store(h, Ordering::Relaxed);
                        stats.sps_keyframes.fetch_add(1, Ordering::Relaxed);
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
    let count = |video: bool, f: fn(&SeqTrack) -> u64| -> u64 {
        seqs.values()
            .filter(|(_, v)| *v == video)
            .map(|(t, _)| f(t))
            .sum()
    };
    stats.lost.store(
        count(true, SeqTrack::lost) + count(false, SeqTrack::lost),
        Ordering::Relaxed,
    );
    stats
        .video_lost
        .store(count(true, SeqTrack::lost), Ordering::Relaxed);
    stats
        .audio_lost
        .store(count(false, SeqTrack::lost), Ordering::Relaxed);
    stats
        .video_packets
        .store(count(true, |t| t.received), Ordering::Relaxed);
    stats
        .audio_packets
        .store(count(false, |t| t.received), Ordering::Relaxed);
    stats
        .audio_fec_recovered
        .store(count(false, SeqTrack::recovered_by_fec), Ordering::Relaxed);
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
    /// Keyframe requests answered by jumping to the clip's next keyframe.
    pub keyframes_on_request: AtomicU64,
    /// Packets sent more than [`LATE`] after they were due: the generator could not keep up.
    pub late_packets: AtomicU64,
}

/// A packet sent this long after it was due counts as late.
pub const LATE: Duration = Duration::from_millis(20);

/// Where a replay is in its clip: the next packet, the lap, and how far keyframe requests
/// have moved it ahead of the wall clock. A plain state machine: [`Replay::due`] says when
/// the next packet leaves, [`Replay::next`] takes it, [`Replay::keyframe_request`] jumps to
/// the clip's next keyframe the way an encoder asked for one would produce one now.
#[derive(Debug)]
pub struct Replay {
    clip: Arc<Vec<Recorded>>,
    clip_len: Duration,
    index: usize,
    lap: u32,
    /// Clip time skipped by jumps: subtracted from due times and RTP timestamps, so that
    /// both stay continuous with the wall clock.
    skipped: Duration,
    /// The last video packet sent did not end its frame: a jump now would cut the frame.
    mid_frame: bool,
    /// A request came mid-frame: served at the frame's end (requests meanwhile join it).
    pending: bool,
}

/// One packet to send: kind, RTP timestamp, marker, payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayPacket {
    /// Video (or audio).
    pub video: bool,
    /// RTP timestamp (wraps at 32 bits).
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload.
    pub payload: Arc<[u8]>,
}

impl Replay {
    /// A replay of `clip` (not empty), one lap every `clip_len`.
    pub fn new(clip: Arc<Vec<Recorded>>, clip_len: Duration) -> Replay {
        Replay {
            clip,
            clip_len,
            index: 0,
            lap: 0,
            skipped: Duration::ZERO,
            mid_frame: false,
            pending: false,
        }
    }

    /// When the next packet is due, for a replay that started at `start`.
    pub fn due(&self, start: Instant) -> Instant {
        let at = self.clip_len * self.lap + self.clip[self.index].at;
        start + at.saturating_sub(self.skipped)
    }

    fn ticks(d: Duration, rate: u64) -> u64 {
        (d.as_secs_f64() * rate as f64).round() as u64
    }

    /// Take the next packet.
    pub fn next(&mut self) -> ReplayPacket {
        let item = &self.clip[self.index];
        let rate = if item.video { 90_000 } else { 48_000 };
        let lap_ticks = Self::ticks(self.clip_len, rate) * u64::from(self.lap);
        // RTP time wraps at 32 bits by design.
        let ts =
            (u64::from(item.ts) + lap_ticks).wrapping_sub(Self::ticks(self.skipped, rate)) as u32;
        let p = ReplayPacket {
            video: item.video,
            ts,
            marker: item.marker,
            payload: item.payload.clone(),
        };
        if p.video {
            self.mid_frame = !p.marker;
        }
        self.index += 1;
        if self.index == self.clip.len() {
            self.index = 0;
            self.lap += 1;
        }
        p
    }

    /// A keyframe was asked for: move ahead to the clip's next keyframe (audio skips with
    /// it, staying in step), as an encoder produces one at once. While a frame is being sent
    /// the request waits for its end (a jump would cut it), and requests meanwhile are
    /// served together. Returns whether it jumped now.
    pub fn keyframe_request(&mut self) -> bool {
        if self.mid_frame {
            self.pending = true;
            return false;
        }
        self.pending = false;
        let n = self.clip.len();
        let Some(steps) = (0..n).find(|k| {
            let r = &self.clip[(self.index + k) % n];
            r.video && r.key
        }) else {
            return false;
        };
        if steps == 0 {
            // The next packet starts a keyframe already.
            return true;
        }
        let from = self.clip_len * self.lap + self.clip[self.index].at;
        let target = self.index + steps;
        let (index, lap) = (target % n, self.lap + (target / n) as u32);
        let to = self.clip_len * lap + self.clip[index].at;
        // Everything between is skipped; audio and video alike, in clip time.
        self.skipped += to.saturating_sub(from);
        self.index = index;
        self.lap = lap;
        true
    }

    /// Serve a request that waited for the end of a frame; returns whether it jumped.
    pub fn poll(&mut self) -> bool {
        self.pending && !self.mid_frame && self.keyframe_request()
    }
}

/// Replay `clip` in a loop, paced in real time, until `stop` flips. A keyframe request
/// (PLI/FIR from the server) jumps the replay to the clip's next keyframe, as an encoder
/// would produce one at once.
pub async fn run_publisher(
    peer: LightPeer,
    clip: Arc<Vec<Recorded>>,
    clip_len: Duration,
    stats: Arc<PubStats>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_publisher_layers(peer, vec![(None, clip)], clip_len, stats, stop).await
}

/// As [`run_publisher`], one replay per simulcast layer (`rid`, clip): the first layer's
/// clip also carries the audio (the others' audio is not sent); a keyframe request for a
/// rid jumps that layer's replay (one without a rid: all of them).
pub async fn run_publisher_layers(
    mut peer: LightPeer,
    layers: Vec<(Option<&'static str>, Arc<Vec<Recorded>>)>,
    clip_len: Duration,
    stats: Arc<PubStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let vmid = peer.mid(MediaKind::Video);
    let amid = peer.mid(MediaKind::Audio).context("audio mid")?;
    let mut buf = vec![0u8; 2000];
    // The clip starts once the connection is up, as a live encoder's output would: packets
    // written before would be lost, and replaying the ones due meanwhile in one burst (after
    // a slow handshake on a lossy link) overruns the server's NACK window.
    let mut start: Option<Instant> = None;
    let mut aseq = 1u64;
    // (rid, replay, video sequence number) per layer.
    let mut replays: Vec<(Option<Rid>, Replay, u64)> = layers
        .into_iter()
        .enumerate()
        .map(|(i, (rid, clip))| {
            let clip = if i == 0 {
                clip
            } else {
                Arc::new(clip.iter().filter(|r| r.video).cloned().collect())
            };
            (rid.map(Rid::from), Replay::new(clip, clip_len), 1u64)
        })
        .collect();
    // Resend whatever the server asks for, as a browser does within its bitrate: str0m's
    // default stops resending above 15 % of what it sent, too little at `--loss 10`.
    if let Some(mid) = vmid {
        for (rid, _, _) in &replays {
            if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(mid, *rid) {
                tx.set_rtx_cache(1024, Duration::from_secs(3), None);
            }
        }
    }
    loop {
        let mut connected = false;
        let mut asked: Vec<Option<Rid>> = Vec::new();
        let Some(timeout) = peer
            .drain(&mut |e: Event| match e {
                Event::Connected => connected = true,
                Event::KeyframeRequest(r) => asked.push(r.rid),
                _ => {}
            })
            .await
        else {
            anyhow::bail!("the publisher's connection failed");
        };
        if connected && start.is_none() {
            start = Some(Instant::now());
        }
        if start.is_some() {
            for (rid, replay, _) in &mut replays {
                let keyframe = asked.iter().any(|a| a.is_none() || *a == *rid);
                let jumped = if keyframe {
                    replay.keyframe_request()
                } else {
                    replay.poll()
                };
                if jumped {
                    stats.keyframes_on_request.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The layer whose next packet is due first.
        let next = start.and_then(|s| {
            replays
                .iter()
                .enumerate()
                .map(|(i, (_, r, _))| (r.due(s), i))
                .min()
        });
        let due = next.map(|(d, _)| d);
        let wake = due.map_or(timeout, |d| timeout.min(d));
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
        if let Some(d) = due
            && now >= d
        {
            if now - d > LATE {
                stats.late_packets.fetch_add(1, Ordering::Relaxed);
            }
            let Some((rid, replay, vseq)) = next.and_then(|(_, i)| replays.get_mut(i)) else {
                continue;
            };
            let p = replay.next();
            let (mid, codec, seq, rid) = match (p.video, vmid) {
                (true, Some(v)) => (Some(v), Codec::H264, vseq, *rid),
                (true, None) => (None, Codec::H264, vseq, None),
                (false, _) => (Some(amid), Codec::Opus, &mut aseq, None),
            };
            if let Some(mid) = mid
                && let Some(pt) = peer.pt(codec)
                && let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(mid, rid)
            {
                tx.write_rtp(
                    RtpWrite::new(pt, (*seq).into(), p.ts, now, p.payload)
                        .marker(p.marker)
                        .nackable(p.video),
                );
                *seq += 1;
                stats.packets.fetch_add(1, Ordering::Relaxed);
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
    fn an_offers_media_sections_are_read_by_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a0\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:d\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v1\r\n";
        assert_eq!(
            offered_mids(sdp),
            vec![
                (Mid::from("a0"), MediaKind::Audio),
                (Mid::from("v1"), MediaKind::Video)
            ]
        );
    }

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
        // STAP-A with an access unit delimiter before the SPS; and one with the AUD alone.
        assert!(is_h264_keyframe(&[0x78, 0, 2, 0x09, 0xf0, 0, 1, 0x67]));
        assert!(!is_h264_keyframe(&[0x78, 0, 2, 0x09, 0xf0]));
        assert!(!is_h264_keyframe(&[0x78, 0, 9, 0x09]));
    }

    #[test]
    fn loss_from_sequence_gaps() {
        let mut t = SeqTrack::default();
        for s in [10, 11, 14] {
            t.see(s, false);
        }
        assert_eq!(t.lost(), 2);
        t.see(12, false);
        assert_eq!(t.lost(), 1, "a late packet is not lost");
        assert_eq!(SeqTrack::default().lost(), 0);
        // Out of order before the first one seen: the range grows back to it.
        let mut early = SeqTrack::default();
        for s in [20, 21, 17, 19, 17] {
            early.see(s, false);
        }
        assert_eq!((early.lost(), early.received), (1, 4), "18 is missing");
        early.see(18, false);
        assert_eq!(early.lost(), 0);
        // Closed: a repair still counts, a new sequence number is not expected any more.
        t.see(16, false);
        assert_eq!(t.lost(), 2);
        t.close();
        t.see(15, false);
        assert_eq!(t.lost(), 1, "a repair after the close");
        t.see(20, false);
        assert_eq!(t.lost(), 1, "nothing after the close is expected");
        // Opened: counting starts after what was seen; repairs of older ones are ignored.
        let mut o = SeqTrack::default();
        for s in [1, 3] {
            o.see(s, false);
        }
        o.open();
        o.open(); // once only
        for s in [2, 5, 4, 6, 8] {
            o.see(s, false);
        }
        assert_eq!(
            (o.first, o.received, o.lost()),
            (Some(4), 4, 1),
            "7 is missing"
        );
        let mut empty = SeqTrack::default();
        empty.close();
        empty.see(5, false);
        assert_eq!((empty.lost(), empty.received), (0, 0));
    }

    #[test]
    fn a_keyframe_is_complete_when_every_packet_to_its_marker_arrived() {
        let mut k = KeyframeAssembly::default();
        // A delta frame first: nothing.
        assert!(!k.see(1, 100, true, false));
        // Keyframe at ts 200: packets 2 (start), 3, 5 (marker); 4 is missing.
        assert!(!k.see(2, 200, false, true));
        assert!(!k.see(3, 200, false, false));
        assert!(!k.see(5, 200, true, false));
        // Another frame's packet does not complete it.
        assert!(!k.see(6, 300, false, false));
        // The resend of 4 does.
        assert!(k.see(4, 200, false, false));
        // A newer keyframe that starts before the old one completed replaces it.
        let mut k = KeyframeAssembly::default();
        assert!(!k.see(10, 400, false, true));
        assert!(!k.see(20, 500, false, true));
        assert!(!k.see(12, 400, true, false));
        assert!(k.see(21, 500, true, false));
    }

    #[test]
    fn a_replay_jumps_to_the_next_keyframe_on_request_keeping_time_continuous() {
        let ms = Duration::from_millis;
        let rec = |video: bool, at: u64, key: bool, marker: bool| Recorded {
            video,
            at: ms(at),
            ts: (at * if video { 90 } else { 48 }) as u32,
            marker,
            key,
            payload: vec![0u8; 10].into(),
        };
        // Keyframes at 0 (two packets) and 1000 ms; deltas at 500 and 1500; audio at 250
        // and 1250.
        let clip = Arc::new(vec![
            rec(true, 0, true, false),
            rec(true, 0, false, true),
            rec(false, 250, false, true),
            rec(true, 500, false, true),
            rec(true, 1000, true, true),
            rec(false, 1250, false, true),
            rec(true, 1500, false, true),
        ]);
        let t0 = Instant::now();
        let mut r = Replay::new(clip, ms(2000));
        assert_eq!(r.next().ts, 0);
        // Mid-frame: the request waits for the frame's end, and a second one joins it.
        assert!(!r.keyframe_request());
        assert!(!r.keyframe_request());
        assert!(!r.poll());
        assert!(r.next().marker);
        assert_eq!(r.due(t0), t0 + ms(250));
        // Served at the frame's end: the next keyframe (1000 ms) goes out when the audio at
        // 250 would have, with the timestamps of 250 ms of wall clock.
        assert!(r.poll());
        assert!(!r.poll(), "served once");
        assert_eq!(r.due(t0), t0 + ms(250));
        let p = r.next();
        assert!(p.video);
        assert_eq!(p.ts, 250 * 90);
        // Audio after it: 1250 ms in the clip, 500 ms of wall clock.
        assert_eq!(r.due(t0), t0 + ms(500));
        assert_eq!(r.next().ts, 500 * 48);
        // Across the end of the clip: the next keyframe is the next lap's first.
        // (From 1500 ms to the next lap's 0 ms: 500 ms more skipped, 1250 in all.)
        assert!(r.keyframe_request());
        assert_eq!(r.due(t0), t0 + ms(750));
        let p = r.next();
        assert!(p.video);
        assert_eq!(p.ts, 750 * 90);
    }

    #[test]
    fn fec_recovers_a_lost_packet_only_when_the_next_one_carries_it() {
        let mut t = SeqTrack::default();
        // 2 lost, 3 carries FEC: recovered. 5 and 6 lost: only 6 (7 carries FEC) recovered.
        // 9 lost, 10 has no FEC: not recovered.
        for (s, fec) in [
            (1, true),
            (3, true),
            (4, true),
            (7, true),
            (8, true),
            (10, false),
        ] {
            t.see(s, fec);
        }
        assert_eq!(t.lost(), 4);
        assert_eq!(t.recovered_by_fec(), 2);
        // The same when the packets have left the window.
        t.see(10 + 2 * SEEN_WINDOW, false);
        assert_eq!(t.recovered_by_fec(), 2);
        assert_eq!(t.fec_recovered, 2, "counted as they left the window");
    }

    #[test]
    fn opus_fec_flag_is_read_from_the_silk_header() {
        // CELT-only (config 31) never carries FEC; nor does an empty packet.
        assert!(!opus_has_fec(&[31 << 3, 0xff, 0xff]));
        assert!(!opus_has_fec(&[]));
        // SILK-only 20 ms mono (config 1). The first byte 0x00 decodes as val = 127 ≥ 64:
        // VAD 0, then (after val -= 64) 63 ≥ 32: LBRR 0.
        assert!(!opus_has_fec(&[1 << 3, 0x00, 0x00, 0x00]));
        // 0xff: val = 0 < 64: VAD 1; 0 < 32: LBRR 1.
        assert!(opus_has_fec(&[1 << 3, 0xff, 0xff, 0xff]));
        // 0x80: val = 63 < 64: VAD 1; then rng 64, s 32, 63 ≥ 32: LBRR 0.
        assert!(!opus_has_fec(&[1 << 3, 0x80, 0x00, 0x00]));
        // 0xC0: val = 31: VAD 1; 31 < 32: LBRR 1.
        assert!(opus_has_fec(&[1 << 3, 0xc0, 0x00, 0x00]));
        // Stereo: the side channel's LBRR flag counts too.
        assert!(opus_has_fec(&[(1 << 3) | 4, 0xff, 0xff, 0xff]));
        // Code 3 (several frames, sizes coded): not read.
        assert!(!opus_has_fec(&[(1 << 3) | 3, 0xff, 0xff, 0xff]));
    }

    #[test]
    fn a_packet_arriving_twice_does_not_hide_a_loss() {
        let mut t = SeqTrack::default();
        for s in [100, 101, 103, 101, 103, 104] {
            t.see(s, false);
        }
        assert_eq!(t.lost(), 1, "102 is lost; 101 and 103 came twice");
        assert_eq!(t.received, 4);
        t.see(102, false);
        t.see(102, false);
        assert_eq!(t.lost(), 0);
        // Far beyond the window, a repeat of an old number is not counted again.
        t.see(104 + SEEN_WINDOW + 10, false);
        t.see(101, false);
        assert_eq!(t.lost(), SEEN_WINDOW + 9);
    }
}
