//! The event-loop side of a request: takes what its Python thread produced (see
//! exchange.rs) and drives nginx — headers, body buffers into the output filter chain,
//! backpressure through the write event, and the final finalize. Every function here runs
//! on the event-loop thread.
//!
//! Buffers and chain links come from the request pool, which is freed only with the
//! request, so they are recycled through a free list as nginx's proxy module does
//! (ngx_chain_get_free_buf / ngx_chain_update_chains): a long stream costs the buffers
//! in flight, not one per chunk it ever sent.

use crate::exchange::{cost, Exchange};
use crate::headers::set_response_head;
use crate::Module;
use ngx::ffi::*;
use ngx::http::HttpModule;
use ngx::ngx_log_error;
use rwsgi::{LogLevel, OutputEvent};
use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

/// How often the guard timer fires while Python holds a request.
const GUARD_INTERVAL_MS: ngx_msec_t = 5_000;
/// A request still in Python after this many guard intervals is logged, then again as
/// often: a stuck app shows in the error log instead of silently holding a thread.
const GUARD_REPORT_EVERY: u32 = 12;

/// Loop-side state of one request, owned by the request pool (freed with the request).
pub struct RequestCtx {
    pub r: *mut ngx_http_request_t,
    pub exchange: Arc<Exchange>,
    /// Non-cancelable timer while the thread owns the request: a worker told to quit
    /// (reload, `nginx -s quit`) waits for timers, so in-flight requests finish.
    pub guard: ngx_event_t,
    /// r->main->blocked was raised for the thread (keeps nginx from freeing r under it).
    pub blocked: bool,
    /// Guard timer firings so far.
    guard_ticks: u32,
    /// Events whose memory (bytes, files) nginx may still be sending.
    holding: Vec<OutputEvent>,
    /// What `holding` counts for in the exchange's window (exchange::cost).
    holding_bytes: usize,
    /// Our body buffers (with their links) that nginx has sent, ready for reuse.
    free: *mut ngx_chain_t,
    /// Our body buffers nginx is still sending.
    busy: *mut ngx_chain_t,
    /// The final event has been handled; nothing more may touch the request.
    done: bool,
}

impl RequestCtx {
    pub fn new(r: *mut ngx_http_request_t, exchange: Arc<Exchange>) -> Self {
        RequestCtx {
            r,
            exchange,
            // SAFETY: ngx_event_t is a C struct whose all-zero state is "not armed".
            guard: unsafe { std::mem::zeroed() },
            blocked: false,
            guard_ticks: 0,
            holding: Vec::new(),
            holding_bytes: 0,
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
            done: false,
        }
    }
}

/// The request's context, stored in r->ctx by the handler.
///
/// SAFETY: r is a live request of this module's location.
pub unsafe fn request_ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    let slot = *(*r).ctx.add(Module::module().ctx_index);
    (slot as *mut RequestCtx).as_mut()
}

/// Processes whatever the thread queued for this request.
pub fn pump(exchange: &Arc<Exchange>) {
    let (events, logs) = {
        let mut state = exchange.lock();
        if state.finished {
            return; // the request (and its ctx) may already be freed
        }
        state.scheduled = false;
        (
            std::mem::take(&mut state.events),
            std::mem::take(&mut state.logs),
        )
    };
    // SAFETY: not finished, so the ctx the exchange points at is alive: it is freed only
    // with the request pool, after finish() set `finished`.
    let ctx = unsafe { &mut *(exchange.ctx() as *mut RequestCtx) };
    // SAFETY: as above, the request lives while ctx does.
    unsafe {
        let log = (*(*ctx.r).connection).log;
        for (level, message) in logs {
            let level = match level {
                LogLevel::Error => NGX_LOG_ERR,
                LogLevel::Warn => NGX_LOG_WARN,
                LogLevel::Info => NGX_LOG_INFO,
            };
            ngx_log_error!(level, log, "wsgi: {}", message);
        }
        if !events.is_empty() {
            write_events(ctx, events);
        }
    }
}

/// SAFETY: ctx is live and not done; runs on the event loop.
unsafe fn write_events(ctx: &mut RequestCtx, events: Vec<OutputEvent>) {
    let r = ctx.r;
    let c = (*r).connection;
    let mut chain: *mut ngx_chain_t = ptr::null_mut();
    let mut tail: *mut *mut ngx_chain_t = &mut chain;
    let mut last_buf: *mut ngx_buf_t = ptr::null_mut();
    let mut bytes = 0usize;
    let mut final_event = None;
    let mut dropped = 0usize;
    let mut failed = (*c).error() != 0;

    for event in events {
        if failed && !event.is_final() {
            continue;
        }
        match event {
            OutputEvent::Head(head) => {
                if set_response_head(r, &head).is_err() {
                    failed = true;
                    continue;
                }
                let rc = ngx_http_send_header(r);
                if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
                    failed = true;
                }
            }
            OutputEvent::Data(data) if (*r).header_only() == 0 => {
                let link = memory_buf(ctx, &data);
                if link.is_null() {
                    failed = true;
                    continue;
                }
                bytes += cost(data.len());
                ctx.holding.push(OutputEvent::Data(data));
                last_buf = (*link).buf;
                push(&mut tail, link);
            }
            OutputEvent::File { file, offset, len } if (*r).header_only() == 0 => {
                let b = file_buf(r, &file, offset, len);
                if b.is_null() {
                    failed = true;
                    continue;
                }
                let link = ngx_alloc_chain_link((*r).pool);
                if link.is_null() {
                    failed = true;
                    continue;
                }
                ctx.holding.push(OutputEvent::File { file, offset, len });
                (*link).buf = b;
                (*link).next = ptr::null_mut();
                push(&mut tail, link);
                last_buf = b;
            }
            // HEAD: no body goes out, but the thread counted these bytes as unsent.
            OutputEvent::Data(data) => dropped += cost(data.len()),
            OutputEvent::File { .. } => {}
            final_ @ (OutputEvent::End | OutputEvent::Abort | OutputEvent::Fail(_)) => {
                final_event = Some(final_);
                break;
            }
        }
    }

    if failed {
        ctx.exchange.mark_gone();
    }
    if dropped > 0 {
        ctx.exchange.acknowledge(dropped);
    }
    let mut rc = NGX_OK as ngx_int_t;
    if !failed && (!chain.is_null() || matches!(final_event, Some(OutputEvent::End))) {
        let ends = matches!(final_event, Some(OutputEvent::End)) && (*r).header_only() == 0;
        if ends && last_buf.is_null() {
            rc = ngx_http_send_special(r, NGX_HTTP_LAST as ngx_uint_t);
        } else if !chain.is_null() {
            if ends {
                (*last_buf).set_last_buf(if r == (*r).main { 1 } else { 0 });
                (*last_buf).set_last_in_chain(1);
            } else {
                (*last_buf).set_flush(1);
            }
            ctx.holding_bytes += bytes;
            rc = ngx_http_output_filter(r, chain);
            recycle(ctx, chain);
        }
        if rc == NGX_ERROR as ngx_int_t {
            failed = true;
            ctx.exchange.mark_gone();
        } else if final_event.is_none() {
            if (*c).buffered() != 0 || (*r).buffered() != 0 || rc == NGX_AGAIN as ngx_int_t {
                wait_for_drain(r);
            } else {
                release_holding(ctx);
            }
        }
    }

    if let Some(event) = final_event {
        let code = match event {
            OutputEvent::End if failed => NGX_ERROR as ngx_int_t,
            OutputEvent::End => rc,
            OutputEvent::Fail(status) if !failed && (*r).header_sent() == 0 => status as ngx_int_t,
            _ => NGX_ERROR as ngx_int_t,
        };
        finish(ctx, code);
    }
}

/// Puts `link` (whose next is null) at the end of the chain being built.
///
/// SAFETY: *tail points at the chain's last `next` field (or its head).
unsafe fn push(tail: &mut *mut *mut ngx_chain_t, link: *mut ngx_chain_t) {
    **tail = link;
    *tail = &mut (*link).next;
}

/// Marks our body buffers, so ngx_chain_update_chains recycles them and only them.
fn buf_tag() -> ngx_buf_tag_t {
    Module::module() as *const ngx_module_t as ngx_buf_tag_t
}

/// A chain link (next = null) with a buffer pointing at `data` (no copy), reused from
/// ctx.free when nginx has sent one. `data` stays alive in ctx.holding until nginx has
/// sent it (or, after the final event, until the request pool is destroyed).
///
/// SAFETY: ctx.r is live; on the event loop.
unsafe fn memory_buf(ctx: &mut RequestCtx, data: &[u8]) -> *mut ngx_chain_t {
    let link = ngx_chain_get_free_buf((*ctx.r).pool, &mut ctx.free);
    if link.is_null() || (*link).buf.is_null() {
        return ptr::null_mut();
    }
    let b = (*link).buf;
    // A recycled buffer keeps the flags of its last use (last_buf, flush...): start clean.
    ptr::write_bytes(b, 0, 1);
    let start = data.as_ptr() as *mut u8;
    (*b).start = start;
    (*b).pos = start;
    (*b).last = start.add(data.len());
    (*b).end = (*b).last;
    (*b).set_memory(1);
    (*b).tag = buf_tag();
    link
}

/// After a pass through the output filters: the links of `chain` join ctx.busy, and our
/// buffers nginx has finished sending move to ctx.free (other links, such as file
/// buffers', go back to the pool's own link cache).
///
/// SAFETY: ctx.r is live; `chain` is the chain just passed to the filters (or null).
unsafe fn recycle(ctx: &mut RequestCtx, mut chain: *mut ngx_chain_t) {
    ngx_chain_update_chains(
        (*ctx.r).pool,
        &mut ctx.free,
        &mut ctx.busy,
        &mut chain,
        buf_tag(),
    );
}

/// A buffer for a byte range of an open file (sent with sendfile when enabled).
unsafe fn file_buf(
    r: *mut ngx_http_request_t,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> *mut ngx_buf_t {
    use std::os::fd::AsRawFd;
    let pool = (*r).pool;
    let b = ngx_pcalloc(pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
    let f = ngx_pcalloc(pool, std::mem::size_of::<ngx_file_t>()) as *mut ngx_file_t;
    if b.is_null() || f.is_null() {
        return ptr::null_mut();
    }
    (*f).fd = file.as_raw_fd();
    (*f).log = (*(*r).connection).log;
    (*f).name = ngx_str_t {
        len: 17,
        data: c"wsgi.file_wrapper".as_ptr() as *mut u8,
    };
    (*b).file = f;
    (*b).file_pos = offset as off_t;
    (*b).file_last = (offset + len) as off_t;
    (*b).set_in_file(1);
    b
}

/// The client is slow: stop acknowledging until nginx has drained what it holds.
unsafe fn wait_for_drain(r: *mut ngx_http_request_t) {
    let c = (*r).connection;
    let wev = (*c).write;
    (*r).write_event_handler = Some(on_write);
    let clcf =
        <ngx::http::NgxHttpCoreModule as ngx::http::HttpModuleLocationConf>::location_conf(&*r)
            .expect("core loc conf");
    if (*wev).ready() == 0 && (*wev).delayed() == 0 {
        ngx_add_timer(wev, clcf.send_timeout);
    }
    if ngx_handle_write_event(wev, clcf.send_lowat) != NGX_OK as ngx_int_t {
        if let Some(ctx) = request_ctx(r) {
            ctx.exchange.mark_gone();
        }
    }
}

/// Everything written so far has left nginx: free it and let the thread go on.
fn release_holding(ctx: &mut RequestCtx) {
    ctx.holding.clear();
    // SAFETY: on the event loop (every caller is an nginx handler).
    unsafe { crate::worker::free_dropped_chunks_soon() };
    let bytes = std::mem::take(&mut ctx.holding_bytes);
    ctx.exchange.acknowledge(bytes);
}

/// Write event while waiting for a slow client.
extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this for a live request; its ctx is set (we installed it).
    crate::no_unwind((), || unsafe {
        let Some(ctx) = request_ctx(r) else { return };
        let c = (*r).connection;
        let wev = (*c).write;
        if (*wev).timedout() != 0 {
            ngx_log_error!(NGX_LOG_INFO, (*c).log, "wsgi: client timed out");
            (*c).set_timedout(1);
            (*r).write_event_handler = Some(ngx_http_request_empty_handler);
            ctx.exchange.mark_gone();
            return;
        }
        let rc = ngx_http_output_filter(r, ptr::null_mut());
        recycle(ctx, ptr::null_mut());
        if rc == NGX_ERROR as ngx_int_t {
            (*r).write_event_handler = Some(ngx_http_request_empty_handler);
            ctx.exchange.mark_gone();
            return;
        }
        if (*c).buffered() != 0 || (*r).buffered() != 0 {
            wait_for_drain(r);
            return;
        }
        if (*wev).timer_set() != 0 {
            ngx_del_timer(wev);
        }
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        release_holding(ctx);
    })
}

/// Read event while the thread owns the request: notices a client that went away.
pub extern "C" fn on_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this for a live request; blocked > 0 keeps r alive even when
    // test_reading terminates it, so ctx is still valid afterwards.
    crate::no_unwind((), || unsafe {
        ngx_http_test_reading(r);
        if (*(*r).connection).error() != 0 {
            if let Some(ctx) = request_ctx(r) {
                ctx.exchange.mark_gone();
            }
        }
    })
}

pub unsafe fn arm_guard(ctx: &mut RequestCtx) {
    let guard = &mut ctx.guard as *mut ngx_event_t;
    (*guard).handler = Some(on_guard);
    (*guard).data = ctx as *mut RequestCtx as *mut c_void;
    (*guard).log = (*(*ctx.r).connection).log;
    ngx_add_timer(guard, GUARD_INTERVAL_MS);
}

extern "C" fn on_guard(ev: *mut ngx_event_t) {
    // SAFETY: the guard is disarmed in finish() before the ctx can be freed.
    crate::no_unwind((), || unsafe {
        let ctx = &mut *((*ev).data as *mut RequestCtx);
        if (*(*ctx.r).connection).error() != 0 {
            ctx.exchange.mark_gone();
        }
        ctx.guard_ticks += 1;
        if ctx.guard_ticks.is_multiple_of(GUARD_REPORT_EVERY) {
            let seconds = u64::from(ctx.guard_ticks) * GUARD_INTERVAL_MS as u64 / 1000;
            ngx_log_error!(
                NGX_LOG_WARN,
                (*ev).log,
                "wsgi: request still in progress after {} s",
                seconds
            );
        }
        ngx_add_timer(ev, GUARD_INTERVAL_MS);
    })
}

/// Takes the request out of the thread's hands: nothing more from the exchange reaches
/// it, nginx may free it (no longer blocked), and the guard no longer keeps the worker.
/// False if that happened already.
///
/// SAFETY: ctx is live; on the event loop.
pub unsafe fn release(ctx: &mut RequestCtx) -> bool {
    if ctx.done {
        return false;
    }
    ctx.done = true;
    ctx.exchange.lock().finished = true;
    if ctx.blocked {
        let main = (*ctx.r).main;
        (*main).set_blocked((*main).blocked() - 1);
        ctx.blocked = false;
    }
    if ctx.guard.timer_set() != 0 {
        ngx_del_timer(&mut ctx.guard);
    }
    true
}

/// The thread is done with the request: give it back to nginx.
///
/// SAFETY: ctx is live; after ngx_http_finalize_request the request (and ctx) may be gone.
pub unsafe fn finish(ctx: &mut RequestCtx, rc: ngx_int_t) {
    if !release(ctx) {
        return;
    }
    let r = ctx.r;
    let c = (*r).connection;
    let rc = if (*c).error() != 0 {
        NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t
    } else {
        rc
    };
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
