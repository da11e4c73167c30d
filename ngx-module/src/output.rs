//! The event-loop side of a request, from the moment the handler lends it to a Python
//! thread until nginx has it back: the request's context ([`RequestCtx`], owned by the
//! request pool), what the loop does with the thread's output (headers, body buffers into
//! the output filter chain, backpressure through the write event) and the final
//! finalize. It talks to the thread only through its exchange handle
//! (exchange::LoopSide). Every function here runs on the event-loop thread.
//!
//! One request: the handler installs the context and lends the request to the thread
//! ([`RequestCtx::install`], [`RequestCtx::lend`]); each batch the thread queues
//! comes through the bridge to [`pump`], which writes it ([`RequestCtx::write_batch`]);
//! a slow client is waited for in [`on_write`], which acknowledges sent bytes so the
//! thread goes on; the final event ends in [`finish`].
//!
//! Buffers and chain links come from the request pool, which is freed only with the
//! request, so they are recycled through a free list as nginx's proxy module does
//! (ngx_chain_get_free_buf / ngx_chain_update_chains): a long stream costs the buffers
//! in flight, not one per chunk it ever sent.

use crate::exchange::{cost, Ready};
use crate::fault::{Fault, Point};
use crate::headers::set_response_head;
use crate::producer::Producer;
use crate::{no_unwind, Module, Site};
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleLocationConf, NgxHttpCoreModule};
use rwsgi::metrics::{AppCounters, RequestEnd};
use rwsgi::{LogLabel, LogLevel, OutputEvent};
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the guard timer fires while Python holds a request (at most: more often when
/// wsgi_stuck_after is shorter).
const GUARD_INTERVAL_MS: ngx_msec_t = 5_000;
/// How often the guard looks for a stuck request's stack while another thread formats it.
const STACK_POLL_MS: ngx_msec_t = 100;

/// A stack being formatted off the loop for a stuck request's report.
type PendingStack = mpsc::Receiver<Result<Option<String>, String>>;

/// Loop-side state of one request, owned by the request pool (freed with the request).
pub struct RequestCtx {
    r: *mut ngx_http_request_t,
    /// Who writes the response: a Python thread (through the exchange) or an app process.
    producer: Producer,
    /// Non-cancelable timer while the thread owns the request: a worker told to quit
    /// (reload, `nginx -s quit`) waits for timers, so in-flight requests finish.
    guard: ngx_event_t,
    /// r->main->blocked was raised for the thread (keeps nginx from freeing r under it).
    blocked: bool,
    /// When the handler took the request (for its duration and stuck reports).
    started: Instant,
    /// The app's counters on the status page, while the request counts as in flight.
    app: Option<&'static AppCounters>,
    /// Response body bytes passed to nginx.
    bytes_out: u64,
    /// wsgi_stuck_after, and when the request is next reported as stuck.
    stuck_after: Duration,
    next_report: Duration,
    /// The stack of a stuck request's thread, being formatted.
    stack: Option<PendingStack>,
    /// Events whose memory (bytes, files) nginx may still be sending.
    holding: Vec<OutputEvent>,
    /// What `holding` counts for in the exchange's window (exchange::cost).
    holding_bytes: usize,
    /// Our body buffers (with their links) that nginx has sent, ready for reuse.
    free: *mut ngx_chain_t,
    /// Our body buffers nginx is still sending.
    busy: *mut ngx_chain_t,
    /// The request was taken back from the thread (release); nothing more from the
    /// exchange reaches it.
    done: bool,
    /// Test builds only: where the request asked the loop side to panic (fault.rs).
    fault: Fault,
}

/// What [`RequestCtx::release`] found.
pub struct Released {
    /// The pool thread still running the request's Python work, if one is.
    pub python_thread: Option<u64>,
    /// The daemon group the request was proxied to, if it was.
    pub group: Option<String>,
}

impl RequestCtx {
    /// Creates `r`'s context, stores it in r->ctx and has the request pool free it; binds
    /// it to its producer. None if the pool is out of memory.
    ///
    /// # Safety
    /// r is a live request of this module's location; on the event loop.
    pub unsafe fn install(
        r: *mut ngx_http_request_t,
        producer: Producer,
    ) -> Option<NonNull<RequestCtx>> {
        // SAFETY: r is live (caller), so is its pool.
        let cln = unsafe { ngx_pool_cleanup_add((*r).pool, 0) };
        if cln.is_null() {
            return None;
        }
        let ctx = RequestCtx {
            r,
            producer,
            // SAFETY: ngx_event_t is a C struct whose all-zero state is "not armed".
            guard: unsafe { std::mem::zeroed() },
            blocked: false,
            started: Instant::now(),
            app: None,
            bytes_out: 0,
            stuck_after: Duration::from_secs(60),
            next_report: Duration::from_secs(60),
            stack: None,
            holding: Vec::new(),
            holding_bytes: 0,
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
            done: false,
            // SAFETY: r is live (caller).
            fault: unsafe { Fault::of(r) },
        };
        // Every pointer to the context handed out (r->ctx, the cleanup, the guard timer,
        // the exchange's token, the app connection's events) is this one.
        let ctx = NonNull::from(Box::leak(Box::new(ctx)));
        let data = ctx.as_ptr() as *mut c_void;
        // SAFETY: cln is a fresh cleanup of r's pool; r->ctx has a slot per module; ctx
        // stays where it is (leaked box) until free_ctx, which drops its producer: a
        // LoopSide clears the token bind registers, an AppConn closes its connection and
        // timers, so nothing points at ctx after it.
        unsafe {
            (*cln).handler = Some(free_ctx);
            (*cln).data = data;
            *(*r).ctx.add(Module::module().ctx_index) = data;
            let guard = &mut (*ctx.as_ptr()).guard;
            guard.handler = Some(on_guard);
            guard.data = data;
            guard.log = (*(*r).connection).log;
            match &mut (*ctx.as_ptr()).producer {
                Producer::Thread(side) => side.bind(ctx),
                Producer::Daemon(conn) => conn.bind(ctx, (*(*r).connection).log),
            }
        }
        Some(ctx)
    }

    /// The producer (a thread or an app process) owns the request from now on: `blocked`
    /// stops nginx from freeing it (client abort, timeouts), the guard timer keeps a
    /// quitting worker alive, and the read handler notices a client that disconnects.
    ///
    /// # Safety
    /// self.r is live; on the event loop.
    pub unsafe fn lend(&mut self, stuck_after: u64, app: Option<&'static AppCounters>) {
        let r = self.r;
        self.stuck_after = Duration::from_secs(stuck_after.max(1));
        self.next_report = self.stuck_after;
        if let Some(app) = app {
            app.start();
            self.app = Some(app);
        }
        // SAFETY: r is live (caller), so is its main request.
        unsafe {
            let main = (*r).main;
            (*main).set_blocked((*main).blocked() + 1);
            (*r).read_event_handler = Some(on_read);
        }
        self.blocked = true;
        // SAFETY: the guard (set up by install) lives in ctx, and release() deletes the
        // timer before ctx can be freed (ctx is freed with the request, which `blocked`
        // keeps until then).
        unsafe { ngx_add_timer(&mut self.guard, self.guard_interval()) };
    }

    fn guard_interval(&self) -> ngx_msec_t {
        GUARD_INTERVAL_MS.min(self.stuck_after.as_millis() as ngx_msec_t)
    }

    /// Counts the request's end on the status page (once: the request then no longer
    /// counts as in flight). `rc` is what it is finalized with, when known.
    ///
    /// # Safety
    /// self.r is live; on the event loop.
    unsafe fn account(&mut self, rc: Option<ngx_int_t>) {
        let Some(app) = self.app.take() else { return };
        // SAFETY: r and its connection are live (caller).
        let (header_sent, sent_status, aborted) = unsafe {
            let r = self.r;
            (
                (*r).header_sent() != 0,
                (*r).headers_out.status,
                (*(*r).connection).error() != 0,
            )
        };
        let status = if header_sent {
            Some(sent_status as u16)
        } else {
            rc.filter(|rc| (100..600).contains(rc) && !aborted)
                .map(|rc| rc as u16)
        };
        app.end(RequestEnd {
            status,
            duration: self.started.elapsed(),
            bytes_out: self.bytes_out,
            client_aborted: aborted || rc.is_none(),
        });
    }

    /// The label of the request's log lines (log.rs).
    pub fn label(&self) -> &LogLabel {
        self.producer.label()
    }

    /// How long ago the handler took the request.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn r(&self) -> *mut ngx_http_request_t {
        self.r
    }

    /// The producer owns the request (lent and not released yet).
    pub fn held_by_thread(&self) -> bool {
        self.blocked
    }

    /// The app connection of a request proxied to a daemon group.
    pub fn app_conn(&mut self) -> Option<&mut crate::daemon_client::AppConn> {
        match &mut self.producer {
            Producer::Daemon(conn) => Some(conn),
            Producer::Thread(_) => None,
        }
    }

    /// Takes the request out of the thread's hands: nothing more from the exchange reaches
    /// it, nginx may free it (no longer blocked), and the guard no longer keeps the worker.
    /// None if that happened already.
    ///
    /// # Safety
    /// self.r is live; on the event loop.
    pub unsafe fn release(&mut self) -> Option<Released> {
        if self.done {
            return None;
        }
        self.done = true;
        // Taken back without a final status (worker_shutdown_timeout, a panic): counted
        // as a client abort. finish() has counted its request already.
        // SAFETY: r is live (caller).
        unsafe { self.account(None) };
        self.stack = None;
        let group = self.producer.group().map(str::to_string);
        let python_thread = self.producer.finish();
        if self.blocked {
            // SAFETY: r is live (caller), so is its main request.
            unsafe {
                let main = (*self.r).main;
                (*main).set_blocked((*main).blocked() - 1);
            }
            self.blocked = false;
        }
        if self.guard.timer_set() != 0 {
            // SAFETY: the guard's timer is armed (lend) and ctx is live.
            unsafe { ngx_del_timer(&mut self.guard) };
        }
        Some(Released {
            python_thread,
            group,
        })
    }

    /// Logs the thread's lines and writes its events. Some(rc) when the batch held the
    /// final event: the request is to be finished with rc ([`finish`]).
    ///
    /// # Safety
    /// self.r is live and the request not released; on the event loop.
    pub unsafe fn write_batch(
        &mut self,
        logs: Vec<(LogLevel, String)>,
        events: Vec<OutputEvent>,
    ) -> Option<ngx_int_t> {
        self.fault.at(Point::Pump);
        // SAFETY: r is live (caller), so is its connection.
        let log = unsafe { (*(*self.r).connection).log };
        for (level, message) in logs {
            // SAFETY: the connection's log is live (above), on the event loop.
            unsafe { crate::log::write(log, level, self.label(), message) };
        }
        if events.is_empty() {
            return None;
        }
        // SAFETY: as for this function.
        unsafe { self.write_events(events) }
    }

    /// Sends the head, passes body parts to the output filters, and works out how the
    /// request ends if `events` holds the final event.
    ///
    /// # Safety
    /// self.r is live and the request not released; on the event loop.
    unsafe fn write_events(&mut self, events: Vec<OutputEvent>) -> Option<ngx_int_t> {
        // SAFETY: r is live for this call, on the event loop (caller).
        let r = unsafe { LiveRequest::new(self.r) };
        let mut chain = Chain::default();
        let mut bytes = 0usize;
        let mut final_event = None;
        let mut dropped = 0usize;
        let mut failed = r.connection_error();

        for event in events {
            if failed && !event.is_final() {
                continue;
            }
            match event {
                OutputEvent::Head(head) => failed = !r.send_header(&head),
                OutputEvent::Data(data) if !r.header_only() => {
                    if r.header_sent() {
                        self.fault.at(Point::Body);
                    }
                    // SAFETY: r is live, on the event loop (above).
                    let link = unsafe { self.memory_buf(&data) };
                    if link.is_null() {
                        failed = true;
                        continue;
                    }
                    bytes += cost(data.len());
                    self.bytes_out += data.len() as u64;
                    // The chunk's bytes do not move with it: the buffer stays valid.
                    self.holding.push(OutputEvent::Data(data));
                    // SAFETY: a fresh link of r's pool, with its buffer, next null.
                    unsafe { chain.push(link) };
                }
                OutputEvent::File { file, offset, len } if !r.header_only() => {
                    // SAFETY: r is live (above); the file stays open in self.holding while
                    // nginx may send from it.
                    let link = unsafe { file_link(self.r, &file, offset, len) };
                    if link.is_null() {
                        failed = true;
                        continue;
                    }
                    self.bytes_out += len;
                    self.holding.push(OutputEvent::File { file, offset, len });
                    // SAFETY: as for body parts.
                    unsafe { chain.push(link) };
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
            self.producer.mark_gone();
        }
        if dropped > 0 {
            self.producer.acknowledge(dropped);
        }
        let mut rc = NGX_OK as ngx_int_t;
        let ends = matches!(final_event, Some(OutputEvent::End));
        if !failed && (!chain.is_empty() || ends) {
            let last = ends && !r.header_only();
            if last && chain.is_empty() {
                rc = r.send_last();
            } else if !chain.is_empty() {
                // SAFETY: the chain's links and buffers are ours, in r's pool.
                unsafe { chain.mark_end(last, r.is_main()) };
                self.holding_bytes += bytes;
                // SAFETY: r is live (above); the buffers' memory stays in self.holding until
                // nginx has sent it.
                rc = unsafe { ngx_http_output_filter(self.r, chain.head) };
                // SAFETY: chain.head is what was just passed to the filters.
                unsafe { self.recycle(chain.head) };
            }
            if rc == NGX_ERROR as ngx_int_t {
                failed = true;
                self.producer.mark_gone();
            } else if final_event.is_none() {
                if r.buffered() || rc == NGX_AGAIN as ngx_int_t {
                    // SAFETY: r is live, on the event loop (above).
                    unsafe { self.wait_for_drain() };
                } else {
                    self.release_holding();
                }
            }
        }

        final_event.map(|event| match event {
            OutputEvent::End if failed => NGX_ERROR as ngx_int_t,
            OutputEvent::End => rc,
            OutputEvent::Fail(status) if !failed && !r.header_sent() => status as ngx_int_t,
            _ => NGX_ERROR as ngx_int_t,
        })
    }

    /// A chain link (next = null) with a buffer pointing at `data` (no copy), reused from
    /// self.free when nginx has sent one. `data` stays alive in self.holding until nginx
    /// has sent it (or, after the final event, until the request pool is destroyed).
    /// Null if the pool is out of memory.
    ///
    /// # Safety
    /// self.r is live; on the event loop.
    unsafe fn memory_buf(&mut self, data: &[u8]) -> *mut ngx_chain_t {
        // SAFETY: r's pool is live (caller); a link from it (or from self.free) has a
        // buffer nginx allocated for us, which we may overwrite whole.
        unsafe {
            let link = ngx_chain_get_free_buf((*self.r).pool, &mut self.free);
            if link.is_null() || (*link).buf.is_null() {
                return ptr::null_mut();
            }
            let b = (*link).buf;
            // A recycled buffer keeps the flags of its last use (last_buf, flush...): start
            // clean.
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
    }

    /// After a pass through the output filters: the links of `chain` join self.busy, and
    /// our buffers nginx has finished sending move to self.free (other links, such as
    /// file buffers', go back to the pool's own link cache).
    ///
    /// # Safety
    /// self.r is live; `chain` is the chain just passed to the filters (or null).
    unsafe fn recycle(&mut self, mut chain: *mut ngx_chain_t) {
        // SAFETY: the chains are ours and the pool is r's (caller).
        unsafe {
            ngx_chain_update_chains(
                (*self.r).pool,
                &mut self.free,
                &mut self.busy,
                &mut chain,
                buf_tag(),
            )
        };
    }

    /// The client is slow: stop acknowledging until nginx has drained what it holds.
    ///
    /// # Safety
    /// self.r is live; on the event loop.
    unsafe fn wait_for_drain(&mut self) {
        let r = self.r;
        // SAFETY: r is live (caller), so is its core location conf.
        let clcf = NgxHttpCoreModule::location_conf(unsafe { &*r }).expect("core loc conf");
        // SAFETY: r, its connection and write event are live (caller); on the event loop.
        let handled = unsafe {
            let wev = (*(*r).connection).write;
            (*r).write_event_handler = Some(on_write);
            if (*wev).ready() == 0 && (*wev).delayed() == 0 {
                ngx_add_timer(wev, clcf.send_timeout);
            }
            ngx_handle_write_event(wev, clcf.send_lowat)
        };
        if handled != NGX_OK as ngx_int_t {
            self.producer.mark_gone();
        }
    }

    /// Everything written so far has left nginx: free it and let the thread go on.
    fn release_holding(&mut self) {
        self.holding.clear();
        // SAFETY: on the event loop (every caller is an nginx handler).
        unsafe { crate::worker::free_dropped_chunks_soon() };
        let bytes = std::mem::take(&mut self.holding_bytes);
        self.producer.acknowledge(bytes);
    }
}

/// Pool cleanup: frees the context with the request.
extern "C" fn free_ctx(data: *mut c_void) {
    no_unwind(Site::PROCESS, "request pool cleanup", (), || {
        // SAFETY: data is the box leaked in RequestCtx::install, freed exactly once here
        // when the request pool is destroyed.
        drop(unsafe { Box::from_raw(data as *mut RequestCtx) });
        // SAFETY: pool cleanups run on the event loop.
        unsafe { crate::worker::free_dropped_chunks_soon() };
    });
}

/// The request's context, stored in r->ctx by RequestCtx::install (None before).
///
/// # Safety
/// r is a live request of this module's location; on the event loop; the returned
/// reference is the only one to the context while it is used.
pub unsafe fn request_ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    // SAFETY: r is live (caller); its ctx array has a slot per module, ours null or a
    // live RequestCtx (freed with r's pool).
    unsafe {
        let slot = *(*r).ctx.add(Module::module().ctx_index);
        (slot as *mut RequestCtx).as_mut()
    }
}

/// Bridge callback: processes whatever the thread queued for a request.
pub fn pump(ready: Ready) {
    let Some(batch) = ready.take() else {
        return; // the request is finished (and its ctx may be freed)
    };
    let ctx = batch.ctx.as_ptr();
    // SAFETY: take() returned the token, so ctx is live and the request not released
    // (exchange.rs); nothing frees it before finish() below; on the event loop.
    let site = unsafe { Site::request((*ctx).r) };
    // SAFETY: as above.
    let code = no_unwind(site, "output", None, || unsafe {
        (*ctx).write_batch(batch.logs, batch.events)
    });
    if let Some(code) = code {
        // SAFETY: as above; finish is the last use of ctx.
        unsafe { finish(ctx, code) };
    }
}

/// After a panic on a request's path (lib.rs's guard): takes the request back from its
/// thread, if it still has it, and finalizes it with 500, or closes its connection if the
/// header went out. A request released already is left alone: its end is under way.
///
/// # Safety
/// r is live; on the event loop.
pub unsafe fn fail_after_panic(r: *mut ngx_http_request_t) {
    // SAFETY: r is live (caller), and no other reference to its ctx is in use: the
    // panicking callback's were dropped by the unwinding.
    if let Some(ctx) = unsafe { request_ctx(r) } {
        if ctx.done {
            return;
        }
        // A parked response still runs to its end (close()), its output dropped.
        ctx.producer.mark_gone();
        // SAFETY: as above.
        unsafe { ctx.release() };
    }
    // SAFETY: r and its connection are live (caller); r may be freed after finalizing.
    unsafe {
        let c = (*r).connection;
        let rc = if (*r).header_sent() != 0 {
            NGX_ERROR as ngx_int_t
        } else {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        };
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}

/// After a panic in a cleanup of a request nginx is ending: takes the request back from
/// its thread so that nginx can free it.
///
/// # Safety
/// ctx and its request are live; on the event loop.
pub unsafe fn release_after_panic(ctx: *mut RequestCtx) {
    // SAFETY: ctx is live (caller), no other reference to it in use (see above).
    let ctx = unsafe { &mut *ctx };
    ctx.producer.mark_gone();
    // SAFETY: its request is live (caller).
    unsafe { ctx.release() };
}

/// The thread is done with the request: give it back to nginx.
///
/// # Safety
/// ctx is live; on the event loop. ctx (and the request) may be freed when this returns.
pub unsafe fn finish(ctx: *mut RequestCtx, rc: ngx_int_t) {
    // SAFETY: ctx and its request are live (caller); the reference ends before
    // ngx_http_finalize_request may free them.
    unsafe {
        let ctx = &mut *ctx;
        if ctx.done {
            return;
        }
        let r = ctx.r;
        let c = (*r).connection;
        let rc = if (*c).error() != 0 {
            NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t
        } else {
            rc
        };
        let status = if rc == NGX_OK as ngx_int_t {
            NGX_HTTP_OK as ngx_int_t
        } else if rc == NGX_ERROR as ngx_int_t && (*r).header_sent() == 0 {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        } else {
            rc
        };
        ctx.account(Some(status));
        if ctx.release().is_none() {
            return;
        }
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}

/// A request known to be live, on the event loop, for as long as this handle is used:
/// reading its flags and handing it to nginx needs no further proof at each use.
#[derive(Clone, Copy)]
struct LiveRequest(*mut ngx_http_request_t);

impl LiveRequest {
    /// # Safety
    /// r (with its connection) stays live while the handle is used, only on the event
    /// loop, and no reference to it is held meanwhile.
    unsafe fn new(r: *mut ngx_http_request_t) -> Self {
        LiveRequest(r)
    }

    fn connection_error(self) -> bool {
        // SAFETY: r and its connection are live (new's contract).
        unsafe { (*(*self.0).connection).error() != 0 }
    }

    fn header_only(self) -> bool {
        // SAFETY: r is live (new's contract).
        unsafe { (*self.0).header_only() != 0 }
    }

    fn header_sent(self) -> bool {
        // SAFETY: r is live (new's contract).
        unsafe { (*self.0).header_sent() != 0 }
    }

    fn is_main(self) -> bool {
        // SAFETY: r is live (new's contract).
        unsafe { self.0 == (*self.0).main }
    }

    /// nginx still holds output of the request (in its filters or the connection).
    fn buffered(self) -> bool {
        // SAFETY: r and its connection are live (new's contract).
        unsafe { (*(*self.0).connection).buffered() != 0 || (*self.0).buffered() != 0 }
    }

    /// Sets the response head and sends it through the header filters; false if either
    /// failed.
    fn send_header(self, head: &rwsgi::ResponseHead) -> bool {
        // SAFETY: r is live, on the event loop (new's contract), and the engine sends one
        // head per response, before any body.
        unsafe {
            if set_response_head(self.0, head).is_err() {
                return false;
            }
            let rc = ngx_http_send_header(self.0);
            rc != NGX_ERROR as ngx_int_t && rc <= NGX_OK as ngx_int_t
        }
    }

    /// Ends the body when its last buffer has gone out already.
    fn send_last(self) -> ngx_int_t {
        // SAFETY: r is live, on the event loop (new's contract).
        unsafe { ngx_http_send_special(self.0, NGX_HTTP_LAST as ngx_uint_t) }
    }
}

/// Links being chained for one pass through the output filters.
struct Chain {
    head: *mut ngx_chain_t,
    last: *mut ngx_chain_t,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: ptr::null_mut(),
            last: ptr::null_mut(),
        }
    }
}

impl Chain {
    fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// # Safety
    /// link is a valid link with a buffer, next null, that lives as long as the chain.
    unsafe fn push(&mut self, link: *mut ngx_chain_t) {
        if self.last.is_null() {
            self.head = link;
        } else {
            // SAFETY: last is the chain's valid last link (pushed before).
            unsafe { (*self.last).next = link };
        }
        self.last = link;
    }

    /// Flags the last buffer: the end of the response (`last`; last_buf only on the main
    /// request) or a flush.
    ///
    /// # Safety
    /// The chain is not empty and its links are valid.
    unsafe fn mark_end(&self, last: bool, main: bool) {
        // SAFETY: last is a valid link with a buffer (push's contract).
        unsafe {
            let b = (*self.last).buf;
            if last {
                (*b).set_last_buf(if main { 1 } else { 0 });
                (*b).set_last_in_chain(1);
            } else {
                (*b).set_flush(1);
            }
        }
    }
}

/// Marks our body buffers, so ngx_chain_update_chains recycles them and only them.
fn buf_tag() -> ngx_buf_tag_t {
    Module::module() as *const ngx_module_t as ngx_buf_tag_t
}

/// A chain link (next = null) with a buffer for a byte range of an open file (sent with
/// sendfile when enabled). Null if the pool is out of memory.
///
/// # Safety
/// r is live; `file` stays open while nginx may send from the buffer.
unsafe fn file_link(
    r: *mut ngx_http_request_t,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> *mut ngx_chain_t {
    use std::os::fd::AsRawFd;
    // SAFETY: r and its pool are live (caller); the structs are zeroed pool memory we
    // fill as nginx's own file buffers are.
    unsafe {
        let pool = (*r).pool;
        let b = ngx_pcalloc(pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        let f = ngx_pcalloc(pool, std::mem::size_of::<ngx_file_t>()) as *mut ngx_file_t;
        let link = ngx_alloc_chain_link(pool);
        if b.is_null() || f.is_null() || link.is_null() {
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
        (*link).buf = b;
        (*link).next = ptr::null_mut();
        link
    }
}

/// Write event while waiting for a slow client.
extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this on the event loop for a live request; nothing in it
    // finalizes the request.
    let site = unsafe { Site::request(r) };
    no_unwind(site, "write handler", (), || {
        // SAFETY: as above; we installed this handler with the request's ctx.
        let Some(ctx) = (unsafe { request_ctx(r) }) else {
            return;
        };
        // SAFETY: r, its connection and write event are live (as above).
        let (c, wev) = unsafe { ((*r).connection, (*(*r).connection).write) };
        // SAFETY: as above.
        if unsafe { (*wev).timedout() } != 0 {
            // SAFETY: as above.
            unsafe {
                crate::log::write((*c).log, LogLevel::Info, ctx.label(), "client timed out");
                (*c).set_timedout(1);
                (*r).write_event_handler = Some(ngx_http_request_empty_handler);
            }
            ctx.producer.mark_gone();
            return;
        }
        // SAFETY: as above: sends what nginx holds of the request's output.
        let rc = unsafe { ngx_http_output_filter(r, ptr::null_mut()) };
        // SAFETY: r is live; null: nothing new passed to the filters.
        unsafe { ctx.recycle(ptr::null_mut()) };
        if rc == NGX_ERROR as ngx_int_t {
            // SAFETY: as above.
            unsafe { (*r).write_event_handler = Some(ngx_http_request_empty_handler) };
            ctx.producer.mark_gone();
            return;
        }
        // SAFETY: as above.
        if unsafe { LiveRequest::new(r) }.buffered() {
            // SAFETY: as above.
            unsafe { ctx.wait_for_drain() };
            return;
        }
        // SAFETY: as above.
        unsafe {
            if (*wev).timer_set() != 0 {
                ngx_del_timer(wev);
            }
            (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        }
        ctx.release_holding();
    })
}

/// Read event while the thread owns the request: notices a client that went away.
extern "C" fn on_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this on the event loop for a live request, which stays alive
    // (blocked) even when test_reading terminates it.
    let site = unsafe { Site::request(r) };
    no_unwind(site, "read handler", (), || {
        // SAFETY: nginx calls this on the event loop for a live request; blocked > 0 keeps
        // r alive even when test_reading terminates it, so its ctx is still valid after.
        unsafe {
            ngx_http_test_reading(r);
            if (*(*r).connection).error() != 0 {
                if let Some(ctx) = request_ctx(r) {
                    ctx.producer.mark_gone();
                }
            }
        }
    })
}

/// Guard timer: notices a broken connection, reports a request stuck in Python.
extern "C" fn on_guard(ev: *mut ngx_event_t) {
    // SAFETY: the guard's data is its ctx (lend), and release() deletes the
    // timer before the ctx can be freed, or its request (blocked); on the event loop.
    let ctx = unsafe { (*ev).data as *mut RequestCtx };
    // SAFETY: as above.
    let site = unsafe { Site::request((*ctx).r) };
    no_unwind(site, "guard timer", (), || {
        // SAFETY: as above; the only reference to ctx while it is used.
        let ctx = unsafe { &mut *ctx };
        // SAFETY: ctx.r is live while the thread holds it (blocked).
        if unsafe { (*(*ctx.r).connection).error() } != 0 {
            ctx.producer.mark_gone();
        }
        // SAFETY: ctx.r is live while the thread holds it (as above).
        let interval = unsafe { ctx.report_stuck() };
        // SAFETY: the guard lives in ctx (as above).
        unsafe { ngx_add_timer(&mut ctx.guard, interval) };
    })
}

impl RequestCtx {
    /// From the guard timer: a request in the app for wsgi_stuck_after (then again each
    /// time as long again goes by) is logged, and its thread's Python stack after it, once
    /// another thread has formatted it (that takes the GIL, which the loop must not wait
    /// for). Returns when the guard is to fire next.
    ///
    /// # Safety
    /// self.r is live, held by the thread; on the event loop.
    unsafe fn report_stuck(&mut self) -> ngx_msec_t {
        let log = self.guard.log;
        let label = self.producer.label();
        // SAFETY: the guard's log is the live connection's, on the event loop (caller).
        let warn = |message: &dyn std::fmt::Display| unsafe {
            crate::log::write(log, LogLevel::Warn, label, message)
        };
        if let Some(pending) = &self.stack {
            let stack = match pending.try_recv() {
                Err(mpsc::TryRecvError::Empty) if self.started.elapsed() < self.next_report => {
                    return STACK_POLL_MS;
                }
                Err(_) => Err("the GIL was not free in time".to_string()),
                Ok(stack) => stack,
            };
            self.stack = None;
            match stack {
                Ok(Some(stack)) => stack.lines().for_each(|line| warn(&line)),
                Ok(None) => warn(&"its thread runs no Python code"),
                Err(why) => warn(&format_args!("stack unavailable: {why}")),
            }
        }
        let elapsed = self.started.elapsed();
        if elapsed < self.next_report {
            return self.guard_interval();
        }
        while self.next_report <= elapsed {
            self.next_report += self.stuck_after;
        }
        // SAFETY: r is live (caller); the request line lives with r.
        let line =
            unsafe { String::from_utf8_lossy((*self.r).request_line.as_bytes()).into_owned() };
        let (age, thread) = (elapsed.as_secs(), self.producer.running_thread());
        match thread {
            Some(thread) => {
                warn(&format_args!(
                    "request \"{line}\" still in progress after {age} s, in thread {thread:#x} (most recent call last):"
                ));
                self.stack = crate::shutdown::python_stack_later(thread);
                if self.stack.is_some() {
                    return STACK_POLL_MS;
                }
                warn(&"stack unavailable: earlier stacks still wait for the GIL");
            }
            None => {
                let waiting = match self.producer.group() {
                    // The app process logs its own stack at its group's request-timeout.
                    Some(group) => format!("proxied to process group {group}"),
                    None => "waiting for its client".to_string(),
                };
                warn(&format_args!(
                    "request \"{line}\" still in progress after {age} s, {waiting}"
                ))
            }
        }
        self.guard_interval()
    }
}
