//! ngx_http_rwsgi_module: hosts WSGI apps inside nginx worker processes on the rwsgi
//! engine. Python never runs on the event loop: requests go to a per-worker thread pool
//! (worker.rs) and come back through an eventfd (bridge.rs).
//!
//! A request has two sides that share only its exchange (exchange.rs). Files by side:
//! - event loop: handler.rs (request in), output.rs (the request's context, response
//!   out, finalize), headers.rs (response head), shutdown.rs (worker_shutdown_timeout
//!   for requests still in Python);
//! - Python thread: thread.rs (the job and the engine's sink), body.rs (request body);
//! - between them: exchange.rs (the shared state), bridge.rs (thread-to-loop wake-up);
//! - process: config.rs (directives), worker.rs (per-worker start-up);
//! - daemon mode: daemon_conf.rs (process groups, the supervisor from the master),
//!   daemon_client.rs (a request proxied to a group's app process on the event loop),
//!   producer.rs (who writes a request's response: a Python thread or an app process);
//! - the status page: status.rs (`wsgi_status`, counters in a shared zone);
//! - tests only: fault.rs (panics injected on the loop side, cargo feature
//!   `fault-injection`).
//!
//! Every nginx callback runs behind one panic guard ([`no_unwind`]), and every unsafe
//! block says, in its `SAFETY:` comment, which invariant makes it sound.

mod body;
mod bridge;
mod config;
mod daemon_client;
mod daemon_conf;
mod exchange;
mod fault;
mod handler;
mod headers;
mod log;
mod output;
mod producer;
mod shutdown;
mod status;
mod thread;
mod worker;

use config::{LocConf, MainConf};
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};
use ngx::ngx_conf_log_error;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::sync::Once;

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module struct is a static nginx reads and fills (index, ctx_index)
        // only while loading the config, before any request runs.
        unsafe { &*ptr::addr_of!(ngx_http_rwsgi_module) }
    }
}

// SAFETY: the conf types match what create_main_conf / create_loc_conf allocate.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(create_loc_conf),
    merge_loc_conf: Some(config::merge_loc_conf),
};

// What nginx's load_module reads: this file's modules, their names, no ordering
// constraint. (Written out: ngx 0.5's ngx_modules! macro miscounts more than one module.)
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx_module_t; 3] = [
    ptr::addr_of!(ngx_http_rwsgi_module),
    ptr::addr_of!(ngx_rwsgi_daemon_module),
    ptr::null(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const std::ffi::c_char; 3] = [
    c"ngx_http_rwsgi_module".as_ptr(),
    c"ngx_rwsgi_daemon_module".as_ptr(),
    ptr::null(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const std::ffi::c_char; 1] = [ptr::null()];

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_http_rwsgi_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as _,
    // COMMANDS is a static array nginx only reads.
    commands: ptr::addr_of_mut!(config::COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// A second, core module in the same file: only for its `init_conf` hook, which runs in
/// the master while nginx can still refuse a reload (daemon_conf.rs).
static mut DAEMON_CTX: ngx_core_module_t = ngx_core_module_t {
    name: ngx_str_t {
        len: c"rwsgi_daemon".count_bytes(),
        data: c"rwsgi_daemon".as_ptr() as *mut u8,
    },
    create_conf: None,
    init_conf: Some(daemon_conf::init_conf),
};

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_rwsgi_daemon_module: ngx_module_t = ngx_module_t {
    // DAEMON_CTX is a static nginx only reads.
    ctx: ptr::addr_of_mut!(DAEMON_CTX) as _,
    type_: NGX_CORE_MODULE as _,
    ..ngx_module_t::default()
};

/// Runs in the master once the config is in place (and under `nginx -t`): at the first
/// start, starts or adopts the supervisor of the daemon process groups. Failing here
/// makes nginx exit, which is right only at the first start (daemon_conf.rs).
extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    no_unwind(Site::PROCESS, "init_module", NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes its live cycle, on the master's thread.
        match unsafe { daemon_conf::apply_at_start(cycle) } {
            Ok(()) => NGX_OK as ngx_int_t,
            Err(e) => {
                // SAFETY: as above.
                unsafe {
                    crate::log::write_at(
                        (*cycle).log,
                        NGX_LOG_EMERG,
                        &rwsgi::LogLabel::process(),
                        format_args!("daemon mode: {}; nginx does not start", e,),
                    );
                };
                NGX_ERROR as ngx_int_t
            }
        }
    })
}

/// Runs in each worker after fork: Python starts here, never in the master.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    no_unwind(Site::PROCESS, "init_process", (), || {
        // The supervisor's control connections are the master's alone: a worker runs as
        // the server's user and must not be able to command it. (Without a master, this
        // process is the one that holds them.)
        // SAFETY: ngx_process is only written on this thread.
        if unsafe { ngx_process } != NGX_PROCESS_SINGLE as ngx_uint_t {
            rwsgi::daemon::control::close_lifelines_after_fork();
        }
        // SAFETY: nginx passes its live cycle, whose conf holds our MainConf.
        let Some(mc) = Module::main_conf(unsafe { &*cycle }) else {
            return;
        };
        // SAFETY: once per worker, from init_process, with the zones mapped.
        unsafe { worker::attach_metrics(mc) };
        // Only embedded apps are in mc.apps: a worker whose locations all run in daemon
        // groups never starts Python.
        if !mc.apps.is_empty() {
            // SAFETY: nginx calls init_process once per worker, on its event-loop thread.
            unsafe { worker::start(cycle, mc) };
        }
    });
    // Never fail the worker: nginx would respawn it in a loop; WSGI requests get a 500
    // with the reason in the log instead.
    NGX_OK as ngx_int_t
}

/// Runs in each worker as it exits: its threads leave the status page.
extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    no_unwind(Site::PROCESS, "exit_process", (), worker::release_metrics);
}

/// The ngx crate's conf constructors, behind the guard like every other callback.
///
/// # Safety
/// nginx passes a live cf while reading the config.
unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is live (caller).
    let site = unsafe { Site::conf(cf) };
    // SAFETY: as above; the ngx crate allocates the conf from cf's pool.
    no_unwind(site, "create_main_conf", ptr::null_mut(), || unsafe {
        Module::create_main_conf(cf)
    })
}

/// # Safety
/// As create_main_conf.
unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is live (caller).
    let site = unsafe { Site::conf(cf) };
    // SAFETY: as above; the ngx crate allocates the conf from cf's pool.
    no_unwind(site, "create_loc_conf", ptr::null_mut(), || unsafe {
        Module::create_loc_conf(cf)
    })
}

/// Where an nginx callback runs, which says how its guard ([`no_unwind`]) recovers from a
/// panic once it has logged it.
pub(crate) struct Site(SiteKind);

enum SiteKind {
    /// Process start-up, the bridge, timers and cleanups not tied to a live request:
    /// logged to the cycle's log, nothing else to undo.
    Process,
    /// Reading the config: logged naming the file and line; the callback's fallback fails
    /// the directive (or the conf creation).
    Conf(*mut ngx_conf_t),
    /// A content handler, which returns a status: logged to the request's log; the
    /// fallback (500) has nginx finalize the request.
    Handler(*mut ngx_http_request_t),
    /// On a request's path (its events, the bridge's output for it, its body handler):
    /// the request is taken back from its Python thread and finalized with 500, or its
    /// connection closed if the header went out (output::fail_after_panic).
    Request(*mut ngx_http_request_t),
    /// A cleanup of a request nginx is ending already: the request is taken back from its
    /// thread so that nginx can free it (output::release_after_panic).
    Ending(*mut output::RequestCtx),
}

impl Site {
    pub const PROCESS: Site = Site(SiteKind::Process);

    /// # Safety
    /// cf is the live ngx_conf_t of the callback; on nginx's main thread.
    pub unsafe fn conf(cf: *mut ngx_conf_t) -> Site {
        Site(SiteKind::Conf(cf))
    }

    /// # Safety
    /// r is live for the whole callback (until the guard returns); on the event loop.
    pub unsafe fn handler(r: *mut ngx_http_request_t) -> Site {
        Site(SiteKind::Handler(r))
    }

    /// # Safety
    /// r is live for the whole callback (the callback must not finalize it inside the
    /// guard); on the event loop.
    pub unsafe fn request(r: *mut ngx_http_request_t) -> Site {
        Site(SiteKind::Request(r))
    }

    /// # Safety
    /// ctx and its request are live for the whole callback; on the event loop.
    pub unsafe fn ending(ctx: *mut output::RequestCtx) -> Site {
        Site(SiteKind::Ending(ctx))
    }

    /// Logs the panic where this site's messages go.
    fn log(&self, callback: &str, panic: &str) {
        // SAFETY: the constructors' contracts keep cf / r / ctx live while the guard runs;
        // ngx_cycle is always set on nginx's main thread, where every callback runs.
        unsafe {
            let process = rwsgi::LogLabel::process();
            let (log, label) = match self.0 {
                SiteKind::Conf(cf) => {
                    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "wsgi: {} {}", callback, panic);
                    return;
                }
                SiteKind::Process => ((*ngx_cycle).log, &process),
                SiteKind::Handler(r) | SiteKind::Request(r) => (
                    (*(*r).connection).log,
                    output::request_ctx(r).map_or(&process, |ctx| ctx.label()),
                ),
                SiteKind::Ending(ctx) => ((*(*(*ctx).r()).connection).log, (*ctx).label()),
            };
            let message = format_args!("{callback} {panic}");
            log::write_at(log, NGX_LOG_ALERT, label, message);
        }
    }

    /// Undoes what the panic may have left: a request held for a thread that nobody will
    /// finish.
    fn recover(&self) {
        match self.0 {
            SiteKind::Process | SiteKind::Conf(_) | SiteKind::Handler(_) => {}
            // SAFETY: the constructor's contract: r is live, on the event loop.
            SiteKind::Request(r) => unsafe { output::fail_after_panic(r) },
            // SAFETY: the constructor's contract: ctx is live, on the event loop.
            SiteKind::Ending(ctx) => unsafe { output::release_after_panic(ctx) },
        }
    }
}

/// Runs the body of the nginx callback named `callback`. Every callback goes through
/// here, because unwinding into nginx's C frames is undefined behaviour (and an abort for
/// an `extern "C" fn`): a panic is caught, logged with its message and location, the
/// `site` recovers what it can (on a request's path, the request ends with 500), and
/// nginx gets `fallback`.
pub(crate) fn no_unwind<R>(site: Site, callback: &str, fallback: R, body: impl FnOnce() -> R) -> R {
    match catch(body) {
        Ok(value) => value,
        Err(panic) => {
            site.log(callback, &panic);
            if let Err(again) = catch(|| site.recover()) {
                site.log(callback, &format!("{again} (while recovering)"));
            }
            fallback
        }
    }
}

thread_local! {
    /// Guards the current thread is inside (they nest: a guarded callback may call one).
    static GUARDS: Cell<u32> = const { Cell::new(0) };
    /// The last panic inside a guard, as the panic hook saw it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `body`; a panic comes back as "panicked at FILE:LINE:COL: MESSAGE".
fn catch<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    install_panic_hook();
    GUARDS.with(|g| g.set(g.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    GUARDS.with(|g| g.set(g.get() - 1));
    result.map_err(|payload| {
        LAST_PANIC.with(|p| p.take()).unwrap_or_else(|| {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            format!("panicked: {message}")
        })
    })
}

/// Panics inside a guard are recorded for it to log through nginx (the location is only
/// known to the hook) instead of being printed to stderr; any other panic (a pool
/// thread's, which the engine catches itself) goes to the hook that was there before.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDS.try_with(Cell::get).unwrap_or(0) == 0 {
                return previous(info);
            }
            let message = info.payload_as_str().unwrap_or("(no message)");
            let panic = match info.location() {
                Some(at) => format!("panicked at {at}: {message}"),
                None => format!("panicked: {message}"),
            };
            let _ = LAST_PANIC.try_with(|p| p.replace(Some(panic)));
        }));
    });
}
