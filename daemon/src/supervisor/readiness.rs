//! Whether an app process accepts connections: when a group changes, its old processes are
//! told to stop only once the new ones accept, so requests never wait in the socket's
//! backlog for Python to start; and when a process stops accepting on its own (it recycles:
//! maximum-requests, a script changed, ...), its replacement starts at once instead of once
//! it has finished its requests, which for a slow download can take minutes while the
//! group's requests wait. An app process starts its accepting thread, named `rwsgi-accept`,
//! once its apps are imported, and renames it `rwsgi-draining` when it stops accepting
//! (app_process.rs); root can read thread names in /proc, so this needs no message from the
//! app process.

/// The accepting thread's names in app_process.rs.
pub const ACCEPTING: &str = "rwsgi-accept";
pub const DRAINING: &str = "rwsgi-draining";

/// The name of thread `tid` of `pid` (None once either is gone).
pub fn thread_name(pid: i32, tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_string())
}

/// `pid`'s accepting thread, once it runs: its id and its name (ACCEPTING or DRAINING).
pub fn accept_thread(pid: i32) -> Option<(i32, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let tid: i32 = task.file_name().to_str()?.parse().ok()?;
        let name = thread_name(pid, tid)?;
        (name == ACCEPTING || name == DRAINING).then_some((tid, name))
    })
}

pub fn is_serving(pid: i32) -> bool {
    accept_thread(pid).is_some_and(|(_, name)| name == ACCEPTING)
}
