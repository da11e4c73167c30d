//! The groups that run and their processes: applying a new set (the diff), what to do
//! when a process exits, and the timers (restarts due, old processes to stop or kill).
//!
//! - A group whose spec (and server account) did not change keeps its processes.
//! - A changed group keeps its socket and secret; new processes start at once, and the
//!   old ones are told to stop (SIGTERM: stop accepting, finish what they accepted) once
//!   the new ones serve (readiness.rs), or after [`READY_WAIT`]. They are killed after
//!   graceful-timeout + shutdown-timeout.
//! - A removed group's socket is unlinked at once (a request for it fails fast instead of
//!   waiting in a backlog no one accepts from) and its processes drain the same way.
//! - Exit 0 (recycled): a new process at once. Anything else: restarted with backoff.

use super::accounts::{self, Account};
use super::backoff::Backoff;
use super::log::{error, info, warning};
use super::spawn::{self, Plan, CANNOT_START};
use super::{readiness, sockets, sys};
use crate::app_config::AppProcessConfig;
use rwsgi::daemon::control::{encode_hex, Apply, Endpoint, GroupStatus, ProcessInfo};
use rwsgi::daemon::group::check_group_name;
use rwsgi::daemon::{GroupSpec, SECRET_LEN};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a changed group's old processes keep serving while the new ones start.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often readiness is looked at while old processes wait for it.
const READY_POLL: Duration = Duration::from_millis(50);

/// Who a group's processes serve: changes here are changes of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    worker_uid: u32,
    worker_gid: u32,
    server: String,
}

struct Proc {
    pid: i32,
    started: Instant,
}

struct Group {
    spec: GroupSpec,
    served: Served,
    account: Account,
    socket: PathBuf,
    listener: UnixListener,
    secret: [u8; SECRET_LEN],
    plan: Plan,
    procs: Vec<Proc>,
    /// When the processes that exited are due to start again.
    due: Vec<Instant>,
    backoff: Backoff,
    restarts: u64,
}

enum Retire {
    /// Still serving until the group's new processes do.
    AwaitReplacement {
        until: Instant,
    },
    /// Told to stop; killed at `kill_at` if still there.
    Stopping {
        kill_at: Instant,
    },
    Killed,
}

/// A process of an old generation of a group (changed, removed, or everything stopping).
struct Retiring {
    pid: i32,
    group: String,
    started: Instant,
    graceful: Duration,
    shutdown: Duration,
    state: Retire,
}

pub struct Groups {
    dir: PathBuf,
    exe: PathBuf,
    active: BTreeMap<String, Group>,
    retiring: Vec<Retiring>,
}

/// One group of an apply, checked and ready to run.
struct Prepared {
    spec: GroupSpec,
    served: Served,
    account: Account,
    socket: PathBuf,
}

impl Groups {
    pub fn new(dir: &Path, exe: &Path) -> Groups {
        Groups {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            active: BTreeMap::new(),
            retiring: Vec::new(),
        }
    }

    /// Everything about `apply` that can be refused, without changing anything.
    pub fn check(&self, apply: &Apply) -> Result<(), String> {
        self.prepare(apply).map(|_| ())
    }

    fn prepare(&self, apply: &Apply) -> Result<Vec<Prepared>, String> {
        let mut names = HashSet::new();
        let served = Served {
            worker_uid: apply.worker_uid,
            worker_gid: apply.worker_gid,
            server: apply.server.clone(),
        };
        apply
            .groups
            .iter()
            .map(|spec| {
                check_group_name(&spec.name)?;
                if !names.insert(spec.name.as_str()) {
                    return Err(format!("group {} is configured twice", spec.name));
                }
                if spec.processes == 0 || spec.threads == 0 {
                    return Err(format!(
                        "group {}: processes and threads must be at least 1",
                        spec.name
                    ));
                }
                let account = accounts::for_group(spec, apply.worker_uid, apply.worker_gid)?;
                let socket = self.dir.join(format!("{}.sock", spec.name));
                sockets::check_path(&socket).map_err(|e| format!("group {}: {e}", spec.name))?;
                Ok(Prepared {
                    spec: spec.clone(),
                    served: served.clone(),
                    account,
                    socket,
                })
            })
            .collect()
    }

    /// Makes exactly `apply`'s groups run (see the module doc); nothing changes if it is
    /// refused.
    pub fn apply(&mut self, apply: &Apply, now: Instant) -> Result<Vec<Endpoint>, String> {
        let prepared = self.prepare(apply)?;
        // New groups: secrets, plans and sockets first, undone if any fails.
        let mut fresh: BTreeMap<String, Group> = BTreeMap::new();
        let made = prepared
            .iter()
            .filter(|p| !self.active.contains_key(&p.spec.name))
            .try_for_each(|p| {
                let group = self.new_group(p)?;
                fresh.insert(p.spec.name.clone(), group);
                Ok::<(), String>(())
            });
        if let Err(e) = made {
            for group in fresh.values() {
                let _ = std::fs::remove_file(&group.socket);
            }
            return Err(e);
        }
        let mut changes: Vec<String> = Vec::new();
        let wanted: HashSet<&str> = prepared.iter().map(|p| p.spec.name.as_str()).collect();
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name, now);
            changes.push(format!("removed {name}"));
        }
        for p in prepared {
            let name = p.spec.name.clone();
            if let Some(mut group) = fresh.remove(&name) {
                changes.push(format!(
                    "started {name} ({} process(es) as {}:{})",
                    p.spec.processes, group.account.uid, group.account.gid
                ));
                for _ in 0..p.spec.processes {
                    group.start_one(now);
                }
                self.active.insert(name, group);
                continue;
            }
            let group = self.active.get(&name).expect("an active group");
            if group.spec == p.spec && group.served == p.served && group.account == p.account {
                changes.push(format!("kept {name} (unchanged)"));
                continue;
            }
            let what = changed_fields(group, &p);
            match self.replace(p, now) {
                Ok(()) => changes.push(format!("replacing {name} (changed: {what})")),
                Err(e) => {
                    // The socket could not be updated; the old processes keep serving.
                    error!("group {name}: {e}");
                    changes.push(format!("kept {name} (its change failed: {e})"));
                }
            }
        }
        info!(
            "apply from {} (pid {}): {}",
            apply.server,
            apply.owner_pid,
            if changes.is_empty() {
                "no groups".to_string()
            } else {
                changes.join(", ")
            }
        );
        Ok(self.endpoints())
    }

    fn new_group(&self, p: &Prepared) -> Result<Group, String> {
        let mut secret = [0u8; SECRET_LEN];
        sys::random(&mut secret)
            .map_err(|e| format!("group {}: no random secret: {e}", p.spec.name))?;
        let plan = self.plan(p, &secret)?;
        let listener = sockets::create(&p.socket, p.served.worker_gid, p.spec.listen_backlog)
            .map_err(|e| format!("group {}: {e}", p.spec.name))?;
        Ok(Group {
            spec: p.spec.clone(),
            served: p.served.clone(),
            account: p.account.clone(),
            socket: p.socket.clone(),
            listener,
            secret,
            plan,
            procs: Vec::new(),
            due: Vec::new(),
            backoff: Backoff::default(),
            restarts: 0,
        })
    }

    fn plan(&self, p: &Prepared, secret: &[u8; SECRET_LEN]) -> Result<Plan, String> {
        let config = AppProcessConfig {
            group: p.spec.clone(),
            secret: encode_hex(secret),
            allowed_uids: vec![0, p.served.worker_uid],
            server: p.served.server.clone(),
        };
        let json =
            serde_json::to_vec(&config).map_err(|e| format!("group {}: {e}", p.spec.name))?;
        Plan::new(&self.exe, &p.spec, &p.account, json)
    }

    /// A changed group: same socket and secret, new processes; the old ones retire.
    fn replace(&mut self, p: Prepared, now: Instant) -> Result<(), String> {
        let group = self.active.get(&p.spec.name).expect("an active group");
        let plan = self.plan(&p, &group.secret)?;
        let group = self.active.get_mut(&p.spec.name).expect("an active group");
        sockets::update(
            &group.listener,
            &group.socket,
            p.served.worker_gid,
            p.spec.listen_backlog,
        )?;
        let until = now + READY_WAIT;
        for proc in group.procs.drain(..) {
            self.retiring.push(Retiring {
                pid: proc.pid,
                group: group.spec.name.clone(),
                started: proc.started,
                graceful: Duration::from_secs(group.spec.graceful_timeout),
                shutdown: Duration::from_secs(group.spec.shutdown_timeout),
                state: Retire::AwaitReplacement { until },
            });
        }
        group.spec = p.spec;
        group.served = p.served;
        group.account = p.account;
        group.plan = plan;
        group.due.clear();
        group.backoff = Backoff::default();
        for _ in 0..group.spec.processes {
            group.start_one(now);
        }
        Ok(())
    }

    fn remove(&mut self, name: &str, now: Instant) {
        let Some(group) = self.active.remove(name) else {
            return;
        };
        let _ = std::fs::remove_file(&group.socket);
        for proc in &group.procs {
            self.retiring.push(Retiring {
                pid: proc.pid,
                group: name.to_string(),
                started: proc.started,
                graceful: Duration::from_secs(group.spec.graceful_timeout),
                shutdown: Duration::from_secs(group.spec.shutdown_timeout),
                state: Retire::AwaitReplacement { until: now },
            });
        }
        // The listener closes here; the processes keep their copies until they exit.
    }

    /// Stops everything: every socket goes, every process gets SIGTERM and is killed
    /// after its group's shutdown-timeout.
    pub fn stop_all(&mut self, now: Instant) {
        let names: Vec<String> = self.active.keys().cloned().collect();
        for name in names {
            self.remove(&name, now);
        }
        for r in &mut self.retiring {
            match r.state {
                Retire::AwaitReplacement { .. } => {
                    sys::kill(r.pid, libc::SIGTERM);
                    r.state = Retire::Stopping {
                        kill_at: now + r.shutdown,
                    };
                }
                Retire::Stopping { kill_at } => {
                    r.state = Retire::Stopping {
                        kill_at: kill_at.min(now + r.shutdown),
                    }
                }
                Retire::Killed => {}
            }
        }
    }

    /// True when no process is left (after [`Groups::stop_all`]).
    pub fn is_empty(&self) -> bool {
        self.retiring.is_empty() && self.active.values().all(|g| g.procs.is_empty())
    }

    /// A child was reaped with `status` (as from waitpid).
    pub fn on_exit(&mut self, pid: i32, status: i32, now: Instant) {
        if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
            let r = self.retiring.remove(i);
            info!(
                "group {}: app process {pid} (stopping) {} after {:.1} s",
                r.group,
                describe(status),
                r.started.elapsed().as_secs_f64()
            );
            return;
        }
        for group in self.active.values_mut() {
            let Some(i) = group.procs.iter().position(|p| p.pid == pid) else {
                continue;
            };
            let proc = group.procs.remove(i);
            let name = &group.spec.name;
            let lived = now.saturating_duration_since(proc.started);
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                info!("group {name}: app process {pid} exited (recycled) after {:.1} s; starting a new one", lived.as_secs_f64());
                group.due.push(now);
            } else {
                let delay = group.backoff.after_crash(lived);
                let why = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CANNOT_START {
                    " (it could not start: its reason is logged above)"
                } else {
                    ""
                };
                error!(
                    "group {name}: app process {pid} {}{why} (restarting in {} s)",
                    describe(status),
                    delay.as_secs()
                );
                group.due.push(now + delay);
            }
            return;
        }
    }

    /// Runs what is due: restarts, stopping old processes whose replacements serve,
    /// killing those past their time.
    pub fn tick(&mut self, now: Instant) {
        for group in self.active.values_mut() {
            let (due, later): (Vec<Instant>, Vec<Instant>) =
                group.due.iter().partition(|t| **t <= now);
            group.due = later;
            for _ in due {
                group.restarts += 1;
                group.start_one(now);
            }
        }
        for r in &mut self.retiring {
            match r.state {
                Retire::AwaitReplacement { until } => {
                    let serving = self.active.get(&r.group).is_some_and(Group::all_serving);
                    if serving || now >= until {
                        if !serving && self.active.contains_key(&r.group) {
                            warning!(
                                "group {}: its new processes do not serve after {} s; stopping the old process {} anyway",
                                r.group,
                                READY_WAIT.as_secs(),
                                r.pid
                            );
                        }
                        sys::kill(r.pid, libc::SIGTERM);
                        r.state = Retire::Stopping {
                            kill_at: now + r.graceful + r.shutdown,
                        };
                    }
                }
                Retire::Stopping { kill_at } if now >= kill_at => {
                    warning!(
                        "group {}: old app process {} did not stop in time: killing it",
                        r.group,
                        r.pid
                    );
                    sys::kill(r.pid, libc::SIGKILL);
                    r.state = Retire::Killed;
                }
                _ => {}
            }
        }
    }

    /// When [`Groups::tick`] has something to do next.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let dues = self.active.values().flat_map(|g| g.due.iter().copied());
        let retiring = self.retiring.iter().filter_map(|r| match r.state {
            Retire::AwaitReplacement { until } => Some(until.min(now + READY_POLL)),
            Retire::Stopping { kill_at } => Some(kill_at),
            Retire::Killed => None,
        });
        dues.chain(retiring).min()
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.active
            .values()
            .map(|g| Endpoint {
                name: g.spec.name.clone(),
                socket: g.socket.clone(),
                secret: encode_hex(&g.secret),
            })
            .collect()
    }

    pub fn status(&self, now: Instant) -> Vec<GroupStatus> {
        let info = |pid: i32, started: Instant, draining: bool| ProcessInfo {
            pid: pid as u32,
            age: now.saturating_duration_since(started).as_secs(),
            draining,
        };
        let mut out: BTreeMap<&str, GroupStatus> = BTreeMap::new();
        for g in self.active.values() {
            out.insert(
                &g.spec.name,
                GroupStatus {
                    name: g.spec.name.clone(),
                    processes: g
                        .procs
                        .iter()
                        .map(|p| info(p.pid, p.started, false))
                        .collect(),
                    restarts: g.restarts,
                },
            );
        }
        for r in &self.retiring {
            out.entry(&r.group)
                .or_insert_with(|| GroupStatus {
                    name: r.group.clone(),
                    processes: Vec::new(),
                    restarts: 0,
                })
                .processes
                .push(info(r.pid, r.started, true));
        }
        out.into_values().collect()
    }
}

impl Group {
    fn start_one(&mut self, now: Instant) {
        let name = &self.spec.name;
        match spawn::spawn(&self.plan, self.listener.as_raw_fd()) {
            Ok(pid) => {
                info!(
                    "group {name}: started app process {pid} as {} ({}:{})",
                    self.account.name, self.account.uid, self.account.gid
                );
                self.procs.push(Proc { pid, started: now });
            }
            Err(e) => {
                let delay = self.backoff.after_crash(Duration::ZERO);
                error!(
                    "group {name}: cannot start an app process: {e} (trying again in {} s)",
                    delay.as_secs()
                );
                self.due.push(now + delay);
            }
        }
    }

    /// All the processes the group should have run and accept connections.
    fn all_serving(&self) -> bool {
        self.procs.len() == self.spec.processes as usize
            && self.procs.iter().all(|p| readiness::is_serving(p.pid))
    }
}

/// "exited with status N" / "was killed by signal S".
fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let core = if libc::WCOREDUMP(status) {
            ", core dumped"
        } else {
            ""
        };
        format!("was killed by signal {}{core}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status}")
    }
}

/// The options that differ between a group as it runs and as applied, for the log.
fn changed_fields(old: &Group, new: &Prepared) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(&old.spec),
        serde_json::to_value(&new.spec),
    ) else {
        return "options".into();
    };
    let mut fields: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.replace('_', "-"))
        .collect();
    if old.served != new.served {
        fields.push("the server's account".into());
    }
    if old.account != new.account && fields.is_empty() {
        fields.push("the user's account".into());
    }
    if fields.is_empty() {
        "options".into()
    } else {
        fields.join(", ")
    }
}
