//! A request in a daemon-mode location, proxied to its process group on the event loop:
//! no thread is held, whatever the app does. Once nginx has read the body, the worker
//! connects (non-blocking) to the group's unix socket, sends REQUEST, answers each READ
//! with one BODY from the body nginx read, and hands the app's HEAD / DATA / FILE / END /
//! ABORT / FAIL to the same output code as embedded mode (output.rs); LOG lines go to the
//! error log with the request's context and label, as a Python thread's do (the app
//! process sends them bare) (docs/daemon-internals.md, "Wire protocol").
//!
//! - Connecting: a group whose socket is missing or refuses gets 503 at once. A full
//!   backlog (every process busy; Linux answers EAGAIN on a unix socket) is retried with
//!   a timer, 10 ms doubling to 250 ms, until the group's connect-timeout, then 503.
//! - Backpressure: past exchange::HIGH_WATER bytes waiting for the client, the app's
//!   socket is not read (the app blocks in its write); reading resumes at LOW_WATER.
//! - Timeouts: socket-timeout of silence from the app answers 504, or aborts a response
//!   whose head went out.
//! - Trust: the app process runs a tenant's code and may write anything on its socket.
//!   Frames are decoded by rwsgi::daemon (lengths checked, heads validated as
//!   start_response does), and here the response must be well formed: one HEAD before any
//!   body, no more body than its Content-Length, FILE only with a readable regular file,
//!   no stray descriptors. Anything else is a protocol error: 502, or an aborted response.
//! - The client gone: the app's connection is closed, so its next write fails and the
//!   engine closes its iterable.

use crate::body::NginxBody;
use crate::config::LocConf;
use crate::daemon_conf::Target;
use crate::exchange::{cost, HIGH_WATER, LOW_WATER};
use crate::output::{finish, RequestCtx};
use crate::producer::Producer;
use crate::{no_unwind, Module, Site};
use ngx::ffi::*;
use ngx::http::HttpModuleMainConf;
use rwsgi::daemon::fd_passing::recv_with_files;
use rwsgi::daemon::leftover_logs::leftover_logs;
use rwsgi::daemon::messages::now_us;
use rwsgi::daemon::socket_path;
use rwsgi::daemon::{AppRef, FrameBuffer, FromApp, RequestFrame, ToApp, DATA_FRAME, MAX_FRAME};
use rwsgi::metrics::AppCounters;
use rwsgi::{AppSpec, BodyReader, LogLabel, LogLevel, OutputEvent, Request, Stage};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt::Display;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::time::Instant;

/// The first wait before connecting again to a group whose backlog is full, and the
/// longest (the wait doubles in between).
const RETRY_FIRST_MS: ngx_msec_t = 10;
const RETRY_MAX_MS: ngx_msec_t = 250;
/// Bytes read from an app socket at a time.
const RECV_CHUNK: usize = 64 * 1024;
/// Bytes queued for the app past which its frames are not read: an app that asks for
/// body faster than it takes it waits instead of growing the worker's memory.
const OUT_LIMIT: usize = 1 << 20;
/// What a REQUEST frame holds beside the request's own bytes, generously.
const REQUEST_OVERHEAD: usize = 64 * 1024;

thread_local! {
    /// The event loop's buffer for reading app sockets (one loop, one buffer).
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; RECV_CHUNK]);
}

/// A request's connection to its group's app process; owned by its RequestCtx (through
/// Producer), used only on the event loop.
pub struct AppConn {
    target: &'static Target,
    /// The RequestCtx that owns this (set by bind): the data of the connection's and the
    /// retry timer's events.
    ctx: *mut RequestCtx,
    /// The request connection's log, so that lines carry the client and request.
    log: *mut ngx_log_t,
    /// In front of the request's lines (log.rs).
    label: LogLabel,
    /// The request's app on the status page.
    app: Option<&'static AppCounters>,
    /// Counted as waiting (status page) until its app process says it runs it (the
    /// engine's Stage::Running, which comes as a STAGE frame).
    waiting: bool,
    /// A load failure was counted: once per request, whatever the app process repeats.
    load_failed: bool,
    /// The connection to the app process; null before it is made and after close.
    c: *mut ngx_connection_t,
    /// Fires the next connect attempt while the group's backlog is full.
    retry: ngx_event_t,
    retry_ms: ngx_msec_t,
    started: Instant,
    /// Frames for the app not yet written (REQUEST, BODY answers), from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    frames: FrameBuffer,
    /// Descriptors received, waiting for their FILE frame.
    files: VecDeque<File>,
    body: NginxBody,
    /// Body bytes handed to nginx and not yet sent to the client (exchange::cost).
    unsent: usize,
    /// The app's socket is not read until the client catches up.
    paused: bool,
    /// The client has gone: the next turn of the loop ends the request.
    gone: bool,
    /// What the response has shown so far, to check that it is well formed.
    head_seen: bool,
    declared: Option<u64>,
    body_bytes: u64,
    /// A HEAD request: its response has no body, whatever its Content-Length says.
    head_request: bool,
}

/// What one turn of reading the app's socket produced.
#[derive(Default)]
struct Batch {
    events: Vec<OutputEvent>,
    logs: Vec<(LogLevel, String)>,
    /// The final event is in `events`: nothing after it is read.
    ended: bool,
}

enum Attempt {
    Connected,
    /// The backlog is full: try again later.
    Busy,
    /// Nothing to wait for (no socket, refused, out of connections): why.
    Refused(String),
}

/// From the body handler of a daemon location: builds the REQUEST, connects, and lends
/// the request to the app process. Err(status) answers it at once.
///
/// # Safety
/// r is a live request whose body nginx has read, of a location running in `group`; on
/// the event loop. `label` is its log lines'.
pub unsafe fn start(
    r: *mut ngx_http_request_t,
    lc: &LocConf,
    spec: &AppSpec,
    group: usize,
    label: LogLabel,
) -> Result<(), ngx_int_t> {
    let error = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    // SAFETY: r is live (caller), so is its connection.
    let log = unsafe { (*(*r).connection).log };
    // SAFETY: log is the live connection's, on the event loop (caller).
    let log_error =
        |message: &dyn Display| unsafe { crate::log::write(log, LogLevel::Error, &label, message) };
    // SAFETY: as above; the conf is the cycle's, alive as long as the worker.
    let mc = Module::main_conf(unsafe { &*r }).ok_or(error)?;
    let Some(target) = mc.daemon.targets.get(group) else {
        log_error(&format_args!(
            "process group {} has no socket: the supervisor did not set it up (see the \
             master's messages in the error log); answering 503",
            mc.daemon.groups.get(group).map_or("?", |g| g.name.as_str())
        ));
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    };
    // SAFETY: r's body is read (caller); without a thread side it is read only here, on
    // the loop, while r is live (the AppConn holding it goes with r's context).
    let (body, body_len) = unsafe { NginxBody::capture(r, None) }.map_err(|e| {
        log_error(&format_args!("cannot read the request body: {e}"));
        error
    })?;
    // SAFETY: r is live, on the event loop (caller).
    let request = unsafe { crate::handler::build_request(r, lc, body_len) };
    if request_size(&request) + REQUEST_OVERHEAD > MAX_FRAME {
        log_error(&format_args!(
            "the request's headers are too large to pass to process group {}",
            target.name
        ));
        return Err(error);
    }
    let head_request = request.method == "HEAD";
    let frame = ToApp::Request(Box::new(RequestFrame {
        secret: target.secret,
        accepts_files: true,
        accepts_stages: true,
        connected_at_us: now_us(),
        app: AppRef {
            target: spec.target.clone(),
            callable: spec.callable.clone(),
        },
        request,
    }));
    let mut out = Vec::with_capacity(4096);
    frame.encode(&mut out);
    let conn = AppConn {
        target,
        ctx: ptr::null_mut(),
        log,
        label,
        app: lc.app_metrics(),
        waiting: false,
        load_failed: false,
        c: ptr::null_mut(),
        // SAFETY: ngx_event_t is a C struct whose all-zero state is "not armed".
        retry: unsafe { std::mem::zeroed() },
        retry_ms: RETRY_FIRST_MS,
        started: Instant::now(),
        out,
        out_pos: 0,
        frames: FrameBuffer::new(),
        files: VecDeque::new(),
        body,
        unsent: 0,
        paused: false,
        gone: false,
        head_seen: false,
        declared: None,
        body_bytes: 0,
        head_request,
    };
    // SAFETY: r is live, on the event loop (caller); install binds the AppConn to ctx.
    let ctx = unsafe { RequestCtx::install(r, Producer::Daemon(Box::new(conn))) }.ok_or(error)?;
    // SAFETY: as above; ctx is r's context.
    if !unsafe { crate::shutdown::watch(r, ctx) } {
        return Err(error);
    }
    let ctx = ctx.as_ptr();
    // The first attempt comes before the request is lent, so that a group that is not
    // there is answered at once.
    // SAFETY: ctx is live (r's context) and no other reference to it is in use.
    let attempt = unsafe { app_conn(ctx) }.try_connect();
    if let Attempt::Refused(why) = &attempt {
        // SAFETY: as above.
        unsafe { app_conn(ctx) }.log_refused(why);
        if let Some(app) = lc.app_metrics() {
            app.count(rwsgi::metrics::RequestEnd {
                status: Some(503),
                // SAFETY: as above.
                duration: unsafe { (*ctx).age() },
                ..Default::default()
            });
        }
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
    // SAFETY: as above.
    unsafe { app_conn(ctx) }.wait();
    // SAFETY: ctx is r's live context, on the event loop.
    unsafe { (*ctx).lend(mc.stuck_after(), lc.app_metrics()) };
    let outcome = match attempt {
        // SAFETY: as above.
        Attempt::Connected => unsafe { step(ctx) },
        _ => {
            // SAFETY: as above.
            unsafe { app_conn(ctx) }.schedule_retry();
            None
        }
    };
    if let Some(rc) = outcome {
        // SAFETY: ctx is live; nothing uses it after this.
        unsafe { finish(ctx, rc) };
    }
    Ok(())
}

/// The AppConn of a daemon request's context.
///
/// # Safety
/// ctx is a live RequestCtx of a daemon request, and no other reference to it is in use
/// while the returned one is.
unsafe fn app_conn<'a>(ctx: *mut RequestCtx) -> &'a mut AppConn {
    // SAFETY: the caller's contract.
    unsafe { (*ctx).app_conn() }.expect("a daemon request's context")
}

/// The app connection's read and write events.
extern "C" fn on_app_event(ev: *mut ngx_event_t) {
    // SAFETY: the event is the app connection's, whose data is its request's context
    // (try_connect); the connection is closed before that context is freed, and the
    // request is live while the context is lent. On the event loop.
    let (ctx, timed_out) = unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let timed_out = (*ev).timedout() != 0;
        (*ev).set_timedout(0);
        ((*c).data as *mut RequestCtx, timed_out)
    };
    // SAFETY: as above; the guard's body does not finalize the request (finish runs after).
    let site = unsafe { Site::request((*ctx).r()) };
    let outcome = no_unwind(site, "daemon connection", None, || {
        if timed_out {
            // SAFETY: as above.
            unsafe { time_out(ctx) }
        } else {
            // SAFETY: as above.
            unsafe { step(ctx) }
        }
    });
    if let Some(rc) = outcome {
        // SAFETY: ctx is live (no panic ended it: the guard returned the outcome).
        unsafe { finish(ctx, rc) };
    }
}

/// The retry timer: connects again to a group whose backlog was full.
extern "C" fn on_retry(ev: *mut ngx_event_t) {
    // SAFETY: the retry event's data is its request's context (bind); close() deletes
    // the timer and any posting before the context is freed. On the event loop.
    let ctx = unsafe { (*ev).data as *mut RequestCtx };
    // SAFETY: as above.
    let site = unsafe { Site::request((*ctx).r()) };
    let outcome = no_unwind(site, "daemon connect", None, || {
        // SAFETY: as above; the only reference to ctx while it is used.
        let conn = unsafe { app_conn(ctx) };
        if conn.gone {
            return Some(NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t);
        }
        match conn.try_connect() {
            // SAFETY: as above.
            Attempt::Connected => unsafe { step(ctx) },
            Attempt::Busy
                if conn.started.elapsed().as_millis() < conn.target.connect_timeout as u128 =>
            {
                conn.schedule_retry();
                None
            }
            Attempt::Busy => {
                let t = conn.target;
                conn.log_error(format_args!(
                    "process group {}: no process took the request within \
                     connect-timeout={} s (all are busy and the backlog of {} is full); \
                     answering 503",
                    t.name,
                    t.connect_timeout / 1000,
                    t.socket.display()
                ));
                Some(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t)
            }
            Attempt::Refused(why) => {
                conn.log_refused(&why);
                Some(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t)
            }
        }
    });
    if let Some(rc) = outcome {
        // SAFETY: ctx is live (as above).
        unsafe { finish(ctx, rc) };
    }
}

/// One turn: writes what waits for the app, reads what it sent, hands the response to
/// the output code. Some(rc): the request is to be finished with rc.
///
/// # Safety
/// ctx is the live context of a daemon request lent to its app process; on the event
/// loop; no other reference to ctx is in use.
unsafe fn step(ctx: *mut RequestCtx) -> Option<ngx_int_t> {
    // SAFETY: the function's contract; the reference ends before write_batch.
    let conn = unsafe { app_conn(ctx) };
    if conn.gone {
        return Some(NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t);
    }
    let mut batch = Batch::default();
    let outcome = conn.turn(&mut batch);
    if !batch.events.is_empty() || !batch.logs.is_empty() {
        // SAFETY: the function's contract; write_batch may acknowledge bytes or mark the
        // client gone, which only posts events to come back here.
        if let Some(rc) = unsafe { (*ctx).write_batch(batch.logs, batch.events) } {
            return Some(rc);
        }
    }
    if let Err(why) = outcome {
        // SAFETY: as above.
        return Some(unsafe { protocol_failure(ctx, &why) });
    }
    // SAFETY: as above.
    let conn = unsafe { app_conn(ctx) };
    conn.arm_timer();
    None
}

/// socket-timeout went by without a word from the app.
///
/// # Safety
/// As for [`step`].
unsafe fn time_out(ctx: *mut RequestCtx) -> Option<ngx_int_t> {
    // SAFETY: the function's contract.
    let t = unsafe { app_conn(ctx) }.target;
    let why = format!(
        "the app process sent nothing for socket-timeout={} s",
        t.socket_timeout / 1000
    );
    // SAFETY: as above; r is live while lent.
    let header_sent = unsafe { (*(*ctx).r()).header_sent() != 0 };
    // SAFETY: as above.
    let conn = unsafe { app_conn(ctx) };
    if header_sent {
        conn.log_error(format_args!(
            "process group {}: {why}; the response is cut short",
            t.name
        ));
        Some(NGX_ERROR as ngx_int_t)
    } else {
        conn.log_error(format_args!(
            "process group {}: {why}; answering 504",
            t.name
        ));
        Some(NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t)
    }
}

/// Logs why the exchange with the app failed; returns the status to finish with (502, or
/// an aborted response once its head went out).
///
/// # Safety
/// As for [`step`].
unsafe fn protocol_failure(ctx: *mut RequestCtx, why: &str) -> ngx_int_t {
    // SAFETY: the function's contract; r is live while lent.
    let (conn, header_sent) = unsafe { (app_conn(ctx), (*(*ctx).r()).header_sent() != 0) };
    let (rc, then) = if header_sent {
        (NGX_ERROR as ngx_int_t, "the response is cut short")
    } else {
        (NGX_HTTP_BAD_GATEWAY as ngx_int_t, "answering 502")
    };
    conn.log_error(format_args!(
        "process group {}: {why}; {then}",
        conn.target.name
    ));
    rc
}

impl AppConn {
    /// Registers the RequestCtx that owns this connection, for its events.
    ///
    /// # Safety
    /// ctx owns this AppConn (through its producer) and stays where it is until it drops
    /// it; log is its request connection's.
    pub unsafe fn bind(&mut self, ctx: NonNull<RequestCtx>, log: *mut ngx_log_t) {
        self.ctx = ctx.as_ptr();
        self.log = log;
        self.retry.handler = Some(on_retry);
        self.retry.data = ctx.as_ptr() as *mut c_void;
        self.retry.log = log;
    }

    pub fn group(&self) -> &str {
        &self.target.name
    }

    /// `bytes` reached the client: reading the app resumes once few enough wait.
    pub fn acknowledge(&mut self, bytes: usize) {
        self.unsent = self.unsent.saturating_sub(bytes);
        if self.paused && self.unsent <= LOW_WATER {
            self.paused = false;
            self.wake();
        }
    }

    /// The client has gone: the loop comes back to end the request (and close the app's
    /// connection) after the current handler.
    pub fn mark_gone(&mut self) {
        self.gone = true;
        self.wake();
    }

    /// Has the loop come back to this request soon: through the connection's read event,
    /// or the retry event while there is no connection yet.
    fn wake(&mut self) {
        let ev = if self.c.is_null() {
            if self.retry.timer_set() == 0 {
                return; // not connecting: nothing to come back to
            }
            &mut self.retry as *mut ngx_event_t
        } else {
            // SAFETY: c is the live app connection.
            unsafe { (*self.c).read }
        };
        // SAFETY: ev is a live event of this request (its connection's or its own), and
        // close() removes it from the queue before it could go; on the event loop.
        unsafe { ngx_post_event(ev, ptr::addr_of_mut!(ngx_posted_events)) };
    }

    /// The request waits for an app process to run it (until `stop_waiting`).
    fn wait(&mut self) {
        if let (false, Some(app)) = (self.waiting, self.app) {
            app.wait();
            self.waiting = true;
        }
    }

    fn stop_waiting(&mut self) {
        if let (true, Some(app)) = (self.waiting, self.app) {
            app.stop_waiting();
        }
        self.waiting = false;
    }

    /// Counts a stage the app process's engine reached, as a Python thread's sink does.
    fn stage(&mut self, stage: Stage) {
        match stage {
            Stage::Running => self.stop_waiting(),
            Stage::LoadFailed => {
                if let (false, Some(app)) =
                    (std::mem::replace(&mut self.load_failed, true), self.app)
                {
                    app.import_failed();
                }
            }
        }
    }

    /// Closes the app's connection (its next write fails; the engine closes the app's
    /// iterable) and stops the retry timer. Idempotent.
    pub fn close(&mut self) {
        self.stop_waiting();
        if !self.c.is_null() && self.gone {
            // The client left mid-response: the app's log lines still in the socket
            // are logged (behind the request's label), not dropped with it.
            // SAFETY: c is the live app connection.
            let fd = unsafe { (*self.c).fd };
            for (level, message) in leftover_logs(fd, &mut self.frames) {
                // SAFETY: log is the request's log, live while its connection is.
                unsafe { crate::log::write(self.log, level, &self.label, &message) };
            }
        }
        if !self.c.is_null() {
            // SAFETY: c is the live connection try_connect opened; closing it removes its
            // events from the loop, its timers and postings.
            unsafe { ngx_close_connection(self.c) };
            self.c = ptr::null_mut();
        }
        // SAFETY: the retry event lives in self; removing it from the timer tree and the
        // posted queue is what makes freeing it safe.
        unsafe {
            if self.retry.timer_set() != 0 {
                ngx_del_timer(&mut self.retry);
            }
            if self.retry.posted() != 0 {
                ngx_delete_posted_event(&mut self.retry);
            }
        }
        self.files.clear();
    }

    fn log_refused(&self, why: &str) {
        self.log_error(format_args!(
            "process group {}: cannot connect to {}: {why}; answering 503",
            self.target.name,
            self.target.socket.display()
        ));
    }

    /// One error line of the request, behind its label.
    fn log_error(&self, message: impl Display) {
        // SAFETY: log is the request connection's (bind), live as long as the request
        // whose context owns this; on the event loop.
        unsafe { crate::log::write(self.log, LogLevel::Error, &self.label, message) };
    }

    /// The label of the request's log lines.
    pub fn label(&self) -> &LogLabel {
        &self.label
    }

    fn schedule_retry(&mut self) {
        // SAFETY: the retry event lives in self, set up by bind; close() deletes it.
        unsafe { ngx_add_timer(&mut self.retry, self.retry_ms) };
        self.retry_ms = (self.retry_ms * 2).min(RETRY_MAX_MS);
    }

    /// One non-blocking connect to the group's socket; on success the connection joins
    /// the event loop.
    fn try_connect(&mut self) -> Attempt {
        let (addr, len) = match socket_path::address(&self.target.socket) {
            Ok(address) => address,
            Err(e) => return Attempt::Refused(e.to_string()),
        };
        // SAFETY: socket has no memory preconditions; the descriptor is ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Attempt::Refused(io::Error::last_os_error().to_string());
        }
        // SAFETY: addr is an initialized sockaddr_un of `len` meaningful bytes.
        let rc = unsafe {
            libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: fd is ours and nothing else uses it.
            unsafe { libc::close(fd) };
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Attempt::Busy,
                Some(libc::ENOENT) => Attempt::Refused(
                    "the socket does not exist (is the supervisor running?)".into(),
                ),
                Some(libc::ECONNREFUSED) => {
                    Attempt::Refused("refused (no process of the group listens)".into())
                }
                _ => Attempt::Refused(err.to_string()),
            };
        }
        // SAFETY: fd is a connected socket we own; nginx takes it over with the
        // connection (ngx_close_connection closes it).
        let c = unsafe { ngx_get_connection(fd, self.log) };
        if c.is_null() {
            // SAFETY: fd is still ours.
            unsafe { libc::close(fd) };
            return Attempt::Refused("no free connection (raise worker_connections)".into());
        }
        // SAFETY: c is the fresh connection for fd; its events are nginx's, wired to us
        // here; ctx (bind) outlives the connection (close() runs before it is freed).
        let added = unsafe {
            (*c).data = self.ctx as *mut c_void;
            (*c).log = self.log;
            for ev in [(*c).read, (*c).write] {
                (*ev).handler = Some(on_app_event);
                (*ev).log = self.log;
            }
            ngx_handle_read_event((*c).read, 0) == NGX_OK as ngx_int_t
                && ngx_handle_write_event((*c).write, 0) == NGX_OK as ngx_int_t
        };
        if !added {
            // SAFETY: c is the connection just made.
            unsafe { ngx_close_connection(c) };
            return Attempt::Refused("cannot add the connection to the event loop".into());
        }
        self.c = c;
        Attempt::Connected
    }

    /// Writes what waits, reads and decodes what came, answers READs, writes again.
    fn turn(&mut self, batch: &mut Batch) -> Result<(), String> {
        self.flush()?;
        while !self.paused && !batch.ended && self.out.len() - self.out_pos < OUT_LIMIT {
            let got = RECV_BUF.with_borrow_mut(|buf| {
                // SAFETY: c is the live app connection (turn runs only once connected).
                let fd = unsafe { (*self.c).fd };
                let n = recv_with_files(fd, buf, &mut self.files, libc::MSG_DONTWAIT);
                if let Ok(n) = n {
                    self.frames.extend(&buf[..n]);
                }
                n
            });
            match got {
                Ok(0) => {
                    return Err("the app process closed the connection before the response \
                                ended"
                        .into())
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // SAFETY: c is the live app connection.
                    unsafe { (*(*self.c).read).set_ready(0) };
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("cannot read from the app process: {e}")),
            }
            self.take_frames(batch)?;
            // Each FILE's descriptor comes with its frame's first bytes: one may wait for
            // the rest of its frame, never more.
            if self.files.len() > 1 {
                return Err("the app process sent descriptors without FILE frames".into());
            }
        }
        self.flush()
    }

    /// Decodes the complete frames received.
    fn take_frames(&mut self, batch: &mut Batch) -> Result<(), String> {
        while !batch.ended {
            let Some(frame) = self.frames.next_frame().map_err(|e| e.to_string())? else {
                return Ok(());
            };
            match FromApp::decode(&frame, &mut self.files).map_err(|e| e.to_string())? {
                FromApp::Read(n) => self.answer_read(n)?,
                // Written as a Python thread's lines are, behind the request's label.
                FromApp::Log(level, message) => batch.logs.push((level, message)),
                FromApp::Stage(stage) => self.stage(stage),
                FromApp::Event(event) => {
                    self.check(&event)?;
                    if let OutputEvent::Data(data) = &event {
                        self.unsent += cost(data.len());
                        if self.unsent > HIGH_WATER {
                            self.paused = true;
                        }
                    }
                    batch.ended = event.is_final();
                    batch.events.push(event);
                }
            }
        }
        Ok(())
    }

    /// A response event must come in order and keep to its head's Content-Length, so
    /// that a tenant's app cannot desynchronize the client's keep-alive connection.
    fn check(&mut self, event: &OutputEvent) -> Result<(), String> {
        let body_len = match event {
            OutputEvent::Head(head) => {
                if self.head_seen {
                    return Err("the app process sent a second response head".into());
                }
                self.head_seen = true;
                // The engine sends no body after the head of a HEAD request or of a
                // 204 / 304, as in embedded mode; none may come.
                self.declared = if self.head_request || head.forbids_body() {
                    Some(0)
                } else {
                    head.content_length
                };
                return Ok(());
            }
            OutputEvent::Data(data) => data.len() as u64,
            OutputEvent::File { file, offset, len } => {
                check_file(file, *offset, *len)?;
                *len
            }
            OutputEvent::End => {
                if !self.head_seen {
                    return Err("the app process ended a response it never began".into());
                }
                return match self.declared {
                    Some(n) if n != self.body_bytes => Err(format!(
                        "the app process ended the response after {} of its Content-Length \
                         of {n} bytes",
                        self.body_bytes
                    )),
                    _ => Ok(()),
                };
            }
            OutputEvent::Abort | OutputEvent::Fail(_) => return Ok(()),
        };
        if !self.head_seen {
            return Err("the app process sent body before the response head".into());
        }
        self.body_bytes = self.body_bytes.saturating_add(body_len);
        match self.declared {
            Some(n) if self.body_bytes > n => Err(format!(
                "the app process sent more than its Content-Length of {n} bytes"
            )),
            _ => Ok(()),
        }
    }

    /// Answers a READ with one BODY of at most `n` bytes (empty: the body is complete).
    fn answer_read(&mut self, n: u32) -> Result<(), String> {
        if n == 0 {
            return Err("the app process asked for 0 body bytes".into());
        }
        let want = (n as usize).min(DATA_FRAME);
        let mut buf = vec![0u8; want.min(self.body.remaining().unwrap_or(0) as usize)];
        let mut got = 0;
        while got < buf.len() {
            match self.body.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) => return Err(format!("cannot read the request body: {e}")),
            }
        }
        buf.truncate(got);
        ToApp::Body(buf).encode(&mut self.out);
        Ok(())
    }

    /// Writes the queued frames as far as the socket takes them.
    fn flush(&mut self) -> Result<(), String> {
        while self.out_pos < self.out.len() {
            let rest = &self.out[self.out_pos..];
            // SAFETY: rest is a live slice; c is the live app connection.
            let n = unsafe {
                libc::send(
                    (*self.c).fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => {
                        // SAFETY: as above.
                        unsafe { (*(*self.c).write).set_ready(0) };
                        return Ok(());
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(format!("cannot write to the app process: {err}")),
                }
            }
            self.out_pos += n as usize;
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// The app has socket-timeout to say something; not while it waits for the client.
    fn arm_timer(&mut self) {
        if self.c.is_null() {
            return;
        }
        // SAFETY: c is the live app connection; its read event's timer is ours.
        unsafe {
            let rev = (*self.c).read;
            if self.paused {
                if (*rev).timer_set() != 0 {
                    ngx_del_timer(rev);
                }
            } else {
                ngx_add_timer(rev, self.target.socket_timeout);
            }
        }
    }
}

impl Drop for AppConn {
    /// The request's context is being freed: nothing may point at it after.
    fn drop(&mut self) {
        self.close();
    }
}

/// A descriptor the app passed for nginx to send from must be a regular file open for
/// reading, holding the range: anything else (a pipe, a socket) could stall the worker.
fn check_file(file: &File, offset: u64, len: u64) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect the file the app process passed: {e}"))?;
    if !meta.is_file() {
        return Err("the app process passed a descriptor that is not a regular file".into());
    }
    // SAFETY: fcntl F_GETFL reads the flags of an open descriptor.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err("the app process passed a file not open for reading".into());
    }
    if offset.checked_add(len).is_none_or(|end| end > meta.len()) {
        return Err(format!(
            "the app process passed {len} bytes from offset {offset} of a file of {} bytes",
            meta.len()
        ));
    }
    Ok(())
}

/// Roughly how many bytes the request takes on the wire.
fn request_size(r: &Request) -> usize {
    let headers: usize = r.headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    let params: usize = r.params.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    headers
        + params
        + r.request_uri.len()
        + r.script_name.len()
        + r.path_info.len()
        + r.query_string.len()
        + r.server_name.len()
}
