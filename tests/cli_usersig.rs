//! `rtcroom usersig` as scripts use it: the real binary, its flags, output and exit codes.

use std::process::{Command, Output};

use serde::Deserialize;

const APP: &str = "1400000000";
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn rtcroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(args)
        .env_remove("RTCROOM_SECRET_KEY")
        .output()
        .expect("run rtcroom")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The value of a `key: value` line.
fn field(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_owned))
}

fn gen_ticket(extra: &[&str]) -> String {
    let mut args = vec![
        "usersig",
        "gen",
        "--sdk-app-id",
        APP,
        "--secret-key",
        KEY,
        "--now",
        "1700000000",
    ];
    args.extend_from_slice(extra);
    let o = rtcroom(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = stdout(&o);
    assert_eq!(s.lines().count(), 1, "gen prints the ticket alone: {s:?}");
    s.trim().to_owned()
}

fn verify(sig: &str, user: &str, now: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "usersig",
        "verify",
        "--sdk-app-id",
        APP,
        "--secret-key",
        KEY,
        "--user-id",
        user,
        "--user-sig",
        sig,
        "--now",
        now,
    ];
    args.extend_from_slice(extra);
    rtcroom(&args)
}

fn assert_refused(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(1), "{}", stdout(o));
    let out = stdout(o);
    assert_eq!(field(&out, "valid").as_deref(), Some("no"), "{out}");
    assert_eq!(field(&out, "code"), Some(code.to_string()), "{out}");
    assert!(
        field(&out, "reason").is_some_and(|r| !r.is_empty()),
        "{out}"
    );
}

#[test]
fn gen_then_verify_user_sig() {
    let sig = gen_ticket(&["--user-id", "xiaojun", "--expire", "15552000"]);
    let o = verify(&sig, "xiaojun", "1700000000", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "valid").as_deref(), Some("yes"));
    assert_eq!(field(&out, "kind").as_deref(), Some("UserSig"));
    assert_eq!(field(&out, "identifier").as_deref(), Some("xiaojun"));
    assert_eq!(field(&out, "sdk_app_id").as_deref(), Some(APP));
    assert_eq!(field(&out, "time").as_deref(), Some("1700000000"));
    assert_eq!(field(&out, "expire").as_deref(), Some("15552000"));
    assert_eq!(field(&out, "expires_at").as_deref(), Some("1715552000"));
    // The last valid second, then expired.
    assert!(verify(&sig, "xiaojun", "1715552000", &[]).status.success());
    assert_refused(&verify(&sig, "xiaojun", "1715552001", &[]), 70001);
    assert_refused(&verify(&sig, "someone", "1700000000", &[]), 70013);
}

#[test]
fn default_expire_is_180_days() {
    let sig = gen_ticket(&["--user-id", "denny"]);
    let out = stdout(&verify(&sig, "denny", "1700000000", &[]));
    assert_eq!(field(&out, "expire").as_deref(), Some("15552000"));
}

#[test]
fn private_map_key_numeric_and_string_rooms() {
    let sig = gen_ticket(&[
        "--user-id",
        "denny",
        "--room-id",
        "10001",
        "--privilege-map",
        "42",
        "--expire",
        "300",
    ]);
    let o = verify(&sig, "denny", "1700000000", &["--room-id", "10001"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "kind").as_deref(), Some("PrivateMapKey"));
    assert_eq!(field(&out, "room").as_deref(), Some("10001 (numeric)"));
    assert_eq!(
        field(&out, "privileges").as_deref(),
        Some("42 (enter,receive-audio,receive-video)")
    );
    assert_refused(
        &verify(&sig, "denny", "1700000000", &["--room-id", "10002"]),
        -102011,
    );
    assert_refused(
        &verify(&sig, "denny", "1700000000", &["--str-room-id", "10001"]),
        -102011,
    );
    assert_refused(
        &verify(&sig, "denny", "1700000301", &["--room-id", "10001"]),
        70001,
    );

    let sig = gen_ticket(&["--user-id", "denny", "--str-room-id", "class room-1"]);
    let o = verify(
        &sig,
        "denny",
        "1700000000",
        &["--str-room-id", "class room-1"],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(
        field(&stdout(&o), "privileges").as_deref(),
        Some(
            "255 (create,enter,send-audio,receive-audio,send-video,receive-video,send-sub-stream,receive-sub-stream)"
        )
    );
    // A plain UserSig is not a PrivateMapKey.
    let plain = gen_ticket(&["--user-id", "denny"]);
    assert_refused(
        &verify(&plain, "denny", "1700000000", &["--room-id", "1"]),
        -100006,
    );
}

#[test]
fn wrong_key_and_app_are_refused_with_their_codes() {
    let sig = gen_ticket(&["--user-id", "denny"]);
    let o = rtcroom(&[
        "usersig",
        "verify",
        "--sdk-app-id",
        APP,
        "--secret-key",
        "other",
        "--user-id",
        "denny",
        "--user-sig",
        &sig,
        "--now",
        "1700000000",
    ]);
    assert_refused(&o, 70009);
    let o = rtcroom(&[
        "usersig",
        "verify",
        "--sdk-app-id",
        "1400000001",
        "--secret-key",
        KEY,
        "--user-id",
        "denny",
        "--user-sig",
        &sig,
        "--now",
        "1700000000",
    ]);
    assert_refused(&o, 70014);
    assert_refused(&verify("garbage!", "denny", "1700000000", &[]), 70003);
}

#[test]
fn secret_key_from_the_environment() {
    let o = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--user-id",
            "denny",
            "--now",
            "1700000000",
        ])
        .env("RTCROOM_SECRET_KEY", KEY)
        .output()
        .unwrap();
    assert!(o.status.success());
    let sig = stdout(&o).trim().to_owned();
    assert!(verify(&sig, "denny", "1700000000", &[]).status.success());
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    kind: String,
    sdk_app_id: u64,
    secret_key: String,
    user_id: String,
    time: u64,
    expire: u64,
    room_id: Option<serde_json::Value>,
    user_sig: String,
}

#[test]
fn official_vectors_verify_through_the_cli() {
    let vectors: Vec<Vector> =
        serde_json::from_str(include_str!("../protocol/tests/data/usersig-official.json")).unwrap();
    for v in vectors {
        let mut args: Vec<String> = [
            "usersig",
            "verify",
            "--sdk-app-id",
            &v.sdk_app_id.to_string(),
            "--secret-key",
            &v.secret_key,
            "--user-id",
            &v.user_id,
            "--user-sig",
            &v.user_sig,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match (v.kind.as_str(), &v.room_id) {
            ("privateMapKey", Some(r)) => args.extend(["--room-id".into(), r.to_string()]),
            ("privateMapKeyStringRoom", Some(r)) => {
                args.extend(["--str-room-id".into(), r.as_str().unwrap().to_owned()])
            }
            _ => {}
        }
        let run = |now: u64| {
            let mut a = args.clone();
            a.extend(["--now".into(), now.to_string()]);
            rtcroom(&a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let ok = run(v.time);
        assert!(
            ok.status.success(),
            "{} {}: {}",
            v.kind,
            v.user_id,
            stdout(&ok)
        );
        assert_refused(&run(v.time + v.expire + 1), 70001);
    }
}

#[test]
fn bad_usage_exits_2_with_a_plain_message() {
    for args in [
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "a b",
        ][..],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
            "--room-id",
            "0",
        ],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
            "--str-room-id",
            "a/b",
        ],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
            "--privilege-map",
            "3",
        ],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
            "--room-id",
            "1",
            "--str-room-id",
            "x",
        ],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
            "--room-id",
            "1",
            "--privilege-map",
            "256",
        ],
        &[
            "usersig",
            "gen",
            "--sdk-app-id",
            "-1",
            "--secret-key",
            "k",
            "--user-id",
            "u",
        ],
        &[
            "usersig",
            "verify",
            "--sdk-app-id",
            APP,
            "--secret-key",
            "k",
            "--user-id",
            "u",
        ],
    ] {
        let o = rtcroom(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}
