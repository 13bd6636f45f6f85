//! `rtcroom publish --whip URL --token T`: the broadcast bot over WHIP (RFC 9725) instead of
//! signalling. The same GStreamer pipelines (test pattern and tone, or a file) feed a
//! webrtc-rs peer set up as the engine's uplink; the offer goes to the WHIP endpoint in one
//! POST, and a DELETE on the resource ends the session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rtcroom_actors::media::local::{H264_PT, VP8_PT, opus_capability, video_capability};
use rtcroom_actors::media::peer::{new_peer_connection, poke_nomination, video_feedback};
use rtcroom_pipelines::{LocalConfig, LocalPipeline, MediaKind, SourceKind, VideoTrackConfig};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// How long the peer may take to connect after the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted.
const MAX_ANSWER: usize = 256 * 1024;

/// What the WHIP bot sends.
pub struct WhipPublish {
    /// The WHIP endpoint (`http(s)://host/whip/{sdkAppId}/{userId}?roomId=…`).
    pub url: String,
    /// The bearer token (the user's UserSig).
    pub token: String,
    /// Test pattern and tone, or a file.
    pub source: SourceKind,
    /// Size, frame rate, bitrate.
    pub profile: rtcroom_pipelines::VideoProfile,
    /// H.264 or VP8.
    pub codec: rtcroom_pipelines::VideoCodec,
}

/// An HTTP answer: status, Location, body.
struct HttpAnswer {
    status: u16,
    location: Option<String>,
    body: String,
}

/// One HTTP request with awc on a thread of its own (awc needs an actix system; the bots run
/// on a plain tokio runtime).
async fn http(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> anyhow::Result<HttpAnswer> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rtcroom-whip-http".into())
        .spawn(move || {
            let r = actix_web::rt::System::new().block_on(async move {
                let client = awc::Client::builder().timeout(HTTP_TIMEOUT).finish();
                let method = actix_web::http::Method::from_bytes(method.as_bytes())
                    .map_err(|e| anyhow!("{e}"))?;
                let mut req = client.request(method, &url);
                for (k, v) in headers {
                    req = req.insert_header((k, v));
                }
                let mut resp = req
                    .send_body(body)
                    .await
                    .map_err(|e| anyhow!("{url}: {e}"))?;
                let location = resp
                    .headers()
                    .get(actix_web::http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp
                    .body()
                    .limit(MAX_ANSWER)
                    .await
                    .map_err(|e| anyhow!("{url}: reading the answer: {e}"))?;
                Ok(HttpAnswer {
                    status: resp.status().as_u16(),
                    location,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            });
            let _ = tx.send(r);
        })
        .context("starting the HTTP thread")?;
    rx.await
        .context("the HTTP thread ended without an answer")?
}

/// `location` (absolute, or a path) against the endpoint `url`.
pub fn resolve_location(url: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(url.len());
    if location.starts_with('/') {
        format!("{}{location}", &url[..origin_end])
    } else {
        let base = url.split('?').next().unwrap_or(url);
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{location}")
    }
}

/// The sending peer: one sendonly transceiver per track, the video one narrowed to the codec
/// the pipeline sends (the server answers with the offer's first forwardable codec).
async fn sending_peer(
    codec: rtcroom_pipelines::VideoCodec,
) -> anyhow::Result<(
    Arc<RTCPeerConnection>,
    Arc<TrackLocalStaticRTP>,
    Arc<TrackLocalStaticRTP>,
    Arc<webrtc::rtp_transceiver::rtp_sender::RTCRtpSender>,
)> {
    let pc = new_peer_connection().await?;
    let (video_cap, video_pt): (RTCRtpCodecCapability, u8) = video_capability(codec);
    let video = Arc::new(TrackLocalStaticRTP::new(
        video_cap.clone(),
        "video".into(),
        "rtcroom-whip".into(),
    ));
    let audio = Arc::new(TrackLocalStaticRTP::new(
        opus_capability(),
        "audio".into(),
        "rtcroom-whip".into(),
    ));
    let init = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            send_encodings: vec![],
        })
    };
    let vt = pc
        .add_transceiver_from_track(video.clone() as Arc<dyn TrackLocal + Send + Sync>, init())
        .await?;
    debug_assert!(video_pt == H264_PT || video_pt == VP8_PT);
    vt.set_codec_preferences(vec![RTCRtpCodecParameters {
        capability: RTCRtpCodecCapability {
            rtcp_feedback: video_feedback(),
            ..video_cap
        },
        payload_type: video_pt,
        ..Default::default()
    }])
    .await?;
    pc.add_transceiver_from_track(audio.clone() as Arc<dyn TrackLocal + Send + Sync>, init())
        .await?;
    let sender = vt.sender().await;
    Ok((pc, video, audio, sender))
}

async fn connected(pc: &RTCPeerConnection) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = tx.send(s);
        Box::pin(async {})
    }));
    if pc.connection_state() == RTCPeerConnectionState::Connected {
        return Ok(());
    }
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        while let Some(s) = rx.recv().await {
            match s {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    bail!("the WHIP peer connection {s}")
                }
                _ => {}
            }
        }
        bail!("the WHIP peer connection ended")
    })
    .await
    .map_err(|_| anyhow!("the WHIP peer did not connect within {CONNECT_TIMEOUT:?}"))?
}

/// Publish over WHIP until `done` resolves (or the source ends); then DELETE the resource.
/// Prints progress like the signalling bot.
pub async fn publish(
    p: WhipPublish,
    done: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    rtcroom_server::server::install_crypto_provider();
    let t0 = Instant::now();
    let mut cfg = LocalConfig::new(p.source);
    cfg.video = Some(VideoTrackConfig {
        codec: p.codec,
        profile: p.profile,
        encoder: None,
    });
    // Blocking GStreamer calls off the runtime's threads (DEVELOPERS.md).
    let (local, mut out) = tokio::task::spawn_blocking(move || LocalPipeline::start(cfg))
        .await
        .context("the pipeline thread")??;
    let (pc, video, audio, video_sender) = sending_peer(p.codec).await?;
    let keyframes = local.encoder_control();
    tokio::spawn(async move {
        while let Ok((pkts, _)) = video_sender.read_rtcp().await {
            for pkt in pkts {
                let any = pkt.as_any();
                if any
                    .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                    .is_some()
                    || any
                        .downcast_ref::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
                        .is_some()
                {
                    keyframes.request_keyframe();
                }
            }
        }
    });

    // The server is ICE-lite and learns our address from our checks: no need to wait for
    // gathering before sending the offer.
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let offer = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description after setting it"))?
        .sdp;
    let r = http(
        "POST",
        p.url.clone(),
        vec![
            ("Content-Type", "application/sdp".to_owned()),
            ("Authorization", format!("Bearer {}", p.token)),
        ],
        offer,
    )
    .await?;
    if r.status != 201 {
        bail!("WHIP endpoint answered {}: {}", r.status, r.body.trim());
    }
    let resource = r
        .location
        .as_deref()
        .map(|l| resolve_location(&p.url, l))
        .ok_or_else(|| anyhow!("the WHIP answer has no Location"))?;
    pc.set_remote_description(RTCSessionDescription::answer(r.body.clone())?)
        .await?;
    tokio::spawn(poke_nomination(pc.clone(), r.body));
    let published = async {
        connected(&pc).await?;
        println!(
            "publishing over WHIP at {resource} (connected in {:.1} ms)",
            t0.elapsed().as_secs_f64() * 1e3
        );
        let started = Instant::now();
        let mut progress = tokio::time::interval(Duration::from_secs(2));
        let (mut packets, mut bytes) = (0u64, 0u64);
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = &mut done => break,
                _ = progress.tick() => println!(
                    "[{:>6.1} s] {:?}, {packets} packets, {} kB sent",
                    started.elapsed().as_secs_f64(),
                    pc.connection_state(),
                    bytes / 1000
                ),
                pkt = out.rtp.recv() => {
                    let Some(pkt) = pkt else { break };
                    let track = match pkt.kind() {
                        MediaKind::Video => &video,
                        MediaKind::Audio => &audio,
                    };
                    packets += 1;
                    bytes += pkt.data.len() as u64;
                    let _ = track.write(&pkt.data).await;
                }
            }
            if matches!(
                pc.connection_state(),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            ) {
                bail!("the WHIP peer connection {}", pc.connection_state());
            }
        }
        anyhow::Ok(started.elapsed())
    }
    .await;
    // End the session whatever happened: the server frees the member at once.
    let deleted = http("DELETE", resource.clone(), Vec::new(), String::new()).await;
    let _ = pc.close().await;
    drop(local);
    let ran = published?;
    match deleted {
        Ok(d) if d.status == 200 || d.status == 204 => {}
        Ok(d) => eprintln!("DELETE {resource}: {} {}", d.status, d.body.trim()),
        Err(e) => eprintln!("DELETE {resource}: {e:#}"),
    }
    println!("stopped after {:.1} s", ran.as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_endpoint() {
        let url = "http://127.0.0.1:7900/whip/1400000000/bot?roomId=1";
        assert_eq!(
            resolve_location(url, "/whip/resource/ab"),
            "http://127.0.0.1:7900/whip/resource/ab"
        );
        assert_eq!(
            resolve_location(url, "https://other/r/1"),
            "https://other/r/1"
        );
        assert_eq!(
            resolve_location(url, "resource/ab"),
            "http://127.0.0.1:7900/whip/1400000000/resource/ab"
        );
    }
}
