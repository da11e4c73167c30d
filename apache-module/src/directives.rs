//! The configuration directives, with mod_wsgi's names and meanings. A directive function
//! returns NULL or an error string; httpd prints the string with the file and line and
//! refuses the configuration (`apache2 -t` fails).

use crate::apr::{bytes, pstr, string};
use crate::bindings::*;
use crate::config::{self, Alias, DirConfig, ImportScript, Pattern, ScriptOptions};
use crate::daemon_conf::{
    daemon_process, daemon_program, process_group, restrict_embedded, socket_prefix,
};
use crate::ffi::guard;
use crate::module::other_wsgi_module;
use crate::options::{
    check_application_group, check_process_group, max_group_reference, parse_flag, parse_map_head,
    parse_options, split_python_path, split_words,
};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr;

pub type Outcome = Result<(), String>;

/// The directive httpd is reading: its cmd_parms, live for the directive call.
#[derive(Clone, Copy)]
pub struct Cmd<'a> {
    cmd: *mut cmd_parms,
    _live: PhantomData<&'a cmd_parms>,
}

impl<'a> Cmd<'a> {
    /// # Safety
    /// `cmd` is the live cmd_parms httpd passed to a directive function, used only during
    /// that call.
    pub unsafe fn new(cmd: *mut cmd_parms) -> Cmd<'a> {
        Cmd {
            cmd,
            _live: PhantomData,
        }
    }

    /// Runs a directive body: refuses to work next to mod_wsgi, turns panics and errors
    /// into an error string allocated in the command pool.
    pub fn run(self, body: impl FnOnce() -> Outcome) -> *const c_char {
        let outcome = guard(
            "a configuration directive",
            Err("internal error, see the error log".into()),
            || {
                if let Some(other) = other_wsgi_module() {
                    return Err(format!(
                    "{other} is loaded too: mod_wsgi and mod_rwsgi both embed Python and own the WSGI* \
                     directives; load only one of them"
                ));
                }
                body()
            },
        );
        match outcome {
            Ok(()) => ptr::null(),
            Err(message) => {
                let name = self.name();
                let text = if message.starts_with(&name) {
                    message
                } else {
                    format!("{name}: {message}")
                };
                // The command pool lives until httpd has reported the error.
                self.copy(text.as_bytes())
            }
        }
    }

    /// The directive's name.
    pub fn name(self) -> String {
        // SAFETY: cmd and cmd->cmd (this directive's command_rec, with a static name) are
        // live during the directive call (Cmd::new).
        unsafe { string((*(*self.cmd).cmd).name) }.unwrap_or_default()
    }

    /// The configuration pool.
    fn pool(self) -> *mut apr_pool_t {
        // SAFETY: cmd is live (Cmd::new).
        unsafe { (*self.cmd).pool }
    }

    /// The server block being configured.
    fn server(self) -> *mut server_rec {
        // SAFETY: cmd is live (Cmd::new).
        unsafe { (*self.cmd).server }
    }

    /// "file:line" of the directive, for messages given once the whole configuration is
    /// read.
    pub fn location(self) -> String {
        // SAFETY: cmd is live; directive is NULL or the config tree node being read, whose
        // file name is NULL or a NUL-terminated pool string.
        unsafe {
            let d = (*self.cmd).directive;
            if d.is_null() {
                return "?".into();
            }
            let file = string((*d).filename).unwrap_or_else(|| "?".into());
            format!("{file}:{}", (*d).line_num)
        }
    }

    /// True inside <Directory>, <Location>, <Files> sections (and .htaccess).
    pub fn in_section(self) -> bool {
        // SAFETY: cmd is live (Cmd::new).
        !unsafe { (*self.cmd).path }.is_null()
    }

    /// True in a .htaccess file, which httpd reads per request, in a request's pool: the
    /// server configuration must not be changed from there.
    pub fn in_htaccess(self) -> bool {
        // SAFETY: cmd, its server and that server's process are live while a directive
        // is read; pconf is the configuration pool, the one directives in the server's
        // own files are read with.
        unsafe { (*self.cmd).pool != (*(*self.server()).process).pconf }
    }

    /// `s` as a C string in the configuration pool (lives as long as the configuration).
    pub fn copy(self, s: &[u8]) -> *const c_char {
        // SAFETY: the configuration pool is live.
        unsafe { pstr(self.pool(), s) }
    }

    /// Refuses the directive inside <VirtualHost>, <Directory>... (httpd's message).
    pub fn global_only(self) -> Outcome {
        // SAFETY: cmd is live; ap_check_cmd_context only reads it and returns NULL or a
        // NUL-terminated message.
        let err = unsafe { ap_check_cmd_context(self.cmd, GLOBAL_ONLY) };
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-NULL message is a NUL-terminated string (static or in the pool).
        let text = String::from_utf8_lossy(unsafe { bytes(err) });
        Err(text.trim().to_string())
    }

    /// A path relative to ServerRoot made absolute (as httpd does for its own files).
    pub fn server_relative(self, path: &str) -> Result<String, String> {
        let c = std::ffi::CString::new(path).map_err(|_| "path contains a NUL byte".to_string())?;
        // SAFETY: the pool is live; the result is NULL or a pool string.
        let full = unsafe { ap_server_root_relative(self.pool(), c.as_ptr()) };
        if full.is_null() {
            return Err(format!("invalid path \"{path}\""));
        }
        // SAFETY: a non-NULL result is a NUL-terminated pool string.
        Ok(String::from_utf8_lossy(unsafe { bytes(full) }).into_owned())
    }

    /// The server block's configuration, to change it.
    ///
    /// # Safety
    /// No other reference to this server's configuration is alive (configuration reading
    /// is single-threaded, so: none taken earlier in the same directive still in use).
    pub unsafe fn server_config(self) -> Result<&'a mut config::ServerConfig, String> {
        // SAFETY: cmd->server is the live server block being configured; exclusivity is
        // the caller's contract.
        unsafe { config::server_mut(self.server()) }
            .ok_or_else(|| "no server configuration".to_string())
    }

    /// Compiles a WSGIScriptAliasMatch pattern into the configuration pool (freed with
    /// it); None when it does not compile.
    fn compile(self, pattern: &CStr) -> Option<*mut ap_regex_t> {
        // SAFETY: the pool is live; the pattern is a NUL-terminated string.
        let re = unsafe { ap_pregcomp(self.pool(), pattern.as_ptr(), AP_REG_EXTENDED as c_int) };
        (!re.is_null()).then_some(re)
    }
}

/// A TAKE1/RAW_ARGS argument as a Rust string.
///
/// # Safety
/// `p` is the argument httpd passed to the directive: NULL or NUL-terminated.
pub unsafe fn arg(p: *const c_char) -> String {
    // SAFETY: the contract.
    unsafe { string(p) }.unwrap_or_default()
}

/// The DirConfig httpd passes a directive allowed in directory context.
///
/// # Safety
/// `mconfig` is that argument (our DirConfig from create/merge_dir_config, or NULL),
/// and no other reference to it is alive.
pub unsafe fn dir_config<'a>(mconfig: *mut c_void) -> Result<&'a mut DirConfig, String> {
    // SAFETY: the contract.
    unsafe { (mconfig as *mut DirConfig).as_mut() }
        .ok_or_else(|| "no directory configuration".to_string())
}

fn not_a_directory(target: &str) -> Outcome {
    if target.ends_with('/') || (!target.contains('$') && Path::new(target).is_dir()) {
        return Err(format!(
            "\"{target}\" is a directory: mapping a URL to a directory of WSGI scripts is not supported by \
             mod_rwsgi yet; name the script file"
        ));
    }
    Ok(())
}

const ALIAS_OPTIONS: &[&str] = &[
    "process-group",
    "application-group",
    "callable-object",
    "pass-authorization",
];

fn add_alias(cmd: Cmd<'_>, args: &str, regex: bool) -> Outcome {
    let words = split_words(args)?;
    if words.len() < 2 {
        return Err(if regex {
            "expected a regular expression and a script file: WSGIScriptAliasMatch REGEX FILE [options]".into()
        } else {
            "expected a URL path and a script file: WSGIScriptAlias URL-path FILE [options]".into()
        });
    }
    let (url, target) = (&words[0], &words[1]);
    let mut options = ScriptOptions::default();
    for (name, value) in parse_options(&words[2..], ALIAS_OPTIONS)? {
        match name {
            "process-group" => {
                check_process_group(value)?;
                options.process_group = Some(value.to_string());
            }
            "application-group" => {
                check_application_group(value)?;
                options.application_group = Some(value.to_string());
            }
            "callable-object" => {
                rwsgi::check_callable_name(value)?;
                options.callable_object = Some(value.to_string());
            }
            _ => options.pass_authorization = Some(parse_flag(name, value)?),
        }
    }
    // As mod_wsgi: both groups named, neither a per-request substitution (%{GLOBAL} is
    // fixed), and no $N in a WSGIScriptAliasMatch target.
    options.preload = options.process_group.is_some()
        && options
            .application_group
            .as_deref()
            .is_some_and(|g| g == "%{GLOBAL}" || !g.contains("%{"))
        && !(regex && target.contains('$'));
    let target = cmd.server_relative(target)?;
    not_a_directory(&target)?;
    let pattern = if regex {
        let c = std::ffi::CString::new(url.as_str())
            .map_err(|_| "pattern contains a NUL byte".to_string())?;
        let Some(re) = cmd.compile(&c) else {
            return Err(format!(
                "regular expression \"{url}\" could not be compiled"
            ));
        };
        // SAFETY: re is a regex ap_pregcomp compiled (live with the config pool).
        let groups = unsafe { (*re).re_nsub }.max(0) as usize;
        let wanted = max_group_reference(&target);
        if wanted > groups {
            return Err(format!(
                "\"{target}\" refers to ${wanted} but \"{url}\" has only {groups} capture group(s)"
            ));
        }
        Pattern::Regex(re)
    } else {
        if !url.starts_with('/') {
            return Err(format!("URL path \"{url}\" must begin with /"));
        }
        Pattern::Prefix(url.clone())
    };
    let target_c = cmd.copy(target.as_bytes());
    let uses_group = options.process_group.clone();
    // SAFETY: the only reference to the server config in this directive.
    let conf = unsafe { cmd.server_config() }?;
    if let Some(name) = uses_group {
        crate::daemon_conf::note_use(conf, cmd, &name);
    }
    conf.aliases.push(Alias {
        pattern,
        target,
        target_c,
        options,
    });
    Ok(())
}

/// The arguments of a directive call: the command and its (RAW_ARGS or TAKE1) text.
///
/// # Safety
/// What httpd passes a directive function: a live cmd_parms and NULL or a NUL-terminated
/// argument.
pub unsafe fn call<'a>(cmd: *mut cmd_parms, args: *const c_char) -> (Cmd<'a>, String) {
    // SAFETY: the contract.
    unsafe { (Cmd::new(cmd), arg(args)) }
}

unsafe extern "C" fn script_alias(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    args: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and the rest of the line (RAW_ARGS).
    let (cmd, args) = unsafe { call(cmd, args) };
    cmd.run(|| add_alias(cmd, &args, false))
}

unsafe extern "C" fn script_alias_match(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    args: *const c_char,
) -> *const c_char {
    // SAFETY: as in script_alias.
    let (cmd, args) = unsafe { call(cmd, args) };
    cmd.run(|| add_alias(cmd, &args, true))
}

unsafe extern "C" fn import_script(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    args: *const c_char,
) -> *const c_char {
    // SAFETY: as in script_alias.
    let (cmd, args) = unsafe { call(cmd, args) };
    cmd.run(|| {
        let words = split_words(&args)?;
        let Some(path) = words.first() else {
            return Err("expected a script file: WSGIImportScript FILE [process-group=...] [application-group=...]".into());
        };
        let mut group = "%{GLOBAL}".to_string();
        let mut process_group = None;
        for (name, value) in parse_options(&words[1..], &["process-group", "application-group"])? {
            if name == "process-group" {
                check_process_group(value)?;
                process_group = Some(value.to_string());
            } else {
                check_application_group(value)?;
                group = value.to_string();
            }
        }
        let path = cmd.server_relative(path)?;
        not_a_directory(&path)?;
        // SAFETY: the only reference to the server config in this directive.
        let conf = unsafe { cmd.server_config() }?;
        if let Some(name) = &process_group {
            crate::daemon_conf::note_use(conf, cmd, name);
        }
        conf.imports.push(ImportScript {
            path,
            application_group: group,
            process_group: process_group.filter(|g| g != config::EMBEDDED),
        });
        Ok(())
    })
}

unsafe extern "C" fn python_home(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and its one argument (TAKE1).
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        cmd.global_only()?;
        let home = PathBuf::from(value);
        if !home.is_dir() {
            return Err(format!("\"{}\" is not a directory", home.display()));
        }
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.python_home = Some(home);
        Ok(())
    })
}

unsafe extern "C" fn python_path(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: as in python_home.
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        cmd.global_only()?;
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.python_path = split_python_path(&value);
        Ok(())
    })
}

unsafe extern "C" fn stuck_after(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: as in python_home.
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        cmd.global_only()?;
        let seconds = match value.trim().parse::<u64>() {
            Ok(n) if (1..=86_400).contains(&n) => n,
            _ => {
                return Err(format!(
                    "\"{value}\" must be a number of seconds from 1 to 86400"
                ))
            }
        };
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.stuck_after = Some(seconds);
        Ok(())
    })
}

unsafe extern "C" fn callable_object(
    cmd: *mut cmd_parms,
    m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: as in python_home.
    let (cmd, text) = unsafe { call(cmd, value) };
    // SAFETY: the TAKE1 argument: NUL-terminated, live during the call.
    let raw = unsafe { bytes(value) };
    cmd.run(|| {
        rwsgi::check_callable_name(&text)?;
        // SAFETY: httpd passes our DirConfig as m, referenced nowhere else meanwhile.
        unsafe { dir_config(m) }?.callable_object = cmd.copy(raw);
        Ok(())
    })
}

unsafe extern "C" fn application_group(
    cmd: *mut cmd_parms,
    m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: as in python_home.
    let (cmd, text) = unsafe { call(cmd, value) };
    // SAFETY: as in callable_object.
    let raw = unsafe { bytes(value) };
    cmd.run(|| {
        check_application_group(&text)?;
        // SAFETY: as in callable_object.
        unsafe { dir_config(m) }?.application_group = cmd.copy(raw);
        Ok(())
    })
}

unsafe extern "C" fn map_head_to_get(
    cmd: *mut cmd_parms,
    m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: as in python_home.
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        let mode = parse_map_head(&value)?;
        // SAFETY: as in callable_object.
        unsafe { dir_config(m) }?.map_head_to_get = Some(mode);
        Ok(())
    })
}

macro_rules! dir_flag {
    ($fn_name:ident, $field:ident) => {
        unsafe extern "C" fn $fn_name(
            cmd: *mut cmd_parms,
            m: *mut c_void,
            on: c_int,
        ) -> *const c_char {
            // SAFETY: called by httpd with a live cmd.
            let cmd = unsafe { Cmd::new(cmd) };
            cmd.run(|| {
                // SAFETY: httpd passes our DirConfig as m, referenced nowhere else meanwhile.
                unsafe { dir_config(m) }?.$field = Some(on != 0);
                Ok(())
            })
        }
    };
}

dir_flag!(pass_authorization, pass_authorization);
dir_flag!(script_reloading, script_reloading);
dir_flag!(enable_sendfile, enable_sendfile);

/// Directives that only tune mod_wsgi internals mod_rwsgi does not have.
unsafe extern "C" fn ignored_take1(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    _v: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd.
    let cmd = unsafe { Cmd::new(cmd) };
    cmd.run(|| Ok(()))
}

unsafe extern "C" fn ignored_flag(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    _on: c_int,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd.
    let cmd = unsafe { Cmd::new(cmd) };
    cmd.run(|| Ok(()))
}

// ---- the command table ------------------------------------------------------------

/// Where a directive may appear: server/vhost only, or also <Directory>/<Location> and
/// .htaccess with `AllowOverride FileInfo` (as in mod_wsgi).
const SERVER: u32 = RSRC_CONF;
const ANYWHERE: u32 = RSRC_CONF | ACCESS_CONF | OR_FILEINFO;

type RawFn = unsafe extern "C" fn(*mut cmd_parms, *mut c_void, *const c_char) -> *const c_char;
type FlagFn = unsafe extern "C" fn(*mut cmd_parms, *mut c_void, c_int) -> *const c_char;

const fn raw(name: &'static CStr, f: RawFn, scope: u32, help: &'static CStr) -> command_rec {
    command_rec {
        name: name.as_ptr(),
        func: cmd_func { raw_args: Some(f) },
        cmd_data: ptr::null_mut(),
        req_override: scope as c_int,
        args_how: cmd_how::RAW_ARGS,
        errmsg: help.as_ptr(),
    }
}

const fn take1(name: &'static CStr, f: RawFn, scope: u32, help: &'static CStr) -> command_rec {
    command_rec {
        name: name.as_ptr(),
        func: cmd_func { take1: Some(f) },
        cmd_data: ptr::null_mut(),
        req_override: scope as c_int,
        args_how: cmd_how::TAKE1,
        errmsg: help.as_ptr(),
    }
}

const fn flag(name: &'static CStr, f: FlagFn, scope: u32, help: &'static CStr) -> command_rec {
    command_rec {
        name: name.as_ptr(),
        func: cmd_func { flag: Some(f) },
        cmd_data: ptr::null_mut(),
        req_override: scope as c_int,
        args_how: cmd_how::FLAG,
        errmsg: help.as_ptr(),
    }
}

const END: command_rec = command_rec {
    name: ptr::null(),
    func: cmd_func { raw_args: None },
    cmd_data: ptr::null_mut(),
    req_override: 0,
    args_how: cmd_how::RAW_ARGS,
    errmsg: ptr::null(),
};

/// The NULL-terminated table httpd reads through `module.cmds`.
#[repr(transparent)]
pub struct Commands(pub [command_rec; 28]);

// SAFETY: the table is immutable after construction; its pointers are to static strings
// and functions, so sharing it between threads is sound.
unsafe impl Sync for Commands {}

pub static COMMANDS: Commands = Commands([
    raw(c"WSGIScriptAlias", script_alias, SERVER, c"URL-path FILE [process-group=%{GLOBAL}] [application-group=NAME] [callable-object=NAME] [pass-authorization=On|Off]"),
    raw(c"WSGIScriptAliasMatch", script_alias_match, SERVER, c"REGEX FILE ($N substitutes groups) [options as WSGIScriptAlias]"),
    take1(c"WSGIPythonHome", python_home, SERVER, c"Python prefix or virtualenv directory"),
    take1(c"WSGIPythonPath", python_path, SERVER, c"colon-separated directories added in front of sys.path"),
    take1(c"WSGICallableObject", callable_object, ANYWHERE, c"name of the WSGI callable in the script (default application)"),
    take1(c"WSGIApplicationGroup", application_group, ANYWHERE, c"application group: %{GLOBAL}, %{RESOURCE}, %{SERVER}, %{HOST}, %{ENV:var} or a name"),
    flag(c"WSGIPassAuthorization", pass_authorization, ANYWHERE, c"On to pass the Authorization header to the application"),
    flag(c"WSGIChunkedRequest", ignored_flag, ANYWHERE, c"accepted for compatibility: chunked request bodies always work"),
    flag(c"WSGIScriptReloading", script_reloading, ANYWHERE, c"On (default) to reload a script when its modification time changes"),
    take1(c"WSGIMapHEADToGET", map_head_to_get, ANYWHERE, c"Off, On or Auto (default): run HEAD requests as GET"),
    flag(c"WSGIEnableSendfile", enable_sendfile, ANYWHERE, c"On to send wsgi.file_wrapper files with sendfile"),
    raw(c"WSGIImportScript", import_script, SERVER, c"FILE [process-group=%{GLOBAL}] [application-group=NAME]: run when a worker process starts"),
    raw(c"WSGIDaemonProcess", daemon_process, SERVER, c"NAME [processes=N] [threads=N] [user=U] [group=G] [python-home=DIR] [python-path=DIRS] [display-name=%{GROUP}] ... (mod_wsgi's options)"),
    take1(c"WSGIProcessGroup", process_group, ANYWHERE, c"a WSGIDaemonProcess group's name, or %{GLOBAL} to run in Apache's own processes"),
    flag(c"WSGIRestrictEmbedded", restrict_embedded, SERVER, c"On: applications run only in daemon process groups, never in Apache's processes"),
    take1(c"WSGISocketPrefix", socket_prefix, SERVER, c"path prefix of the daemon sockets (the directory PREFIX.rwsgi holds them)"),
    take1(c"WSGIDaemonProgram", daemon_program, SERVER, c"absolute path of the rwsgi-daemon program (default: beside mod_rwsgi.so)"),
    take1(c"WSGIAcceptMutex", ignored_take1, SERVER, c"accepted and ignored (daemon mode only)"),
    flag(c"WSGILazyInitialization", ignored_flag, SERVER, c"accepted and ignored: Python always starts in the worker processes"),
    flag(c"WSGIRestrictStdin", ignored_flag, SERVER, c"accepted and ignored"),
    flag(c"WSGIRestrictStdout", ignored_flag, SERVER, c"accepted and ignored"),
    flag(c"WSGIRestrictSignal", ignored_flag, SERVER, c"accepted and ignored"),
    flag(c"WSGIVerboseDebugging", ignored_flag, SERVER, c"accepted and ignored"),
    flag(c"WSGIDestroyInterpreter", ignored_flag, SERVER, c"accepted and ignored"),
    take1(c"WSGIPythonEggs", ignored_take1, SERVER, c"accepted and ignored"),
    flag(c"WSGIDontWriteBytecode", ignored_flag, SERVER, c"accepted and ignored"),
    take1(c"WSGIStuckAfter", stuck_after, SERVER, c"seconds after which a request still in the app is logged with its Python stack (default 60)"),
    END,
]);
