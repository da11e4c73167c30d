//! When an app process stops taking requests, and what happens to requests that run too
//! long. The main thread runs [`Lifecycle::watch`] once a second:
//!
//! - recycling: maximum-requests, restart-interval, inactivity-timeout, a script file
//!   whose modification time changed, cpu-time-limit (SIGXCPU), and SIGTERM from the
//!   supervisor (group changed or stopping). Recycling means: stop accepting (what waits
//!   in the socket's backlog goes to the group's other or next process), let the requests
//!   in flight finish for up to graceful-timeout, exit 0.
//! - request-timeout: a request past it gets its Python stack logged, a 504 (or its
//!   response cut), and the process recycles, since the thread may never come back.

use crate::socket_sink::SocketSink;
use rwsgi::daemon::GroupSpec;
use rwsgi::{AppSpec, AppTarget, Runtime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Set by the SIGTERM handler: the supervisor wants this process to finish and exit.
static TERM: AtomicBool = AtomicBool::new(false);
/// Set by the SIGXCPU handler: cpu-time-limit reached.
static CPU_LIMIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

extern "C" fn on_xcpu(_: libc::c_int) {
    CPU_LIMIT.store(true, Ordering::SeqCst);
}

/// Installs the handlers above (after Python started: it installs none of its own here).
pub fn install_signal_handlers() {
    for (signal, handler) in [
        (libc::SIGTERM, on_term as extern "C" fn(libc::c_int)),
        (libc::SIGXCPU, on_xcpu),
    ] {
        // SAFETY: the handlers only store to atomics, which is async-signal-safe;
        // sigaction is given a zeroed (empty mask, no flags) struct with the handler set.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: ignoring SIGHUP and SIGINT has no preconditions; the supervisor decides when
    // this process stops.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// A request being served, for request-timeout.
struct InFlight {
    started: Instant,
    /// Its thread's `threading.get_ident()`.
    thread: u64,
    sink: Arc<SocketSink>,
    what: String,
    timed_out: bool,
}

pub struct Lifecycle {
    group: GroupSpec,
    started: Instant,
    stopping: AtomicBool,
    /// Set by the accepting thread once it has left its loop: no connection can be
    /// taken off the backlog any more.
    accept_stopped: AtomicBool,
    /// Connections accepted and not yet closed, counted from `accept`: a connection
    /// whose REQUEST is not read yet is not in `in_flight`, and exiting then would reset
    /// it (the server worker would see a failed request).
    connections: AtomicUsize,
    /// Connections taken, for maximum-requests.
    served: AtomicU64,
    last_request: Mutex<Instant>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_id: AtomicU64,
    /// Each script app's modification time when the process started.
    scripts: Vec<(std::path::PathBuf, Option<SystemTime>)>,
}

impl Lifecycle {
    pub fn new(group: &GroupSpec) -> Lifecycle {
        let scripts = group
            .apps
            .iter()
            .filter_map(|a: &AppSpec| match &a.target {
                AppTarget::Script(p) => Some((p.clone(), mtime(p))),
                AppTarget::Module(_) => None,
            })
            .collect();
        Lifecycle {
            group: group.clone(),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            accept_stopped: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_request: Mutex::new(Instant::now()),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            scripts,
        }
    }

    /// False once the process recycles: take no more connections.
    pub fn accepting(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
    }

    /// The accepting thread took a connection off the backlog. maximum-requests counts
    /// here (each connection carries one request), before the next accept: counted when
    /// a request finishes, a process would take more while its last ones are finishing.
    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let taken = self.served.fetch_add(1, Ordering::SeqCst) + 1;
        let max = self.group.maximum_requests;
        if max > 0 && taken >= max {
            self.stop(&format!("took maximum-requests={max}"));
        }
    }

    /// A serving thread is done with a connection.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    /// The accepting thread left its loop.
    pub fn accept_stopped(&self) {
        self.accept_stopped.store(true, Ordering::SeqCst);
    }

    fn stop(&self, why: &str) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            eprintln!(
                "rwsgi-app[{}] info: group {}: {why}; finishing the requests in flight",
                std::process::id(),
                self.group.name
            );
        }
    }

    /// Registers a request; the returned id is for [`Lifecycle::finish`].
    pub fn begin(&self, sink: Arc<SocketSink>, what: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() } as u64;
        let entry = InFlight {
            started: Instant::now(),
            thread,
            sink,
            what,
            timed_out: false,
        };
        self.lock_in_flight().insert(id, entry);
        id
    }

    pub fn finish(&self, id: u64) {
        self.lock_in_flight().remove(&id);
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The main thread's loop: returns when the process should exit (recycled and drained,
    /// or out of graceful time).
    pub fn watch(&self, runtime: &Runtime) {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            self.check_reasons_to_stop();
            self.check_request_timeout(runtime);
            if self.accepting() {
                continue;
            }
            let deadline = *drain_deadline.get_or_insert_with(|| {
                Instant::now() + Duration::from_secs(self.group.graceful_timeout)
            });
            let left = self
                .lock_in_flight()
                .len()
                .max(self.connections.load(Ordering::SeqCst));
            if left == 0 && self.accept_stopped.load(Ordering::SeqCst) {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "rwsgi-app[{}] warn: group {}: exiting with {left} request(s) still running \
                     after graceful-timeout={}",
                    std::process::id(),
                    self.group.name,
                    self.group.graceful_timeout
                );
                return;
            }
        }
    }

    fn check_reasons_to_stop(&self) {
        let g = &self.group;
        if TERM.load(Ordering::SeqCst) {
            self.stop("asked to stop by the supervisor");
        }
        if CPU_LIMIT.load(Ordering::SeqCst) {
            self.stop(&format!(
                "reached cpu-time-limit={}",
                g.cpu_time_limit.unwrap_or(0)
            ));
        }
        if g.restart_interval > 0 && self.started.elapsed().as_secs() >= g.restart_interval {
            self.stop(&format!("restart-interval={} passed", g.restart_interval));
        }
        if g.inactivity_timeout > 0 && self.lock_in_flight().is_empty() {
            let idle = self
                .last_request
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if idle.as_secs() >= g.inactivity_timeout {
                self.stop(&format!(
                    "idle for inactivity-timeout={}",
                    g.inactivity_timeout
                ));
            }
        }
        for (path, at_start) in &self.scripts {
            if mtime(path) != *at_start {
                self.stop(&format!("{} changed", path.display()));
            }
        }
    }

    fn check_request_timeout(&self, runtime: &Runtime) {
        let limit = self.group.request_timeout;
        if limit == 0 {
            return;
        }
        let late: Vec<(u64, String, Arc<SocketSink>, Duration)> = {
            let mut in_flight = self.lock_in_flight();
            in_flight
                .values_mut()
                .filter(|r| !r.timed_out && r.started.elapsed().as_secs() >= limit)
                .map(|r| {
                    r.timed_out = true;
                    (
                        r.thread,
                        r.what.clone(),
                        r.sink.clone(),
                        r.started.elapsed(),
                    )
                })
                .collect()
        };
        for (thread, what, sink, age) in late {
            let stack = match runtime.thread_stack(thread) {
                Ok(Some(s)) => s,
                Ok(None) => "(the thread runs no Python code)".into(),
                Err(e) => format!("(stack unavailable: {e})"),
            };
            let message = format!(
                "request-timeout={limit}: {what} has run {:.1} s; answering 504 and recycling \
                 the process. Its Python stack:\n{stack}",
                age.as_secs_f64()
            );
            rwsgi::ResponseSink::log(&*sink, rwsgi::LogLevel::Error, &message);
            eprintln!(
                "rwsgi-app[{}] error: group {}: {message}",
                std::process::id(),
                self.group.name
            );
            sink.time_out();
            self.stop("a request passed request-timeout");
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
