//! Configuration: the module's conf structs, its directives and their merge, in nginx's
//! usual order. Every bad value is refused while nginx reads the config (so `nginx -t`
//! names the file and line); a missing app file is only a warning there, because the file
//! may appear before the workers start, and a 500 with a logged reason later.

use crate::handler::wsgi_content_handler;
use crate::Module;
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;
use rwsgi::AppSpec;
use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::Arc;

pub const DEFAULT_THREADS: usize = 16;
pub const DEFAULT_MAX_QUEUE: usize = 1024;

/// http-level settings: one interpreter and one thread pool per worker process.
#[derive(Debug, Default)]
pub struct MainConf {
    pub python_home: Option<String>,
    pub threads: Option<usize>,
    pub max_queue: Option<usize>,
    /// Every app some location runs, imported when a worker starts.
    pub apps: Vec<AppSpec>,
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
}

impl LocConf {
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

pub static mut COMMANDS: [ngx_command_t; 9] = [
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
    ngx_command_t::empty(),
];

/// The directive's arguments after its name.
///
/// SAFETY: cf is the ngx_conf_t nginx passes to a directive handler; its args array holds
/// ngx_str_t values that live for the whole config parse.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a str> {
    let all: &[ngx_str_t] = (*(*cf).args).as_slice();
    all[1..]
        .iter()
        .map(|s| std::str::from_utf8(s.as_bytes()).unwrap_or("\u{fffd}"))
        .collect()
}

/// Logs `msg` as an [emerg] naming the config file and line, and fails the directive.
fn refuse(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}

/// SAFETY (all set handlers): nginx calls them while parsing, with `conf` pointing at this
/// module's conf struct of the level named in the command's `conf` offset.
unsafe extern "C" fn set_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lc = &mut *(conf as *mut LocConf);
    if lc.app_value.is_some() {
        return refuse(cf, "\"wsgi_app\" directive is duplicate");
    }
    let value = args(cf)[0];
    if let Err(e) = AppSpec::parse(value, None) {
        return refuse(cf, &format!("wsgi_app: {e}"));
    }
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
        return refuse(cf, "wsgi_app: no location");
    };
    // A regex or named location has no literal prefix: mount at the root.
    lc.location_prefix = if clcf.regex.is_null() && clcf.named() == 0 {
        String::from_utf8_lossy(clcf.name.as_bytes())
            .trim_end_matches('/')
            .to_string()
    } else {
        String::new()
    };
    lc.app_value = Some(value.to_string());
    clcf.handler = Some(wsgi_content_handler);
    NGX_CONF_OK
}

unsafe extern "C" fn set_callable(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lc = &mut *(conf as *mut LocConf);
    let name = args(cf)[0];
    if let Err(why) = rwsgi::check_callable_name(name) {
        return refuse(cf, &format!("wsgi_callable: {why}"));
    }
    lc.callable = Some(name.to_string());
    NGX_CONF_OK
}

unsafe extern "C" fn set_python_path(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lc = &mut *(conf as *mut LocConf);
    let dirs: Vec<String> = args(cf).iter().map(|s| s.to_string()).collect();
    if let Some(bad) = dirs.iter().find(|d| !d.starts_with('/')) {
        return refuse(
            cf,
            &format!("wsgi_python_path: \"{bad}\" must be an absolute path"),
        );
    }
    lc.python_path.get_or_insert_with(Vec::new).extend(dirs);
    NGX_CONF_OK
}

unsafe extern "C" fn set_script_name(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lc = &mut *(conf as *mut LocConf);
    let value = args(cf)[0];
    if !(value.is_empty() || value.starts_with('/')) || value.contains(['?', '#']) {
        return refuse(
            cf,
            &format!("wsgi_script_name: \"{value}\" must be empty or a path starting with /"),
        );
    }
    lc.script_name = Some(value.trim_end_matches('/').to_string());
    NGX_CONF_OK
}

unsafe extern "C" fn set_param(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lc = &mut *(conf as *mut LocConf);
    let all: &mut [ngx_str_t] = (*(*cf).args).as_slice_mut();
    let name = String::from_utf8_lossy(all[1].as_bytes()).into_owned();
    if let Err(why) = rwsgi::check_param_name(&name) {
        return refuse(cf, &format!("wsgi_param: {why}"));
    }
    let cv = ngx_pcalloc((*cf).pool, std::mem::size_of::<ngx_http_complex_value_t>())
        as *mut ngx_http_complex_value_t;
    if cv.is_null() {
        return NGX_CONF_ERROR;
    }
    // SAFETY: ccv is a plain C struct for which all-zero is the documented initial state.
    let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
    ccv.cf = cf;
    ccv.value = &mut all[2];
    ccv.complex_value = cv;
    if ngx_http_compile_complex_value(&mut ccv) != NGX_OK as ngx_int_t {
        return NGX_CONF_ERROR;
    }
    lc.params
        .get_or_insert_with(Vec::new)
        .push(Param { name, value: cv });
    NGX_CONF_OK
}

unsafe extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mc = &mut *(conf as *mut MainConf);
    let home = args(cf)[0];
    if !home.starts_with('/') {
        return refuse(
            cf,
            &format!("wsgi_python_home: \"{home}\" must be an absolute path"),
        );
    }
    if !std::path::Path::new(home).is_dir() {
        return refuse(
            cf,
            &format!("wsgi_python_home: \"{home}\" is not a directory"),
        );
    }
    mc.python_home = Some(home.to_string());
    NGX_CONF_OK
}

fn parse_count(cf: *mut ngx_conf_t, directive: &str, max: usize) -> Result<usize, *mut c_char> {
    // SAFETY: called from a directive handler with nginx's cf.
    let value = unsafe { args(cf)[0] };
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(refuse(
            cf,
            &format!("{directive}: \"{value}\" must be a number from 1 to {max}"),
        )),
    }
}

unsafe extern "C" fn set_threads(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mc = &mut *(conf as *mut MainConf);
    match parse_count(cf, "wsgi_threads", 1024) {
        Ok(n) => mc.threads = Some(n),
        Err(e) => return e,
    }
    NGX_CONF_OK
}

unsafe extern "C" fn set_max_queue(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mc = &mut *(conf as *mut MainConf);
    match parse_count(cf, "wsgi_max_queue", 1_000_000) {
        Ok(n) => mc.max_queue = Some(n),
        Err(e) => return e,
    }
    NGX_CONF_OK
}

/// Inherits unset values from the enclosing level, completes this location's app, and
/// records it for the workers to import at start.
///
/// SAFETY: nginx passes the parent's and this level's LocConf, both created by
/// create_loc_conf, and a cf whose ctx is the http conf context.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    let prev = &mut *(prev as *mut LocConf);
    let lc = &mut *(conf as *mut LocConf);
    if lc.callable.is_none() {
        lc.callable = prev.callable.clone();
    }
    if lc.python_path.is_none() {
        lc.python_path = prev.python_path.clone();
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
    let Some(value) = lc.app_value.clone() else {
        return NGX_CONF_OK;
    };
    let mut spec = match AppSpec::parse(&value, lc.callable.as_deref()) {
        Ok(spec) => spec,
        Err(e) => return refuse(cf, &format!("wsgi_app: {e}")),
    };
    spec.python_path = lc.python_path.clone().unwrap_or_default();
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
    if let Some(mc) = Module::main_conf_mut(&*cf) {
        if !mc.apps.contains(&spec) {
            mc.apps.push(spec.clone());
        }
    }
    lc.app = Some(Arc::new(spec));
    NGX_CONF_OK
}

/// SAFETY: as merge_loc_conf; conf is this module's MainConf.
pub unsafe extern "C" fn init_main_conf(_cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    let mc = &mut *(conf as *mut MainConf);
    mc.threads.get_or_insert(DEFAULT_THREADS);
    mc.max_queue.get_or_insert(DEFAULT_MAX_QUEUE);
    NGX_CONF_OK
}

pub fn location_conf(r: &ngx_http_request_t) -> Option<&'static LocConf> {
    Module::location_conf(r)
}
