//! A request in a daemon process group, proxied on its own Apache thread: take one of
//! the group's threads in this child (over the cap: a fast 503), connect, send the
//! request, then follow the app process's frames to the end. READ is answered by
//! pulling the client's body through httpd's input filters only then (so `Expect:
//! 100-continue` stays lazy), the response events go to the very sink embedded mode
//! uses (sink.rs), FILE descriptors become file buckets (sendfile), LOG lines go to the
//! error log in the request's context and behind its label, as embedded mode's do (the
//! app process sends them bare).
//!
//! Failures: no connection within connect-timeout is 503; no frame within socket-timeout
//! is 504 before the response head and a cut response after it; a connection that ends
//! early or breaks the protocol is 502 before the head and a cut response after it. A
//! client that goes away closes the connection, so the app's next write fails and the
//! engine closes its iterable.

use crate::app_stream::AppStream;
use crate::bindings::*;
use crate::body::ApacheBody;
use crate::daemon_groups::Group;
use crate::live::Live;
use crate::log::{self, Level};
use crate::req::Req;
use crate::sink::ApacheSink;
use crate::status::Phase;
use rwsgi::daemon::messages::{now_us, AppRef, FromApp, RequestFrame, ToApp};
use rwsgi::daemon::DATA_FRAME;
use rwsgi::{BodyReader, LogLabel, OutputEvent, Request, ResponseSink};
use std::ffi::c_int;
use std::io;
use std::sync::Arc;

/// Seconds a client is told to wait after a 503 (group busy or not reachable).
const RETRY_AFTER: &std::ffi::CStr = c"5";
/// Response bytes gathered from frames already received before they go down the
/// filters in one pass.
const BATCH_BYTES: usize = 256 * 1024;

/// What the request needs besides its group.
pub struct Proxied {
    pub app: AppRef,
    pub request: Request,
    /// Use sendfile for files the app sends.
    pub sendfile: bool,
    /// The declared length of a body that is not chunked.
    pub declared: Option<u64>,
}

/// Runs the request in `group` and returns the handler's status. `label` is its log
/// lines'; `phase` its place on the status page's gauges.
pub fn serve(
    req: Req<'_>,
    group: &Group,
    proxied: Proxied,
    label: Arc<LogLabel>,
    phase: Arc<Phase>,
) -> c_int {
    let Some(_held) = group.enter() else {
        return refuse_busy(req, &label, group);
    };
    let what = String::from_utf8_lossy(req.the_request().unwrap_or_default()).into_owned();
    let connected_at_us = now_us();
    let mut stream = match AppStream::connect(&group.socket, group.connect_timeout) {
        Ok(stream) => stream,
        Err(e) => {
            log::for_request(
                req,
                Level::Error,
                &label,
                &format!(
                    "cannot reach daemon process group {} at {} within \
                     connect-timeout={} s ({} attempts, last: {}): answering 503",
                    group.name,
                    group.socket.display(),
                    group.connect_timeout.as_secs(),
                    e.attempts,
                    e.last
                ),
            );
            return unavailable(req);
        }
    };
    let mut first = Vec::with_capacity(1024);
    ToApp::Request(Box::new(RequestFrame {
        secret: group.secret,
        accepts_files: true,
        accepts_stages: true,
        connected_at_us,
        app: proxied.app,
        request: proxied.request,
    }))
    .encode(&mut first);
    let sent = stream
        .set_timeout(group.socket_timeout)
        .and_then(|()| stream.write_all(&first));
    if let Err(e) = sent {
        log::for_request(
            req,
            Level::Error,
            &label,
            &format!(
                "cannot send the request to daemon process group {}: {e}",
                group.name
            ),
        );
        return HTTP_BAD_GATEWAY as c_int;
    }
    drop(first);

    // From here the request is reached through Live only, as in embedded mode.
    let live = Arc::new(Live::new(req.ptr(), proxied.sendfile, label));
    let mut relay = Relay {
        stream,
        live: live.clone(),
        body: ApacheBody::new(live.clone(), proxied.declared),
        sink: ApacheSink::new(live.clone(), phase),
        group,
        what,
        body_open: true,
        read_buf: Vec::new(),
        streamed: false,
    };
    let failed = relay.run();
    drop(relay);
    let Some(state) = live.retire() else {
        return HTTP_INTERNAL_SERVER_ERROR as c_int;
    };
    match failed {
        Some(status) if !state.passed && state.finish.is_none() => status,
        _ => crate::handler::outcome(&state),
    }
}

/// Over the group's cap in this child: 503 at once, so the thread goes back to Apache.
fn refuse_busy(req: Req<'_>, label: &LogLabel, group: &Group) -> c_int {
    log::for_request(
        req,
        Level::Warn,
        label,
        &format!(
            "daemon process group {} already holds {} Apache threads of this \
             process (its processes x threads): answering 503 to {}",
            group.name,
            group.cap,
            String::from_utf8_lossy(req.uri().unwrap_or_default())
        ),
    );
    unavailable(req)
}

/// 503 with Retry-After (err_headers_out: httpd's error page keeps those).
fn unavailable(req: Req<'_>) -> c_int {
    // SAFETY: the request is live (Req) and nothing else uses it now; the header name
    // and value are static strings, which outlive it.
    unsafe {
        apr_table_setn(
            (*req.ptr()).err_headers_out,
            c"Retry-After".as_ptr(),
            RETRY_AFTER.as_ptr(),
        )
    };
    HTTP_SERVICE_UNAVAILABLE as c_int
}

struct Relay<'g> {
    stream: AppStream,
    live: Arc<Live>,
    body: ApacheBody,
    sink: ApacheSink,
    group: &'g Group,
    /// The request line, for log lines.
    what: String,
    /// The body may still be asked for (false once reading it failed).
    body_open: bool,
    read_buf: Vec<u8>,
    /// The response's head had no Content-Length (a streamed body).
    streamed: bool,
}

/// Whether `batch` holds body bytes.
fn has_body(batch: &[OutputEvent]) -> bool {
    batch
        .iter()
        .any(|e| matches!(e, OutputEvent::Data(_) | OutputEvent::File { .. }))
}

impl Relay<'_> {
    /// Follows the frames to the response's end. Some(status) when the exchange failed
    /// (the status to answer if nothing was sent yet).
    fn run(&mut self) -> Option<c_int> {
        let mut batch: Vec<OutputEvent> = Vec::new();
        let mut batch_bytes = 0;
        loop {
            let next = if batch.is_empty() {
                self.stream.next_frame()
            } else {
                match self.stream.buffered_frame() {
                    // Nothing more has arrived: send what we have before waiting.
                    Ok(None) => {
                        batch_bytes = 0;
                        if self.deliver(&mut batch).is_err() {
                            return self.client_gone();
                        }
                        continue;
                    }
                    other => other,
                }
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the app process closed the connection",
                    );
                    return self.broken(&mut batch, e);
                }
                Err(e) => return self.broken(&mut batch, e),
            };
            match FromApp::decode(&frame, self.stream.files()) {
                Ok(FromApp::Read(n)) => {
                    if !batch.is_empty() {
                        batch_bytes = 0;
                        if self.deliver(&mut batch).is_err() {
                            return self.client_gone();
                        }
                    }
                    self.answer_read(n);
                }
                Ok(FromApp::Log(level, message)) => self.live.log(level, &message),
                // The app process's engine reached a stage: the gauges and the import
                // failures count it here, as for embedded mode.
                Ok(FromApp::Stage(stage)) => self.sink.stage(stage),
                Ok(FromApp::Event(event)) => {
                    let last = event.is_final();
                    match &event {
                        OutputEvent::Head(head) => self.streamed = head.content_length.is_none(),
                        OutputEvent::Data(d) => batch_bytes += d.len(),
                        _ => {}
                    }
                    if last && self.streamed && has_body(&batch) {
                        // The engine gave no Content-Length: the body is streamed and
                        // goes down the filters before its end, as in embedded mode (in
                        // one pass with EOS, httpd would count it and send a
                        // Content-Length instead of chunks, depending on timing).
                        if self.deliver(&mut batch).is_err() {
                            return self.client_gone();
                        }
                    }
                    batch.push(event);
                    if last || batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        if self.deliver(&mut batch).is_err() {
                            return self.client_gone();
                        }
                        if last {
                            return None;
                        }
                    }
                }
                Err(e) => return self.broken(&mut batch, e.into()),
            }
        }
    }

    /// The client is gone: the exchange ends (the app's next write fails, and the
    /// engine closes its iterable), keeping the log lines it had sent.
    fn client_gone(&mut self) -> Option<c_int> {
        for (level, message) in self.stream.leftover_logs() {
            self.live.log(level, &message);
        }
        None
    }

    /// Hands events to the sink; Err when the client is gone (the connection to the
    /// app is then dropped by the caller, which the app notices at its next write).
    fn deliver(&self, batch: &mut Vec<OutputEvent>) -> Result<(), rwsgi::ClientGone> {
        self.sink.send(batch)
    }

    /// Answers READ with up to `n` bytes of the client's body (an empty BODY: the body
    /// is complete). A body that cannot be read (client gone, over LimitRequestBody,
    /// bad chunking) closes our sending side instead, so the app's read fails as it
    /// would in embedded mode; the status httpd chose is kept for the answer.
    fn answer_read(&mut self, n: u32) {
        if !self.body_open {
            return;
        }
        let want = (n as usize).clamp(1, DATA_FRAME);
        self.read_buf.resize(want, 0);
        match self.body.read(&mut self.read_buf) {
            Ok(got) => {
                let mut frame = Vec::with_capacity(got + 8);
                ToApp::Body(self.read_buf[..got].to_vec()).encode(&mut frame);
                // A failed write shows as the connection ending, at the next read.
                let _ = self.stream.write_all(&frame);
            }
            Err(e) => {
                self.live.log(
                    Level::Info,
                    &format!("{e}: the app's read of wsgi.input fails"),
                );
                self.body_open = false;
                self.stream.shutdown_write();
            }
        }
    }

    /// The exchange broke: logs why; a response already on its way is cut.
    fn broken(&mut self, batch: &mut Vec<OutputEvent>, e: io::Error) -> Option<c_int> {
        // (An empty batch would pass the default head down: nothing must go out unless
        // the app produced it.)
        if !batch.is_empty() {
            let _ = self.deliver(batch);
        }
        let passed = self.live.with(|s| s.passed || s.gone).unwrap_or(true);
        let (status, why) = if e.kind() == io::ErrorKind::TimedOut {
            (
                HTTP_GATEWAY_TIME_OUT,
                format!(
                    "daemon process group {} sent nothing for socket-timeout={} s",
                    self.group.name,
                    self.group.socket_timeout.as_secs()
                ),
            )
        } else {
            (
                HTTP_BAD_GATEWAY,
                format!(
                    "the connection to daemon process group {} ended before the response \
                     did ({e}); the app process logs its reason in this error log",
                    self.group.name
                ),
            )
        };
        let outcome = if passed {
            "cutting the response short"
        } else if status == HTTP_GATEWAY_TIME_OUT {
            "answering 504"
        } else {
            "answering 502"
        };
        self.live.log(
            Level::Error,
            &format!("{why}: {outcome} to \"{}\"", self.what),
        );
        if passed {
            let _ = self.sink.send(&mut vec![OutputEvent::Abort]);
        }
        Some(status as c_int)
    }
}
