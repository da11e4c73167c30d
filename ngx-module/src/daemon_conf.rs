//! Daemon mode's configuration in nginx: the directives that declare process groups
//! (`wsgi_daemon`, `wsgi_socket_prefix`, `wsgi_daemon_program`) and put locations in them
//! (`wsgi_process_group`), and the master's side of the supervisor: applying the groups
//! and keeping each group's endpoint (socket path and secret) in the conf the workers
//! inherit.
//!
//! When the supervisor is reached: on a reload, from this module's core-module
//! `init_conf` hook ([`apply_on_reload`]), which runs while nginx still reads the new
//! config, so a failure refuses the reload and the old config keeps serving (a failing
//! `init_module` would make nginx's master exit instead). At the first start (and in the
//! new master of a binary upgrade), from `init_module` ([`apply_at_start`]), after nginx
//! has opened its error log. The supervisor inherits stderr for its own messages and its
//! app processes'; at the first start nginx points its stderr at the error log only after
//! init_module, so stderr is pointed there for the time of the start (the supervisor
//! must neither write to the terminal nor keep the pipe of whoever started nginx open).
//! Never under `nginx -t` nor in the process `nginx -s` runs.

use crate::{no_unwind, Module, Site};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::HttpModuleMainConf;
use ngx::ngx_conf_log_error;
use rwsgi::daemon::control::{ensure, Apply};
use rwsgi::daemon::socket_path::group_socket;
use rwsgi::daemon::{GroupSpec, SECRET_LEN};
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where `wsgi_socket_prefix` points when the config does not say: one directory per
/// nginx instance, named after its config file, so two nginx on one host (or a test's
/// and the system's) each have their own supervisor.
const DEFAULT_PREFIX_ROOT: &str = "/run/rwsgi";
/// `wsgi_process_group %{GLOBAL}`: the location runs embedded, in the worker.
const EMBEDDED: &str = "%{GLOBAL}";

/// The http level's daemon settings, part of MainConf.
#[derive(Debug, Default)]
pub struct DaemonConf {
    /// Each `wsgi_daemon`, in config order, with where it was written (for messages).
    pub groups: Vec<GroupSpec>,
    socket_prefix: Option<PathBuf>,
    program: Option<PathBuf>,
    /// Where each group is reached, in the order of `groups`; filled in the master once
    /// the supervisor has applied them, before the workers are forked.
    pub targets: Vec<Target>,
}

/// Where a worker reaches a group's app processes.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub socket: PathBuf,
    pub secret: [u8; SECRET_LEN],
    /// connect-timeout and socket-timeout, in milliseconds.
    pub connect_timeout: ngx_msec_t,
    pub socket_timeout: ngx_msec_t,
}

/// A location's `wsgi_process_group`, as written.
#[derive(Debug, Clone)]
pub struct GroupChoice {
    /// None: `%{GLOBAL}` (embedded).
    pub name: Option<String>,
    /// "FILE:LINE" of the directive, for the refusal of an undefined group.
    pub at: String,
}

impl DaemonConf {
    /// The index of group `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The supervisor's directory: `wsgi_socket_prefix`, else one under /run/rwsgi
    /// named after the config file.
    fn dir(&self, conf_file: &[u8]) -> PathBuf {
        match &self.socket_prefix {
            Some(dir) => dir.clone(),
            None => default_dir(conf_file),
        }
    }

    fn program(&self) -> Result<PathBuf, String> {
        match &self.program {
            Some(p) => Ok(p.clone()),
            None => rwsgi::daemon::launch::default_program().ok_or_else(|| {
                "cannot tell where rwsgi-daemon is: set wsgi_daemon_program".to_string()
            }),
        }
    }
}

/// `/run/rwsgi/nginx-<16 hex digits of the config file path's FNV-1a hash>`.
pub fn default_dir(conf_file: &[u8]) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in conf_file {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Path::new(DEFAULT_PREFIX_ROOT).join(format!("nginx-{hash:016x}"))
}

// ---- directives ----------------------------------------------------------------------
//
// # Safety (all handlers)
// nginx calls them while parsing, with a live cf whose args hold the directive's words,
// and `conf` pointing at this module's conf struct of the level named in the command's
// `conf` offset (MainConf for the http-level ones, LocConf for wsgi_process_group).

/// The words of the directive being read, after its name.
///
/// # Safety
/// cf is live, as nginx passes it to a directive handler.
unsafe fn words(cf: *mut ngx_conf_t) -> Vec<String> {
    // SAFETY: cf's args hold the directive's words for the whole parse (caller).
    let all: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    all[1..]
        .iter()
        .map(|w| String::from_utf8_lossy(w.as_bytes()).into_owned())
        .collect()
}

/// Logs an [emerg] naming the file and line, and fails the directive.
///
/// # Safety
/// cf is live.
unsafe fn refuse(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}

/// Runs a directive handler's body behind the panic guard.
///
/// # Safety
/// cf is live.
unsafe fn guarded(
    cf: *mut ngx_conf_t,
    name: &str,
    body: impl FnOnce(Vec<String>) -> *mut c_char,
) -> *mut c_char {
    // SAFETY: cf is live (caller).
    let site = unsafe { Site::conf(cf) };
    // SAFETY: as above.
    no_unwind(site, name, NGX_CONF_ERROR, || body(unsafe { words(cf) }))
}

pub unsafe extern "C" fn set_daemon(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let mc = unsafe { &mut *(conf as *mut crate::config::MainConf) };
    // SAFETY: as above.
    unsafe {
        guarded(cf, "wsgi_daemon", |words| {
            let (name, options) = words.split_first().expect("NGX_CONF_1MORE");
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            if mc.daemon.find(name).is_some() {
                return refuse(cf, &format!("wsgi_daemon \"{name}\" is defined twice"));
            }
            match GroupSpec::parse(name, &options)
                .and_then(|group| group.check_accounts().map(|()| group))
            {
                Ok(group) => {
                    mc.daemon.groups.push(group);
                    NGX_CONF_OK
                }
                Err(e) => refuse(cf, &format!("wsgi_daemon {name}: {e}")),
            }
        })
    }
}

pub unsafe extern "C" fn set_socket_prefix(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let mc = unsafe { &mut *(conf as *mut crate::config::MainConf) };
    // SAFETY: as above.
    unsafe {
        guarded(cf, "wsgi_socket_prefix", |words| {
            let dir = words[0].trim_end_matches('/');
            if !dir.starts_with('/') || dir.contains('\0') {
                return refuse(
                    cf,
                    &format!("wsgi_socket_prefix: \"{dir}\" must be an absolute directory path"),
                );
            }
            mc.daemon.socket_prefix = Some(PathBuf::from(dir));
            NGX_CONF_OK
        })
    }
}

pub unsafe extern "C" fn set_daemon_program(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let mc = unsafe { &mut *(conf as *mut crate::config::MainConf) };
    // SAFETY: as above.
    unsafe {
        guarded(cf, "wsgi_daemon_program", |words| {
            let program = PathBuf::from(&words[0]);
            if let Err(e) = rwsgi::daemon::launch::check_program(&program) {
                return refuse(cf, &format!("wsgi_daemon_program: {e}"));
            }
            mc.daemon.program = Some(program);
            NGX_CONF_OK
        })
    }
}

pub unsafe extern "C" fn set_process_group(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the directive handlers' contract (above).
    let lc = unsafe { &mut *(conf as *mut crate::config::LocConf) };
    // SAFETY: as above.
    unsafe {
        guarded(cf, "wsgi_process_group", |words| {
            if lc.process_group.is_some() {
                return refuse(cf, "\"wsgi_process_group\" directive is duplicate");
            }
            let name = &words[0];
            let name = if name == EMBEDDED {
                None
            } else if let Err(e) = rwsgi::daemon::group::check_group_name(name) {
                return refuse(cf, &format!("wsgi_process_group: {e}"));
            } else {
                Some(name.clone())
            };
            // SAFETY: cf is live; its conf_file is the file being read.
            let at = {
                let file = &*(*cf).conf_file;
                format!(
                    "{}:{}",
                    String::from_utf8_lossy(file.file.name.as_bytes()),
                    file.line
                )
            };
            lc.process_group = Some(GroupChoice { name, at });
            NGX_CONF_OK
        })
    }
}

/// From merge_loc_conf: the group a location's app runs in (None: embedded), or the
/// refusal of an undefined one.
pub fn resolve(choice: Option<&GroupChoice>, daemon: &DaemonConf) -> Result<Option<usize>, String> {
    let Some(GroupChoice {
        name: Some(name),
        at,
    }) = choice
    else {
        return Ok(None);
    };
    daemon.find(name).map(Some).ok_or_else(|| {
        format!("wsgi_process_group \"{name}\" (in {at}): no wsgi_daemon \"{name}\" is defined")
    })
}

// ---- the master ----------------------------------------------------------------------

/// Every supervisor directory this master has applied groups to, so that a reload that
/// removes all groups (or moves them to another directory) stops the old ones.
static APPLIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The core module's `init_conf`: on a reload, applies the new config's groups while
/// nginx can still refuse it.
///
/// # Safety
/// nginx passes the cycle being configured, with its http conf read; on the master's
/// thread.
pub unsafe extern "C" fn init_conf(cycle: *mut ngx_cycle_t, _conf: *mut c_void) -> *mut c_char {
    no_unwind(Site::PROCESS, "daemon init_conf", NGX_CONF_ERROR, || {
        // SAFETY: nginx's globals, only written on this thread.
        let (testing, process) = unsafe { (ngx_test_config != 0, ngx_process) };
        if testing || process != NGX_PROCESS_MASTER as ngx_uint_t {
            // `nginx -t`, `nginx -s`, or the first start (init_module applies then).
            return NGX_CONF_OK;
        }
        // SAFETY: cycle is live (caller).
        match unsafe { apply(cycle) } {
            Ok(()) => NGX_CONF_OK,
            Err(e) => {
                // SAFETY: cycle and its log are live (caller).
                unsafe {
                    crate::log::write_at(
                        (*cycle).log,
                        NGX_LOG_EMERG,
                        &rwsgi::LogLabel::process(),
                        format_args!("daemon mode: {}; the reload is refused", e,),
                    );
                };
                NGX_CONF_ERROR
            }
        }
    })
}

/// From `init_module` at the first start (and in a binary upgrade's new master): applies
/// the groups; Err makes nginx refuse to start.
///
/// # Safety
/// cycle is the live cycle nginx is starting; on the master's thread.
pub unsafe fn apply_at_start(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    // SAFETY: nginx's globals, only written on this thread.
    let (testing, process) = unsafe { (ngx_test_config != 0, ngx_process) };
    if testing || process != NGX_PROCESS_SINGLE as ngx_uint_t {
        // Under -t nothing starts; in a running master init_conf applied already.
        return Ok(());
    }
    // SAFETY: as this function.
    unsafe { apply(cycle) }
}

/// Makes the supervisor run this config's groups and stores their targets.
///
/// # Safety
/// cycle is live, its config read; on the master's thread, before workers are forked.
/// The configured groups; one without python-home= runs `wsgi_python_home` (what
/// embedded locations run), as mod_wsgi's daemons run WSGIPythonHome.
fn groups_with_home(mc: &crate::config::MainConf) -> Vec<GroupSpec> {
    let mut groups = mc.daemon.groups.clone();
    for g in &mut groups {
        if g.python_home.is_none() {
            g.python_home = mc.python_home.as_ref().map(PathBuf::from);
        }
    }
    groups
}

unsafe fn apply(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    // SAFETY: cycle is live (caller).
    let conf_file = unsafe { (*cycle).conf_file.as_bytes().to_vec() };
    // SAFETY: as above; the master alone touches the conf now.
    let mc = unsafe { Module::main_conf_mut(&*cycle) };
    let mut applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, groups) = match &mc {
        Some(mc) => (mc.daemon.dir(&conf_file), groups_with_home(mc)),
        None => (default_dir(&conf_file), Vec::new()),
    };
    // Refused before anything changes, so that the previous config's groups keep running.
    for g in &groups {
        group_socket(&dir, &g.name)
            .map_err(|e| format!("group {}: {e}: set a shorter wsgi_socket_prefix", g.name))?;
    }
    // Groups the previous config ran elsewhere (or at all, if there are none now) stop.
    let stale: Vec<PathBuf> = applied
        .iter()
        .filter(|d| **d != dir || groups.is_empty())
        .cloned()
        .collect();
    let mut stop_errors = Vec::new();
    for old in &stale {
        let program = mc
            .as_ref()
            .and_then(|mc| mc.daemon.program().ok())
            .unwrap_or_default();
        // SAFETY: cycle is live (caller).
        let apply = unsafe { apply_request(cycle, Vec::new())? };
        if let Err(e) = ensure(old, &program, &apply) {
            stop_errors.push(format!("{}: {e}", old.display()));
        }
        applied.retain(|d| d != old);
    }
    if !stop_errors.is_empty() {
        // SAFETY: cycle and its log are live (caller).
        unsafe {
            crate::log::write_at(
                (*cycle).log,
                NGX_LOG_WARN,
                &rwsgi::LogLabel::process(),
                format_args!(
                    "cannot stop the process groups of the previous config: {}",
                    stop_errors.join("; "),
                ),
            );
        };
    }
    let Some(mc) = mc else { return Ok(()) };
    if groups.is_empty() {
        return Ok(());
    }
    let program = mc.daemon.program()?;
    // SAFETY: cycle is live (caller).
    let apply = unsafe { apply_request(cycle, groups)? };
    if let Some(parent) = dir.parent() {
        make_root_dir(parent)?;
    }
    // SAFETY: cycle is live (caller), on the master's thread.
    let endpoints = unsafe { with_stderr_on_log(cycle, || ensure(&dir, &program, &apply)) }?;
    if !applied.contains(&dir) {
        applied.push(dir.clone());
    }
    let mut targets = Vec::with_capacity(apply.groups.len());
    for g in &apply.groups {
        let endpoint = endpoints
            .iter()
            .find(|e| e.name == g.name)
            .ok_or_else(|| format!("the supervisor did not return group {}", g.name))?;
        let secret = endpoint
            .secret_bytes()
            .ok_or_else(|| format!("the supervisor gave group {} a malformed secret", g.name))?;
        targets.push(Target {
            name: g.name.clone(),
            socket: endpoint.socket.clone(),
            secret,
            connect_timeout: g.connect_timeout.saturating_mul(1000) as ngx_msec_t,
            socket_timeout: g.socket_timeout.saturating_mul(1000) as ngx_msec_t,
        });
    }
    mc.daemon.targets = targets;
    // SAFETY: cycle and its log are live (caller).
    unsafe {
        crate::log::write_at(
            (*cycle).log,
            NGX_LOG_NOTICE,
            &rwsgi::LogLabel::process(),
            format_args!(
                "daemon mode: {} process group(s) run by the supervisor of {}",
                mc.daemon.targets.len(),
                dir.display(),
            ),
        );
    };
    Ok(())
}

/// The apply message for `groups`, with the workers' account from the `user` directive.
///
/// # Safety
/// cycle is live, its core conf initialized.
unsafe fn apply_request(cycle: *mut ngx_cycle_t, groups: Vec<GroupSpec>) -> Result<Apply, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "daemon mode needs nginx's master process to run as root (it starts \
                    each group's processes as the group's user)"
                .into(),
        );
    }
    // SAFETY: a live cycle's conf_ctx has a slot per core module, the core module's
    // holding its initialized ngx_core_conf_t.
    let (uid, gid) = unsafe {
        let ccf = *(*cycle).conf_ctx.add(ngx_core_module.index) as *const ngx_core_conf_t;
        if ccf.is_null() {
            return Err("nginx's core configuration is missing".into());
        }
        ((*ccf).user, (*ccf).group)
    };
    if uid == ngx_uid_t::MAX || uid == 0 {
        return Err(
            "daemon mode needs nginx's workers to run as an unprivileged user (the \
                    `user` directive)"
                .into(),
        );
    }
    Ok(Apply {
        owner_pid: std::process::id(),
        server: "nginx".into(),
        worker_uid: uid,
        worker_gid: gid,
        groups,
    })
}

/// Runs `start` with stderr on the cycle's error log file, as nginx itself points it
/// once started, so that a supervisor started meanwhile logs there.
///
/// # Safety
/// cycle is live, its log files open; on the master's thread (nothing else writes to
/// stderr meanwhile).
unsafe fn with_stderr_on_log<R>(cycle: *mut ngx_cycle_t, start: impl FnOnce() -> R) -> R {
    // The first file log of the chain, as ngx_log_get_file_log finds it.
    // SAFETY: a live cycle's log chain and its open files live as long as the cycle.
    let fd = unsafe {
        let mut log = (*cycle).log;
        while !log.is_null() && (*log).writer.is_some() {
            log = (*log).next;
        }
        if log.is_null() || (*log).file.is_null() {
            -1
        } else {
            (*(*log).file).fd
        }
    };
    if fd < 0 || fd == libc::STDERR_FILENO {
        return start();
    }
    // SAFETY: dup/dup2/close on descriptors this process owns: fd is the error log's,
    // saved a private copy of stderr that is closed after being put back.
    unsafe {
        let saved = libc::dup(libc::STDERR_FILENO);
        if saved < 0 || libc::dup2(fd, libc::STDERR_FILENO) < 0 {
            if saved >= 0 {
                libc::close(saved);
            }
            return start();
        }
        let result = start();
        libc::dup2(saved, libc::STDERR_FILENO);
        libc::close(saved);
        result
    }
}

/// Creates `dir` (and its parents) as root-owned 0755 directories if missing.
fn make_root_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}
