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
//! - process: config.rs (directives), worker.rs (per-worker start-up).

mod body;
mod bridge;
mod config;
mod exchange;
mod handler;
mod headers;
mod output;
mod shutdown;
mod thread;
mod worker;

use config::{LocConf, MainConf};
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};
use std::ptr;

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
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: Some(config::init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(config::merge_loc_conf),
};

ngx::ngx_modules!(ngx_http_rwsgi_module);

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_http_rwsgi_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as _,
    // COMMANDS is a static array nginx only reads.
    commands: ptr::addr_of_mut!(config::COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// Runs in each worker after fork: Python starts here, never in the master.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    no_unwind((), || {
        // SAFETY: nginx calls init_process once per worker, on its event-loop thread.
        unsafe {
            if let Some(mc) = Module::main_conf(&*cycle) {
                if !mc.apps.is_empty() {
                    worker::start(cycle, mc);
                }
            }
        }
    });
    // Never fail the worker: nginx would respawn it in a loop; WSGI requests get a 500
    // with the reason in the log instead.
    NGX_OK as ngx_int_t
}

/// Runs an nginx callback body; a panic is caught here because unwinding into nginx's C
/// frames is undefined behaviour. `fallback` is what nginx gets instead.
pub(crate) fn no_unwind<R>(fallback: R, body: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(fallback)
}
