//! Node-to-node media pipes end to end on loopback: two media planes (an origin and an edge),
//! a webrtc-rs publisher on the origin, a webrtc-rs subscriber on the edge, and the origin's
//! pipe out carried into the edge's pipe in through the wire form
//! (`encode_pipe_frame` / `decode_pipe_frame`), keyframe requests carried back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::peer::{self, Publisher};
use rtcroom_protocol::signal::{MediaKind, StreamType, VideoCodec};
use rtcroom_protocol::{RoomId, UserId};
use rtcroom_server::media::{
    MediaConfig, MediaEvent, MediaPlane, PeerCloseReason, PipeFormat, PipePacket, SlotKey,
    decode_pipe_frame, encode_pipe_frame,
};
use rtcroom_server::room::RoomKey;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_local::TrackLocalWriter;

/// Every wait here is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

fn slot(user: &str) -> SlotKey {
    SlotKey {
        room: RoomKey {
            sdk_app_id: 1400000001,
            room_id: RoomId::numeric(77).unwrap(),
        },
        user: UserId::new(user).unwrap(),
        stream_type: StreamType::Main,
    }
}

fn plane(workers: usize) -> MediaPlane {
    MediaPlane::start(&MediaConfig {
        workers,
        ..Default::default()
    })
    .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !cond() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        tick.tick().await;
    }
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>, what: &str) -> Option<T> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn next_closed(events: &mut mpsc::Receiver<MediaEvent>) -> (u64, PeerCloseReason) {
    loop {
        if let MediaEvent::PeerClosed { peer, reason } = recv(events, "a peer-closed event")
            .await
            .expect("the events stay open")
        {
            return (peer, reason);
        }
    }
}

/// What the edge's subscriber received.
#[derive(Default)]
struct Received {
    video: AtomicU64,
    audio: AtomicU64,
    keyframes: AtomicU64,
    /// Video packets from its first keyframe on.
    after_keyframe: AtomicU64,
}

/// A publisher of synthetic H.264 (one single-NAL packet per frame: an IDR when a keyframe
/// was asked for since the last one, else a delta frame) and Opus-shaped audio, every 10 ms
/// until `stop`. Returns the keyframes it sent.
fn send_media(
    publisher: Arc<Publisher>,
    wanted: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut keyframes = 0;
        let mut seq = 0u16;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            seq = seq.wrapping_add(1);
            let key = wanted.swap(false, Ordering::Relaxed);
            keyframes += u64::from(key);
            let video = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: true,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 3000,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(if key {
                    &[0x65, 0x88, 0x84, 0x00, 0x33]
                } else {
                    &[0x41, 0x9a, 0x02, 0x00, 0x33]
                }),
            };
            let audio = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 480,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            };
            let _ = publisher.video.write_rtp(&video).await;
            let _ = publisher.audio.write_rtp(&audio).await;
        }
        keyframes
    })
}

/// A publisher on the origin, piped to the edge (through the wire form), reaches a subscriber
/// there: the edge's new subscriber's keyframe request comes out of the edge's pipe, goes to
/// the origin's publisher, and the subscriber gets the keyframe and the video after it. The
/// pipe out exists before anybody publishes. Closing everything leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_piped_to_another_node_reaches_its_subscribers_and_keyframes_come_back() {
    rtcroom_server::server::install_crypto_provider();
    // Two workers each, so the pipes and the peers sit on different workers.
    let (origin, edge) = (plane(2), plane(2));
    let (origin_events, edge_events) = (origin.take_events(), edge.take_events());
    let slot = slot("alice");

    // The pipe out before any publisher: no format yet.
    let (pipe_tx, mut pipe_rx) = mpsc::channel::<PipePacket>(1024);
    let pipe_out = origin
        .pipe_out(slot.clone(), pipe_tx)
        .await
        .expect("pipe out");
    assert_eq!(origin.pipe_format(&slot), None);

    let publisher = Arc::new(Publisher::new().await);
    let wanted = Arc::new(AtomicBool::new(false));
    let plis = Arc::new(AtomicU64::new(0));
    let (w, p) = (wanted.clone(), plis.clone());
    publisher.on_keyframe_request(move || {
        p.fetch_add(1, Ordering::Relaxed);
        w.store(true, Ordering::Relaxed);
    });
    let offer = peer::full_offer(&publisher.pc).await;
    let published = origin
        .publish(slot.clone(), &offer, &[])
        .await
        .expect("publish");
    peer::apply_answer(&publisher.pc, published.answer).await;
    assert!(
        peer::connected(&publisher.pc, DEADLINE).await,
        "publisher connects"
    );
    let format = origin.pipe_format(&slot).expect("the slot's format");
    assert_eq!(format.video.map(|v| v.codec), Some(VideoCodec::H264));
    assert!(format.layers.is_empty());
    // The format travels as the caller likes (serde).
    let json = serde_json::to_string(&format).unwrap();
    assert_eq!(serde_json::from_str::<PipeFormat>(&json).unwrap(), format);

    // The edge: the slot published from the pipe; the link between the nodes is this task.
    let (kf_tx, mut kf_rx) = mpsc::channel::<Option<u8>>(16);
    let pipe_in = edge
        .pipe_in(slot.clone(), format, kf_tx)
        .await
        .expect("pipe in");
    let link = {
        let pipe_in = pipe_in.clone();
        tokio::spawn(async move {
            let (mut audio, mut video) = (0u64, 0u64);
            while let Some(p) = pipe_rx.recv().await {
                match p.kind {
                    MediaKind::Audio => audio += 1,
                    MediaKind::Video => video += 1,
                }
                assert_eq!(p.layers, 1);
                let frame = encode_pipe_frame(7, &p);
                let (tag, q) = decode_pipe_frame(&frame).expect("a frame we encoded decodes");
                assert_eq!((tag, &q), (7, &p));
                pipe_in.send(q);
            }
            (audio, video)
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_media(publisher.clone(), wanted.clone(), stop.clone());

    // The pipe out asked for a keyframe (its first video was a delta frame).
    wait_for("the pipe out's keyframe request at the publisher", || {
        plis.load(Ordering::Relaxed) >= 1
    })
    .await;
    wait_for("the piped packets on the edge", || {
        edge.stats().packets_in.load(Ordering::Relaxed) >= 20
    })
    .await;
    // Nobody watches on the edge yet: nothing asked of the origin.
    assert!(kf_rx.try_recv().is_err(), "no keyframe request yet");

    // A subscriber on the edge.
    let received = Arc::new(Received::default());
    let r = received.clone();
    let pc = peer::subscriber(Arc::new(move |kind, rtp| match kind {
        RTPCodecType::Video => {
            r.video.fetch_add(1, Ordering::Relaxed);
            if peer::is_h264_keyframe(&rtp) {
                r.keyframes.fetch_add(1, Ordering::Relaxed);
            }
            if r.keyframes.load(Ordering::Relaxed) > 0 {
                r.after_keyframe.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            r.audio.fetch_add(1, Ordering::Relaxed);
        }
    }))
    .await;
    let offer = peer::full_offer(&pc).await;
    let (sub, answer) = edge
        .subscribe(slot.clone(), true, true, &offer, Default::default())
        .await
        .expect("subscribe on the edge");
    peer::apply_answer(&pc, answer).await;

    // Its keyframe request comes out of the edge (of every layer), for the origin.
    let layer = recv(&mut kf_rx, "the edge's keyframe request")
        .await
        .expect("the pipe in is open");
    assert_eq!(layer, None);
    let before = plis.load(Ordering::Relaxed);
    origin.request_keyframe_layer(&slot, layer);
    wait_for("the edge's keyframe request at the publisher", || {
        plis.load(Ordering::Relaxed) > before
    })
    .await;

    assert!(
        peer::connected(&pc, DEADLINE).await,
        "the edge's subscriber connects"
    );
    wait_for("a keyframe and the video after it on the edge", || {
        received.keyframes.load(Ordering::Relaxed) >= 1
            && received.after_keyframe.load(Ordering::Relaxed) >= 20
            && received.audio.load(Ordering::Relaxed) >= 20
    })
    .await;
    assert_eq!(origin.stats().pipe_drops.load(Ordering::Relaxed), 0);
    assert_eq!(edge.stats().pipe_drops.load(Ordering::Relaxed), 0);

    // Close: the edge's pipe in (its keyframe channel closes), the subscriber, the origin's
    // pipe out (its channel closes: the link ends), the publisher.
    stop.store(true, Ordering::Relaxed);
    let keyframes_sent = sender.await.unwrap();
    assert!(keyframes_sent >= 2, "{keyframes_sent} keyframes");
    edge.unpublish(&slot, pipe_in.peer());
    while recv(&mut kf_rx, "the keyframe channel to close")
        .await
        .is_some()
    {}
    edge.close_peer(sub);
    origin.close_peer(pipe_out);
    let (audio, video) = tokio::time::timeout(DEADLINE, link)
        .await
        .expect("the link ends when the pipe out closes")
        .unwrap();
    assert!(
        audio >= 20 && video >= 20,
        "piped {audio} audio, {video} video"
    );
    origin.unpublish(&slot, published.peer);
    for (name, p) in [("origin", &origin), ("edge", &edge)] {
        wait_for(&format!("the {name} to release everything"), || {
            p.interned_slots() == 0 && p.stats().peers.load(Ordering::Relaxed) == 0
        })
        .await;
    }
    // Closed on request: no events.
    for mut events in [origin_events, edge_events].into_iter().flatten() {
        assert!(events.try_recv().is_err(), "no event for requested closes");
    }
    origin.shutdown();
    edge.shutdown();
}

fn packet(kind: MediaKind, seq: u64, payload: &'static [u8]) -> PipePacket {
    let video = kind == MediaKind::Video;
    PipePacket {
        kind,
        codec: video.then_some(VideoCodec::Vp8),
        source: 0xabcd_0000_1234,
        seq,
        ts: seq as u32 * 10,
        marker: video,
        clock_rate: if video { 90_000 } else { 48_000 },
        layer: 0,
        layers: 1,
        payload: Arc::from(payload),
    }
}

/// Pipes on one plane, no WebRTC: a pipe in's packets come out of a pipe out of the same slot
/// (on another worker) as they went in; its first delta frame asks for the pipe out's
/// keyframe; muted video is not piped; a pipe out whose receiver is gone closes on its own;
/// a worker fault closes its pipes with an event, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_in_and_out_of_one_plane_and_how_they_close() {
    let plane = plane(2);
    let mut events = plane.take_events().unwrap();
    let slot = slot("bob");
    let (kf_tx, mut kf_rx) = mpsc::channel(16);
    // Worker 0: the pipe in; worker 1: the pipe out.
    let pipe_in = plane
        .pipe_in(
            slot.clone(),
            PipeFormat {
                video: None,
                layers: Vec::new(),
            },
            kf_tx,
        )
        .await
        .unwrap();
    assert_eq!(
        plane.pipe_format(&slot),
        Some(PipeFormat {
            video: None,
            layers: Vec::new()
        })
    );
    let (tx, mut rx) = mpsc::channel(64);
    let out = plane.pipe_out(slot.clone(), tx).await.unwrap();
    assert_ne!(out & 0xff, pipe_in.peer() & 0xff, "on two workers");

    // The interest reaches worker 0 before the packets do (a command, then data): send
    // until the first one comes out.
    // (A VP8 delta frame: partition start, P set.)
    let start = Instant::now();
    let first = loop {
        assert!(start.elapsed() < DEADLINE, "the first packet comes out");
        assert!(pipe_in.send(packet(MediaKind::Video, 1, &[0x10, 0x01, 0x9d])));
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            break p;
        }
    };
    assert_eq!(
        (
            first.kind,
            first.codec,
            first.seq,
            first.ts,
            &first.payload[..]
        ),
        (
            MediaKind::Video,
            Some(VideoCodec::Vp8),
            1,
            10,
            &[0x10u8, 0x01, 0x9d][..]
        )
    );
    // A VP8 delta frame (not a keyframe) first: the pipe out's keyframe is asked for.
    assert_eq!(recv(&mut kf_rx, "a keyframe request").await, Some(None));
    assert!(pipe_in.send(packet(MediaKind::Audio, 2, &[1])));
    // (Skipping copies of the first packet sent while the interest was on its way.)
    let p = loop {
        let p = recv(&mut rx, "audio").await.unwrap();
        if p.seq != 1 {
            break p;
        }
    };
    assert_eq!((p.kind, p.seq), (MediaKind::Audio, 2));
    assert_ne!(p.source, first.source, "each kind its source");

    // Muted video is not piped, audio is.
    plane.set_muted(&slot, MediaKind::Video, true);
    let start = Instant::now();
    let seq = loop {
        assert!(start.elapsed() < DEADLINE, "the mute takes effect");
        // The mute is a command on worker 0: once audio passes a video packet that is not
        // piped any more, it has taken effect.
        for (i, kind) in [MediaKind::Video, MediaKind::Audio].into_iter().enumerate() {
            assert!(pipe_in.send(packet(kind, 10 + i as u64, &[2])));
        }
        let p = recv(&mut rx, "a packet").await.unwrap();
        if p.kind == MediaKind::Audio {
            break p.seq;
        }
        assert_eq!(recv(&mut rx, "audio").await.unwrap().kind, MediaKind::Audio);
    };
    assert_eq!(seq, 11);

    // The receiver goes: the next packet closes the pipe out (an event), the slot stays.
    drop(rx);
    assert!(pipe_in.send(packet(MediaKind::Audio, 20, &[3])));
    assert_eq!(
        next_closed(&mut events).await,
        (out, PeerCloseReason::Closed)
    );
    assert!(plane.stats().pipe_drops.load(Ordering::Relaxed) >= 1);

    // Worker 0 fails: the pipe in closes with an event, its keyframe channel with it.
    plane.inject_worker_fault(0);
    assert_eq!(
        next_closed(&mut events).await,
        (pipe_in.peer(), PeerCloseReason::WorkerFault)
    );
    while recv(&mut kf_rx, "the keyframe channel to close")
        .await
        .is_some()
    {}
    wait_for("everything released", || plane.interned_slots() == 0).await;
    // The slot's format stays until its unpublish, as for a WebRTC publisher.
    plane.unpublish(&slot, pipe_in.peer());
    assert_eq!(plane.pipe_format(&slot), None);
    // A new pipe in on worker 0 (its index, restarted, is the old one's): the old pipe's
    // packets go nowhere, the new one's are taken.
    let taken = plane.stats().packets_in.load(Ordering::Relaxed);
    let (kf_tx, _kf_rx) = mpsc::channel(1);
    let again = plane
        .pipe_in(
            slot.clone(),
            PipeFormat {
                video: None,
                layers: Vec::new(),
            },
            kf_tx,
        )
        .await
        .unwrap();
    assert!(
        pipe_in.send(packet(MediaKind::Audio, 21, &[4])),
        "queued (the worker lives): it drops it"
    );
    assert!(again.send(packet(MediaKind::Audio, 22, &[5])));
    // The data queue is in order: once the new one's is counted, the old one's was seen.
    wait_for("the new pipe's packet", || {
        plane.stats().packets_in.load(Ordering::Relaxed) > taken
    })
    .await;
    assert_eq!(plane.stats().packets_in.load(Ordering::Relaxed), taken + 1);
    plane.unpublish(&slot, again.peer());
    wait_for("everything released", || plane.interned_slots() == 0).await;
    assert!(events.try_recv().is_err(), "no more events");
    plane.shutdown();
}
