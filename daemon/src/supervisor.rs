//! `rwsgi-daemon supervise`: the supervisor of a directory's daemon process groups
//! (docs/daemon-internals.md). It runs as root, owns each group's listening socket,
//! starts the groups' app processes under their users, restarts and replaces them, and
//! answers the servers' masters on its control socket.
//!
//! One thread and one `poll()` loop (the signal self-pipe, the control socket and its
//! connections, the timers of groups.rs), so a forked child may do anything before exec.
//! It stops, with every group, when the last server that applied groups closes its
//! lifeline (unless `--standalone`), or on SIGTERM / SIGINT.

mod accounts;
mod backoff;
mod control_server;
mod groups;
mod log;
mod options;
mod readiness;
mod signals;
mod sockets;
mod spawn;
mod startup;
mod sys;

use control_server::ControlServer;
use groups::Groups;
use log::{error, info};
use options::Options;
use rwsgi::daemon::control::{Apply, ControlReply, ControlRequest, CONTROL_SOCKET};
use signals::Signals;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A supervisor started for a server that never applied anything (its master failed
/// right after starting it) leaves after this long.
const NO_OWNER_WAIT: Duration = Duration::from_secs(60);

pub fn main(args: &[String]) -> i32 {
    let options = match options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rwsgi-daemon supervise: {e}\n{}", options::USAGE);
            return 2;
        }
    };
    match run(options) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

fn run(options: Options) -> Result<(), String> {
    startup::require_root()?;
    startup::sanitize_descriptors();
    // SAFETY: changing the dispositions of SIGPIPE (a closed control connection or
    // configuration pipe is an error return, not death) and SIGHUP (no terminal decides
    // when this stops) has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find this program (/proc/self/exe): {e}"))?;
    let boot = options
        .config
        .as_deref()
        .map(read_boot_config)
        .transpose()?;
    let dir = startup::prepare_dir(&options.dir)?;
    // Sockets and files made from here on are root's alone until given other modes.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let control_path = dir.join(CONTROL_SOCKET);
    let Some(lock) = startup::take_lock(&dir, &control_path)? else {
        return Ok(());
    };
    let control = ControlServer::bind(&control_path)?;
    let mut groups = Groups::new(&dir, &exe);
    if let Some(boot) = &boot {
        groups.check(boot)?;
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    if options.detach {
        startup::detach()?;
    }
    startup::record_pid(&lock);
    let signals = Signals::install().map_err(|e| format!("cannot set up signals: {e}"))?;
    info!(
        "supervising {}{} (program {})",
        dir.display(),
        if options.standalone {
            " standalone"
        } else {
            ""
        },
        exe.display()
    );
    if let Some(boot) = &boot {
        groups.apply(boot, Instant::now())?;
    }
    let mut supervisor = Supervisor {
        standalone: options.standalone,
        dir,
        control,
        signals,
        groups,
        started: Instant::now(),
        had_owner: false,
        stopping: false,
    };
    supervisor.run();
    drop(lock);
    Ok(())
}

/// `--config FILE`: one Apply object, as a server would send it.
fn read_boot_config(path: &Path) -> Result<Apply, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: not an apply message: {e}", path.display()))
}

struct Supervisor {
    standalone: bool,
    dir: PathBuf,
    control: ControlServer,
    signals: Signals,
    groups: Groups,
    started: Instant,
    had_owner: bool,
    stopping: bool,
}

impl Supervisor {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            if self.stopping && self.groups.is_empty() {
                info!(
                    "stopped: every app process of {} has exited",
                    self.dir.display()
                );
                return;
            }
            fds.clear();
            fds.push(libc::pollfd {
                fd: self.signals.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            self.control.poll_fds(&mut fds);
            let timeout = self.timeout(Instant::now());
            // SAFETY: fds is a valid array of fds.len() pollfds for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                error!("poll: {}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(100));
            }
            let pending = self.signals.take();
            if pending.child {
                self.reap();
            }
            if let Some(signal) = pending.stop {
                self.stop(&format!("received signal {signal}"));
            }
            if !self.stopping && n > 0 {
                self.service_control(&fds[1..]);
            }
            if !self.stopping
                && !self.standalone
                && self.control.owners() == 0
                && !self.had_owner
                && self.started.elapsed() >= NO_OWNER_WAIT
            {
                self.stop(&format!(
                    "no server applied any group within {} s",
                    NO_OWNER_WAIT.as_secs()
                ));
            }
            self.groups.tick(Instant::now());
        }
    }

    fn service_control(&mut self, fds: &[libc::pollfd]) {
        let groups = &mut self.groups;
        let closed = self.control.service(fds, |request| match request {
            ControlRequest::Apply(apply) => match groups.apply(apply, Instant::now()) {
                Ok(endpoints) => ControlReply::Applied { groups: endpoints },
                Err(e) => {
                    error!(
                        "apply from {} (pid {}) refused: {e}",
                        apply.server, apply.owner_pid
                    );
                    ControlReply::Error { error: e }
                }
            },
            ControlRequest::Status => ControlReply::Status {
                groups: groups.status(Instant::now()),
            },
        });
        if self.control.owners() > 0 {
            self.had_owner = true;
        }
        for (server, pid) in closed.owners {
            info!("the lifeline of {server} (pid {pid}) closed");
        }
        if self.had_owner && self.control.owners() == 0 && !self.standalone {
            self.stop("the last server that applied groups is gone (its lifeline closed)");
        }
    }

    /// Milliseconds until the next timer, for poll (-1: none).
    fn timeout(&self, now: Instant) -> i32 {
        let mut next = self.groups.next_deadline(now);
        if !self.stopping && !self.standalone && !self.had_owner {
            let give_up = self.started + NO_OWNER_WAIT;
            next = Some(next.map_or(give_up, |n| n.min(give_up)));
        }
        match next {
            None => -1,
            Some(t) => {
                let wait = t.saturating_duration_since(now);
                // Round up, so the loop does not wake just before the deadline.
                (wait.as_micros().div_ceil(1000)).min(60_000) as i32
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: status is valid for the write; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.groups.on_exit(pid, status, Instant::now());
        }
    }

    fn stop(&mut self, why: &str) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        info!("stopping every group: {why}");
        self.control.shut();
        self.groups.stop_all(Instant::now());
    }
}
