//! What the SFU reads from and changes in SDP text around str0m, so that any standards-following
//! client (browsers, webrtc-rs, GStreamer webrtcbin) gets an answer it can use:
//!
//! - [`prepare_offer`]: the server is ICE-lite and learns each client's address from its
//!   connectivity checks, so it needs none of the offer's candidates. They are removed before
//!   str0m reads the offer: an offer with mDNS (`.local`) host names, TCP candidates, trickled
//!   candidates or none at all is accepted the same way. Simulcast (`a=simulcast`, `a=rid`,
//!   `a=ssrc-group:SIM`) is kept only for a publish that names its layers ([`check_layers`]);
//!   otherwise it is removed too, so the answer declines it and a browser sends one layer:
//!   never several unnamed layers mixed into one stream.
//! - [`parse_media`]: the offer's audio/video m-lines with their codecs in the offer's order.
//! - [`choose_publish_codec`]: the one video codec a publisher is answered with.
//! - [`unify_msid`]: one `msid` stream id for every track of a subscription, so a browser's
//!   `ontrack` sees audio and video in one `MediaStream` (and lip-syncs them).

use rtcroom_protocol::signal::{MAX_LAYERS, MediaKind, VideoCodec, VideoLayer};

/// One codec of an m-line (`a=rtpmap` plus `a=fmtp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedCodec {
    /// Payload type.
    pub pt: u8,
    /// Encoding name, upper case (`H264`, `VP8`, `OPUS`, `RTX`, ...).
    pub name: String,
    /// `packetization-mode` (H.264), 0 when absent (RFC 6184).
    pub packetization_mode: u8,
    /// `profile-level-id` (H.264), when given.
    pub profile_level_id: Option<u32>,
    /// `apt` (RTX): the payload type this one repairs.
    pub apt: Option<u8>,
}

impl OfferedCodec {
    /// The profile_idc byte of an H.264 `profile-level-id` (0x42 for baseline and
    /// constrained baseline); baseline when absent (RFC 6184's default, 420010).
    pub fn h264_profile_idc(&self) -> u8 {
        self.profile_level_id.map_or(0x42, |p| (p >> 16) as u8)
    }

    /// Whether this is a video codec the SFU forwards: VP8, or H.264 in packetization mode 1
    /// and the (constrained) baseline profile, which every WebRTC stack decodes.
    pub fn video_codec(&self) -> Option<VideoCodec> {
        match self.name.as_str() {
            "VP8" => Some(VideoCodec::Vp8),
            "H264" if self.packetization_mode == 1 && self.h264_profile_idc() == 0x42 => {
                Some(VideoCodec::H264)
            }
            _ => None,
        }
    }
}

/// The video format a publisher sends, as answered: the codec and, for the publisher's own
/// m-line, its payload types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoFormat {
    /// The codec.
    pub codec: VideoCodec,
    /// Its payload type in the publisher's offer.
    pub pt: u8,
    /// The RTX payload type repairing it, when offered.
    pub rtx: Option<u8>,
    /// H.264's `profile-level-id`, when given.
    pub profile_level_id: Option<u32>,
}

/// An audio or video m-line of an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSection {
    /// Audio or video.
    pub kind: MediaKind,
    /// `a=mid`.
    pub mid: String,
    /// The offerer receives on it (sendrecv / recvonly, or no direction attribute).
    pub receives: bool,
    /// The offerer sends on it (sendrecv / sendonly, or no direction attribute).
    pub sends: bool,
    /// Codecs in the offer's order of preference.
    pub codecs: Vec<OfferedCodec>,
}

impl MediaSection {
    /// The first codec of `codec`'s kind in this section (VP8, or a baseline H.264 in
    /// packetization mode 1).
    pub fn first_of(&self, codec: VideoCodec) -> Option<&OfferedCodec> {
        self.codecs.iter().find(|c| c.video_codec() == Some(codec))
    }

    /// The RTX payload type that repairs `pt`, when offered.
    pub fn rtx_for(&self, pt: u8) -> Option<u8> {
        self.codecs
            .iter()
            .find(|c| c.name == "RTX" && c.apt == Some(pt))
            .map(|c| c.pt)
    }
}

fn is_dropped_attribute(line: &str) -> bool {
    const DROPPED: [&str; 4] = [
        "a=candidate:",
        "a=end-of-candidates",
        "a=simulcast:",
        "a=rid:",
    ];
    DROPPED.iter().any(|p| line.starts_with(p)) || line.starts_with("a=ssrc-group:SIM")
}

/// The offer without its ICE candidates and, unless `simulcast`, without simulcast (see the
/// module docs). Line endings become CRLF.
pub fn prepare_offer(sdp: &str, simulcast: bool) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let line = line.trim_end();
        let candidate = line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates");
        if line.is_empty() || (candidate || (!simulcast && is_dropped_attribute(line))) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// The rids an offer's m-lines send as simulcast layers (`a=simulcast:send`, alternatives
/// and paused `~` marks flattened), in the offer's order.
pub fn simulcast_send_rids(sdp: &str) -> Vec<String> {
    let mut rids = Vec::new();
    for line in sdp.lines() {
        let Some(rest) = line.trim_end().strip_prefix("a=simulcast:") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        while let Some(dir) = words.next() {
            let Some(list) = words.next() else {
                break;
            };
            if dir != "send" {
                continue;
            }
            for rid in list.split([';', ',']) {
                let rid = rid.trim_start_matches('~');
                if !rid.is_empty() && !rids.iter().any(|r| r == rid) {
                    rids.push(rid.to_owned());
                }
            }
        }
    }
    rids
}

/// A publish's simulcast `layers` checked against its offer and ordered smallest first (by
/// bitrate, then size): at most [`MAX_LAYERS`], each valid, distinct, and sent by the offer.
/// No layers, or one: no simulcast (an empty list).
pub fn check_layers(sdp: &str, layers: &[VideoLayer]) -> Result<Vec<VideoLayer>, String> {
    if layers.len() <= 1 {
        return Ok(Vec::new());
    }
    if layers.len() > MAX_LAYERS {
        return Err(format!("at most {MAX_LAYERS} simulcast layers"));
    }
    let sent = simulcast_send_rids(sdp);
    for (i, layer) in layers.iter().enumerate() {
        layer.validate()?;
        if layers[..i].iter().any(|l| l.rid == layer.rid) {
            return Err(format!("layer rid {:?} is named twice", layer.rid));
        }
        if !sent.contains(&layer.rid) {
            return Err(format!(
                "layer rid {:?} is not in the offer's a=simulcast:send (it has {sent:?})",
                layer.rid
            ));
        }
    }
    let mut sorted = layers.to_vec();
    sorted.sort_by_key(|l| (l.bitrate_kbps, l.width * l.height));
    Ok(sorted)
}

/// Whether the offer asks for simulcast (which the answer declines).
pub fn has_simulcast(sdp: &str) -> bool {
    sdp.lines()
        .any(|l| l.starts_with("a=simulcast:") || l.starts_with("a=ssrc-group:SIM"))
}

fn parse_fmtp(params: &str, codec: &mut OfferedCodec) {
    for kv in params.split(';') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k.trim() {
            "packetization-mode" => codec.packetization_mode = v.trim().parse().unwrap_or(0),
            "profile-level-id" => codec.profile_level_id = u32::from_str_radix(v.trim(), 16).ok(),
            "apt" => codec.apt = v.trim().parse().ok(),
            _ => {}
        }
    }
}

/// The audio and video m-lines of an SDP that are not rejected (port 0) and have a mid, with
/// their codecs in the m-line's order. Anything it cannot read is skipped.
pub fn parse_media(sdp: &str) -> Vec<MediaSection> {
    struct Building {
        section: MediaSection,
        order: Vec<u8>,
        has_mid: bool,
        port_ok: bool,
    }
    fn finish(b: Option<Building>, out: &mut Vec<MediaSection>) {
        let Some(mut b) = b else { return };
        if !b.has_mid || !b.port_ok {
            return;
        }
        // Codecs in the m-line's payload order (rtpmap lines may come in any order).
        let mut codecs = Vec::with_capacity(b.order.len());
        for pt in &b.order {
            if let Some(i) = b.section.codecs.iter().position(|c| c.pt == *pt) {
                codecs.push(b.section.codecs.swap_remove(i));
            }
        }
        b.section.codecs = codecs;
        out.push(b.section);
    }
    let mut out = Vec::new();
    let mut current: Option<Building> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            finish(current.take(), &mut out);
            let mut parts = rest.split_whitespace();
            let kind = match parts.next() {
                Some("audio") => MediaKind::Audio,
                Some("video") => MediaKind::Video,
                _ => continue,
            };
            let port_ok = parts.next().is_some_and(|p| p != "0");
            let _proto = parts.next();
            let order = parts.filter_map(|p| p.parse().ok()).collect();
            current = Some(Building {
                section: MediaSection {
                    kind,
                    mid: String::new(),
                    // Without a direction attribute an m-line is sendrecv.
                    receives: true,
                    sends: true,
                    codecs: Vec::new(),
                },
                order,
                has_mid: false,
                port_ok,
            });
            continue;
        }
        let Some(b) = current.as_mut() else { continue };
        let s = &mut b.section;
        if let Some(m) = line.strip_prefix("a=mid:") {
            s.mid = m.trim().to_owned();
            b.has_mid = !s.mid.is_empty();
        } else if line == "a=sendonly" {
            (s.sends, s.receives) = (true, false);
        } else if line == "a=recvonly" {
            (s.sends, s.receives) = (false, true);
        } else if line == "a=inactive" {
            (s.sends, s.receives) = (false, false);
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut it = rest.splitn(2, ' ');
            let (Some(pt), Some(enc)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pt) = pt.parse::<u8>() else { continue };
            let name = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
            match s.codecs.iter_mut().find(|c| c.pt == pt) {
                Some(c) => c.name = name,
                None => s.codecs.push(OfferedCodec {
                    pt,
                    name,
                    packetization_mode: 0,
                    profile_level_id: None,
                    apt: None,
                }),
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let (pt, params) = rest.split_once(' ').unwrap_or((rest, ""));
            let Ok(pt) = pt.parse::<u8>() else { continue };
            let codec = match s.codecs.iter_mut().position(|c| c.pt == pt) {
                Some(i) => &mut s.codecs[i],
                None => {
                    // fmtp before its rtpmap: keep the parameters until the name comes.
                    s.codecs.push(OfferedCodec {
                        pt,
                        name: String::new(),
                        packetization_mode: 0,
                        profile_level_id: None,
                        apt: None,
                    });
                    let last = s.codecs.len() - 1;
                    &mut s.codecs[last]
                }
            };
            parse_fmtp(params, codec);
        }
    }
    finish(current.take(), &mut out);
    out
}

/// The video codec a publisher's offer is answered with: the first codec of its first sending
/// video m-line that the SFU forwards (so the publisher chooses by ordering its offer, e.g.
/// with `setCodecPreferences`). Within H.264 the offer's order is kept too; a baseline or
/// constrained-baseline profile in packetization mode 1 is required. `Ok(None)` when the offer
/// sends no video; `Err` lists what it offered when none of it can be forwarded.
pub fn choose_publish_codec(media: &[MediaSection]) -> Result<Option<VideoFormat>, String> {
    let Some(video) = media.iter().find(|m| m.kind == MediaKind::Video && m.sends) else {
        return Ok(None);
    };
    if let Some((c, codec)) = video
        .codecs
        .iter()
        .find_map(|c| c.video_codec().map(|v| (c, v)))
    {
        return Ok(Some(VideoFormat {
            codec,
            pt: c.pt,
            rtx: video.rtx_for(c.pt),
            profile_level_id: c.profile_level_id,
        }));
    }
    let mut offered: Vec<&str> = video
        .codecs
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !matches!(*n, "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03" | ""))
        .collect();
    offered.dedup();
    Err(format!(
        "the offer's video codecs ({}) include none this server forwards: VP8, or H.264 \
         with packetization-mode=1 in the baseline or constrained-baseline profile",
        if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join(", ")
        }
    ))
}

/// The primary payload type of each audio/video m-line of an answer (the first on its `m=`
/// line), by mid.
pub fn answer_pts(answer: &str) -> Vec<(String, u8)> {
    let mut out = Vec::new();
    let mut pt: Option<u8> = None;
    for line in answer.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            let mut parts = rest.split_whitespace();
            let av = matches!(parts.next(), Some("audio" | "video"));
            let port_ok = parts.next().is_some_and(|p| p != "0");
            let _proto = parts.next();
            pt = (av && port_ok)
                .then(|| parts.next().and_then(|p| p.parse().ok()))
                .flatten();
        } else if let (Some(m), Some(p)) = (line.strip_prefix("a=mid:"), pt) {
            out.push((m.trim().to_owned(), p));
        }
    }
    out
}

/// A token usable as an msid stream id (RFC 8830: 1–64 token characters) for a published
/// stream: `<userId>_<main|auxiliary>`. User ids are `[A-Za-z0-9_-]`, all token characters.
pub fn stream_msid(user_id: &str, stream_type: &str) -> String {
    let mut id: String = format!("{user_id}_{stream_type}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    id.truncate(64);
    id
}

/// The answer with every `a=msid` (and `a=ssrc:N msid:`) stream id, and the session's
/// `a=msid-semantic`, set to `stream_id`: the tracks of one subscription form one stream.
pub fn unify_msid(answer: &str, stream_id: &str) -> String {
    let mut out = String::with_capacity(answer.len() + 64);
    for line in answer.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("a=msid:") {
            let track = rest.split_once(' ').map_or(rest, |(_, t)| t);
            out.push_str(&format!("a=msid:{stream_id} {track}"));
        } else if line.starts_with("a=msid-semantic:") {
            out.push_str(&format!("a=msid-semantic: WMS {stream_id}"));
        } else if let Some((head, value)) = line
            .strip_prefix("a=ssrc:")
            .and_then(|r| r.split_once(" msid:"))
        {
            let track = value.split_once(' ').map_or(value, |(_, t)| t);
            out.push_str(&format!("a=ssrc:{head} msid:{stream_id} {track}"));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed Chromium publish offer: VP8 first (Chromium's default order), several H.264
    /// profiles, simulcast, an mDNS candidate.
    const CHROME_OFFER: &str = "v=0\r\n\
        o=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1\r\na=msid-semantic: WMS s1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\n\
        a=candidate:1 1 udp 2113937151 3f2a.local 50000 typ host\r\n\
        a=end-of-candidates\r\n\
        a=mid:0\r\na=sendonly\r\na=msid:s1 a1\r\n\
        a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:63 red/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 127 108 109\r\nc=IN IP4 0.0.0.0\r\n\
        a=mid:1\r\na=sendonly\r\na=msid:s1 v1\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
        a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
        a=rtpmap:127 H264/90000\r\n\
        a=rtpmap:108 H264/90000\r\n\
        a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f\r\n\
        a=rtpmap:109 rtx/90000\r\na=fmtp:109 apt=108\r\n\
        a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n";

    #[test]
    fn offers_lose_candidates_and_simulcast_only() {
        assert!(has_simulcast(CHROME_OFFER));
        let p = prepare_offer(CHROME_OFFER, false);
        assert!(!has_simulcast(&p));
        for gone in ["a=candidate", "end-of-candidates", "a=rid:", "a=simulcast"] {
            assert!(!p.contains(gone), "{gone} left in {p}");
        }
        let kept = CHROME_OFFER.lines().count() - p.lines().count();
        assert_eq!(kept, 5, "exactly the five dropped lines go");
        assert!(p.contains("a=rtpmap:102 H264/90000\r\n"));
        assert!(p.ends_with("\r\n"));
        assert!(!p.contains("\r\n\r\n"));
    }

    fn layer(rid: &str, kbps: u32) -> VideoLayer {
        VideoLayer {
            rid: rid.into(),
            width: 640,
            height: 360,
            bitrate_kbps: kbps,
        }
    }

    #[test]
    fn a_publish_that_names_its_layers_keeps_simulcast() {
        let p = prepare_offer(CHROME_OFFER, true);
        assert!(has_simulcast(&p));
        assert!(!p.contains("a=candidate") && !p.contains("end-of-candidates"));
        assert!(p.contains("a=rid:h send\r\n") && p.contains("a=simulcast:send h;l\r\n"));
        assert_eq!(simulcast_send_rids(CHROME_OFFER), ["h", "l"]);
        // Alternatives, paused layers, a receive direction and a repeated rid.
        let odd = "a=simulcast:send ~q;h,f recv r\r\na=simulcast:send h\r\n";
        assert_eq!(simulcast_send_rids(odd), ["q", "h", "f"]);
        // Ordered smallest first whatever the request's order.
        let layers = check_layers(CHROME_OFFER, &[layer("h", 900), layer("l", 150)]).unwrap();
        let rids: Vec<&str> = layers.iter().map(|l| l.rid.as_str()).collect();
        assert_eq!(rids, ["l", "h"]);
        // One layer or none: no simulcast.
        assert!(
            check_layers(CHROME_OFFER, &[layer("h", 900)])
                .unwrap()
                .is_empty()
        );
        assert!(check_layers(CHROME_OFFER, &[]).unwrap().is_empty());
        // Refused: a rid the offer does not send, twice the same, a bad rid, zero bitrate,
        // too many.
        for bad in [
            vec![layer("h", 900), layer("m", 300)],
            vec![layer("h", 900), layer("h", 300)],
            vec![layer("h", 900), layer("l l", 300)],
            vec![layer("h", 900), layer("l", 0)],
            vec![layer("h", 1), layer("l", 2), layer("h", 3), layer("l", 4)],
        ] {
            assert!(check_layers(CHROME_OFFER, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_sections_keep_the_offers_codec_order() {
        let m = parse_media(CHROME_OFFER);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind, m[0].mid.as_str()), (MediaKind::Audio, "0"));
        assert!(m[0].sends && !m[0].receives);
        let names: Vec<(u8, &str)> = m[1]
            .codecs
            .iter()
            .map(|c| (c.pt, c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (96, "VP8"),
                (97, "RTX"),
                (102, "H264"),
                (103, "RTX"),
                (127, "H264"),
                (108, "H264"),
                (109, "RTX")
            ]
        );
        assert_eq!(m[1].codecs[4].packetization_mode, 0, "fmtp before rtpmap");
        assert_eq!(m[1].codecs[5].h264_profile_idc(), 0x64);
        assert_eq!(m[1].first_of(VideoCodec::H264).map(|c| c.pt), Some(102));
        assert_eq!(m[1].first_of(VideoCodec::Vp8).map(|c| c.pt), Some(96));
        assert_eq!(m[1].rtx_for(102), Some(103));
        assert_eq!(m[1].rtx_for(127), None);
    }

    #[test]
    fn the_publisher_chooses_by_order() {
        let m = parse_media(CHROME_OFFER);
        assert_eq!(
            choose_publish_codec(&m).unwrap(),
            Some(VideoFormat {
                codec: VideoCodec::Vp8,
                pt: 96,
                rtx: Some(97),
                profile_level_id: None
            })
        );
        // H.264 first: its first baseline, packetization-mode 1 entry.
        let h264_first = CHROME_OFFER.replace(
            "SAVPF 96 97 102 103 127 108 109",
            "SAVPF 127 108 102 103 96 97 109",
        );
        let c = choose_publish_codec(&parse_media(&h264_first))
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            VideoFormat {
                codec: VideoCodec::H264,
                pt: 102,
                rtx: Some(103),
                profile_level_id: Some(0x42001f)
            }
        );
        // Audio only.
        let audio_only: String = CHROME_OFFER.split("m=video").next().unwrap().to_owned();
        assert_eq!(choose_publish_codec(&parse_media(&audio_only)), Ok(None));
        // Nothing usable: the error names what was offered.
        let vp9 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98 99 108\r\na=mid:0\r\na=sendonly\r\n\
                   a=rtpmap:98 VP9/90000\r\na=rtpmap:99 rtx/90000\r\na=rtpmap:108 H264/90000\r\n\
                   a=fmtp:108 packetization-mode=1;profile-level-id=640c1f\r\n";
        let e = choose_publish_codec(&parse_media(vp9)).unwrap_err();
        assert!(e.contains("VP9, H264"), "{e}");
        // A receiving-only video m-line is not a publication.
        let recv = CHROME_OFFER.replace("a=mid:1\r\na=sendonly", "a=mid:1\r\na=recvonly");
        assert_eq!(choose_publish_codec(&parse_media(&recv)), Ok(None));
    }

    #[test]
    fn rejected_and_unnamed_sections_are_skipped() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=recvonly\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\n\
                   m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:3\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        let m = parse_media(sdp);
        let got: Vec<(MediaKind, &str, bool, bool)> = m
            .iter()
            .map(|s| (s.kind, s.mid.as_str(), s.sends, s.receives))
            .collect();
        assert_eq!(
            got,
            [
                (MediaKind::Video, "0", false, true),
                (MediaKind::Audio, "1", true, false)
            ]
        );
        assert!(parse_media("garbage").is_empty());
        assert!(parse_media("m=video\r\na=rtpmap:x y\r\na=fmtp:\r\n").is_empty());
    }

    #[test]
    fn answers_get_one_stream_id() {
        let answer = "v=0\r\na=msid-semantic: WMS abc def\r\n\
                      m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:abc t1\r\n\
                      a=ssrc:11 cname:x\r\na=ssrc:11 msid:abc t1\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 102 103\r\na=mid:1\r\na=msid:def t2\r\n\
                      a=ssrc:22 msid:def t2\r\na=ssrc:23 msid:def t2\r\n";
        let sid = stream_msid("alice", "main");
        assert_eq!(sid, "alice_main");
        let out = unify_msid(answer, &sid);
        assert!(out.contains("a=msid-semantic: WMS alice_main\r\n"));
        assert!(out.contains("a=msid:alice_main t1\r\n"));
        assert!(out.contains("a=msid:alice_main t2\r\n"));
        assert!(out.contains("a=ssrc:11 msid:alice_main t1\r\n"));
        assert!(out.contains("a=ssrc:23 msid:alice_main t2\r\n"));
        assert!(out.contains("a=ssrc:11 cname:x\r\n"));
        assert!(!out.contains("abc") && !out.contains("def"));
        assert_eq!(
            answer_pts(&out),
            [("0".to_owned(), 111), ("1".to_owned(), 102)]
        );
        assert_eq!(stream_msid(&"x".repeat(70), "main").len(), 64);
    }
}
