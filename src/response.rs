//! The state of one response: what start_response set, what went out, and the rules that
//! keep the wire correct (headers deferred to the first non-empty chunk, Content-Length
//! never overrun, no body at all after a HEAD request or a 204 / 304 status, a broken or
//! short body aborted instead of looking complete).

use crate::chunk::Chunk;
use crate::server::{ClientGone, Flow, LogLevel, OutputEvent, ResponseHead, ResponseSink};
use crate::status::forbids_body;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::fs::File;
use std::sync::Arc;

pub struct Response {
    sink: Arc<dyn ResponseSink>,
    /// Set by start_response; replaced only through exc_info before anything was sent.
    pub head: Option<ResponseHead>,
    pub head_sent: bool,
    /// Body bytes handed to the server so far.
    sent: u64,
    /// Events not yet handed to the server (sent in one batch, one GIL release).
    pending: Vec<OutputEvent>,
    /// The client went away: stop producing output.
    pub gone: bool,
    /// The app wrote past its Content-Length; the rest is dropped.
    overrun: bool,
    /// HEAD request: no body goes out, so a short body is not an error.
    head_request: bool,
    /// The app produced body bytes for a status that forbids a body; they were dropped.
    pub dropped_body: bool,
}

/// Why the body cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    ClientGone,
    /// Content-Length reached; further bytes are not sent.
    Overrun,
    /// Body bytes before start_response: an application error.
    NotStarted,
    /// No body may follow this head (HEAD request, 204, 304): the body ends here, and
    /// the bytes offered were dropped.
    Bodyless,
}

impl Response {
    pub fn new(sink: Arc<dyn ResponseSink>, head_request: bool) -> Self {
        Response {
            sink,
            head: None,
            head_sent: false,
            sent: 0,
            pending: Vec::with_capacity(3),
            gone: false,
            overrun: false,
            head_request,
            dropped_body: false,
        }
    }

    pub fn sink(&self) -> &Arc<dyn ResponseSink> {
        &self.sink
    }

    /// Queues `data` as body bytes (with the head before the first non-empty chunk).
    pub fn push_data(&mut self, data: &Bound<'_, PyBytes>) -> Result<(), Stop> {
        let len = data.as_bytes().len();
        if len == 0 {
            return Ok(());
        }
        self.check_open()?;
        self.check_body_allowed()?;
        let allowed = self.room(len as u64) as usize;
        self.send_head_once();
        if allowed > 0 {
            self.pending
                .push(OutputEvent::Data(Chunk::from_bytes(data, allowed)));
            self.sent += allowed as u64;
        }
        if allowed < len {
            return Err(self.mark_overrun());
        }
        Ok(())
    }

    /// Queues a byte range of a real file.
    pub fn push_file(&mut self, file: File, offset: u64, len: u64) -> Result<(), Stop> {
        self.check_open()?;
        if len > 0 {
            self.check_body_allowed()?;
        }
        let allowed = self.room(len);
        if allowed == 0 && len > 0 {
            return Err(self.mark_overrun());
        }
        self.send_head_once();
        if allowed > 0 {
            self.pending.push(OutputEvent::File {
                file,
                offset,
                len: allowed,
            });
            self.sent += allowed;
        }
        Ok(())
    }

    /// Sets Content-Length when the app gave none and the whole body is known.
    pub fn set_length_if_unset(&mut self, len: u64) {
        if let Some(head) = self.head.as_mut() {
            if head.content_length.is_none() && !self.head_sent && !forbids_body(head.status) {
                head.content_length = Some(len);
            }
        }
    }

    /// Hands queued events to the server, without the GIL.
    pub fn flush(&mut self, py: Python<'_>) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return if self.gone {
                Err(Stop::ClientGone)
            } else {
                Ok(())
            };
        }
        if self.gone {
            self.pending.clear();
            return Err(Stop::ClientGone);
        }
        let sink = &self.sink;
        let pending = &mut self.pending;
        let result: Result<(), ClientGone> = py.detach(|| sink.send(pending));
        if result.is_err() {
            self.pending.clear();
            self.gone = true;
            return Err(Stop::ClientGone);
        }
        Ok(())
    }

    /// Like `flush`, but lets the sink say it is full instead of waiting.
    pub fn offer(&mut self, py: Python<'_>) -> Result<Flow, Stop> {
        if self.pending.is_empty() || self.gone {
            return self.flush(py).map(|()| Flow::Open);
        }
        let sink = &self.sink;
        let pending = &mut self.pending;
        match py.detach(|| sink.offer(pending)) {
            Ok(flow) => Ok(flow),
            Err(ClientGone) => {
                self.pending.clear();
                self.gone = true;
                Err(Stop::ClientGone)
            }
        }
    }

    /// Ends the response: complete if the app succeeded, otherwise a 500 when nothing was
    /// sent yet, or an aborted body when something was. Returns the last batch of events
    /// (whatever is still pending, then exactly one final event) for the caller to send
    /// once it has let go of the GIL: a list body goes out whole in that one batch, and the
    /// thread need not win the GIL back after sending.
    /// The final event is delivered even after the client left: it tells the server that
    /// the app is done with the request.
    #[must_use = "the final batch must reach the sink"]
    pub fn finish(&mut self, app_failed: bool) -> Vec<OutputEvent> {
        if self.gone {
            self.pending.clear();
            self.pending.push(OutputEvent::Abort);
            return std::mem::take(&mut self.pending);
        }
        let last = match (&self.head, self.head_sent, app_failed) {
            (_, false, true) | (None, false, false) => {
                if self.head.is_none() && !app_failed {
                    self.sink.log(
                        LogLevel::Error,
                        "the application returned without calling start_response",
                    );
                }
                self.pending.clear();
                OutputEvent::Fail(500)
            }
            (Some(_), false, false) => {
                let short = self.short_by();
                self.send_head_once();
                if short > 0 {
                    self.log_short(short);
                    OutputEvent::Abort
                } else {
                    OutputEvent::End
                }
            }
            (_, true, true) => OutputEvent::Abort,
            (_, true, false) => match self.short_by() {
                0 => OutputEvent::End,
                short => {
                    self.log_short(short);
                    OutputEvent::Abort
                }
            },
        };
        self.pending.push(last);
        std::mem::take(&mut self.pending)
    }

    fn check_open(&self) -> Result<(), Stop> {
        if self.gone {
            Err(Stop::ClientGone)
        } else if self.overrun {
            Err(Stop::Overrun)
        } else if self.head.is_none() {
            Err(Stop::NotStarted)
        } else {
            Ok(())
        }
    }

    /// Refuses body bytes after a head that allows none. The caller stops the body there
    /// (closing the iterable): whatever the app goes on to produce would be dropped too.
    fn check_body_allowed(&mut self) -> Result<(), Stop> {
        if self.head_request {
            return Err(Stop::Bodyless);
        }
        if self.head.as_ref().is_some_and(|h| forbids_body(h.status)) {
            self.dropped_body = true;
            return Err(Stop::Bodyless);
        }
        Ok(())
    }

    /// How many of `len` more bytes fit under Content-Length.
    fn room(&self, len: u64) -> u64 {
        match self.head.as_ref().and_then(|h| h.content_length) {
            Some(cl) => len.min(cl.saturating_sub(self.sent)),
            None => len,
        }
    }

    fn mark_overrun(&mut self) -> Stop {
        if !self.overrun {
            self.overrun = true;
            self.sink.log(
                LogLevel::Error,
                "the application sent more bytes than its Content-Length; the excess was not sent",
            );
        }
        Stop::Overrun
    }

    fn short_by(&self) -> u64 {
        if self.head_request || self.head.as_ref().is_some_and(|h| forbids_body(h.status)) {
            return 0;
        }
        match self.head.as_ref().and_then(|h| h.content_length) {
            Some(cl) => cl.saturating_sub(self.sent),
            None => 0,
        }
    }

    fn log_short(&self, short: u64) {
        self.sink.log(
            LogLevel::Error,
            &format!(
                "the application sent {short} bytes fewer than its Content-Length; closing the connection"
            ),
        );
    }

    fn send_head_once(&mut self) {
        if !self.head_sent {
            // Move the header list out (nothing reads it once sent); keep status and length.
            let kept = self.head.as_mut().expect("start_response was called");
            let head = ResponseHead {
                status: kept.status,
                status_line: std::mem::take(&mut kept.status_line),
                headers: std::mem::take(&mut kept.headers),
                content_length: kept.content_length,
            };
            self.pending.push(OutputEvent::Head(head));
            self.head_sent = true;
        }
    }
}
