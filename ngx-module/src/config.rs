//! Configuration: the module's conf structs, its directives and their merge, in nginx's
//! usual order. Every bad value is refused while nginx reads the config (so `nginx -t`
//! names the file and line); a missing app file is only a warning there, because the file
//! may appear before the workers start, and a 500 with a logged reason later.

use crate::daemon_conf::{self, DaemonConf, GroupChoice};
use crate::handler::wsgi_content_handler;
use crate::{no_unwind, Module, Site};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;
use rwsgi::pool::Threads;
use rwsgi::AppSpec;
use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::Arc;

/// Without `wsgi_threads`: this many threads always, and more, up to DEFAULT_MAX_THREADS,
/// while requests wait on I/O (a view waiting 10 ms on a database needs a thread per
/// request in flight; 16 fixed threads capped such an app at 1,600 req/s per worker).
const DEFAULT_THREADS: usize = 16;
const DEFAULT_MAX_THREADS: usize = 256;
const DEFAULT_MAX_QUEUE: usize = 1024;
/// A request still in the app after this many seconds is logged with its Python stack.
const DEFAULT_STUCK_AFTER: u64 = 60;

/// http-level settings: one interpreter and one thread pool per worker process.
#[derive(Debug, Default)]
pub struct MainConf {
    pub python_home: Option<String>,
    /// `wsgi_threads`, when given (see [`MainConf::threads`]).
    threads: Option<usize>,
    /// `wsgi_max_queue`, when given (see [`MainConf::max_queue`]).
    max_queue: Option<usize>,
    /// Every app some location runs, imported when a worker starts.
    pub apps: Vec<AppSpec>,
    /// `wsgi_stuck_after`, when given (see [`MainConf::stuck_after`]).
    stuck_after: Option<u64>,
    /// The shared zone holding the status counters (metrics.rs), added with the first
    /// wsgi_app or wsgi_status.
    pub zone: Option<std::ptr::NonNull<ngx_shm_zone_t>>,
    /// Each mount's metrics name with the app it runs (for import failures).
    pub mounts: Vec<(String, AppSpec)>,
    /// `$request_id`'s index, for the label of a request's log lines (log.rs).
    pub request_id_index: Option<usize>,
    /// Daemon process groups (`wsgi_daemon` and friends, daemon_conf.rs).
    pub daemon: DaemonConf,
}

/// One `wsgi_param NAME VALUE;` with VALUE compiled (it may hold variables).
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub value: *mut ngx_http_complex_value_t,
}

#[derive(Debug, Default)]
pub struct LocConf {
    /// The `wsgi_app` value as written, and the location prefix it was written in.
    pub app_value: Option<String>,
    pub location_prefix: String,
    pub callable: Option<String>,
    pub python_path: Option<Vec<String>>,
    pub script_name: Option<String>,
    pub params: Option<Vec<Param>>,
    /// The app this location runs, complete after merge.
    pub app: Option<Arc<AppSpec>>,
    /// The app's name on the status page: its mount ("/" for the root).
    pub metrics_name: String,
    /// `wsgi_status`: the location is the status page.
    pub status: bool,
    /// `wsgi_process_group`, as written here or inherited.
    pub process_group: Option<GroupChoice>,
    /// The daemon group (its index in DaemonConf) this location's app runs in; None:
    /// embedded, in the worker.
    pub daemon: Option<usize>,
    /// Its counters, looked up once per worker (the conf is the worker's own copy).
    metrics: std::sync::OnceLock<Option<&'static rwsgi::metrics::AppCounters>>,
}

impl MainConf {
    /// Python threads per worker: exactly `wsgi_threads`, or by default from
    /// DEFAULT_THREADS growing to DEFAULT_MAX_THREADS.
    pub fn threads(&self) -> Threads {
        match self.threads {
            Some(n) => Threads::fixed(n),
            None => Threads {
                min: DEFAULT_THREADS,
                max: DEFAULT_MAX_THREADS,
            },
        }
    }

    /// Requests that may wait for a thread before nginx answers 503.
    pub fn max_queue(&self) -> usize {
        self.max_queue.unwrap_or(DEFAULT_MAX_QUEUE)
    }

    /// Seconds after which a request still in the app is logged with its stack.
    pub fn stuck_after(&self) -> u64 {
        self.stuck_after.unwrap_or(DEFAULT_STUCK_AFTER)
    }
}

impl LocConf {
    /// The counters of this location's app on the status page.
    pub fn app_metrics(&self) -> Option<&'static rwsgi::metrics::AppCounters> {
        *self
            .metrics
            .get_or_init(|| crate::worker::app_metrics(&self.metrics_name))
    }

    /// SCRIPT_NAME for this location: `wsgi_script_name`, else the location's prefix.
    pub fn mount(&self) -> &str {
        self.script_name.as_deref().unwrap_or(&self.location_prefix)
    }
}

type SetHandler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// A directive entry. The name must be NUL-terminated: nginx compares it with strcmp.
const fn command(
    name: &'static std::ffi::CStr,
    type_: u32,
    set: SetHandler,
    conf: usize,
) -> ngx_command_t {
    ngx_command_t {
        name: ngx_str_t {
            len: name.count_bytes(),
            data: name.as_ptr() as *mut u8,
        },
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf,
        offset: 0,
        post: ptr::null_mut(),
    }
}

const LOC: u32 = NGX_HTTP_LOC_CONF;
const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const LOC_OFFSET: usize = NGX_HTTP_LOC_CONF_OFFSET;
const MAIN_OFFSET: usize = NGX_HTTP_MAIN_CONF_OFFSET;

const MAIN: u32 = NGX_HTTP_MAIN_CONF;

pub static mut COMMANDS: [ngx_command_t; 15] = [
    command(c"wsgi_app", LOC | NGX_CONF_TAKE1, set_app, LOC_OFFSET),
    command(
        c"wsgi_callable",
        ANY_LEVEL | NGX_CONF_TAKE1,
        set_callable,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_python_path",
        ANY_LEVEL | NGX_CONF_1MORE,
        set_python_path,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_script_name",
        LOC | NGX_CONF_TAKE1,
        set_script_name,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_param",
        ANY_LEVEL | NGX_CONF_TAKE2,
        set_param,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_python_home",
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_python_home,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_threads",
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_threads,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_max_queue",
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_max_queue,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_stuck_after",
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_stuck_after,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_status",
        LOC | NGX_CONF_NOARGS,
        set_status,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_daemon",
        MAIN | NGX_CONF_1MORE,
        daemon_conf::set_daemon,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_process_group",
        ANY_LEVEL | NGX_CONF_TAKE1,
        daemon_conf::set_process_group,
        LOC_OFFSET,
    ),
    command(
        c"wsgi_socket_prefix",
        MAIN | NGX_CONF_TAKE1,
        daemon_conf::set_socket_prefix,
        MAIN_OFFSET,
    ),
    command(
        c"wsgi_daemon_program",
        MAIN | NGX_CONF_TAKE1,
        daemon_conf::set_daemon_program,
        MAIN_OFFSET,
    ),
    ngx_command_t::empty(),
];

/// What nginx hands a directive handler: the config being read and the directive's
/// arguments after its name.
struct Directive<'a> {
    cf: *mut ngx_conf_t,
    args: &'a mut [ngx_str_t],
}

impl Directive<'_> {
    /// # Safety
    /// cf is the live ngx_conf_t nginx passes to a directive handler: its args array holds
    /// the directive's words, which live for the whole config parse.
    unsafe fn new(cf: *mut ngx_conf_t) -> Self {
        // SAFETY: see the function's contract; the first word is the directive's name.
        let all: &mut [ngx_str_t] = unsafe { (*(*cf).args).as_slice_mut() };
        Directive {
            cf,
            args: &mut all[1..],
        }
    }

    /// Runs the handler's body behind the guard (a panic fails the directive).
    fn run(&mut self, name: &str, body: impl FnOnce(&mut Self) -> *mut c_char) -> *mut c_char {
        // SAFETY: cf is live while the handler runs (new's contract).
        let site = unsafe { Site::conf(self.cf) };
        no_unwind(site, name, NGX_CONF_ERROR, || body(self))
    }

    /// Argument `i` as text (invalid UTF-8 replaced).
    fn arg(&self, i: usize) -> &str {
        std::str::from_utf8(self.args[i].as_bytes()).unwrap_or("\u{fffd}")
    }

    fn args(&self) -> Vec<&str> {
        (0..self.args.len()).map(|i| self.arg(i)).collect()
    }

    /// Logs `msg` as an [emerg] naming the config file and line, and fails the directive.
    fn refuse(&self, msg: &str) -> *mut c_char {
        ngx_conf_log_error!(NGX_LOG_EMERG, self.cf, "{}", msg);
        NGX_CONF_ERROR
    }

    /// The argument as a count from 1 to `max`, or the directive refused.
    fn count(&self, directive: &str, max: usize) -> Result<usize, *mut c_char> {
        let value = self.arg(0);
        match value.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(self.refuse(&format!(
                "{directive}: \"{value}\" must be a number from 1 to {max}"
            ))),
        }
    }
}

// Directive handlers.
//
// # Safety (all of them)
// nginx calls them while parsing, with a live cf whose args hold the directive's words,
// and `conf` pointing at this module's conf struct of the level named in the command's
// `conf` offset (LocConf or MainConf).

unsafe extern "C" fn set_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_app", |d| {
        if lc.app_value.is_some() {
            return d.refuse("\"wsgi_app\" directive is duplicate");
        }
        let value = d.arg(0).to_string();
        if let Err(e) = AppSpec::parse(&value, None) {
            return d.refuse(&format!("wsgi_app: {e}"));
        }
        // SAFETY: cf is live (the contract above).
        let Some(clcf) = NgxHttpCoreModule::location_conf_mut(unsafe { &*d.cf }) else {
            return d.refuse("wsgi_app: no location");
        };
        // A regex or named location has no literal prefix: mount at the root.
        lc.location_prefix = if clcf.regex.is_null() && clcf.named() == 0 {
            String::from_utf8_lossy(clcf.name.as_bytes())
                .trim_end_matches('/')
                .to_string()
        } else {
            String::new()
        };
        if lc.status {
            return d.refuse("wsgi_app: this location is a wsgi_status page");
        }
        lc.app_value = Some(value);
        clcf.handler = Some(wsgi_content_handler);
        // SAFETY: cf is live and inside the http block (the contract above).
        if let Some(mc) = Module::main_conf_mut(unsafe { &*d.cf }) {
            if mc.request_id_index.is_none() {
                // SAFETY: as above.
                mc.request_id_index = unsafe { crate::log::index_request_id(d.cf) };
            }
        }
        // SAFETY: cf is live (the contract above).
        unsafe { add_zone(d.cf) }
    })
}

unsafe extern "C" fn set_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_status", |d| {
        // SAFETY: cf is live (the contract above).
        let Some(clcf) = NgxHttpCoreModule::location_conf_mut(unsafe { &*d.cf }) else {
            return d.refuse("wsgi_status: no location");
        };
        if clcf.handler.is_some() {
            return d.refuse("wsgi_status: this location has a content handler already");
        }
        lc.status = true;
        clcf.handler = Some(crate::status::status_handler);
        // SAFETY: cf is live (the contract above).
        unsafe { add_zone(d.cf) }
    })
}

/// Adds the shared zone of the status counters, once per config (every wsgi_app and
/// wsgi_status asks for it). Its size is fixed: rwsgi::metrics::MAX_APPS slots.
///
/// # Safety
/// cf is live, inside the http block.
unsafe fn add_zone(cf: *mut ngx_conf_t) -> *mut c_char {
    // SAFETY: cf is live and inside the http block (caller).
    let Some(mc) = Module::main_conf_mut(unsafe { &*cf }) else {
        return NGX_CONF_ERROR;
    };
    if mc.zone.is_some() {
        return NGX_CONF_OK;
    }
    let mut name = ngx_str_t {
        len: c"rwsgi_status".count_bytes(),
        data: c"rwsgi_status".as_ptr() as *mut u8,
    };
    // The slab pool's own pages, then the counters (a large slab allocation is whole pages).
    let size = rwsgi::metrics::Metrics::SIZE.div_ceil(4096) * 4096 + 16 * 4096;
    let tag = Module::module() as *const ngx_module_t as *mut c_void;
    // SAFETY: cf is live; nginx copies nothing from name but keeps its static bytes.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    let Some(zone) = std::ptr::NonNull::new(zone) else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: a zone nginx just made (or found) for this tag, filled before it maps it.
    unsafe {
        (*zone.as_ptr()).init = Some(init_zone);
        (*zone.as_ptr()).data = ptr::null_mut();
    }
    mc.zone = Some(zone);
    NGX_CONF_OK
}

/// nginx maps the zone (in the master, at config time, before forking the workers): the
/// counters are allocated from its slab pool, or kept from the previous config's zone on a
/// reload (`old` is then that zone's data).
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    no_unwind(Site::PROCESS, "init_zone", NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes the zone it mapped; on a fresh zone shm.addr is its slab
        // pool (ngx_init_zone_pool ran), and only the master runs this.
        unsafe {
            let base = if old.is_null() {
                let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
                ngx_slab_alloc(pool, rwsgi::metrics::Metrics::SIZE) as *mut u8
            } else {
                old as *mut u8
            };
            if base.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            // base: Metrics::SIZE bytes of the zone, page-aligned, mapped at this address
            // in every worker (forked after this), used only through Metrics.
            rwsgi::metrics::Metrics::init(base);
            (*zone).data = base as *mut c_void;
        }
        NGX_OK as ngx_int_t
    })
}

unsafe extern "C" fn set_callable(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_callable", |d| {
        let name = d.arg(0);
        if let Err(why) = rwsgi::check_callable_name(name) {
            return d.refuse(&format!("wsgi_callable: {why}"));
        }
        lc.callable = Some(name.to_string());
        NGX_CONF_OK
    })
}

unsafe extern "C" fn set_python_path(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_python_path", |d| {
        let dirs: Vec<String> = d.args().iter().map(|s| s.to_string()).collect();
        if let Some(bad) = dirs.iter().find(|d| !d.starts_with('/')) {
            return d.refuse(&format!(
                "wsgi_python_path: \"{bad}\" must be an absolute path"
            ));
        }
        lc.python_path.get_or_insert_with(Vec::new).extend(dirs);
        NGX_CONF_OK
    })
}

unsafe extern "C" fn set_script_name(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_script_name", |d| {
        let value = d.arg(0);
        if !(value.is_empty() || value.starts_with('/')) || value.contains(['?', '#']) {
            return d.refuse(&format!(
                "wsgi_script_name: \"{value}\" must be empty or a path starting with /"
            ));
        }
        lc.script_name = Some(value.trim_end_matches('/').to_string());
        NGX_CONF_OK
    })
}

unsafe extern "C" fn set_param(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, lc) = unsafe { (Directive::new(cf), &mut *(conf as *mut LocConf)) };
    d.run("wsgi_param", |d| {
        let name = d.arg(0).to_string();
        if let Err(why) = rwsgi::check_param_name(&name) {
            return d.refuse(&format!("wsgi_param: {why}"));
        }
        // SAFETY: cf and its pool are live (the contract above).
        let cv = unsafe {
            ngx_pcalloc(
                (*d.cf).pool,
                std::mem::size_of::<ngx_http_complex_value_t>(),
            ) as *mut ngx_http_complex_value_t
        };
        if cv.is_null() {
            return NGX_CONF_ERROR;
        }
        // SAFETY: ccv is a plain C struct for which all-zero is the documented initial state.
        let mut ccv: ngx_http_compile_complex_value_t = unsafe { std::mem::zeroed() };
        ccv.cf = d.cf;
        ccv.value = &mut d.args[1];
        ccv.complex_value = cv;
        // SAFETY: ccv is filled as nginx's own directives do (cf, value, complex_value);
        // value and cv live for the whole config.
        if unsafe { ngx_http_compile_complex_value(&mut ccv) } != NGX_OK as ngx_int_t {
            return NGX_CONF_ERROR;
        }
        lc.params
            .get_or_insert_with(Vec::new)
            .push(Param { name, value: cv });
        NGX_CONF_OK
    })
}

unsafe extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, mc) = unsafe { (Directive::new(cf), &mut *(conf as *mut MainConf)) };
    d.run("wsgi_python_home", |d| {
        let home = d.arg(0);
        if !home.starts_with('/') {
            return d.refuse(&format!(
                "wsgi_python_home: \"{home}\" must be an absolute path"
            ));
        }
        if !std::path::Path::new(home).is_dir() {
            return d.refuse(&format!("wsgi_python_home: \"{home}\" is not a directory"));
        }
        mc.python_home = Some(home.to_string());
        NGX_CONF_OK
    })
}

unsafe extern "C" fn set_threads(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, mc) = unsafe { (Directive::new(cf), &mut *(conf as *mut MainConf)) };
    d.run("wsgi_threads", |d| match d.count("wsgi_threads", 1024) {
        Ok(n) => {
            mc.threads = Some(n);
            NGX_CONF_OK
        }
        Err(e) => e,
    })
}

unsafe extern "C" fn set_stuck_after(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, mc) = unsafe { (Directive::new(cf), &mut *(conf as *mut MainConf)) };
    d.run("wsgi_stuck_after", |d| {
        match d.count("wsgi_stuck_after", 86_400) {
            Ok(n) => {
                mc.stuck_after = Some(n as u64);
                NGX_CONF_OK
            }
            Err(e) => e,
        }
    })
}

unsafe extern "C" fn set_max_queue(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let (mut d, mc) = unsafe { (Directive::new(cf), &mut *(conf as *mut MainConf)) };
    d.run("wsgi_max_queue", |d| {
        match d.count("wsgi_max_queue", 1_000_000) {
            Ok(n) => {
                mc.max_queue = Some(n);
                NGX_CONF_OK
            }
            Err(e) => e,
        }
    })
}

/// Inherits unset values from the enclosing level, completes this location's app, and
/// records it for the workers to import at start.
///
/// # Safety
/// nginx passes the parent's and this level's LocConf, both created by create_loc_conf,
/// and a live cf whose ctx is the http conf context.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: see the function's contract; prev and conf are distinct structs.
    let (site, prev, lc) = unsafe {
        (
            Site::conf(cf),
            &*(prev as *const LocConf),
            &mut *(conf as *mut LocConf),
        )
    };
    no_unwind(site, "merge_loc_conf", NGX_CONF_ERROR, || {
        if lc.callable.is_none() {
            lc.callable = prev.callable.clone();
        }
        if lc.python_path.is_none() {
            lc.python_path = prev.python_path.clone();
        }
        if lc.process_group.is_none() {
            lc.process_group = prev.process_group.clone();
        }
        if lc.params.is_none() {
            lc.params = prev.params.as_ref().map(|v| {
                v.iter()
                    .map(|p| Param {
                        name: p.name.clone(),
                        value: p.value,
                    })
                    .collect()
            });
        }
        // Every wsgi_daemon is read by now: merging runs at the end of the http block.
        // SAFETY: cf is live and its ctx the http conf context (the contract above).
        if let Some(mc) = Module::main_conf(unsafe { &*cf }) {
            lc.daemon = match daemon_conf::resolve(lc.process_group.as_ref(), &mc.daemon) {
                Ok(group) => group,
                Err(e) => {
                    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", e);
                    return NGX_CONF_ERROR;
                }
            };
        }
        let Some(value) = lc.app_value.clone() else {
            return NGX_CONF_OK;
        };
        let mut spec = match AppSpec::parse(&value, lc.callable.as_deref()) {
            Ok(spec) => spec,
            Err(e) => {
                ngx_conf_log_error!(NGX_LOG_EMERG, cf, "wsgi_app: {}", e);
                return NGX_CONF_ERROR;
            }
        };
        spec.python_path = lc.python_path.clone().unwrap_or_default();
        // A daemon group's process is recycled when its script changes (nginx has no
        // WSGIScriptReloading to turn that off); embedded workers never reload.
        spec.reload_on_change = lc.daemon.is_some();
        if let rwsgi::AppTarget::Script(path) = &spec.target {
            if !path.is_file() {
                ngx_conf_log_error!(
                    NGX_LOG_WARN,
                    cf,
                    "wsgi_app: \"{}\" does not exist yet; requests will fail until it does",
                    path.display()
                );
            }
        }
        lc.metrics_name = match lc.mount() {
            "" => "/".to_string(),
            mount => mount.to_string(),
        };
        // SAFETY: cf is live and its ctx the http conf context (the contract above).
        if let Some(mc) = Module::main_conf_mut(unsafe { &*cf }) {
            // A worker imports only the embedded apps; a group's processes import its own.
            let apps = match lc.daemon {
                Some(i) => &mut mc.daemon.groups[i].apps,
                None => &mut mc.apps,
            };
            if !apps.contains(&spec) {
                apps.push(spec.clone());
            }
            if !mc.mounts.iter().any(|(name, _)| *name == lc.metrics_name) {
                mc.mounts.push((lc.metrics_name.clone(), spec.clone()));
            }
        }
        lc.app = Some(Arc::new(spec));
        NGX_CONF_OK
    })
}

pub fn location_conf(r: &ngx_http_request_t) -> Option<&'static LocConf> {
    Module::location_conf(r)
}
