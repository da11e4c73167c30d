//! A server master's side of the control protocol against the real supervisor:
//! `rwsgi::daemon::control::ensure` starts `rwsgi-daemon supervise --detach` (as the
//! modules do from their master process), applies groups, keeps its lifeline after a
//! refused apply, and the supervisor stops once that lifeline closes. Runs as root, as
//! the supervisor must.

use rwsgi::daemon::control::{close_lifelines_after_fork, ensure, status, Apply};
use rwsgi::daemon::GroupSpec;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apply(groups: Vec<GroupSpec>) -> Apply {
    Apply {
        owner_pid: std::process::id(),
        server: "test".into(),
        worker_uid: 33,
        worker_gid: 33,
        groups,
    }
}

fn group(user: &str) -> GroupSpec {
    let mut g = GroupSpec::new("ensured");
    g.user = Some(user.into());
    g.home = Some("/tmp".into());
    g
}

#[test]
fn ensure_starts_adopts_and_keeps_the_lifeline_of_a_supervisor() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test runs the supervisor: run it as root");
    let program = PathBuf::from(env!("CARGO_BIN_EXE_rwsgi-daemon"));
    let dir = PathBuf::from(format!("/tmp/rwsgi-sup-ensure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let endpoints = ensure(&dir, &program, &apply(vec![group("nobody")])).unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].socket, dir.join("ensured.sock"));
    assert!(endpoints[0].secret_bytes().is_some());
    let supervisor: u32 = std::fs::read_to_string(dir.join("supervisor.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids = || -> Vec<u32> {
        status(&dir).unwrap()[0]
            .processes
            .iter()
            .map(|p| p.pid)
            .collect()
    };
    let first = pids();
    assert_eq!(first.len(), 1);

    // A reload whose groups are refused changes nothing and keeps the lifeline.
    let err = ensure(&dir, &program, &apply(vec![group("rwsgi-no-such-user")])).unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(pids(), first);
    let again = ensure(&dir, &program, &apply(vec![group("nobody")])).unwrap();
    assert_eq!(again, endpoints);
    assert_eq!(pids(), first);

    // The master goes away: its lifeline closes, the supervisor stops its group and exits.
    close_lifelines_after_fork();
    let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid);
    wait_until("the supervisor exited", || gone(supervisor));
    wait_until("the app process exited", || gone(first[0]));
    assert!(!dir.join("control.sock").exists() && !dir.join("ensured.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}
