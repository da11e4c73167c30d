//! The engine's own cost per request, without a server: bench/app.py's routes run through
//! `Runtime::run` on one thread that keeps the GIL (as a pool thread of the nginx module
//! does while it drains its queue), into a sink that drops the output. What the server
//! adds (parsing, the hand-off, the socket) is not in it, so a change to the request path
//! in the engine shows here without the noise of a shared machine.
//!
//!     cargo bench --bench request_path -- /hello 200000      # ns per request
//!
//! Under `valgrind --tool=callgrind` two runs of different lengths give the exact
//! instructions per request (their difference over the difference in requests).

use pyo3::Python;
use rwsgi::{
    AppSpec, ClientGone, LogLevel, OutputEvent, Request, ResponseSink, Runtime, ServerTraits,
};
use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

/// Takes the events and drops them, as a server would after writing them out.
struct NullSink;

impl ResponseSink for NullSink {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        events.clear();
        Ok(())
    }

    fn log(&self, _level: LogLevel, message: &str) {
        eprintln!("{message}");
    }
}

/// What the nginx module builds for `GET <path>` from a load generator.
fn request(path: &str) -> Request {
    let headers: [(&[u8], &[u8]); 3] = [
        (b"Host", b"127.0.0.1:8080"),
        (b"User-Agent", b"ApacheBench/2.3"),
        (b"Accept", b"*/*"),
    ];
    Request {
        method: "GET".into(),
        path_info: path.as_bytes().to_vec(),
        protocol: "HTTP/1.1".into(),
        server_name: b"localhost".to_vec(),
        server_port: "8080".into(),
        remote_addr: "127.0.0.1".into(),
        remote_port: "40000".into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect(),
        request_uri: path.as_bytes().to_vec(),
        server_software: Cow::Borrowed("nginx/1.22.1 rwsgi/0.1.0"),
        ..Request::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let path = args.next().unwrap_or_else(|| "/hello".into());
    let n: u32 = args
        .next()
        .map_or(200_000, |s| s.parse().expect("a number of requests"));
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/app.py");
    let traits = ServerTraits {
        multithread: true,
        multiprocess: true,
    };
    let runtime = Runtime::start(None, traits).expect("Python starts");
    let spec = AppSpec::parse(app, None).expect("the app's path");
    runtime.preload(&spec).expect("bench/app.py imports");
    let template = request(&path);
    let sink: Arc<dyn ResponseSink> = Arc::new(NullSink);
    Python::attach(|_| {
        let run = || {
            let body = Box::new(Cursor::new(Vec::new()));
            runtime.run(&spec, template.clone(), body, sink.clone());
        };
        (0..1000).for_each(|_| run());
        let t0 = Instant::now();
        (0..n).for_each(|_| run());
        let ns = t0.elapsed().as_nanos() as f64 / f64::from(n);
        println!("{path}: {n} requests, {ns:.0} ns per request");
    });
}
