//! The engine over `wss://`: a real server with TLS, its certificate made in the test and
//! trusted as an extra CA on top of the system roots.

mod common;

use common::*;
use rtcroom::{ClientEvent, JoinOptions, Mode};
use rtcroom_server::config::TlsConfig;

fn certificate(dir: &std::path::Path) -> (TlsConfig, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (
        TlsConfig {
            cert_file,
            key_file,
        },
        cert.cert.pem(),
    )
}

#[tokio::test]
async fn clients_join_over_wss_trusting_an_extra_ca() {
    let dir = std::env::temp_dir().join(format!("rtcroom-engine-tls-{}", std::process::id()));
    let (tls, ca) = certificate(&dir);
    let mut cfg = server_config("127.0.0.1:0");
    cfg.tls = Some(tls);
    let server = start(cfg);
    let url = server.ws_url();
    assert!(url.starts_with("wss://"));

    // Without the extra CA the certificate is not trusted: the join fails, clearly.
    let untrusted = TestClient::new(config(&url, "mallory", Mode::Rtc));
    let e = bounded(untrusted.join(JoinOptions::new(5u32)))
        .await
        .unwrap_err();
    assert!(
        e.message.to_lowercase().contains("certificate"),
        "the error names the certificate: {e}"
    );

    let mut alice_cfg = config(&url, "alice", Mode::Rtc);
    alice_cfg.extra_ca_pem = Some(ca.clone());
    let mut alice = TestClient::new(alice_cfg);
    bounded(alice.join(JoinOptions::new(5u32)))
        .await
        .expect("joins over wss");
    let mut bob_cfg = config(&url, "bob", Mode::Rtc);
    bob_cfg.extra_ca_pem = Some(ca);
    let bob = TestClient::new(bob_cfg);
    bounded(bob.join(JoinOptions::new(5u32)))
        .await
        .expect("joins over wss");
    alice.wait_peer_join("bob").await;
    bounded(bob.client.leave()).await.unwrap();
    alice
        .wait_for(
            "peer-leave bob",
            |e| matches!(e, ClientEvent::PeerLeave { user_id, .. } if user_id.as_str() == "bob"),
        )
        .await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
