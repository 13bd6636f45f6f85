//! What the server offers browsers: the web SDK, the demo page, development UserSigs, the
//! WebSocket Origin check, and TLS (https / wss) with a certificate made in the test.

mod common;

use std::sync::Arc;

use common::*;
use rtcroom_protocol::Mode;
use rtcroom_protocol::usersig::verify_user_sig;
use rtcroom_server::config::TlsConfig;

#[tokio::test]
async fn the_sdk_and_the_demo_page_are_served() {
    let server = start(config());
    let addr = server.addr();
    let (status, head, body) = http_full(addr, "GET", "/sdk/trtc.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(body.contains("globalThis.TRTC"));
    assert!(
        !body.contains("\nexport "),
        "a classic script has no export"
    );
    let (status, head, module) = http_full(addr, "GET", "/sdk/trtc.mjs", &[], "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(module.starts_with(&body));
    assert!(
        module
            .trim_end()
            .ends_with("export default globalThis.TRTC;")
    );
    let (status, head, page) = http_full(addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(page.contains("/sdk/trtc.js"), "the page loads the SDK");
    server.stop().unwrap();
}

#[tokio::test]
async fn development_usersigs_only_when_enabled() {
    let server = start(config());
    let (status, body) = http(server.addr(), "GET", "/dev/usersig?userId=alice", &[], "").await;
    assert_eq!(status, 404, "off by default: {body}");
    server.stop().unwrap();

    let mut cfg = config();
    cfg.web.dev_usersig = true;
    cfg.web.allowed_origins = vec!["http://page.example".into()];
    let server = start(cfg);
    let (status, head, body) = http_full(
        server.addr(),
        "GET",
        "/dev/usersig?userId=alice",
        &[("Origin", "http://page.example")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("access-control-allow-origin: http://page.example"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sdkAppId"], APP);
    assert_eq!(v["userId"], "alice");
    let sig = v["userSig"].as_str().unwrap();
    verify_user_sig(sig, u64::from(APP), KEY, "alice", now()).expect("a real UserSig");
    // It works for joining.
    let mut req = join_req("alice", "77", Mode::Rtc, None);
    req.user_sig = sig.to_owned();
    let mut c = Client::connect(&server.ws_url()).await;
    c.join(req).await.expect("the dev UserSig joins");
    // Bad input is refused clearly; another page origin gets no CORS grant.
    for (path, status) in [
        ("/dev/usersig?userId=a%20b", 400),
        ("/dev/usersig", 400),
        ("/dev/usersig?userId=bob&sdkAppId=7", 404),
    ] {
        let (got, body) = http(server.addr(), "GET", path, &[], "").await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    let (_, head, _) = http_full(
        server.addr(),
        "GET",
        "/dev/usersig?userId=bob",
        &[("Origin", "http://other.example")],
        "",
    )
    .await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    server.stop().unwrap();
}

/// A WebSocket upgrade request with `origin`: the HTTP status.
async fn upgrade_status(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    // The server keeps an upgraded connection open: read only the status line.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 32];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn websocket_origins_are_checked_when_configured() {
    let server = start(config());
    assert_eq!(
        upgrade_status(server.addr(), Some("https://any.example")).await,
        101
    );
    server.stop().unwrap();

    let mut cfg = config();
    cfg.web.allowed_origins = vec!["https://app.example".into()];
    let server = start(cfg);
    assert_eq!(
        upgrade_status(server.addr(), Some("https://app.example")).await,
        101
    );
    assert_eq!(
        upgrade_status(server.addr(), Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(server.addr(), None).await,
        101,
        "non-browser"
    );
    server.stop().unwrap();
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir`.
fn test_certificate(dir: &std::path::Path) -> (TlsConfig, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::create_dir_all(dir).unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (
        TlsConfig {
            cert_file,
            key_file,
        },
        cert_pem,
    )
}

#[tokio::test]
async fn tls_serves_wss_with_a_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("rtcroom-tls-{}", std::process::id()));
    let (tls, cert_pem) = test_certificate(&dir);
    let mut cfg = config();
    cfg.tls = Some(tls);
    let server = start(cfg);
    assert!(server.ws_url().starts_with("wss://"));
    assert!(server.http_url().starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(client));
    let mut c = Client::connect_with(&server.ws_url(), Some(connector)).await;
    let joined = c
        .join(join_req("alice", "88", Mode::Rtc, None))
        .await
        .expect("joins over wss");
    assert!(joined.members.is_empty());

    // Plain HTTP to the TLS port gets nowhere.
    let plain = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(server.ws_url().replace("wss://", "ws://")),
    )
    .await
    .unwrap();
    assert!(plain.is_err());
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tls_files_that_do_not_hold_a_key_are_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("rtcroom-tls-bad-{}", std::process::id()));
    let (mut tls, _) = test_certificate(&dir);
    tls.key_file = tls.cert_file.clone();
    let mut cfg = config();
    cfg.tls = Some(tls);
    let e = rtcroom_server::server::tls_server_config(cfg.tls.as_ref().unwrap()).unwrap_err();
    assert!(e.to_string().contains("tls.key_file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
