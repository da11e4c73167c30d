//! Whether a new app process serves yet: when a group changes, its old processes are told
//! to stop only once the new ones accept connections, so requests never wait in the
//! socket's backlog for Python to start. An app process names its accepting thread
//! `rwsgi-accept` (app_process.rs) and starts it once its apps are imported; root can read
//! thread names in /proc, so this needs no message from the app process.

/// The accepting thread's name in app_process.rs.
const ACCEPT_THREAD: &str = "rwsgi-accept";

pub fn is_serving(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm"))
            .map(|name| name.trim_end() == ACCEPT_THREAD)
            .unwrap_or(false)
    })
}
