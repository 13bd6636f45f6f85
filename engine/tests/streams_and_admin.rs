//! Remote stream descriptors and mute state from a real server, and the admin's removals.
//! The publisher is a raw protocol client (the engine's publish API comes with the media
//! engine); the observer is an engine client.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rtcroom::{BanReason, ClientEvent, ConnectionState, LeaveReason, Mode, StreamType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_TOKEN: &str = "engine-admin-token";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client: sends one request and reads until its reply.
struct Raw {
    ws: Ws,
    next_id: u64,
}

impl Raw {
    async fn joined(url: &str, user: &str, room: &str) -> Raw {
        let (ws, _) = bounded(tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        let mut raw = Raw { ws, next_id: 1 };
        let reply = raw
            .request(
                serde_json::json!({"type":"join","sdkAppId":APP,"userId":user,
                "userSig":sig(user),"roomId":room,"mode":"rtc"}),
            )
            .await;
        assert!(reply.get("error").is_none(), "{reply}");
        raw
    }

    async fn request(&mut self, msg: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let env = serde_json::json!({"v":1,"id":id,"msg":msg});
        self.ws.send(Message::text(env.to_string())).await.unwrap();
        loop {
            let frame = bounded(self.ws.next()).await.expect("open").unwrap();
            if let Message::Text(t) = frame {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "reply" && v["id"] == id {
                    return v;
                }
            }
        }
    }
}

async fn admin(addr: std::net::SocketAddr, action: &str, body: serde_json::Value) -> String {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /admin/{action} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    bounded(s.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn remote_streams_and_mutes_are_reported_and_kept() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut watcher = TestClient::joined(&url, "watcher", Mode::Rtc, 1201, None).await;
    let mut bob = Raw::joined(&url, "bob", "1201").await;
    watcher.wait_peer_join("bob").await;

    let r = bob
        .request(serde_json::json!({"type":"publish","streamType":"main","hasAudio":true,"hasVideo":true}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let added = watcher
        .wait_for("stream-added", |e| matches!(e, ClientEvent::StreamAdded(_)))
        .await;
    let ClientEvent::StreamAdded(s) = added else {
        unreachable!()
    };
    assert_eq!(s.user_id, uid("bob"));
    assert_eq!(s.stream_type, StreamType::Main);
    assert!(s.has_audio && s.has_video);

    bob.request(serde_json::json!({"type":"mute","streamType":"main","kind":"audio","muted":true}))
        .await;
    assert_eq!(
        watcher
            .wait_for("mute-audio", |e| matches!(e, ClientEvent::MuteAudio { .. }))
            .await,
        ClientEvent::MuteAudio {
            user_id: uid("bob")
        }
    );
    let state = watcher.get_remote_muted_state();
    assert_eq!(state.len(), 1);
    assert!(state[0].audio_muted && !state[0].video_muted);
    assert!(state[0].has_audio && state[0].has_video);

    // A late joiner learns the stream and its mute from the join answer.
    let mut late = TestClient::joined(&url, "late", Mode::Rtc, 1201, None).await;
    late.wait_for("stream-added", |e| matches!(e, ClientEvent::StreamAdded(_)))
        .await;
    assert!(late.get_remote_muted_state()[0].audio_muted);

    bob.request(serde_json::json!({"type":"unpublish","streamType":"main"}))
        .await;
    watcher
        .wait_for("stream-removed", |e| {
            matches!(e, ClientEvent::StreamRemoved(_))
        })
        .await;
    assert!(watcher.get_remote_muted_state().is_empty());
}

#[tokio::test]
async fn admin_removal_and_dismissal_ban_the_client_for_good() {
    let mut cfg = server_config("127.0.0.1:0");
    cfg.admin.token = Some(ADMIN_TOKEN.into());
    let server = start(cfg);
    let url = server.ws_url();
    let mut alice = TestClient::joined(&url, "alice", Mode::Rtc, 1301, None).await;
    let mut bob = TestClient::joined(&url, "bob", Mode::Rtc, 1301, None).await;
    alice.wait_peer_join("bob").await;

    let answer = admin(
        server.addr(),
        "RemoveUser",
        serde_json::json!({"SdkAppId":APP,"RoomId":1301,"UserIds":["bob"]}),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let banned = bob
        .wait_for("client-banned", |e| {
            matches!(e, ClientEvent::ClientBanned { .. })
        })
        .await;
    assert!(
        matches!(
            banned,
            ClientEvent::ClientBanned {
                reason: BanReason::Banned,
                ..
            }
        ),
        "{banned:?}"
    );
    bob.wait_state(ConnectionState::Disconnected).await;
    assert_eq!(
        alice
            .wait_for("peer-leave", |e| matches!(e, ClientEvent::PeerLeave { .. }))
            .await,
        ClientEvent::PeerLeave {
            user_id: uid("bob"),
            reason: LeaveReason::Kicked
        }
    );

    let answer = admin(
        server.addr(),
        "DismissRoom",
        serde_json::json!({"SdkAppId":APP,"RoomId":1301}),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let banned = alice
        .wait_for("client-banned", |e| {
            matches!(e, ClientEvent::ClientBanned { .. })
        })
        .await;
    assert!(
        matches!(
            banned,
            ClientEvent::ClientBanned {
                reason: BanReason::RoomDisband,
                ..
            }
        ),
        "{banned:?}"
    );
    alice.wait_state(ConnectionState::Disconnected).await;
    assert_eq!(alice.connection_state(), ConnectionState::Disconnected);
    assert!(
        !alice.seen.iter().chain(bob.seen.iter()).any(|e| matches!(
            e,
            ClientEvent::ConnectionStateChanged {
                state: ConnectionState::Reconnecting,
                ..
            }
        )),
        "removed clients do not reconnect"
    );
}
