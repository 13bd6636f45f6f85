//! Shared helpers for the root package's integration tests.
//!
//! A test file uses them with `mod support;` and then `support::browser::Browser`.
#![allow(dead_code)]

pub mod browser;

use std::path::Path;
use std::process::Command;

/// What gst-discoverer-1.0 says about a media file.
pub struct Discovered {
    /// It has a video stream.
    pub video: bool,
    /// It has an audio stream.
    pub audio: bool,
    /// Its duration in seconds (0 when none is reported).
    pub duration: f64,
    /// The whole report (codec names, sizes).
    pub text: String,
}

/// Run gst-discoverer-1.0 (GStreamer's tools, installed by `scripts/setup-debian.sh`) on `file`.
pub fn discover(file: &Path) -> Discovered {
    let out = Command::new("gst-discoverer-1.0")
        .arg(file)
        .output()
        .expect("gst-discoverer-1.0 is installed (scripts/setup-debian.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let duration = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Duration: "))
        .and_then(|d| {
            let mut parts = d.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .unwrap_or(0.0);
    Discovered {
        video: text.contains("video #"),
        audio: text.contains("audio #"),
        duration,
        text,
    }
}
