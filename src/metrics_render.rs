//! The status page's three forms of a [`Snapshot`]: HTML for a person, JSON, and the
//! Prometheus text exposition format (version 0.0.4). Pure functions; the server module
//! picks the form with [`Format::choose`] and sends the text with its content type.

use crate::metrics::{AppSnapshot, Snapshot, DURATION_BUCKETS};
use std::fmt::Write;

/// Which server the page describes.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// "nginx" or "apache".
    pub server: &'static str,
    /// `sys.version`'s first line (rwsgi::python_version_line).
    pub python_version: String,
}

pub const RWSGI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reads one counter of an app.
type Getter = fn(&AppSnapshot) -> u64;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
    Prometheus,
}

impl Format {
    /// `?format=json|prometheus|html` wins; else an Accept header asking for the
    /// Prometheus text format (`text/plain;version=0.0.4`) or OpenMetrics gets
    /// Prometheus; else HTML.
    pub fn choose(query: &[u8], accept: Option<&[u8]>) -> Format {
        for pair in query.split(|&b| b == b'&') {
            match pair {
                b"format=json" => return Format::Json,
                b"format=prometheus" | b"format=metrics" => return Format::Prometheus,
                b"format=html" => return Format::Html,
                _ => {}
            }
        }
        let accept = String::from_utf8_lossy(accept.unwrap_or_default()).to_ascii_lowercase();
        let accept: String = accept.chars().filter(|c| !c.is_whitespace()).collect();
        if accept.contains("application/openmetrics-text")
            || (accept.contains("text/plain") && accept.contains("version=0.0.4"))
        {
            return Format::Prometheus;
        }
        Format::Html
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

pub fn render(format: Format, snap: &Snapshot, info: &ServerInfo) -> String {
    match format {
        Format::Html => html(snap, info),
        Format::Json => json(snap, info),
        Format::Prometheus => prometheus(snap, info),
    }
}

fn total(app: &AppSnapshot) -> u64 {
    app.requests.iter().sum()
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

pub fn prometheus(snap: &Snapshot, info: &ServerInfo) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "rwsgi_info",
        "gauge",
        "rwsgi and Python versions (value 1).",
    );
    let _ = writeln!(
        o,
        "rwsgi_info{{server=\"{}\",version=\"{}\",python_version=\"{}\"}} 1",
        info.server,
        RWSGI_VERSION,
        label(info.python_version.split_whitespace().next().unwrap_or(""))
    );
    family(
        &mut o,
        "rwsgi_start_time_seconds",
        "gauge",
        "When the server started (Unix time).",
    );
    let _ = writeln!(o, "rwsgi_start_time_seconds {}", snap.start_time);
    family(
        &mut o,
        "rwsgi_worker_starts_total",
        "counter",
        "Worker processes started since the server started.",
    );
    let _ = writeln!(o, "rwsgi_worker_starts_total {}", snap.worker_starts);
    family(
        &mut o,
        "rwsgi_worker_processes",
        "gauge",
        "Worker processes running now.",
    );
    let _ = writeln!(o, "rwsgi_worker_processes {}", snap.threads.processes);
    family(
        &mut o,
        "rwsgi_threads",
        "gauge",
        "Threads of the worker processes: running a request (busy), holding one that waits \
         to enter Python (waiting), or neither (idle).",
    );
    let t = &snap.threads;
    for (state, n) in [("busy", t.busy), ("waiting", t.waiting), ("idle", t.idle)] {
        let _ = writeln!(o, "rwsgi_threads{{state=\"{state}\"}} {n}");
    }

    family(
        &mut o,
        "rwsgi_requests_total",
        "counter",
        "Requests answered, by status class.",
    );
    for app in &snap.apps {
        for (class, n) in CLASSES.iter().zip(app.requests) {
            let _ = writeln!(
                o,
                "rwsgi_requests_total{{app=\"{}\",code=\"{class}\"}} {n}",
                label(&app.name)
            );
        }
    }
    family(
        &mut o,
        "rwsgi_requests_in_flight",
        "gauge",
        "Requests running in the app now.",
    );
    for app in &snap.apps {
        let _ = writeln!(
            o,
            "rwsgi_requests_in_flight{{app=\"{}\"}} {}",
            label(&app.name),
            app.in_flight
        );
    }
    family(
        &mut o,
        "rwsgi_requests_waiting",
        "gauge",
        "Requests of those in flight that wait to run: for a thread (nginx) or to enter \
         Python (Apache).",
    );
    for app in &snap.apps {
        let _ = writeln!(
            o,
            "rwsgi_requests_waiting{{app=\"{}\"}} {}",
            label(&app.name),
            app.waiting
        );
    }
    family(
        &mut o,
        "rwsgi_request_duration_seconds",
        "histogram",
        "Time from the request reaching the module to its end.",
    );
    for app in &snap.apps {
        let name = label(&app.name);
        let bounds = DURATION_BUCKETS.iter().copied().chain([f64::INFINITY]);
        for (le, n) in bounds.zip(&app.duration_buckets) {
            let _ = writeln!(
                o,
                "rwsgi_request_duration_seconds_bucket{{app=\"{name}\",le=\"{}\"}} {n}",
                float(le)
            );
        }
        let _ = writeln!(
            o,
            "rwsgi_request_duration_seconds_sum{{app=\"{name}\"}} {}\n\
             rwsgi_request_duration_seconds_count{{app=\"{name}\"}} {}",
            app.duration_sum, app.duration_count
        );
    }
    let counters: [(&str, &str, Getter); 4] = [
        (
            "rwsgi_response_bytes_total",
            "Response body bytes the app produced.",
            |a| a.bytes_out,
        ),
        (
            "rwsgi_client_aborts_total",
            "Requests whose client left before the response was complete.",
            |a| a.client_aborts,
        ),
        (
            "rwsgi_queue_full_total",
            "Requests answered 503 because every Python thread was busy and the queue full.",
            |a| a.queue_full,
        ),
        (
            "rwsgi_app_import_failures_total",
            "Times loading the app failed: at a worker's start, or retried by a request.",
            |a| a.import_failures,
        ),
    ];
    for (name, help, get) in counters {
        family(&mut o, name, "counter", help);
        for app in &snap.apps {
            let _ = writeln!(o, "{name}{{app=\"{}\"}} {}", label(&app.name), get(app));
        }
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub fn json(snap: &Snapshot, info: &ServerInfo) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"server\":{},\"rwsgi_version\":{},\"python_version\":{},\"start_time\":{},\
         \"uptime_seconds\":{},\"worker_starts\":{},\"worker_processes\":{},\
         \"threads\":{{\"busy\":{},\"waiting\":{},\"idle\":{}}},\"apps\":[",
        json_str(info.server),
        json_str(RWSGI_VERSION),
        json_str(&info.python_version),
        snap.start_time,
        snap.now.saturating_sub(snap.start_time),
        snap.worker_starts,
        snap.threads.processes,
        snap.threads.busy,
        snap.threads.waiting,
        snap.threads.idle
    );
    for (i, app) in snap.apps.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let requests: Vec<String> = CLASSES
            .iter()
            .zip(app.requests)
            .map(|(c, n)| format!("\"{c}\":{n}"))
            .collect();
        let buckets: Vec<String> = DURATION_BUCKETS
            .iter()
            .map(|&b| float(b))
            .chain(["+Inf".to_string()])
            .zip(&app.duration_buckets)
            .map(|(le, n)| format!("\"{le}\":{n}"))
            .collect();
        let _ = write!(
            o,
            "{{\"app\":{},\"requests_total\":{},\"requests\":{{{}}},\"in_flight\":{},\
             \"waiting\":{},\"duration_seconds\":{{\"count\":{},\"sum\":{},\"buckets\":{{{}}}}},\
             \"bytes_out\":{},\"client_aborts\":{},\"queue_full\":{},\"import_failures\":{}}}",
            json_str(&app.name),
            total(app),
            requests.join(","),
            app.in_flight,
            app.waiting,
            app.duration_count,
            app.duration_sum,
            buckets.join(","),
            app.bytes_out,
            app.client_aborts,
            app.queue_full,
            app.import_failures
        );
    }
    o.push_str("]}\n");
    o
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn html(snap: &Snapshot, info: &ServerInfo) -> String {
    let mut o = String::new();
    let uptime = snap.now.saturating_sub(snap.start_time);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rwsgi status</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}</style></head><body>\n\
         <h1>rwsgi status</h1>\n<p>{} · rwsgi {} · Python {}<br>up {}d {:02}:{:02}:{:02} · \
         {} worker starts · <a href=\"?format=json\">JSON</a> · \
         <a href=\"?format=prometheus\">Prometheus</a><br>{} worker processes · threads: \
         {} busy, {} waiting, {} idle</p>\n",
        html_escape(info.server),
        RWSGI_VERSION,
        html_escape(&info.python_version),
        uptime / 86400,
        uptime % 86400 / 3600,
        uptime % 3600 / 60,
        uptime % 60,
        snap.worker_starts,
        snap.threads.processes,
        snap.threads.busy,
        snap.threads.waiting,
        snap.threads.idle
    );
    o.push_str(
        "<table>\n<tr><th>app</th><th>requests</th><th>in flight</th><th>waiting</th><th>1xx</th><th>2xx</th>\
         <th>3xx</th><th>4xx</th><th>5xx</th><th>mean time</th><th>bytes out</th>\
         <th>client aborts</th><th>queue full</th><th>import failures</th></tr>\n",
    );
    for app in &snap.apps {
        let mean = if app.duration_count > 0 {
            format!(
                "{:.1} ms",
                app.duration_sum * 1000.0 / app.duration_count as f64
            )
        } else {
            "-".into()
        };
        let [c1, c2, c3, c4, c5] = app.requests;
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{c1}</td><td>{c2}</td><td>{c3}</td>\
             <td>{c4}</td><td>{c5}</td><td>{mean}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            html_escape(&app.name),
            total(app),
            app.in_flight,
            app.waiting,
            app.bytes_out,
            app.client_aborts,
            app.queue_full,
            app.import_failures
        );
    }
    if snap.apps.is_empty() {
        o.push_str("<tr><td colspan=\"14\">no requests yet</td></tr>\n");
    }
    o.push_str("</table>\n</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Snapshot, ServerInfo) {
        let app = AppSnapshot {
            name: "/a\"b".into(),
            requests: [0, 3, 0, 1, 0],
            in_flight: 1,
            waiting: 1,
            duration_buckets: vec![1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4, 4],
            duration_count: 4,
            duration_sum: 7.5,
            bytes_out: 99,
            ..Default::default()
        };
        let snap = Snapshot {
            start_time: 100,
            now: 200,
            worker_starts: 2,
            threads: crate::metrics::ThreadsSnapshot {
                processes: 2,
                busy: 1,
                waiting: 0,
                idle: 31,
            },
            apps: vec![app],
        };
        let info = ServerInfo {
            server: "nginx",
            python_version: "3.11.2 (main)".into(),
        };
        (snap, info)
    }

    #[test]
    fn chooses_the_form() {
        assert_eq!(Format::choose(b"format=json", None), Format::Json);
        assert_eq!(
            Format::choose(b"a=1&format=prometheus", None),
            Format::Prometheus
        );
        assert_eq!(
            Format::choose(b"", Some(b"text/plain; version=0.0.4; q=0.9,*/*")),
            Format::Prometheus
        );
        assert_eq!(
            Format::choose(b"", Some(b"application/openmetrics-text;version=1.0.0")),
            Format::Prometheus
        );
        assert_eq!(Format::choose(b"", Some(b"text/html")), Format::Html);
        assert_eq!(
            Format::choose(b"format=html", Some(b"text/plain;version=0.0.4")),
            Format::Html
        );
    }

    #[test]
    fn renders_the_three_forms() {
        let (snap, info) = sample();
        let p = prometheus(&snap, &info);
        assert!(
            p.contains("rwsgi_requests_total{app=\"/a\\\"b\",code=\"2xx\"} 3\n"),
            "{p}"
        );
        assert!(
            p.contains("rwsgi_request_duration_seconds_bucket{app=\"/a\\\"b\",le=\"+Inf\"} 4\n")
        );
        assert!(
            p.contains("rwsgi_request_duration_seconds_bucket{app=\"/a\\\"b\",le=\"0.005\"} 1\n")
        );
        assert!(p.contains("rwsgi_info{server=\"nginx\""));
        assert!(p.contains("rwsgi_threads{state=\"idle\"} 31\n"), "{p}");
        assert!(
            p.contains("rwsgi_requests_waiting{app=\"/a\\\"b\"} 1\n"),
            "{p}"
        );
        assert!(p.contains("rwsgi_worker_processes 2\n"));
        let j = json(&snap, &info);
        assert!(
            j.contains("\"app\":\"/a\\\"b\",\"requests_total\":4"),
            "{j}"
        );
        assert!(j.contains("\"uptime_seconds\":100"));
        assert!(
            j.contains("\"threads\":{\"busy\":1,\"waiting\":0,\"idle\":31}"),
            "{j}"
        );
        assert!(j.contains("\"in_flight\":1,\"waiting\":1,"), "{j}");
        let h = html(&snap, &info);
        assert!(
            h.contains("<td>/a&quot;b</td><td>4</td><td>1</td><td>1</td>"),
            "{h}"
        );
        assert!(h.contains("threads: 1 busy, 0 waiting, 31 idle"), "{h}");
    }
}
