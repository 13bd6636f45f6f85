//! A self-contained HTML report: a summary table and inline SVG plots (latency distribution,
//! bitrate over time, server CPU over time). No scripts, fonts or network access needed.

use std::fmt::Write as _;

use serde_json::Value;

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn axis(out: &mut String, x_label: &str, y_label: &str, x_max: f64, y_max: f64) {
    let _ = write!(
        out,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#444"/>
<text x="{cx}" y="{ly}" text-anchor="middle" font-size="12">{xl}</text>
<text x="12" y="{cy}" font-size="12" transform="rotate(-90 12 {cy})" text-anchor="middle">{yl}</text>
<text x="{PAD}" y="{ty}" font-size="10">0</text><text x="{r}" y="{ty}" font-size="10" text-anchor="end">{xm}</text>
<text x="{tx}" y="{pt}" font-size="10" text-anchor="end">{ym}</text>"##,
        b = H - PAD,
        r = W - 10.0,
        cx = W / 2.0,
        ly = H - 8.0,
        cy = H / 2.0,
        ty = H - PAD + 12.0,
        tx = PAD - 4.0,
        pt = PAD + 4.0,
        xl = esc(x_label),
        yl = esc(y_label),
        xm = fmt_num(x_max),
        ym = fmt_num(y_max),
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG line chart of (x, y) points.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    let mut out = format!(
        r#"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">"#,
        esc(title)
    );
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    axis(&mut out, x_label, y_label, x_max, y_max);
    let sx = |x: f64| PAD + (x / x_max) * (W - 10.0 - PAD);
    let sy = |y: f64| (H - PAD) - (y / y_max) * (H - 2.0 * PAD);
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/></svg></figure>"##,
        path.join(" ")
    );
    out
}

/// An SVG histogram of samples (20 bins).
pub fn histogram(title: &str, x_label: &str, samples: &[f64]) -> String {
    let mut out = format!(
        r#"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">"#,
        esc(title)
    );
    const BINS: usize = 20;
    let max = samples.iter().copied().fold(0.0, f64::max).max(1e-9);
    let mut counts = [0usize; BINS];
    for s in samples {
        let i = ((s / max) * BINS as f64) as usize;
        counts[i.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    axis(&mut out, x_label, "count", max, top);
    let bw = (W - 10.0 - PAD) / BINS as f64;
    for (i, c) in counts.iter().enumerate() {
        let h = (*c as f64 / top) * (H - 2.0 * PAD);
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ff7f0e"/>"##,
            PAD + i as f64 * bw + 1.0,
            H - PAD - h,
            bw - 2.0,
            h
        );
    }
    out.push_str("</svg></figure>");
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n
            .as_f64()
            .map(|f| {
                if f.fract() == 0.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.3}")
                }
            })
            .unwrap_or_else(|| n.to_string()),
        Value::String(s) => esc(s),
        Value::Object(m) if m.contains_key("p50") => format!(
            "p50 {} · p95 {} · p99 {} · max {}",
            cell(&m["p50"]),
            cell(&m["p95"]),
            cell(&m["p99"]),
            cell(&m["max"])
        ),
        other => esc(&other.to_string()),
    }
}

/// The figures a reader comes for, in order: report key, name, unit, how to show it, what it
/// means.
const HEADLINES: [(&str, &str, Unit, &str); 13] = [
    (
        "server_cpu_us_per_packet",
        "Server CPU per forwarded packet",
        Unit::Us,
        "server process CPU time over the window ÷ RTP packets it sent to subscribers \
         (on one machine this includes the kernel's delivery to the local receivers)",
    ),
    (
        "loss_pct",
        "Media loss",
        Unit::Pct,
        "packets that did not reach the subscribers, of those sent to them",
    ),
    (
        "video_loss_pct",
        "Video loss after repair",
        Unit::Pct,
        "video sequence numbers never received, after NACK/RTX",
    ),
    (
        "audio_loss_pct",
        "Audio loss",
        Unit::Pct,
        "audio sequence numbers never received (audio is not resent)",
    ),
    (
        "audio_loss_after_fec_pct",
        "Audio loss after FEC",
        Unit::Pct,
        "lost audio packets whose successor did not carry their Opus FEC copy",
    ),
    (
        "freezes",
        "Freezes",
        Unit::Count,
        "video gaps over 500 ms at a subscriber",
    ),
    (
        "first_frame_ms",
        "First frame",
        Unit::Ms,
        "subscribe request → every packet of the first keyframe received",
    ),
    (
        "first_video_packet_ms",
        "First video packet",
        Unit::Ms,
        "subscribe request → first video packet received",
    ),
    (
        "join_ms",
        "Join",
        Unit::Ms,
        "join request → reply (see join_release for how clients were released)",
    ),
    (
        "server_rss_bytes_per_member",
        "Server memory per member",
        Unit::Kb,
        "server resident memory ÷ members in the room",
    ),
    (
        "server_rss_bytes_per_subscriber",
        "Server memory per subscriber",
        Unit::Kb,
        "growth of the server's resident memory while the subscribers joined ÷ subscribers",
    ),
    (
        "server_cpu_pct",
        "Server CPU",
        Unit::PctCore,
        "server process CPU over the window",
    ),
    (
        "generator_cpu_pct",
        "Load generator CPU",
        Unit::PctCore,
        "the bench process's own CPU over the window",
    ),
];

#[derive(Clone, Copy)]
pub(super) enum Unit {
    Us,
    Ms,
    Pct,
    PctCore,
    Kb,
    Count,
}

fn headline_value(v: &Value, unit: Unit) -> Option<String> {
    let num = |x: f64| match unit {
        Unit::Us => format!("{x:.2} µs"),
        Unit::Ms => format!("{x:.1} ms"),
        Unit::Pct => format!("{x:.2} %"),
        Unit::PctCore => format!("{x:.0} % of a core"),
        Unit::Kb => format!("{:.1} KB", x / 1e3),
        Unit::Count => format!("{x:.0}"),
    };
    match v {
        Value::Number(n) => n.as_f64().map(num),
        Value::Object(m) if m.contains_key("p50") => Some(format!(
            "p50 {} · p95 {} · p99 {}",
            num(m["p50"].as_f64()?),
            num(m["p95"].as_f64()?),
            num(m["p99"].as_f64()?)
        )),
        _ => None,
    }
}

/// The figures a `--target both` report compares (the ratios, the stdout table and the
/// side-by-side table here): report key, the field of a percentile figure, name, unit.
pub(super) const SIDE_BY_SIDE: [(&str, Option<&str>, &str, Unit); 6] = [
    (
        "server_cpu_us_per_received_packet",
        None,
        "Server CPU per packet received by the subscribers",
        Unit::Us,
    ),
    (
        "server_rss_bytes_per_subscriber",
        None,
        "Server memory per subscriber",
        Unit::Kb,
    ),
    ("loss_pct", None, "Media loss", Unit::Pct),
    ("first_frame_ms", Some("p50"), "First frame p50", Unit::Ms),
    ("join_ms", Some("p50"), "Join p50", Unit::Ms),
    ("server_cpu_pct", None, "Server CPU", Unit::PctCore),
];

/// A compared figure of one report (`key`, or its `field` for percentiles).
pub(super) fn figure<'a>(report: &'a Value, key: &str, field: Option<&str>) -> &'a Value {
    field.map_or(&report[key], |f| &report[key][f])
}

/// The name of a compared figure's ratio in `janus_over_rtcroom`.
pub(super) fn ratio_name(key: &str, field: Option<&str>) -> String {
    field.map_or_else(|| key.to_owned(), |f| format!("{key}_{f}"))
}
/// The whole report page; a `--target both` report gets the side-by-side table first, then
/// each server's own results.
pub fn render(report: &Value) -> String {
    let scenario = report["scenario"].as_str().unwrap_or("?");
    let mut html = head(scenario);
    if report["target"] == "both" {
        html.push_str(
            "<h2>rtcroom and Janus, same run, same clients</h2><table><tr><th>figure</th>\
             <th>rtcroom</th><th>Janus</th><th>Janus ÷ rtcroom</th></tr>",
        );
        for (key, field, name, unit) in SIDE_BY_SIDE {
            let value = |r: &Value| {
                headline_value(figure(r, key, field), unit).unwrap_or_else(|| "–".into())
            };
            let ratio = report["janus_over_rtcroom"][ratio_name(key, field)]
                .as_f64()
                .map_or_else(|| "–".into(), |r| format!("{r:.2}×"));
            let _ = write!(
                html,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(&value(&report["rtcroom"])),
                esc(&value(&report["janus"])),
                esc(&ratio)
            );
        }
        html.push_str(
            "</table><p>Janus ÷ rtcroom above 1: rtcroom uses less, is faster or loses less. \
             CPU per packet is counted the same way for both (packets the subscribers \
             received), as Janus has no packet counter.</p>",
        );
        for name in ["rtcroom", "janus"] {
            let _ = write!(html, "<h1>{}</h1>", esc(name));
            body(&mut html, &report[name]);
        }
    } else {
        body(&mut html, report);
    }
    html.push_str("</body></html>\n");
    html
}

fn head(scenario: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>rtcroom bench: {s}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}figure{{margin:1.5em 0}}
figcaption{{font-weight:bold;margin-bottom:.3em}}</style></head><body>
<h1>rtcroom bench: {s}</h1>"#,
        s = esc(scenario)
    )
}

/// One run's results: warnings, headline table, raw keys, plots.
fn body(html: &mut String, report: &Value) {
    if report["generator_saturated"].as_bool() == Some(true) {
        html.push_str(
            "<p><strong>The load generator was saturated in this run:</strong> it (or the \
             machine it shares with the server) could not keep up, so loss and timing \
             measure the generator as much as the server.</p>",
        );
    }
    html.push_str(
        "<h2>Results</h2><table><tr><th>figure</th><th>value</th><th>what it is</th></tr>",
    );
    for (key, name, unit, meaning) in HEADLINES {
        if let Some(value) = headline_value(&report[key], unit) {
            let _ = write!(
                html,
                "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(&value),
                esc(meaning)
            );
        }
    }
    html.push_str("</table><h2>Every figure (the JSON report's keys)</h2><table>");
    if let Value::Object(m) = report {
        for (k, v) in m {
            if k.ends_with("_samples") || k == "series" || k == "per_subscription" {
                continue;
            }
            let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(k), cell(v));
        }
    }
    html.push_str("</table>");
    let samples = |key: &str| -> Vec<f64> {
        report[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let join = samples("join_ms_samples");
    if !join.is_empty() {
        html.push_str(&histogram(
            "Join round-trip distribution",
            "join round-trip (ms)",
            &join,
        ));
    }
    let first = samples("first_video_packet_ms_samples");
    if !first.is_empty() {
        html.push_str(&histogram(
            "Time to first video packet",
            "ms after subscribe",
            &first,
        ));
    }
    if let Some(series) = report["series"].as_array() {
        let pts = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(f64, f64)> {
            series
                .iter()
                .filter_map(|p| Some((p["t"].as_f64()?, f(p)?)))
                .collect()
        };
        // Bitrate from the running byte count between consecutive points.
        let mut kbps = Vec::with_capacity(series.len());
        let (mut last_b, mut last_t) = (0.0, 0.0);
        for p in series {
            let (Some(t), Some(b)) = (p["t"].as_f64(), p["received_bytes"].as_f64()) else {
                continue;
            };
            if !kbps.is_empty() || last_t > 0.0 {
                kbps.push((
                    t,
                    (b - last_b).max(0.0) * 8.0 / 1000.0 / (t - last_t).max(1e-3),
                ));
            }
            (last_b, last_t) = (b, t);
        }
        if !kbps.is_empty() {
            html.push_str(&line_chart(
                "Received bitrate over time (all subscribers)",
                "seconds into the window",
                "kbit/s",
                &kbps,
            ));
        }
        let cpu = pts(&|p| p["server_cpu_pct"].as_f64());
        if !cpu.is_empty() {
            html.push_str(&line_chart(
                "Server CPU over time",
                "seconds into the window",
                "% of a core",
                &cpu,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn page_is_self_contained_and_has_the_plots() {
        let r = json!({
            "scenario": "livestream<x>",
            "loss_pct": 0.25,
            "join_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
            "first_video_packet_ms_samples": [10.0, 12.0, 30.0],
            "series": [
                {"t": 1.0, "received_bytes": 1000.0, "server_cpu_pct": 10.0},
                {"t": 2.0, "received_bytes": 3000.0, "server_cpu_pct": 12.0}
            ]
        });
        let html = render(&r);
        assert!(html.contains("livestream&lt;x&gt;"));
        // The headline table comes first, with units; figures the run did not measure
        // (null, absent) are left out of it.
        let results = html.find("<h2>Results</h2>").unwrap();
        let raw = html.find("<h2>Every figure").unwrap();
        assert!(results < raw);
        let head = &html[results..raw];
        assert!(
            head.contains("<th>Media loss</th><td>0.25 %</td>"),
            "{head}"
        );
        assert!(
            head.contains("p50 1.0 ms · p95 2.0 ms · p99 3.0 ms"),
            "{head}"
        );
        assert!(!head.contains("First frame"), "{head}");
        assert!(!html.contains("saturated"));
        assert!(render(&json!({"generator_saturated": true})).contains("was saturated"));
        assert!(html.contains("p50 1 · p95 2"));
        assert_eq!(html.matches("<svg").count(), 3);
        // The only URL is the SVG namespace: nothing is fetched.
        assert_eq!(
            html.matches("http://").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(!html.contains("<script"));
        // Second point: 2000 bytes in 1 s = 16 kbit/s.
        assert!(html.contains("polyline"));
    }

    #[test]
    fn a_side_by_side_report_shows_both_servers_and_the_ratios() {
        let r = json!({
            "scenario": "livestream",
            "target": "both",
            "rtcroom": {"scenario": "livestream", "server_cpu_us_per_received_packet": 4.0,
                        "join_ms": {"p50": 2.0, "p95": 3.0, "p99": 4.0, "max": 5.0}},
            "janus": {"scenario": "livestream", "server_cpu_us_per_received_packet": 10.0,
                      "generator_saturated": true},
            "janus_over_rtcroom": {"server_cpu_us_per_received_packet": 2.5, "join_ms_p50": null},
        });
        let html = render(&r);
        let table = &html[html.find("same run").unwrap()..html.find("<h1>rtcroom</h1>").unwrap()];
        assert!(
            table.contains(
                "<th>Server CPU per packet received by the subscribers</th><td>4.00 µs</td>\
                 <td>10.00 µs</td><td>2.50×</td>"
            ),
            "{table}"
        );
        assert!(
            table.contains("<th>Join p50</th><td>2.0 ms</td><td>–</td><td>–</td>"),
            "{table}"
        );
        // Each server's own section follows, in order, with its own warnings.
        let ours = html.find("<h1>rtcroom</h1>").unwrap();
        let janus = html.find("<h1>janus</h1>").unwrap();
        assert!(ours < janus);
        assert!(html[janus..].contains("was saturated"));
        assert!(!html[ours..janus].contains("was saturated"));
    }

    #[test]
    fn histogram_bins_every_sample() {
        let svg = histogram("t", "x", &[1.0, 1.0, 2.0, 100.0]);
        assert_eq!(svg.matches("<rect").count(), 20);
    }
}
