//! The module record httpd loads (`LoadModule rwsgi_module .../mod_rwsgi.so`) and the
//! hooks it registers. The record is declared in Rust: a C-declared one would be hidden
//! by rustc's export list for cdylibs.

use crate::apr::string;
use crate::bindings::*;
use crate::config;
use crate::directives::COMMANDS;
use crate::ffi::guard;
use crate::log::{self, Level};
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int};
use std::ptr;

/// httpd writes module_index, dynamic_load_handle and next into the record, so it lives
/// in an UnsafeCell (writable memory) with the exact layout of `module`.
#[repr(transparent)]
pub struct ModuleRecord(UnsafeCell<module>);

// SAFETY: httpd writes the record only while loading the configuration (single-threaded,
// before any request thread exists); afterwards every access is a read.
unsafe impl Sync for ModuleRecord {}

/// The name httpd uses for log tags (`[rwsgi:error]`) and `LogLevel rwsgi:...`.
const MODULE_NAME: &std::ffi::CStr = c"mod_rwsgi.c";

#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static rwsgi_module: ModuleRecord = ModuleRecord(UnsafeCell::new(module {
    version: MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: MODULE_NAME.as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: MODULE_MAGIC_COOKIE as _,
    rewrite_args: None,
    create_dir_config: Some(config::create_dir_config),
    merge_dir_config: Some(config::merge_dir_config),
    create_server_config: Some(config::create_server_config),
    merge_server_config: Some(config::merge_server_config),
    cmds: &raw const COMMANDS as *const command_rec,
    register_hooks: Some(register_hooks),
    flags: 0,
}));

/// The index httpd gave this module (slot in every config vector).
pub fn module_index() -> c_int {
    // SAFETY: a plain read of an int httpd set before any request; no reference escapes.
    unsafe { (*rwsgi_module.0.get()).module_index }
}

fn this_module() -> *const module {
    rwsgi_module.0.get()
}

/// A NULL-terminated list of module names for hook ordering (httpd keeps the pointer).
#[repr(transparent)]
struct NameList<const N: usize>([*const c_char; N]);

// SAFETY: immutable pointers to static strings.
unsafe impl<const N: usize> Sync for NameList<N> {}

/// Like mod_wsgi: run after mod_alias (so `Alias /static` wins over `WSGIScriptAlias /`)
/// and before mod_userdir / mod_vhost_alias.
static TRANSLATE_AFTER: NameList<2> = NameList([c"mod_alias.c".as_ptr(), ptr::null()]);
static TRANSLATE_BEFORE: NameList<3> = NameList([
    c"mod_userdir.c".as_ptr(),
    c"mod_vhost_alias.c".as_ptr(),
    ptr::null(),
]);

unsafe extern "C" fn register_hooks(_p: *mut apr_pool_t) {
    guard("register_hooks", (), || {
        let middle = APR_HOOK_MIDDLE as c_int;
        // SAFETY: called by httpd while loading the module; the functions and name lists
        // are static and live as long as the module is loaded.
        unsafe {
            ap_hook_check_config(Some(check_config), ptr::null(), ptr::null(), middle);
            ap_hook_post_config(Some(post_config), ptr::null(), ptr::null(), middle);
            ap_hook_child_init(Some(child_init), ptr::null(), ptr::null(), middle);
            ap_hook_translate_name(
                Some(crate::mapping::translate_name),
                TRANSLATE_AFTER.0.as_ptr(),
                TRANSLATE_BEFORE.0.as_ptr(),
                middle,
            );
            ap_hook_handler(
                Some(crate::handler::handler),
                ptr::null(),
                ptr::null(),
                middle,
            );
        }
    })
}

/// Another loaded module that is mod_wsgi (by name, or because it also defines
/// WSGIScriptAlias): its name, for the error message.
pub fn other_wsgi_module() -> Option<String> {
    // SAFETY: ap_top_module is set by httpd before any module code runs; reading the
    // pointer value creates no reference.
    let mut m = unsafe { ptr::addr_of!(ap_top_module).read() };
    while !m.is_null() {
        if !ptr::eq(m, this_module()) {
            // SAFETY: m is a loaded module record of httpd's list; the list and the
            // modules' names and command tables are only changed by the (single)
            // config-reading thread, which is the thread calling this.
            let (name, cmds) = unsafe { (string((*m).name).unwrap_or_default(), (*m).cmds) };
            // SAFETY: as above: cmds is NULL or the module's NULL-terminated table.
            if name.ends_with("mod_wsgi.c") || unsafe { defines_script_alias(cmds) } {
                return Some(format!(
                    "{} (wsgi_module)",
                    name.rsplit('/').next().unwrap_or(&name)
                ));
            }
        }
        // SAFETY: as above; next is NULL or the next loaded module.
        m = unsafe { (*m).next };
    }
    None
}

/// # Safety
/// `cmd` is NULL or a command table ending with an entry whose name is NULL.
unsafe fn defines_script_alias(mut cmd: *const command_rec) -> bool {
    if cmd.is_null() {
        return false;
    }
    // SAFETY: cmd points into the table (the contract), before or at its NULL-named end.
    while let Some(name) = unsafe { string_name(cmd) } {
        if name == b"WSGIScriptAlias" {
            return true;
        }
        // SAFETY: cmd is not the last entry (its name is not NULL), so the next one is
        // still in the table.
        cmd = unsafe { cmd.add(1) };
    }
    false
}

/// A command entry's name, None for the table's end.
///
/// # Safety
/// `cmd` points to a live command_rec whose name is NULL or a static C string.
unsafe fn string_name<'a>(cmd: *const command_rec) -> Option<&'a [u8]> {
    // SAFETY: the contract.
    let name = unsafe { (*cmd).name };
    // SAFETY: non-NULL names are NUL-terminated strings of the loaded module.
    (!name.is_null()).then(|| unsafe { crate::apr::bytes(name) })
}

/// Runs after the configuration is read, also for `apache2 -t`: refuses to run next to
/// mod_wsgi (both would own the one CPython of each process), and checks what daemon
/// mode needs the whole configuration for (groups used and defined, the program).
unsafe extern "C" fn check_config(
    pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    s: *mut server_rec,
) -> c_int {
    guard(
        "check_config",
        HTTP_INTERNAL_SERVER_ERROR as c_int,
        || match other_wsgi_module() {
            // SAFETY: pconf and s are the configuration pool and main server httpd passes.
            None => unsafe { check_daemon_config(pconf, s) },
            Some(other) => {
                // SAFETY: s is the main server httpd passes in.
                unsafe {
                    log::server(
                        s,
                        Level::Error,
                        &format!(
                            "{other} is loaded too. mod_wsgi and mod_rwsgi both embed Python and \
                         define the same WSGI* directives: load only one of them \
                         (a2dismod wsgi, or remove its LoadModule line)"
                        ),
                    );
                }
                HTTP_INTERNAL_SERVER_ERROR as c_int
            }
        },
    )
}

/// Daemon mode's whole-configuration checks (daemon_conf::check), logged on failure.
///
/// # Safety
/// `pconf` is the live configuration pool and `s` the configured main server.
unsafe fn check_daemon_config(pconf: *mut apr_pool_t, s: *mut server_rec) -> c_int {
    // SAFETY: s is the main server heading the configured list (the contract).
    let blocks = unsafe { crate::daemon_conf::blocks(s) };
    // SAFETY: as above.
    let Some(main) = (unsafe { config::server(s) }) else {
        return OK as c_int;
    };
    // SAFETY: pconf is live.
    let dir = unsafe { crate::daemon_conf::supervisor_dir(pconf, main) };
    match crate::daemon_conf::check(&blocks, main, &dir) {
        Ok(()) => OK as c_int,
        Err(why) => {
            // SAFETY: s is live.
            unsafe { log::server(s, Level::Error, &why) };
            HTTP_INTERNAL_SERVER_ERROR as c_int
        }
    }
}

unsafe extern "C" fn post_config(
    pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    s: *mut server_rec,
) -> c_int {
    guard("post_config", HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // SAFETY: pconf is the live configuration pool httpd passes in.
        unsafe { add_version_component(pconf) };
        // SAFETY: pconf and s are what post_config receives, in the parent.
        if let Err(why) = unsafe { crate::daemon_start::post_config(pconf, s) } {
            // SAFETY: s is the live main server.
            unsafe { log::server(s, Level::Error, &format!("daemon mode cannot start: {why}")) };
            return HTTP_INTERNAL_SERVER_ERROR as c_int;
        }
        // SAFETY: as above, in the parent before it forks; s is the main server.
        unsafe { crate::status::create_shared(pconf, s) };
        let mut server = s as *const server_rec;
        let mut scripts = 0;
        while !server.is_null() {
            // SAFETY: server is a live server_rec of httpd's list, all configured by now;
            // its config lives in the config pool.
            if let Some(conf) = unsafe { config::server(server) } {
                scripts += conf.aliases.len() + conf.imports.len();
            }
            // SAFETY: as above; next is NULL or the next live server_rec.
            server = unsafe { (*server).next };
        }
        if scripts > 0 {
            // SAFETY: s is the live main server httpd passes in.
            unsafe {
                log::server(
                    s,
                    Level::Info,
                    "every WSGI application group runs in the main Python interpreter \
                     of its process (as with WSGIApplicationGroup %{GLOBAL}); sub-interpreters are \
                     not supported yet, so applications of one process share modules and sys.path \
                     (a daemon process group per application keeps them apart)",
                )
            };
        }
        OK as c_int
    })
}

/// "mod_rwsgi/0.1.0 Python/3.11" in the server banner (SERVER_SOFTWARE, Server header
/// with ServerTokens Full), as mod_wsgi adds its own.
unsafe fn add_version_component(pconf: *mut apr_pool_t) {
    let python = rwsgi::python_version_line();
    let short: String = python.split('.').take(2).collect::<Vec<_>>().join(".");
    let text = format!(
        "mod_rwsgi/{} Python/{}",
        env!("CARGO_PKG_VERSION"),
        short.split_whitespace().next().unwrap_or("")
    );
    // SAFETY: httpd copies nothing: the component must live in pconf, so it is allocated there.
    unsafe { ap_add_version_component(pconf, crate::apr::pstr(pconf, text.as_bytes())) };
}

unsafe extern "C" fn child_init(p: *mut apr_pool_t, s: *mut server_rec) {
    // SAFETY: called by httpd once in each new child process, before request threads.
    guard("child_init", (), || unsafe {
        crate::daemon_start::child_init();
        crate::python::child_init(p, s)
    })
}
