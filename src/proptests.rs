//! Property tests across modules:
//!
//! - `wsgi.input` ([`Input`]) behaves exactly like Python's `io.BytesIO` over the same
//!   body for any sequence of read() / read(n) / readline() / readline(n) / readlines() /
//!   readlines(hint) / next() calls, while the server's [`BodyReader`] hands the body over
//!   in random short reads.
//! - [`Response`] framing: whatever the app pushes (data, files, Content-Length or not,
//!   start_response late or replaced), whether it fails, whether the client leaves and
//!   whether the request is HEAD or the status one without a body (204, 304), the events
//!   handed to the server keep HTTP framing right.

use crate::input::Input;
use crate::response::Response;
use crate::server::{BodyReader, ClientGone, LogLevel, OutputEvent, ResponseHead, ResponseSink};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn python() {
    if let Err(e) = crate::interpreter::initialize(None) {
        panic!("cannot start Python for the property tests: {e}");
    }
}

/// Few enough cases that both properties run in seconds; no regression files in src/.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------ wsgi.input vs BytesIO

/// A body delivered in short reads of the given sizes (cycled). Reports how much it
/// handed over, the size of its last read, and calls made after it had already reported
/// the end of the body (Ok(0)).
struct ShortReads {
    body: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
    ended: bool,
    seen: Arc<ReaderStats>,
}

#[derive(Default)]
struct ReaderStats {
    pulled: AtomicUsize,
    /// usize::MAX until the first read.
    last_read: AtomicUsize,
    calls_after_end: AtomicUsize,
}

impl BodyReader for ShortReads {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            self.seen.calls_after_end.fetch_add(1, Ordering::SeqCst);
        }
        let want = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = want.min(buf.len()).min(self.body.len() - self.pos);
        buf[..n].copy_from_slice(&self.body[self.pos..self.pos + n]);
        self.pos += n;
        if n == 0 {
            self.ended = true;
        }
        self.seen.pulled.fetch_add(n, Ordering::SeqCst);
        self.seen.last_read.store(n, Ordering::SeqCst);
        Ok(n)
    }
}

#[derive(Debug, Clone)]
enum ReadOp {
    Read,
    ReadN(isize),
    Readline,
    ReadlineN(isize),
    Readlines,
    ReadlinesHint(isize),
    Next,
}

#[derive(Debug, PartialEq)]
enum Got {
    Bytes(Vec<u8>),
    Lines(Vec<Vec<u8>>),
    Stop,
    Raised(String),
}

fn size_arg() -> impl Strategy<Value = isize> {
    prop_oneof![
        1 => -3isize..0,
        1 => Just(0isize),
        4 => 1isize..16,
        3 => 1isize..400,
        2 => 1isize..200_000,
    ]
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        1 => Just(ReadOp::Read),
        4 => size_arg().prop_map(ReadOp::ReadN),
        4 => Just(ReadOp::Readline),
        4 => size_arg().prop_map(ReadOp::ReadlineN),
        1 => Just(ReadOp::Readlines),
        2 => size_arg().prop_map(ReadOp::ReadlinesHint),
        3 => Just(ReadOp::Next),
    ]
}

/// Bodies with many newlines (small, drawn byte by byte) or large ones (generated from a
/// seed) that span several of the input's 64 KiB fills.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![3 => Just(b'\n'), 5 => b'a'..=b'e', 1 => any::<u8>()];
    prop_oneof![
        6 => vec(byte, 0..600),
        1 => (any::<u64>(), 0usize..200_000, 1u64..2_000).prop_map(|(seed, len, line)| {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x % line == 0 { b'\n' } else { (x >> 24) as u8 }
                })
                .collect()
        }),
    ]
}

fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![4 => 1usize..8, 3 => 1usize..300, 1 => 1usize..100_000],
        1..12,
    )
}

fn call(obj: &Bound<'_, PyAny>, op: &ReadOp) -> Got {
    let py = obj.py();
    let result = match op {
        ReadOp::Read => obj.call_method0("read"),
        ReadOp::ReadN(n) => obj.call_method1("read", (*n,)),
        ReadOp::Readline => obj.call_method0("readline"),
        ReadOp::ReadlineN(n) => obj.call_method1("readline", (*n,)),
        ReadOp::Readlines => obj.call_method0("readlines"),
        ReadOp::ReadlinesHint(n) => obj.call_method1("readlines", (*n,)),
        ReadOp::Next => py
            .import("builtins")
            .and_then(|b| b.getattr("next"))
            .and_then(|next| next.call1((obj, py.None()))),
    };
    let value = match result {
        Ok(v) => v,
        Err(e) => return Got::Raised(e.to_string()),
    };
    if value.is_none() {
        return Got::Stop;
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Got::Bytes(b.as_bytes().to_vec());
    }
    match value.cast::<PyList>() {
        Ok(list) => Got::Lines(
            list.iter()
                .map(|l| match l.cast::<PyBytes>() {
                    Ok(b) => b.as_bytes().to_vec(),
                    Err(_) => format!("<not bytes: {l}>").into_bytes(),
                })
                .collect(),
        ),
        Err(_) => Got::Raised(format!("unexpected result type: {value}")),
    }
}

fn short(g: &Got) -> String {
    let s = format!("{g:?}");
    if s.len() > 300 {
        format!("{}...", &s[..300])
    } else {
        s
    }
}

proptest! {
    #![proptest_config(config(6_000))]

    /// wsgi.input and io.BytesIO give the same answer to every call, whatever the chunking
    /// of the body by the server; the server is never asked again after it ended the body,
    /// and never for more than the call needs (a readline(n) that can be answered from
    /// what arrived must not wait for more of the body).
    #[test]
    fn input_matches_bytesio(
        body in body(),
        sizes in read_sizes(),
        ops in vec(read_op(), 0..24),
    ) {
        python();
        let seen = Arc::new(ReaderStats {
            last_read: AtomicUsize::new(usize::MAX),
            ..ReaderStats::default()
        });
        let reader = ShortReads {
            body: body.clone(),
            pos: 0,
            sizes,
            next: 0,
            ended: false,
            seen: seen.clone(),
        };
        Python::attach(|py| -> Result<(), TestCaseError> {
            let input = Bound::new(py, Input::new(Box::new(reader))).unwrap().into_any();
            let oracle = py
                .import("io").unwrap()
                .getattr("BytesIO").unwrap()
                .call1((PyBytes::new(py, &body),)).unwrap();
            // Every op, then a final read() that must return the same remainder.
            for (i, op) in ops.iter().chain(std::iter::once(&ReadOp::Read)).enumerate() {
                let got = call(&input, op);
                let want = call(&oracle, op);
                prop_assert!(
                    got == want,
                    "call {} {:?}: wsgi.input gave {} but BytesIO gave {} (body {} bytes)",
                    i, op, short(&got), short(&want), body.len()
                );
                // Bytes pulled from the server but not yet given to the app: the last
                // read was needed, so at least one of its bytes went to the app (or it
                // was the end of the body and nothing is left over).
                let given: usize = oracle.call_method0("tell").unwrap().extract().unwrap();
                let buffered = seen.pulled.load(Ordering::SeqCst) - given;
                let last = seen.last_read.load(Ordering::SeqCst);
                prop_assert!(
                    buffered == 0 || buffered < last,
                    "call {} {:?}: read ahead of the app: {} bytes buffered after a read of {}",
                    i, op, buffered, last
                );
            }
            // At the end both are exhausted.
            prop_assert_eq!(call(&input, &ReadOp::ReadN(1)), Got::Bytes(Vec::new()));
            prop_assert_eq!(call(&input, &ReadOp::Readline), Got::Bytes(Vec::new()));
            prop_assert_eq!(call(&input, &ReadOp::Next), Got::Stop);
            Ok(())
        })?;
        prop_assert_eq!(seen.calls_after_end.load(Ordering::SeqCst), 0,
            "the BodyReader was called again after it returned Ok(0)");
    }
}

// ------------------------------------------------------------------ response framing

/// One event as the server saw it (files only by length).
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Head(Option<u64>),
    Data(Vec<u8>),
    File(u64),
    End,
    Abort,
    Fail(u16),
}

impl Ev {
    fn is_final(&self) -> bool {
        matches!(self, Ev::End | Ev::Abort | Ev::Fail(_))
    }
}

/// A server that records every `send` call (with whether the client was already gone,
/// i.e. whether the call failed) and every log line.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(bool, Vec<Ev>)>>,
    logs: Mutex<Vec<String>>,
    gone: AtomicBool,
}

impl ResponseSink for Recorder {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        let gone = self.gone.load(Ordering::SeqCst);
        let evs = events
            .drain(..)
            .map(|e| match e {
                OutputEvent::Head(h) => Ev::Head(h.content_length),
                OutputEvent::Data(d) => Ev::Data(d.to_vec()),
                OutputEvent::File { len, .. } => Ev::File(len),
                OutputEvent::End => Ev::End,
                OutputEvent::Abort => Ev::Abort,
                OutputEvent::Fail(s) => Ev::Fail(s),
            })
            .collect();
        self.calls.lock().unwrap().push((gone, evs));
        if gone {
            Err(ClientGone)
        } else {
            Ok(())
        }
    }

    fn log(&self, _level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push(message.to_string());
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// start_response (or, once the head is out, an exc_info call that cannot replace it).
    Start(Option<u64>),
    /// A body item of this many bytes.
    Push(usize),
    /// A file_wrapper span of this many bytes.
    PushFile(u64),
    /// The single-item-list path: Content-Length from the item when the app gave none.
    SetLength(u64),
    Flush,
    /// The client disconnects: every later send fails.
    ClientLeaves,
}

fn content_length() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(0u64)),
        3 => (0u64..3_000).prop_map(Some),
        1 => (0u64..60_000).prop_map(Some),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => content_length().prop_map(Step::Start),
        // The last range crosses chunk::SHARE_FROM: large pushes are shared, not copied.
        8 => prop_oneof![Just(0usize), 1usize..50, 1usize..2_000, 15_000usize..20_000]
            .prop_map(Step::Push),
        1 => (0u64..2_000).prop_map(Step::PushFile),
        1 => (0u64..3_000).prop_map(Step::SetLength),
        3 => Just(Step::Flush),
        1 => Just(Step::ClientLeaves),
    ]
}

/// What the app did, for the checks.
struct Pushed {
    /// push index (= the byte value of its data) and length, for pushes that returned Ok.
    accepted: Vec<(usize, usize)>,
    lengths: Vec<usize>,
}

fn run_response(
    starts_with_head: Option<Option<u64>>,
    steps: &[Step],
    status: u16,
    head_request: bool,
    app_failed: bool,
) -> (Arc<Recorder>, Pushed) {
    let rec = Arc::new(Recorder::default());
    let sink: Arc<dyn ResponseSink> = rec.clone();
    let mut pushed = Pushed {
        accepted: Vec::new(),
        lengths: Vec::new(),
    };
    let devnull = || std::fs::File::open("/dev/null").expect("/dev/null");
    Python::attach(|py| {
        let mut r = Response::new(sink, head_request);
        let start = |r: &mut Response, cl: Option<u64>| {
            // start_response.rs replaces the head only while nothing was sent.
            if !r.head_sent {
                r.head = Some(ResponseHead {
                    status,
                    status_line: format!("{status} X").into_bytes(),
                    headers: vec![(b"Content-Type".to_vec(), b"text/plain".to_vec())],
                    content_length: cl,
                });
            }
        };
        if let Some(cl) = starts_with_head {
            start(&mut r, cl);
        }
        for s in steps {
            match s {
                Step::Start(cl) => start(&mut r, *cl),
                Step::Push(n) => {
                    // Push k carries bytes of value k (k < 256: at most 64 steps).
                    let k = pushed.lengths.len();
                    pushed.lengths.push(*n);
                    if r.push_data(&PyBytes::new(py, &vec![k as u8; *n])).is_ok() && *n > 0 {
                        pushed.accepted.push((k, *n));
                    }
                }
                Step::PushFile(n) => {
                    let _ = r.push_file(devnull(), 0, *n);
                }
                Step::SetLength(n) => r.set_length_if_unset(*n),
                Step::Flush => {
                    let _ = r.flush(py);
                }
                Step::ClientLeaves => rec.gone.store(true, Ordering::SeqCst),
            }
        }
        // As call.rs does: the last batch goes out after Python is done.
        let mut last = r.finish(app_failed);
        let _ = rec.send(&mut last);
    });
    (rec, pushed)
}

proptest! {
    #![proptest_config(config(50_000))]

    #[test]
    fn response_framing_is_sound(
        starts_with_head in prop_oneof![1 => Just(None), 4 => content_length().prop_map(Some)],
        steps in vec(step(), 0..40),
        status in prop_oneof![4 => Just(200u16), 1 => Just(204u16), 1 => Just(304u16)],
        head_request in any::<bool>(),
        app_failed in any::<bool>(),
    ) {
        python();
        let (rec, pushed) = run_response(starts_with_head, &steps, status, head_request, app_failed);
        let bodyless = head_request || crate::status::forbids_body(status);
        let calls = rec.calls.lock().unwrap().clone();
        let logs = rec.logs.lock().unwrap().clone();
        let events: Vec<Ev> = calls.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
        let trace = format!("events {events:?}\nlogs {logs:?}");

        prop_assert!(calls.iter().all(|(_, e)| !e.is_empty()), "empty send\n{}", trace);

        // Exactly one final event, and it is the last one handed over.
        let finals = events.iter().filter(|e| e.is_final()).count();
        prop_assert_eq!(finals, 1, "{}", trace);
        let last = events.last().unwrap().clone();
        prop_assert!(last.is_final(), "{}", trace);

        // At most one head, before any body bytes.
        let heads: Vec<usize> = events.iter().enumerate()
            .filter(|(_, e)| matches!(e, Ev::Head(_))).map(|(i, _)| i).collect();
        prop_assert!(heads.len() <= 1, "{}", trace);
        let first_body = events.iter().position(|e| matches!(e, Ev::Data(_) | Ev::File(_)));
        if let Some(b) = first_body {
            prop_assert!(heads.first().is_some_and(|&h| h < b), "body before head\n{}", trace);
        }

        // Never more body bytes than Content-Length.
        let cl = events.iter().find_map(|e| match e { Ev::Head(cl) => Some(*cl), _ => None }).flatten();
        let bytes: u64 = events.iter().map(|e| match e {
            Ev::Data(d) => d.len() as u64,
            Ev::File(n) => *n,
            _ => 0,
        }).sum();
        if let Some(cl) = cl {
            prop_assert!(bytes <= cl, "{} bytes over Content-Length {}\n{}", bytes, cl, trace);
        }
        // No body at all after a HEAD request or a 204 / 304 head: the server would send
        // it, and the next response on the connection would start inside it.
        if bodyless {
            prop_assert_eq!(bytes, 0, "body after a head that allows none\n{}", trace);
        }

        // Fail (an error page) only when no head went out; End only for a complete body.
        match last {
            Ev::Fail(status) => {
                prop_assert!(heads.is_empty(), "Fail after the head\n{}", trace);
                prop_assert_eq!(status, 500);
            }
            Ev::End => {
                prop_assert_eq!(heads.len(), 1, "End without a head\n{}", trace);
                prop_assert!(!app_failed, "End after the app failed\n{}", trace);
                if let (Some(cl), false) = (cl, bodyless) {
                    prop_assert_eq!(bytes, cl, "End of a short body\n{}", trace);
                }
            }
            Ev::Abort => {}
            _ => unreachable!(),
        }

        // Once a send failed (client gone), only the final event may follow, and it is
        // Abort. (A client that left unnoticed fails only the final send.)
        let gone_at = calls.iter().position(|(gone, _)| *gone);
        let left = gone_at.is_some_and(|i| i + 1 < calls.len());
        if left {
            for (_, later) in &calls[gone_at.unwrap() + 1..] {
                prop_assert!(later.len() == 1 && later[0].is_final(),
                    "output after the client left\n{}", trace);
            }
            prop_assert_eq!(&last, &Ev::Abort, "client gone but not aborted\n{}", trace);
        }

        // Body integrity: each Data event is (a prefix of) one push, in push order, and
        // only the last one may be cut short (at Content-Length).
        let data: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
            Ev::Data(d) => Some(d), _ => None }).collect();
        let mut prev: Option<usize> = None;
        for (j, d) in data.iter().enumerate() {
            prop_assert!(!d.is_empty(), "empty data event\n{}", trace);
            let k = d[0] as usize;
            prop_assert!(d.iter().all(|&b| b as usize == k), "mixed data event\n{}", trace);
            prop_assert!(prev.is_none_or(|p| k > p), "data out of order\n{}", trace);
            prop_assert!(d.len() <= pushed.lengths[k], "{}", trace);
            if j + 1 < data.len() {
                prop_assert_eq!(d.len(), pushed.lengths[k], "data cut short mid-body\n{}", trace);
            }
            prev = Some(k);
        }
        // A complete response lost nothing the app handed over successfully.
        if last == Ev::End {
            for &(k, n) in &pushed.accepted {
                prop_assert!(data.iter().any(|d| d[0] as usize == k && d.len() == n),
                    "accepted push {} ({} bytes) missing from a complete body\n{}", k, n, trace);
            }
        }

        // Without failure or disconnect, the outcome is the expected one.
        if !left && !app_failed {
            let started = starts_with_head.is_some()
                || steps.iter().any(|s| matches!(s, Step::Start(_)));
            if !started {
                prop_assert_eq!(&last, &Ev::Fail(500), "{}", trace);
                prop_assert!(logs.iter().any(|l| l.contains("start_response")), "{}", trace);
            } else if cl.is_some_and(|cl| bytes < cl) && !bodyless {
                prop_assert_eq!(&last, &Ev::Abort, "{}", trace);
                prop_assert!(logs.iter().any(|l| l.contains("fewer than its Content-Length")),
                    "short body not logged\n{}", trace);
            } else {
                prop_assert_eq!(&last, &Ev::End, "{}", trace);
            }
        }
        if !left && app_failed && heads.is_empty() {
            prop_assert_eq!(&last, &Ev::Fail(500), "{}", trace);
        }
    }
}
