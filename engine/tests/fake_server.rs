//! The client against scripted servers: hostile frames, a server that falls silent, a server
//! that refuses the re-join. Loopback only, every wait bounded.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rtcroom::{ClientEvent, ConnectionState, ErrorCode, JoinOptions, Mode, Role};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A join request as the fake server saw it.
#[derive(Debug)]
struct SeenJoin {
    id: u64,
    msg: serde_json::Value,
}

/// Accept WebSocket connections; hand each to the test with its first (join) frame.
async fn fake_server() -> (String, mpsc::UnboundedReceiver<(Ws, SeenJoin)>) {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                        let join = SeenJoin {
                            id: v["id"].as_u64().unwrap(),
                            msg: v["msg"].clone(),
                        };
                        let _ = tx.send((ws, join));
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

async fn next_conn(rx: &mut mpsc::UnboundedReceiver<(Ws, SeenJoin)>) -> (Ws, SeenJoin) {
    bounded(rx.recv()).await.expect("a connection")
}

fn joined_reply(id: u64, members: &[&str]) -> Message {
    let members: Vec<_> = members
        .iter()
        .map(|m| serde_json::json!({"userId": m, "role": "anchor"}))
        .collect();
    Message::text(
        serde_json::json!({"type":"reply","v":1,"id":id,"data":{"kind":"joined","roomId":42,
            "role":"anchor","members":members,"streams":[],"heartbeatIntervalS":2}})
        .to_string(),
    )
}

/// Join `c` to room 42 through the fake server, which accepts with an empty member list;
/// returns the server side of the connection.
async fn join_accepted(
    c: &mut TestClient,
    conns: &mut mpsc::UnboundedReceiver<(Ws, SeenJoin)>,
) -> Ws {
    let join = c.join(JoinOptions::new(42u32));
    let server = async {
        let (mut ws, seen) = next_conn(conns).await;
        ws.send(joined_reply(seen.id, &[])).await.unwrap();
        ws
    };
    let (res, ws) = tokio::join!(bounded(join), server);
    res.unwrap();
    ws
}

#[tokio::test]
async fn hostile_frames_are_ignored_and_never_panic() {
    let (url, mut conns) = fake_server().await;
    let mut c = TestClient::new(config(&url, "alice", Mode::Rtc));
    let join = c.join(JoinOptions::new(42u32));
    let server = async {
        let (mut ws, seen) = next_conn(&mut conns).await;
        assert_eq!(seen.msg["type"], "join");
        assert_eq!(seen.msg["roomId"], "42");
        assert_eq!(seen.msg["userId"], "alice");
        assert_eq!(seen.msg["role"], "anchor");
        for junk in [
            Message::text("not json"),
            Message::text("{}"),
            Message::text(r#"{"type":"reply","v":1,"id":999}"#),
            Message::text(r#"{"type":"reply","v":1,"id":0,"error":{"code":4097,"message":"x"}}"#),
            Message::text(r#"{"type":"event","event":"dance","userId":"x"}"#),
            Message::text(r#"{"type":"event","event":"peer-join","userId":"bad user!"}"#),
            Message::text(r#"{"type":"reply","v":1,"id":18446744073709551615}"#),
            Message::text(r#"{"type":"events","events":"x"}"#),
            Message::text(r#"{"type":"events","events":[{"event":"dance"}]}"#),
            Message::text("x".repeat(70_000)),
            Message::binary(vec![0u8, 159, 146, 150]),
            Message::Ping(vec![1, 2, 3].into()),
        ] {
            ws.send(junk).await.unwrap();
        }
        ws.send(joined_reply(seen.id, &["bob"])).await.unwrap();
        ws.send(Message::text(
            r#"{"type":"event","event":"peer-join","userId":"carol"}"#,
        ))
        .await
        .unwrap();
        ws
    };
    let (res, _ws) = tokio::join!(bounded(join), server);
    res.unwrap();
    c.wait_peer_join("bob").await;
    c.wait_peer_join("carol").await;
    assert_eq!(c.connection_state(), ConnectionState::Connected);
}

#[tokio::test]
async fn a_coalesced_events_frame_is_delivered_event_by_event_in_order() {
    let (url, mut conns) = fake_server().await;
    let mut c = TestClient::new(config(&url, "alice", Mode::Rtc));
    let mut ws = join_accepted(&mut c, &mut conns).await;
    // What the server sends when several events for one member pile up within its batch
    // window: one `events` frame.
    ws.send(Message::text(
        r#"{"type":"events","events":[{"event":"peer-join","userId":"bob"},
            {"event":"peer-join","userId":"carol"},
            {"event":"peer-leave","userId":"bob","reason":0}]}"#,
    ))
    .await
    .unwrap();
    let users = |e: &ClientEvent| match e {
        ClientEvent::PeerJoin { user_id } => Some(format!("+{user_id}")),
        ClientEvent::PeerLeave { user_id, .. } => Some(format!("-{user_id}")),
        _ => None,
    };
    let mut order = Vec::new();
    while order.len() < 3 {
        let e = c.wait_for("peer events", |e| users(e).is_some()).await;
        order.extend(users(&e));
    }
    assert_eq!(order, ["+bob", "+carol", "-bob"]);
}

#[tokio::test]
async fn a_silent_server_is_detected_and_the_client_rejoins_the_same_room_and_role() {
    let (url, mut conns) = fake_server().await;
    let mut cfg = config(&url, "lena", Mode::Live);
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.missed_heartbeats = 3;
    let mut c = TestClient::new(cfg);
    let join = c.join(JoinOptions::new(42u32).with_role(Role::Audience));
    let server = async {
        let (mut ws, seen) = next_conn(&mut conns).await;
        ws.send(joined_reply(seen.id, &[])).await.unwrap();
        // Read and never answer: heartbeats go unanswered.
        let mut heartbeats = 0;
        while heartbeats < 2 {
            if let Some(Ok(Message::Text(t))) = ws.next().await
                && t.as_str().contains("heartbeat")
            {
                heartbeats += 1;
            }
        }
        (ws, seen)
    };
    let (res, (_silent, first)) = tokio::join!(bounded(join), server);
    res.unwrap();
    c.wait_state(ConnectionState::Reconnecting).await;
    let (mut ws, again) = next_conn(&mut conns).await;
    assert_eq!(again.msg, first.msg, "the re-join repeats the join");
    assert_eq!(again.msg["role"], "audience");
    ws.send(joined_reply(again.id, &["anchor"])).await.unwrap();
    c.wait_state(ConnectionState::Connected).await;
    c.wait_peer_join("anchor").await;
}

#[tokio::test]
async fn a_refused_rejoin_is_reported_with_the_servers_error() {
    let (url, mut conns) = fake_server().await;
    let mut c = TestClient::new(config(&url, "otto", Mode::Rtc));
    let mut ws = join_accepted(&mut c, &mut conns).await;
    // Drop the connection; refuse the re-join with an expired UserSig.
    ws.close(None).await.unwrap();
    let (mut ws2, again) = next_conn(&mut conns).await;
    ws2.send(Message::text(
        serde_json::json!({"type":"reply","v":1,"id":again.id,
            "error":{"code":16385,"extraCode":70001,"message":"userSig expired"}})
        .to_string(),
    ))
    .await
    .unwrap();
    let e = c
        .wait_for("error", |e| matches!(e, ClientEvent::Error(_)))
        .await;
    let ClientEvent::Error(e) = e else {
        unreachable!()
    };
    assert_eq!(e.code, ErrorCode::SignalChannelSetupFailed);
    assert_eq!(e.extra_code, Some(70001));
    assert_eq!(
        c.next().await,
        ClientEvent::ConnectionStateChanged {
            prev: ConnectionState::Reconnecting,
            state: ConnectionState::Disconnected
        }
    );
}

#[tokio::test]
async fn an_oversized_frame_ends_the_connection_and_the_client_reconnects() {
    let (url, mut conns) = fake_server().await;
    let mut c = TestClient::new(config(&url, "olga", Mode::Rtc));
    let mut ws = join_accepted(&mut c, &mut conns).await;
    // 300 KB: over the engine's 256 KiB cap (the protocol allows 64 KiB).
    let _ = ws.send(Message::text("y".repeat(300_000))).await;
    c.wait_state(ConnectionState::Reconnecting).await;
    let (mut ws2, again) = next_conn(&mut conns).await;
    ws2.send(joined_reply(again.id, &[])).await.unwrap();
    c.wait_state(ConnectionState::Connected).await;
}

/// `events()` asked for only after `join` resolved still has the members the join announced
/// (they are emitted while `join` resolves): the first stream starts at the client's creation.
#[tokio::test]
async fn events_asked_for_after_join_still_have_the_rooms_members() {
    let (url, mut conns) = fake_server().await;
    let client = rtcroom::create_client(config(&url, "alice", Mode::Rtc)).unwrap();
    let server = async {
        let (mut ws, seen) = next_conn(&mut conns).await;
        ws.send(joined_reply(seen.id, &["bob", "carol"]))
            .await
            .unwrap();
        ws
    };
    let (res, _ws) = tokio::join!(bounded(client.join(JoinOptions::new(42u32))), server);
    res.unwrap();
    let mut events = client.events();
    let mut joined = Vec::new();
    let mut states = Vec::new();
    while joined.len() < 2 {
        match bounded(events.next()).await.expect("an event") {
            ClientEvent::PeerJoin { user_id } => joined.push(user_id.to_string()),
            ClientEvent::ConnectionStateChanged { state, .. } => states.push(state),
            _ => {}
        }
    }
    joined.sort();
    assert_eq!(joined, ["bob", "carol"]);
    // From the very start: the state went to CONNECTING before it went to CONNECTED.
    assert_eq!(
        states,
        [ConnectionState::Connecting, ConnectionState::Connected]
    );
    // A second stream sees only what comes later.
    let mut later = client.events();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), later.next())
            .await
            .is_err(),
        "a later stream replays nothing"
    );
}

/// Stats from a client whose actor has stopped are an error, not an empty list that reads
/// as "nothing subscribed".
#[tokio::test]
async fn stats_of_a_stopped_client_are_an_error() {
    let (url, _conns) = fake_server().await;
    let client = rtcroom::create_client(config(&url, "alice", Mode::Rtc)).unwrap();
    assert!(bounded(client.get_remote_stats()).await.unwrap().is_empty());
    assert!(
        bounded(client.get_transport_stats())
            .await
            .unwrap()
            .is_empty()
    );
    bounded(client.stop_actor_for_test()).await;
    assert!(bounded(client.get_remote_stats()).await.is_err());
    assert!(bounded(client.get_transport_stats()).await.is_err());
}
