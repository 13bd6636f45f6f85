//! Admin API and webhooks end to end: real server, real HTTP on loopback.

mod common;

use std::time::Duration;

use common::*;
use rtcroom_protocol::signal::{BanReason, ServerEvent};
use rtcroom_protocol::{Mode, UserId};
use rtcroom_server::config::WebhookConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test]
async fn admin_calls_need_credentials_and_act_on_rooms() {
    let mut cfg = config();
    cfg.admin.hmac_key = Some("hmac-key".into());
    let server = start(cfg);
    let url = server.ws_url();
    let (mut alice, _) = joined(&url, "alice", "100", Mode::Rtc, None).await;
    let (mut bob, _) = joined(&url, "bob", "100", Mode::Rtc, None).await;
    assert_eq!(
        alice.event().await,
        ServerEvent::PeerJoin {
            user_id: UserId::new("bob").unwrap()
        }
    );

    // Unauthenticated calls: 401 and nothing changes.
    let body = json!({"SdkAppId": APP, "RoomId": 100}).to_string();
    let (status, _) = http(server.addr(), "POST", "/admin/DismissRoom", &[], &body).await;
    assert_eq!(status, 401);
    let (status, _) = http(
        server.addr(),
        "POST",
        "/admin/DismissRoom",
        &[("Authorization", "Bearer wrong")],
        &body,
    )
    .await;
    assert_eq!(status, 401);
    let (status, info) = admin(
        server.addr(),
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": 100}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        info["Response"]["RoomInfo"]["Members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // HMAC-signed request works too (X-TC-Action form).
    let ts = now();
    let sig =
        rtcroom_server::admin::admin_signature("hmac-key", ts, "DescribeRoomInfo", body.as_bytes());
    let (status, text) = http(
        server.addr(),
        "POST",
        "/admin",
        &[
            ("X-TC-Action", "DescribeRoomInfo"),
            ("X-Rtcroom-Timestamp", &ts.to_string()),
            ("X-Rtcroom-Signature", &sig),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // RemoveUser → banned.
    let (status, _) = admin(
        server.addr(),
        "RemoveUser",
        json!({"SdkAppId": APP, "RoomId": 100, "UserIds": ["bob"]}),
    )
    .await;
    assert_eq!(status, 200);
    match bob.event().await {
        ServerEvent::ClientBanned { reason, .. } => assert_eq!(reason, BanReason::Banned),
        other => panic!("expected client-banned, got {other:?}"),
    }
    assert!(bob.closed().await.is_some());

    // DismissRoom → room_disband, and the room is gone.
    let (status, _) = admin(
        server.addr(),
        "DismissRoom",
        json!({"SdkAppId": APP, "RoomId": 100}),
    )
    .await;
    assert_eq!(status, 200);
    loop {
        match alice.event().await {
            ServerEvent::ClientBanned { reason, .. } => {
                assert_eq!(reason, BanReason::RoomDisband);
                break;
            }
            ServerEvent::PeerLeave { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    let (status, body) = admin(
        server.addr(),
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": 100}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["Response"]["Error"]["Code"],
        "FailedOperation.RoomNotExist"
    );

    // String rooms have their own actions; bad bodies are 400.
    let (_s, _) = joined(&url, "s1", "100", Mode::Rtc, None).await;
    let mut sj = join_req("s2", "room-x", Mode::Rtc, None);
    sj.use_string_room_id = true;
    let mut s2 = Client::connect(&url).await;
    s2.join(sj).await.unwrap();
    let (status, _) = admin(
        server.addr(),
        "DismissRoom",
        json!({"SdkAppId": APP, "RoomId": "room-x"}),
    )
    .await;
    assert_eq!(status, 400, "numeric action with a string room");
    let (status, _) = admin(
        server.addr(),
        "DismissRoomByStrRoomId",
        json!({"SdkAppId": APP, "RoomId": "room-x"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = admin(
        server.addr(),
        "RemoveUser",
        json!({"SdkAppId": APP, "RoomId": 100, "UserIds": []}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(server.addr(), "Nope", json!({})).await;
    assert_eq!(status, 400);
    server.stop().unwrap();
}

#[tokio::test]
async fn a_signed_admin_request_is_refused_when_replayed() {
    const HMAC: &str = "replay-test-hmac-key";
    let mut cfg = config();
    cfg.admin.hmac_key = Some(HMAC.into());
    let server = start(cfg);
    let (_alice, _) = joined(&server.ws_url(), "alice", "150", Mode::Rtc, None).await;
    let body = json!({"SdkAppId": APP, "RoomId": 150}).to_string();
    let signed = |ts: u64| {
        let sig =
            rtcroom_server::admin::admin_signature(HMAC, ts, "DescribeRoomInfo", body.as_bytes());
        (ts.to_string(), sig)
    };
    let addr = server.addr();
    let call = |(ts, sig): (String, String)| {
        let body = body.clone();
        async move {
            let (status, text) = http(
                addr,
                "POST",
                "/admin/DescribeRoomInfo",
                &[("X-Rtcroom-Timestamp", &ts), ("X-Rtcroom-Signature", &sig)],
                &body,
            )
            .await;
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
            )
        }
    };
    let ts = now();
    let (status, first) = call(signed(ts)).await;
    assert_eq!(status, 200, "{first}");
    // The very same request again (captured and replayed within the 300 s window): refused
    // like any other authentication failure.
    let (status, again) = call(signed(ts)).await;
    assert_eq!(status, 401, "{again}");
    assert_eq!(again["Response"]["Error"]["Code"], "AuthFailure");
    assert_eq!(again["Response"]["Error"]["Message"], "replayed request");
    // A new signature (another timestamp) for the same call is a new request.
    let (status, other) = call(signed(ts - 1)).await;
    assert_eq!(status, 200, "{other}");
    server.stop().unwrap();
}

/// A webhook receiver on loopback that checks `Sign` and passes bodies on. The first request
/// of each event type gets a 500 when `fail_first` is set, to exercise the retry.
async fn receiver(
    key: &'static str,
    fail_first: bool,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(serde_json::Value, usize)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = std::collections::HashMap::<u64, usize>::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            let (head, body) = loop {
                let n = sock.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < pos + 4 + len {
                        let n = sock.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    }
                    break (head, buf[pos + 4..pos + 4 + len].to_vec());
                }
            };
            let sign = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Sign: ")
                        .or_else(|| l.strip_prefix("sign: "))
                })
                .unwrap_or("")
                .to_owned();
            let ok_sign = sign == rtcroom_server::webhook::sign(key, &body);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let et = v["EventType"].as_u64().unwrap_or(0);
            let n = seen.entry(et).or_default();
            *n += 1;
            let fail = !ok_sign || (fail_first && *n == 1);
            let status = if fail {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{{\"code\":0}}"
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            if ok_sign {
                let _ = tx.send((v, *n));
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn webhooks_are_signed_trtc_events_with_retry() {
    let (addr, mut rx) = receiver("hook-key", true).await;
    let mut cfg = config();
    cfg.webhook = Some(WebhookConfig::new(format!("http://{addr}/cb"), "hook-key"));
    let server = start(cfg);
    let url = server.ws_url();
    let (mut a, _) = joined(&url, "alice", "300", Mode::Rtc, None).await;
    a.request(rtcroom_protocol::signal::ClientMessage::Leave)
        .await
        .unwrap();

    // 101 create, 103 enter, 104 exit, 102 dismiss — each first refused once, then retried
    // at once and accepted (attempt 2).
    let mut delivered = std::collections::BTreeMap::new();
    while delivered.len() < 4 {
        let (v, attempt) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("webhook in time")
            .unwrap();
        let et = v["EventType"].as_u64().unwrap();
        if attempt == 2 {
            assert_eq!(v["EventGroupId"], 1);
            assert_eq!(v["EventInfo"]["RoomId"], 300);
            if et == 103 || et == 104 {
                assert_eq!(v["EventInfo"]["UserId"], "alice");
                assert_eq!(v["EventInfo"]["Role"], 20);
            }
            assert!(v["CallbackTs"].as_u64().unwrap() > 1_700_000_000_000);
            delivered.insert(et, v);
        }
    }
    assert_eq!(
        delivered.keys().copied().collect::<Vec<_>>(),
        vec![101, 102, 103, 104]
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn https_webhooks_speak_tls() {
    // A plain TCP listener stands in for an https receiver: the first bytes the server sends
    // must be a TLS handshake record (0x16), and a failed TLS delivery must not hurt the server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config();
    cfg.webhook = Some(WebhookConfig::new(format!("https://{addr}/cb"), "k"));
    let server = start(cfg);
    let (mut a, _) = joined(&server.ws_url(), "alice", "301", Mode::Rtc, None).await;
    let (mut sock, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), sock.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first[0], 0x16, "a TLS ClientHello");
    drop(sock);
    a.request(rtcroom_protocol::signal::ClientMessage::Heartbeat)
        .await
        .unwrap();
    server.stop().unwrap();
}
