//! An app process: the engine's third front end. The supervisor has already made it the
//! group's user; here it reads its configuration, starts Python, imports the group's apps
//! and serves connections from the group's socket with `threads` threads.
//!
//! Accepting: one thread accepts, and only while a serving thread is idle, so a busy
//! process leaves new connections in the socket's backlog, where another process of the
//! group (or the one replacing this one) takes them. Nothing is accepted that no thread
//! can serve, which is also what lets a recycling process drain without losing any.

use crate::app_config::{AppProcessConfig, CONFIG_FD, EXIT_RECYCLED, LISTEN_FD};
use crate::connection::{serve, Served};
use crate::lifecycle::{install_signal_handlers, Lifecycle};
use rwsgi::daemon::control::Endpoint;
use rwsgi::{Runtime, ServerTraits};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Exit status when the process cannot start (bad configuration, Python fails): the
/// supervisor backs off before trying again.
const EXIT_CANNOT_START: i32 = 3;

pub fn main() -> i32 {
    match run() {
        Ok(()) => EXIT_RECYCLED,
        Err(e) => {
            eprintln!("rwsgi-app[{}] error: {e}", std::process::id());
            EXIT_CANNOT_START
        }
    }
}

fn run() -> Result<(), String> {
    let config = read_config()?;
    let group = &config.group;
    let secret = Endpoint {
        name: group.name.clone(),
        socket: Default::default(),
        secret: config.secret.clone(),
    }
    .secret_bytes()
    .ok_or("the group's secret is not 64 hex digits")?;
    // SAFETY: the supervisor passed the group's listening socket as LISTEN_FD, open and
    // owned by nobody else in this process.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FD) };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("the group's socket (fd {LISTEN_FD}) is not usable: {e}"))?;

    let traits = ServerTraits {
        multithread: group.threads > 1,
        multiprocess: group.processes_given || group.processes > 1,
    };
    // Python that cannot start (a python-home of another version, say) is reported, and
    // the process stays up answering 500, as embedded mode does: exiting would leave the
    // group's requests waiting in its socket's backlog for socket-timeout.
    let runtime = Runtime::start(group.python_home.as_deref(), traits).inspect_err(|e| {
        eprintln!(
            "rwsgi-app[{}] error: group {}: Python cannot start: {e}; every request is \
             answered 500",
            std::process::id(),
            group.name
        )
    });
    install_signal_handlers();
    let mut group = group.clone();
    for app in &mut group.apps {
        let mut path = group.python_path.clone();
        path.append(&mut app.python_path);
        app.python_path = path;
        let Ok(runtime) = &runtime else { continue };
        match runtime.preload(app) {
            Ok(()) => {}
            // An import script (WSGIImportScript) need not define a callable.
            Err(e) if e.no_callable => eprintln!(
                "rwsgi-app[{}] info: group {}: imported {} (it defines no callable)",
                std::process::id(),
                group.name,
                app.describe()
            ),
            // The process stays up: requests for this app get a 500 with the reason
            // logged (and it is imported again on each), the group's other apps work.
            Err(e) => eprintln!(
                "rwsgi-app[{}] error: group {}: cannot load {}:\n{}",
                std::process::id(),
                group.name,
                app.describe(),
                e.traceback
            ),
        }
    }
    eprintln!(
        "rwsgi-app[{}] info: group {} serving {} app(s) with {} thread(s)",
        std::process::id(),
        group.name,
        group.apps.len(),
        group.threads
    );

    let lifecycle = Arc::new(Lifecycle::new(&group));
    let served = Arc::new(Served {
        runtime,
        group: group.clone(),
        secret,
        allowed_uids: config.allowed_uids.clone(),
    });
    let hand_off = Arc::new(HandOff::default());
    for i in 0..group.threads {
        let (served, lifecycle, hand_off) = (served.clone(), lifecycle.clone(), hand_off.clone());
        std::thread::Builder::new()
            .name(format!("rwsgi-app-{i}"))
            .spawn(move || serving_thread(&served, &lifecycle, &hand_off))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    {
        let (lifecycle, hand_off) = (lifecycle.clone(), hand_off.clone());
        std::thread::Builder::new()
            .name("rwsgi-accept".into())
            .spawn(move || accept_loop(&listener, &lifecycle, &hand_off))
            .map_err(|e| format!("cannot start the accepting thread: {e}"))?;
    }
    lifecycle.watch(served.runtime.as_ref().ok());
    Ok(())
}

fn read_config() -> Result<AppProcessConfig, String> {
    // SAFETY: the supervisor passed the configuration pipe as CONFIG_FD; this is its
    // only owner, and the File closes it once read.
    let mut pipe = unsafe { File::from_raw_fd(CONFIG_FD) };
    let mut text = String::new();
    pipe.read_to_string(&mut text)
        .map_err(|e| format!("cannot read the configuration from fd {CONFIG_FD}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("bad configuration from the supervisor: {e}"))
}

/// Connections accepted and not yet taken, and how many threads wait for one. Two
/// condition variables, so that each event wakes the one thread it is for: a connection
/// wakes one serving thread, a thread becoming idle wakes the accepting thread.
#[derive(Default)]
struct HandOff {
    state: Mutex<HandOffState>,
    /// A connection was queued (serving threads wait on it).
    queued: Condvar,
    /// A serving thread became idle (the accepting thread waits on it).
    freed: Condvar,
}

#[derive(Default)]
struct HandOffState {
    idle: usize,
    accepted: VecDeque<UnixStream>,
}

impl HandOff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandOffState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serving_thread(served: &Served, lifecycle: &Lifecycle, hand_off: &HandOff) {
    loop {
        let conn = {
            let mut state = hand_off.lock();
            state.idle += 1;
            hand_off.freed.notify_one();
            loop {
                if let Some(conn) = state.accepted.pop_front() {
                    break conn;
                }
                state = hand_off
                    .queued
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        serve(conn, served, lifecycle);
        lifecycle.connection_closed();
    }
}

fn accept_loop(listener: &UnixListener, lifecycle: &Lifecycle, hand_off: &HandOff) {
    while lifecycle.accepting() {
        // Wait for a free thread before taking a connection off the backlog.
        {
            let mut state = hand_off.lock();
            while state.idle == 0 && lifecycle.accepting() {
                state = hand_off
                    .freed
                    .wait_timeout(state, Duration::from_millis(250))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if !wait_readable(listener, 250) || !lifecycle.accepting() {
            continue;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if conn.set_nonblocking(false).is_err() {
                    continue;
                }
                lifecycle.connection_accepted();
                let mut state = hand_off.lock();
                state.idle -= 1;
                state.accepted.push_back(conn);
                hand_off.queued.notify_one();
            }
            // Another process of the group took it, or the peer left: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("rwsgi-app[{}] warn: accept: {e}", std::process::id());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    lifecycle.accept_stopped();
    // The supervisor starts this process's replacement when it sees this thread renamed
    // (supervisor/readiness.rs); the thread stays until the process exits.
    let name = c"rwsgi-draining";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `name`
    // is, and renames the calling thread only.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    loop {
        std::thread::park();
    }
}

/// True when a connection waits on `listener` (within `ms` milliseconds).
fn wait_readable(listener: &UnixListener, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}
