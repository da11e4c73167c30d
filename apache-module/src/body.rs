//! The request body as the engine reads it: [`rwsgi::BodyReader`] over httpd's input
//! filters (`ap_get_brigade`). Reads happen lazily, when the app reads wsgi.input, so
//! `Expect: 100-continue` is answered only then; HTTP_IN removes chunked framing and
//! enforces LimitRequestBody.

use crate::apr::{buckets, is_type, read_bucket};
use crate::bindings::*;
use crate::live::{Live, State};
use std::ffi::c_int;
use std::io;
use std::sync::Arc;

/// Largest block asked from httpd in one call.
const MAX_READ: usize = 64 * 1024;

/// The request body of one request. `read` waits for the request's [`Live`] lock and for
/// the client, so the engine only calls it with the GIL released (see
/// [`crate::sink::ApacheSink`] for the whole contract).
pub struct ApacheBody {
    live: Arc<Live>,
    /// The Content-Length of a body that is not chunked: HTTP_IN delivers exactly that.
    declared: Option<u64>,
    consumed: u64,
}

impl ApacheBody {
    pub fn new(live: Arc<Live>, declared: Option<u64>) -> ApacheBody {
        ApacheBody {
            live,
            declared,
            consumed: 0,
        }
    }
}

impl rwsgi::BodyReader for ApacheBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self
            .live
            // SAFETY: State::r is live while the state is (the handler retires it first).
            .with(|state| unsafe { read_into(state, buf) })
            .unwrap_or_else(|| {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the request is already finished",
                ))
            })?;
        self.consumed += n as u64;
        Ok(n)
    }

    fn remaining(&self) -> Option<u64> {
        self.declared.map(|d| d.saturating_sub(self.consumed))
    }
}

fn take_leftover(state: &mut State, buf: &mut [u8]) -> usize {
    let available = &state.leftover[state.leftover_pos..];
    let n = available.len().min(buf.len());
    buf[..n].copy_from_slice(&available[..n]);
    state.leftover_pos += n;
    if state.leftover_pos == state.leftover.len() {
        state.leftover.clear();
        state.leftover_pos = 0;
    }
    n
}

/// # Safety
/// `state.r` is a live request and the caller holds the Live lock.
unsafe fn read_into(state: &mut State, buf: &mut [u8]) -> io::Result<usize> {
    if state.leftover_pos < state.leftover.len() {
        return Ok(take_leftover(state, buf));
    }
    if let Some(status) = state.read_error {
        return Err(read_failed(status));
    }
    if state.input_done {
        return Ok(0);
    }
    let r = state.r;
    if state.input.is_null() {
        // SAFETY: r, its pool and connection are live (the contract); the brigade lives
        // in the request pool and is only used under the Live lock.
        state.input = unsafe { apr_brigade_create((*r).pool, (*(*r).connection).bucket_alloc) };
    }
    let bb = state.input;
    loop {
        let want = buf.len().min(MAX_READ) as apr_off_t;
        // SAFETY: r and its input filter chain are live; bb is the request's (empty)
        // input brigade. Blocks until the client sends something.
        let rv = unsafe {
            ap_get_brigade(
                (*r).input_filters,
                bb,
                ap_input_mode_t_AP_MODE_READBYTES,
                apr_read_type_e_APR_BLOCK_READ,
                want,
            )
        };
        if rv != APR_SUCCESS as apr_status_t {
            // SAFETY: bb is live.
            unsafe { apr_brigade_cleanup(bb.cast()) };
            return Err(fail(
                state,
                // SAFETY: a pure mapping of a status code.
                unsafe { ap_map_http_request_error(rv, HTTP_BAD_REQUEST as c_int) },
            ));
        }
        // SAFETY: bb is live and holds what the input filters just returned; nobody else
        // uses it while we hold the Live lock.
        let (n, error) = unsafe { drain_brigade(state, bb, buf) };
        if let Some(status) = error {
            return Err(fail(state, status));
        }
        if n > 0 || state.input_done {
            return Ok(n);
        }
    }
}

/// Copies the data buckets of `bb` into `buf` (what does not fit into the leftover),
/// notes EOS, stops at an error bucket (returning its status), and empties the brigade.
///
/// # Safety
/// `bb` is a live brigade that nobody else touches meanwhile.
unsafe fn drain_brigade(
    state: &mut State,
    bb: *mut apr_bucket_brigade,
    buf: &mut [u8],
) -> (usize, Option<c_int>) {
    let mut n = 0;
    let mut error = None;
    // SAFETY: bb is live and stable during the walk (the contract).
    for b in unsafe { buckets(bb) } {
        // SAFETY: b is a live bucket of bb.
        if unsafe { is_type(b, &raw const apr_bucket_type_eos) } {
            state.input_done = true;
            break;
        }
        // SAFETY: as above.
        if unsafe { is_type(b, &raw const ap_bucket_type_error) } {
            // SAFETY: an error bucket's data is its ap_bucket_error.
            error = Some(unsafe { (*((*b).data as *const ap_bucket_error)).status });
            break;
        }
        // SAFETY: b is a live bucket; its bytes are copied before the next bucket is
        // read or the brigade cleaned up.
        match unsafe { read_bucket(b, apr_read_type_e_APR_BLOCK_READ) } {
            Ok(data) => {
                let fit = data.len().min(buf.len() - n);
                buf[n..n + fit].copy_from_slice(&data[..fit]);
                n += fit;
                state.leftover.extend_from_slice(&data[fit..]);
            }
            Err(_) => {
                error = Some(HTTP_BAD_REQUEST as c_int);
                break;
            }
        }
    }
    // SAFETY: bb is live; this destroys the buckets read above.
    unsafe { apr_brigade_cleanup(bb.cast()) };
    (n, error)
}

fn fail(state: &mut State, status: c_int) -> io::Error {
    state.read_error = Some(status);
    if status == AP_FILTER_ERROR {
        // The input filter already sent the error response (e.g. 413 for a chunked body
        // over LimitRequestBody): nothing more of ours may go out.
        state.gone = true;
    }
    read_failed(status)
}

fn read_failed(status: c_int) -> io::Error {
    let what = match status {
        AP_FILTER_ERROR => "rejected by the server".to_string(),
        s if s == HTTP_REQUEST_ENTITY_TOO_LARGE as c_int => {
            "larger than LimitRequestBody".to_string()
        }
        s => format!("failed (HTTP status {s})"),
    };
    io::Error::other(format!("reading the request body {what}"))
}
