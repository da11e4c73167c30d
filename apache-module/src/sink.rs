//! The response as the engine produces it: [`rwsgi::ResponseSink`] over httpd's output
//! filters. Head fills the request_rec, body parts become buckets passed down the filter
//! chain per batch (so streamed chunks go out as they come), End is EOS, and Abort makes the
//! body visibly truncated: an error bucket that httpd's chunk filter answers by omitting the
//! last-chunk, then EOS, with the connection closed.

use crate::apr::{insert_tail, pstr};
use crate::bindings::*;
use crate::live::{Finish, Live, State};
use crate::log::{self, Level};
use crate::status::Phase;
use rwsgi::{Chunk, ClientGone, Flow, LogLabel, LogLevel, OutputEvent, ResponseHead, Stage};
use std::ffi::{c_int, c_void};
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

/// The response sink of one request.
///
/// Contract with the engine (every method may be called from any thread, including a
/// thread the app started, and after the request ended):
/// - `log` never blocks: it is called with the GIL held, while the request's own thread
///   may hold the request's [`Live`] lock for a write to a client that reads nothing
///   (up to httpd's `Timeout`). Waiting there would stop every Python thread of the
///   process, so a line that finds the request busy is queued ([`Live::log`]).
/// - `send` and `offer` (and [`crate::body::ApacheBody`]'s `read`) are only called with
///   the GIL released: they wait for the Live lock and for the client.
/// - `offer` never reports [`Flow::Full`]: it waits in `send` like the engine's default,
///   so `Runtime::run` never hands back a parked response on this server (the
///   request owns its httpd thread anyway).
pub struct ApacheSink {
    live: Arc<Live>,
    /// The request on the status page's gauges.
    phase: Arc<Phase>,
}

impl ApacheSink {
    pub fn new(live: Arc<Live>, phase: Arc<Phase>) -> ApacheSink {
        ApacheSink { live, phase }
    }
}

impl rwsgi::ResponseSink for ApacheSink {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        let outcome = self
            .live
            // SAFETY: State::r is live while the state is; we hold the lock.
            .with(|state| unsafe { deliver(state, self.live.label(), events) })
            .unwrap_or(Err(ClientGone));
        events.clear();
        outcome
    }

    fn offer(&self, events: &mut Vec<OutputEvent>) -> Result<Flow, ClientGone> {
        self.send(events).map(|()| Flow::Open)
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.live.log(level, message);
    }

    fn stage(&self, stage: Stage) {
        match stage {
            Stage::Running => self.phase.entered_python(),
            Stage::LoadFailed => self.phase.load_failed(),
        }
    }
}

/// # Safety
/// `state.r` is live and the caller holds the Live lock.
unsafe fn deliver(
    state: &mut State,
    label: &LogLabel,
    events: &mut Vec<OutputEvent>,
) -> Result<(), ClientGone> {
    let r = state.r;
    // SAFETY: r and its connection are live (the contract).
    let alloc = unsafe { (*(*r).connection).bucket_alloc };
    if state.out.is_null() {
        // SAFETY: r's pool is live; the brigade lives as long as the request and is only
        // used under the Live lock, with the connection's allocator.
        state.out = unsafe { apr_brigade_create((*r).pool, alloc) };
    }
    let bb = state.out;
    // Transient buckets point into these until the brigade is passed: a filter that
    // keeps data past ap_pass_brigade must set it aside (copy) by contract.
    let mut keep: Vec<Chunk> = Vec::new();
    let mut finish = None;
    let mut has_body = false;
    for event in events.drain(..) {
        match event {
            OutputEvent::Head(head) if !state.gone => {
                // SAFETY: r is live and nothing was passed yet (the engine sends the head
                // once, before any body).
                unsafe { apply_head(r, &head) }
            }
            OutputEvent::Data(data) if !state.gone && !data.is_empty() => {
                // SAFETY: bb is the request's output brigade and alloc its connection's
                // allocator (used under the lock); the bucket points into `data`, which
                // `keep` holds until the brigade has been passed and cleaned up below.
                unsafe {
                    let bucket = apr_bucket_transient_create(
                        data.as_ptr().cast(),
                        data.len() as apr_size_t,
                        alloc,
                    );
                    insert_tail(bb, bucket);
                }
                keep.push(data);
                has_body = true;
            }
            OutputEvent::File { file, offset, len } if !state.gone && len > 0 => {
                // SAFETY: r is live; bb is its output brigade.
                unsafe { insert_file(state, label, bb, file, offset, len) };
                has_body = true;
            }
            OutputEvent::End => finish = Some(Finish::End),
            OutputEvent::Abort => finish = Some(Finish::Abort),
            OutputEvent::Fail(status) => finish = Some(Finish::Fail(status)),
            _ => {}
        }
    }
    match finish {
        None => {
            // SAFETY: a fresh bucket from the connection's allocator onto its brigade.
            unsafe { insert_tail(bb, apr_bucket_flush_create(alloc)) };
            // SAFETY: r is live; bb is its output brigade.
            unsafe { pass(state, bb) };
        }
        Some(Finish::End) => {
            // SAFETY: as for the flush bucket.
            unsafe { insert_tail(bb, apr_bucket_eos_create(alloc)) };
            // SAFETY: as above.
            unsafe { pass(state, bb) };
        }
        Some(Finish::Abort) => {
            // Headers and any body first, on their own: the HTTP header filter turns an
            // error bucket it sees into a whole error response instead.
            if has_body || !state.passed {
                // SAFETY: as for the flush bucket.
                unsafe { insert_tail(bb, apr_bucket_flush_create(alloc)) };
                // SAFETY: as above.
                unsafe { pass(state, bb) };
            }
            // SAFETY: r is live; bb is its output brigade, empty after pass.
            unsafe { abort(state, bb) };
        }
        Some(Finish::Fail(_)) => {
            // Nothing was sent: the handler returns the status and httpd renders it.
            // SAFETY: bb is live; cleanup destroys its buckets (the data stays in keep).
            unsafe { apr_brigade_cleanup(bb.cast()) };
        }
    }
    if let Some(f) = finish {
        state.finish = Some(f);
    }
    drop(keep);
    if state.gone {
        Err(ClientGone)
    } else {
        Ok(())
    }
}

/// Status line, Content-Type, Content-Length and the other headers into the request_rec.
///
/// # Safety
/// `r` is live and its headers have not been sent.
unsafe fn apply_head(r: *mut request_rec, head: &ResponseHead) {
    // SAFETY: r is live (the contract).
    let pool = unsafe { (*r).pool };
    // SAFETY: r is live and its head not sent yet; the status line is copied into the
    // request pool, which outlives the response.
    unsafe {
        (*r).status = c_int::from(head.status);
        (*r).status_line = pstr(pool, &head.status_line);
        // Whatever mod_mime guessed from the script's file name is not the app's answer.
        (*r).content_type = std::ptr::null();
        (*r).content_encoding = std::ptr::null();
    }
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case(b"content-type") {
            // SAFETY: r is live; httpd keeps the pointer, a copy in the request pool.
            unsafe { ap_set_content_type(r, pstr(pool, value)) };
        } else {
            // SAFETY: headers_out belongs to the live request; apr_table_addn keeps the
            // pointers, which are copies in the request pool.
            unsafe { apr_table_addn((*r).headers_out, pstr(pool, name), pstr(pool, value)) };
        }
    }
    if let Some(length) = head.content_length {
        // SAFETY: r is live.
        unsafe { ap_set_content_length(r, length as apr_off_t) };
    }
}

/// A file bucket over the app's file (sendfile when enabled). The descriptor is closed
/// by a request-pool cleanup, which runs after every bucket of the request is gone.
///
/// # Safety
/// `state.r` is live; `bb` is its output brigade.
unsafe fn insert_file(
    state: &State,
    label: &LogLabel,
    bb: *mut apr_bucket_brigade,
    file: File,
    offset: u64,
    len: u64,
) {
    let r = state.r;
    // SAFETY: r is live (the contract).
    let pool = unsafe { (*r).pool };
    let mut fd = file.into_raw_fd();
    // SAFETY: the fd is ours now (into_raw_fd); the cleanup closes it exactly once, when
    // the request pool is cleared, after every bucket that reads it is gone.
    unsafe {
        apr_pool_cleanup_register(
            pool,
            fd as usize as *const c_void,
            Some(close_fd),
            Some(apr_pool_cleanup_null),
        )
    };
    let mut flags = (APR_FOPEN_READ | APR_FOPEN_LARGEFILE) as apr_int32_t;
    if state.sendfile {
        flags |= APR_FOPEN_SENDFILE_ENABLED as apr_int32_t;
    }
    let mut apr_file: *mut apr_file_t = std::ptr::null_mut();
    // SAFETY: wraps our open fd in an apr_file_t allocated in the live request pool.
    let rv = unsafe { apr_os_file_put(&mut apr_file, &mut fd, flags, pool) };
    if rv != APR_SUCCESS as apr_status_t {
        // SAFETY: r is live.
        unsafe {
            log::request(
                r,
                Level::Error,
                label,
                "cannot wrap the wsgi.file_wrapper file for sending",
            )
        };
        return;
    }
    // SAFETY: bb is the live output brigade; the file lives in the request pool, as long
    // as the buckets that read it.
    unsafe { apr_brigade_insert_file(bb, apr_file, offset as apr_off_t, len as apr_off_t, pool) };
}

unsafe extern "C" fn close_fd(data: *mut c_void) -> apr_status_t {
    // SAFETY: data carries a descriptor registered once by insert_file, closed only here.
    unsafe { libc::close(data as usize as c_int) };
    APR_SUCCESS as apr_status_t
}

/// Passes the brigade down the output filters; a failure or aborted connection means the
/// client is gone.
///
/// # Safety
/// `state.r` is live; `bb` is its output brigade.
unsafe fn pass(state: &mut State, bb: *mut apr_bucket_brigade) {
    if state.gone {
        // SAFETY: bb is live (the contract).
        unsafe { apr_brigade_cleanup(bb.cast()) };
        return;
    }
    let r = state.r;
    // SAFETY: r and its output filter chain are live; the brigade holds buckets from the
    // connection's allocator, and this thread holds the Live lock. Blocks on the client.
    let rv = unsafe { ap_pass_brigade((*r).output_filters, bb) };
    // SAFETY: bb is live; filters that kept buckets have set them aside.
    unsafe { apr_brigade_cleanup(bb.cast()) };
    state.passed = true;
    // SAFETY: r's connection is live.
    let aborted = unsafe { (*(*r).connection).aborted } != 0;
    if rv != APR_SUCCESS as apr_status_t || aborted {
        state.gone = true;
    }
}

/// Ends a body that is broken after bytes went out, the way mod_proxy_http does for a
/// failed backend: an HTTP_BAD_GATEWAY error bucket (the chunk filter then omits the
/// last-chunk, the error filter drops keep-alive) followed by EOS.
///
/// # Safety
/// `state.r` is live; `bb` is its (empty) output brigade.
unsafe fn abort(state: &mut State, bb: *mut apr_bucket_brigade) {
    let r = state.r;
    // SAFETY: r is live (the contract).
    let c = unsafe { (*r).connection };
    // SAFETY: r and its connection are live, driven by this thread under the Live lock.
    unsafe {
        (*c).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
        (*r).no_cache = 1;
    }
    if state.gone {
        return;
    }
    // SAFETY: fresh buckets from the connection's pool and allocator onto the request's
    // live brigade.
    unsafe {
        let error = ap_bucket_error_create(
            HTTP_BAD_GATEWAY as c_int,
            std::ptr::null(),
            (*c).pool,
            (*c).bucket_alloc,
        );
        insert_tail(bb, error);
        insert_tail(bb, apr_bucket_eos_create((*c).bucket_alloc));
    }
    // SAFETY: r is live; bb is its output brigade.
    unsafe { pass(state, bb) };
}
