//! Starting one app process: fork; in the child drop to the group's account and set up
//! what Python will inherit (working directory, umask, rlimits, a clean environment, the
//! group's socket as fd 3 and the configuration pipe as fd 4, nothing else), then exec
//! `rwsgi-daemon app`. The order follows mod_wsgi's daemons: groups before the user (only
//! root may change them), and the user before anything that touches the file system, so
//! the working directory is reached with the tenant's rights.
//!
//! Everything the child needs is prepared in the parent ([`Plan`]); the supervisor is
//! single-threaded, so the child could allocate safely, but it has no reason to.
//! Any failure in the child is logged and ends it with [`CANNOT_START`].

use super::accounts::Account;
use super::signals;
use super::sys;
use rwsgi::daemon::GroupSpec;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The exit status of an app process that could not start (docs/daemon-internals.md):
/// restarted with backoff like a crash. Used by the child for its own failures too.
pub const CANNOT_START: i32 = 3;

const LISTEN_FD: RawFd = crate::app_config::LISTEN_FD;
const CONFIG_FD: RawFd = crate::app_config::CONFIG_FD;
const PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

/// How to start a group's processes, prepared once per apply.
pub struct Plan {
    group: String,
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    user: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    in_passwd: bool,
    workdir: CString,
    /// `home=` was given: a missing directory is an error. The passwd home directory may
    /// be missing (`/nonexistent` for nobody): then `/`, with a warning.
    workdir_required: bool,
    umask: libc::mode_t,
    memory_limit: Option<u64>,
    cpu_time_limit: Option<u64>,
    /// The AppProcessConfig JSON written to fd 4.
    config: Vec<u8>,
}

fn cstring(what: &str, bytes: impl Into<Vec<u8>>) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

impl Plan {
    pub fn new(
        exe: &Path,
        spec: &GroupSpec,
        account: &Account,
        config: Vec<u8>,
    ) -> Result<Plan, String> {
        let g = &spec.name;
        let fail = |e: String| format!("group {g}: {e}");
        let workdir = spec.home.as_deref().unwrap_or(&account.home);
        let mut envp = vec![
            format!("HOME={}", account.home.display()),
            format!("USER={}", account.name),
            format!("LOGNAME={}", account.name),
            PATH.to_string(),
        ];
        if let Some(lang) = &spec.lang {
            envp.push(format!("LANG={lang}"));
        }
        if let Some(locale) = &spec.locale {
            envp.push(format!("LC_ALL={locale}"));
        }
        Ok(Plan {
            group: g.clone(),
            exe: cstring("the program path", exe.as_os_str().as_bytes()).map_err(fail)?,
            argv: vec![
                cstring("display-name", spec.process_title()).map_err(fail)?,
                cstring("app", "app").map_err(fail)?,
            ],
            envp: envp
                .into_iter()
                .map(|e| cstring("lang, locale or the account", e))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            user: cstring("the user name", account.name.as_str()).map_err(fail)?,
            uid: account.uid,
            gid: account.gid,
            in_passwd: account.in_passwd,
            workdir: cstring("home", workdir.as_os_str().as_bytes()).map_err(fail)?,
            workdir_required: spec.home.is_some(),
            umask: spec.umask.unwrap_or(0o022) as libc::mode_t,
            memory_limit: spec.memory_limit,
            cpu_time_limit: spec.cpu_time_limit,
            config,
        })
    }
}

/// Forks and execs one app process on `listener`; returns its pid.
pub fn spawn(plan: &Plan, listener: RawFd) -> Result<i32, String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by no one else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if plan.config.len() > 65536 {
        // The whole configuration fits in the pipe, so writing it never waits for the
        // child (a large one would otherwise hold the loop until Python started).
        // SAFETY: F_SETPIPE_SZ takes an int; failing leaves the default size.
        unsafe {
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, plan.config.len() as libc::c_int);
        }
    }
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mask = signals::block_all();
    // SAFETY: the supervisor is single-threaded, so the child may run any code; it only
    // runs `child`, which ends in exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        use std::os::fd::AsRawFd;
        child(plan, listener, read.as_raw_fd(), parent);
    }
    signals::restore(&mask);
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    drop(read);
    // A child that died before reading closes the pipe: EPIPE (SIGPIPE is ignored), and
    // its own reason is in the log.
    let _ = std::fs::File::from(write).write_all(&plan.config);
    Ok(pid)
}

/// The forked child: never returns.
fn child(plan: &Plan, listener: RawFd, config: RawFd, parent: libc::pid_t) -> ! {
    signals::reset_in_child();
    let die = |what: &str| -> ! {
        let e = std::io::Error::last_os_error();
        let line = format!(
            "rwsgi-supervisor[{}] error: group {}: app process cannot start: {what}: {e}\n",
            std::process::id(),
            plan.group
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        // SAFETY: _exit ends the process without running the parent's atexit handlers.
        unsafe { libc::_exit(CANNOT_START) }
    };
    // SAFETY: setgid has no memory preconditions; we are root, so it may change all ids.
    if unsafe { libc::setgid(plan.gid) } != 0 {
        die(&format!("setgid({})", plan.gid));
    }
    let groups_set = if plan.in_passwd {
        // SAFETY: user is a NUL-terminated string owned by plan.
        unsafe { libc::initgroups(plan.user.as_ptr(), plan.gid) }
    } else {
        // SAFETY: one gid read from a valid reference.
        unsafe { libc::setgroups(1, &plan.gid) }
    };
    if groups_set != 0 {
        die("setting the supplementary groups");
    }
    // SAFETY: setuid has no memory preconditions.
    if unsafe { libc::setuid(plan.uid) } != 0 {
        die(&format!("setuid({})", plan.uid));
    }
    // Never root from here on, and nothing of root's may be regained.
    // SAFETY: these id calls have no preconditions (setuid(0) must fail now).
    let still_root = unsafe {
        libc::getuid() == 0
            || libc::geteuid() == 0
            || libc::getegid() != plan.gid
            || libc::setuid(0) == 0
    };
    if still_root {
        die("still root after dropping privileges");
    }
    // Cleared by the credential change above, so set only now; and if the supervisor
    // died before this line, the signal will never come: leave at once.
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; getppid has no preconditions.
    let orphan = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::getppid() != parent
    };
    if orphan {
        die("the supervisor is gone");
    }
    // SAFETY: workdir is a NUL-terminated string owned by plan.
    if unsafe { libc::chdir(plan.workdir.as_ptr()) } != 0 {
        if plan.workdir_required {
            die(&format!("home={}", plan.workdir.to_string_lossy()));
        }
        let line = format!(
            "rwsgi-supervisor[{}] warn: group {}: the home directory {} of user {} is not \
             usable ({}): working in / (set home= to choose one)\n",
            std::process::id(),
            plan.group,
            plan.workdir.to_string_lossy(),
            plan.user.to_string_lossy(),
            std::io::Error::last_os_error()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        // SAFETY: a static NUL-terminated string.
        if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
            die("chdir /");
        }
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(plan.umask) };
    if let Some(bytes) = plan.memory_limit {
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: limit is a valid rlimit for the call's duration.
        if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
            die(&format!("memory-limit={bytes}"));
        }
    }
    if let Some(seconds) = plan.cpu_time_limit {
        // Soft only: SIGXCPU makes the app process recycle itself.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: limit is valid for writes, then for reads.
        let rc = unsafe {
            libc::getrlimit(libc::RLIMIT_CPU, &mut limit);
            limit.rlim_cur = (seconds as libc::rlim_t).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_CPU, &limit)
        };
        if rc != 0 {
            die(&format!("cpu-time-limit={seconds}"));
        }
    }
    // Move both descriptors above the targets first: dup2 onto itself would keep
    // close-on-exec, and either may sit on the other's target number.
    // SAFETY: fcntl and dup2 on descriptors open in this process.
    let passed = unsafe {
        let high_listener = libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 10);
        let high_config = libc::fcntl(config, libc::F_DUPFD_CLOEXEC, 10);
        high_listener >= 0
            && high_config >= 0
            && libc::dup2(high_listener, LISTEN_FD) == LISTEN_FD
            && libc::dup2(high_config, CONFIG_FD) == CONFIG_FD
    };
    if !passed {
        die("passing the socket and the configuration");
    }
    sys::close_from(CONFIG_FD + 1);
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: exe, argv and envp are NUL-terminated strings and null-terminated arrays
    // that live until exec replaces this process.
    unsafe {
        libc::execve(plan.exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    die(&format!("exec {}", plan.exe.to_string_lossy()))
}
