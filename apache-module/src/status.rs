//! The operator's view: counters every child keeps in one shared memory segment (made in
//! the parent by post_config, inherited by the children it forks), the `rwsgi-status`
//! handler that shows them (`<Location /rwsgi-status> SetHandler rwsgi-status
//! </Location>`; who may see it is the Location's Require), and the watchdog thread of
//! each child that logs requests in the app for longer than WSGIStuckAfter with their
//! Python stack. The layout, counting and rendering are the engine's (rwsgi::metrics).

use crate::bindings::*;
use crate::log::{self, Level};
use crate::req::{Req, Table};
use rwsgi::metrics::{AppCounters, Metrics, ProcessGauges, RequestEnd, ThreadState};
use rwsgi::metrics_render::{render, Format, ServerInfo};
use rwsgi::LogLabel;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The segment made by the last post_config in this (parent) process; children inherit
/// the value with the mapping.
static BASE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// This child's handle on it.
static METRICS: OnceLock<Metrics> = OnceLock::new();
/// This child's slot for its thread gauges.
static PROCESS: OnceLock<&'static ProcessGauges> = OnceLock::new();

/// Default WSGIStuckAfter.
const DEFAULT_STUCK_AFTER: u64 = 60;

/// In the parent, at post_config: an anonymous shared segment for the counters, freed with
/// the config pool (a restart makes a new one, so the counters start again).
///
/// # Safety
/// pconf is the live configuration pool; called in the parent, before it forks children.
pub unsafe fn create_shared(pconf: *mut apr_pool_t, s: *mut server_rec) {
    let mut shm: *mut apr_shm_t = ptr::null_mut();
    // SAFETY: pconf is live (caller); a NULL file name asks for anonymous memory, which
    // APR maps shared, so children forked later see the same pages.
    let rv = unsafe { apr_shm_create(&mut shm, Metrics::SIZE, ptr::null(), pconf) };
    if rv != APR_SUCCESS as apr_status_t || shm.is_null() {
        // SAFETY: s is the live main server.
        unsafe {
            log::server(
                s,
                Level::Error,
                &format!("cannot create shared memory for the status counters (error {rv}); rwsgi-status stays empty"),
            )
        };
        BASE.store(ptr::null_mut(), Ordering::Release);
        return;
    }
    // SAFETY: shm was just created; its base address is page-aligned, Metrics::SIZE bytes,
    // fresh (zeroed), mapped until pconf is cleared and used only through Metrics.
    let base = unsafe { apr_shm_baseaddr_get(shm) } as *mut u8;
    // SAFETY: as above.
    unsafe { Metrics::init(base) };
    BASE.store(base, Ordering::Release);
}

/// In each child, from child_init: attaches to the counters, counts the child's start,
/// takes a slot for its threads (given back when `pchild` is destroyed, as the child
/// exits) and starts the stuck-request watchdog.
///
/// # Safety
/// s is the live main server, pchild the child's pool; called once per child.
pub unsafe fn child_init(pchild: *mut apr_pool_t, s: *mut server_rec, stuck_after: Option<u64>) {
    let base = BASE.load(Ordering::Acquire);
    if !base.is_null() {
        // SAFETY: the segment the parent set up before forking this child; it stays
        // mapped for the child's life (the config pool outlives the children).
        let metrics = unsafe { Metrics::attach(base) };
        metrics.worker_started();
        // Every WSGIScriptAlias shows on the page from the start, requests or not.
        // SAFETY: s heads httpd's server list (the contract).
        for mount in unsafe { alias_mounts(s) } {
            let _ = metrics.app(&mount);
        }
        if let Some(slot) = metrics.claim_process() {
            slot.set_threads(crate::python::threads_per_child());
            let _ = PROCESS.set(slot);
            // SAFETY: pchild is the live child pool (caller); the cleanup takes no data.
            unsafe {
                apr_pool_cleanup_register(
                    pchild,
                    ptr::null(),
                    Some(release_process),
                    Some(apr_pool_cleanup_null),
                )
            };
        }
        let _ = METRICS.set(metrics);
    }
    let every = Duration::from_secs(stuck_after.unwrap_or(DEFAULT_STUCK_AFTER));
    let started = std::thread::Builder::new()
        .name("rwsgi-watchdog".into())
        .spawn(move || watchdog(every));
    if let Err(e) = started {
        // SAFETY: s is live (caller).
        unsafe {
            log::server(
                s,
                Level::Error,
                &format!("cannot start the stuck-request watchdog: {e}"),
            )
        };
    }
}

/// The child's pool is destroyed: it exits, and its threads count no more.
unsafe extern "C" fn release_process(_data: *mut c_void) -> apr_status_t {
    crate::ffi::guard("the child pool cleanup", (), || {
        if let Some(slot) = PROCESS.get() {
            slot.release();
        }
    });
    APR_SUCCESS as apr_status_t
}

/// The URL prefixes of every server's WSGIScriptAlias ("/" for the root).
///
/// # Safety
/// `s` heads httpd's server list; the configs are read-only now.
unsafe fn alias_mounts(s: *mut server_rec) -> Vec<String> {
    let mut mounts = Vec::new();
    let mut server = s as *const server_rec;
    while !server.is_null() {
        // SAFETY: a live server_rec of httpd's list, its config in the config pool.
        if let Some(conf) = unsafe { crate::config::server(server) } {
            for alias in &conf.aliases {
                if let crate::config::Pattern::Prefix(prefix) = &alias.pattern {
                    let mount = match prefix.trim_end_matches('/') {
                        "" => "/".to_string(),
                        m => m.to_string(),
                    };
                    if !mounts.contains(&mount) {
                        mounts.push(mount);
                    }
                }
            }
        }
        // SAFETY: as above; next is NULL or the next live server_rec.
        server = unsafe { (*server).next };
    }
    mounts
}

/// The counters of the app mounted at `name`.
pub fn app_metrics(name: &str) -> Option<&'static AppCounters> {
    METRICS.get()?.app(name)
}

fn server_info() -> &'static ServerInfo {
    static INFO: OnceLock<ServerInfo> = OnceLock::new();
    INFO.get_or_init(|| ServerInfo {
        server: "apache",
        python_version: rwsgi::python_version_line(),
    })
}

/// The `rwsgi-status` handler's page.
pub fn serve(req: Req<'_>) -> c_int {
    let r = req.ptr();
    if req.method_number() != M_GET as c_int {
        return HTTP_METHOD_NOT_ALLOWED as c_int;
    }
    // SAFETY: r is live (a Req is); this reads and drops any request body.
    let rc = unsafe { ap_discard_request_body(r) };
    if rc != OK as c_int {
        return rc;
    }
    let Some(metrics) = METRICS.get() else {
        return HTTP_SERVICE_UNAVAILABLE as c_int;
    };
    let accept = req.table_get(Table::HeadersIn, c"Accept");
    let format = Format::choose(req.args().unwrap_or_default(), accept);
    let body = render(format, &metrics.snapshot(), server_info());
    // SAFETY: r is live; the content type is copied into the request's pool.
    unsafe {
        let content_type = crate::apr::pstr(req.pool(), format.content_type().as_bytes());
        ap_set_content_type(r, content_type);
        // The counters change with every request: no cache may keep a copy.
        apr_table_setn(
            (*r).headers_out,
            c"Cache-Control".as_ptr(),
            c"no-store".as_ptr(),
        );
        ap_set_content_length(r, body.len() as apr_off_t);
    }
    if !req.header_only() {
        // SAFETY: r is live; ap_rwrite copies the bytes into the output filters.
        unsafe { ap_rwrite(body.as_ptr().cast(), body.len() as c_int, r) };
    }
    OK as c_int
}

/// A request counted on the status page and watched by the watchdog while it runs the
/// app: dropping it (after the app returned, or on a panic) takes it off both.
pub struct Running {
    key: u64,
    app: Option<&'static AppCounters>,
    started: Instant,
    phase: Arc<Phase>,
}

/// Whether a request waits to enter Python (the GIL) or runs in it, for the gauges. The
/// request's sink moves it on when the engine says (ApacheSink::stage).
pub struct Phase {
    app: Option<&'static AppCounters>,
    entered: AtomicBool,
    /// Counted once per request: in daemon mode the stage comes from an app process,
    /// which runs a tenant's code and could repeat it.
    load_failed: AtomicBool,
}

impl Phase {
    fn waiting(app: Option<&'static AppCounters>) -> Phase {
        if let Some(app) = app {
            app.wait();
        }
        if let Some(process) = PROCESS.get() {
            process.enter(ThreadState::Waiting);
        }
        Phase {
            app,
            entered: AtomicBool::new(false),
            load_failed: AtomicBool::new(false),
        }
    }

    /// The engine holds the GIL for the request: it runs. Never blocks.
    pub fn entered_python(&self) {
        if !self.entered.swap(true, Ordering::Relaxed) {
            self.stop_waiting();
            if let Some(process) = PROCESS.get() {
                process.enter(ThreadState::Busy);
            }
        }
    }

    /// The app could not be loaded for the request.
    pub fn load_failed(&self) {
        if let (false, Some(app)) = (self.load_failed.swap(true, Ordering::Relaxed), self.app) {
            app.import_failed();
        }
    }

    fn stop_waiting(&self) {
        if let Some(app) = self.app {
            app.stop_waiting();
        }
        if let Some(process) = PROCESS.get() {
            process.leave(ThreadState::Waiting);
        }
    }

    /// The request is over, wherever it was.
    fn end(&self) {
        if self.entered.swap(true, Ordering::Relaxed) {
            if let Some(process) = PROCESS.get() {
                process.leave(ThreadState::Busy);
            }
        } else {
            self.stop_waiting();
        }
    }
}

struct Watched {
    ident: u64,
    started: Instant,
    next_report: Duration,
    label: Arc<LogLabel>,
    line: String,
}

fn watched() -> &'static Mutex<HashMap<u64, Watched>> {
    static RUNNING: OnceLock<Mutex<HashMap<u64, Watched>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashMap::new()))
}

fn stuck_after() -> Duration {
    Duration::from_secs(STUCK_AFTER.load(Ordering::Relaxed).max(1))
}
static STUCK_AFTER: AtomicU64 = AtomicU64::new(DEFAULT_STUCK_AFTER);

impl Running {
    /// The request is about to run the app mounted at `app` on this thread; `label` is
    /// its log lines' (the watchdog's reports too).
    pub fn start(req: Req<'_>, app: &str, label: Arc<LogLabel>) -> Running {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        let counters = app_metrics(app);
        if let Some(c) = counters {
            c.start();
        }
        // Python's threading.get_ident() of this thread.
        // SAFETY: pthread_self has no preconditions.
        let ident = unsafe { libc::pthread_self() } as u64;
        let line = String::from_utf8_lossy(req.the_request().unwrap_or_default()).into_owned();
        let entry = Watched {
            ident,
            started: Instant::now(),
            next_report: stuck_after(),
            label,
            line,
        };
        if let Ok(mut running) = watched().lock() {
            running.insert(key, entry);
        }
        Running {
            key,
            app: counters,
            started: Instant::now(),
            phase: Arc::new(Phase::waiting(counters)),
        }
    }

    /// Where the request is, for its sink.
    pub fn phase(&self) -> Arc<Phase> {
        self.phase.clone()
    }

    /// Counted like [`Running::start`], but not watched: for a request proxied to a
    /// daemon process group, whose app process reports its own stuck requests
    /// (request-timeout) with their stacks. It waits (the gauges) until its app process
    /// says it runs it (daemon_proxy.rs forwards the engine's stages).
    pub fn start_unwatched(app: &str) -> Running {
        static NEXT: AtomicU64 = AtomicU64::new(u64::MAX / 2);
        let counters = app_metrics(app);
        if let Some(c) = counters {
            c.start();
        }
        Running {
            key: NEXT.fetch_add(1, Ordering::Relaxed),
            app: counters,
            started: Instant::now(),
            phase: Arc::new(Phase::waiting(counters)),
        }
    }

    /// The app returned: counts how the request ended.
    pub fn end(mut self, req: Req<'_>, status: c_int) {
        let Some(app) = self.app.take() else { return };
        let r = req.ptr();
        // SAFETY: r and its connection are live (a Req is); plain reads.
        let (sent, bytes_sent, aborted) = unsafe {
            (
                (*r).status,
                (*r).bytes_sent,
                (*(*r).connection).aborted != 0,
            )
        };
        let status = if status == OK as c_int { sent } else { status };
        app.end(RequestEnd {
            status: (100..600).contains(&status).then_some(status as u16),
            duration: self.started.elapsed(),
            bytes_out: bytes_sent.max(0) as u64,
            client_aborted: aborted,
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut running) = watched().lock() {
            running.remove(&self.key);
        }
        self.phase.end();
        // Not ended through end() (a panic): still no longer in flight.
        if let Some(app) = self.app.take() {
            app.end(RequestEnd {
                status: None,
                duration: self.started.elapsed(),
                ..Default::default()
            });
        }
    }
}

/// The watchdog: each request in the app past WSGIStuckAfter is logged with the stack of
/// its thread, then again every WSGIStuckAfter while it stays.
fn watchdog(every: Duration) {
    STUCK_AFTER.store(every.as_secs().max(1), Ordering::Relaxed);
    // Often enough that a report comes within a quarter of the interval of being due.
    let tick = (every / 4).min(Duration::from_secs(1));
    loop {
        std::thread::sleep(tick);
        let due: Vec<(u64, Arc<LogLabel>, String, u64)> = match watched().lock() {
            Ok(mut running) => running
                .values_mut()
                .filter_map(|w| {
                    let age = w.started.elapsed();
                    if age < w.next_report {
                        return None;
                    }
                    while w.next_report <= age {
                        w.next_report += every;
                    }
                    Some((w.ident, w.label.clone(), w.line.clone(), age.as_secs()))
                })
                .collect(),
            Err(_) => return,
        };
        let Some(runtime) = crate::python::ready() else {
            continue;
        };
        for (ident, label, line, age) in due {
            let warn = |message: &str| log::main_server(Level::Warn, &label, message);
            warn(&format!(
                "request \"{line}\" still in progress after {age} s, in thread {ident:#x} (most recent call last):"
            ));
            // Waits for the GIL: only this thread waits, never a request.
            match runtime.thread_stack(ident) {
                Ok(Some(stack)) => stack.lines().for_each(warn),
                Ok(None) => warn("its thread runs no Python code"),
                Err(why) => warn(&format!("stack unavailable: {why}")),
            }
        }
    }
}
