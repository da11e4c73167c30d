//! The control protocol between a server's master process and the supervisor of its
//! daemon process groups (docs/daemon-internals.md, "Control protocol"), and the master's
//! side of it: [`ensure`] reaches the supervisor of a socket directory, starting one if
//! none answers, applies the configured groups and keeps the connection open as the
//! server's lifeline.
//!
//! Messages are one JSON object per line. The control socket is root's alone (0600 in a
//! root-owned directory): whoever can talk on it can run processes as any user.

use super::group::GroupSpec;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The control socket's name inside the supervisor's directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// How long a master waits for a supervisor it started to answer.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long a master waits for a reply (starting a group's processes is not waited for).
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// What the module sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Run exactly these groups (see the module doc of the supervisor for the diff).
    Apply(Apply),
    /// The groups and their processes, for the status page.
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Apply {
    /// The master's pid and server ("nginx", "apache"), for the supervisor's log.
    pub owner_pid: u32,
    pub server: String,
    /// The server's worker account: the only non-root peer an app process serves, and
    /// the group that may connect to the group sockets. Groups without `user=` run as it.
    pub worker_uid: u32,
    pub worker_gid: u32,
    pub groups: Vec<GroupSpec>,
}

/// Where a server worker reaches a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub socket: PathBuf,
    /// The group's secret, 64 hex digits (see [`Endpoint::secret_bytes`]).
    pub secret: String,
}

impl Endpoint {
    pub fn secret_bytes(&self) -> Option<[u8; super::SECRET_LEN]> {
        decode_hex(&self.secret)
    }
}

/// One process of a group, for the status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Seconds since the process started.
    pub age: u64,
    /// True while it finishes its requests before it exits (recycled or group changed).
    pub draining: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub processes: Vec<ProcessInfo>,
    /// Processes started again after one exited (crash or recycle).
    pub restarts: u64,
}

/// What the supervisor answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    Applied { groups: Vec<Endpoint> },
    Status { groups: Vec<GroupStatus> },
    Error { error: String },
}

/// Writes one message as a JSON line.
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Reads one JSON-line message; Ok(None) at end of stream. Lines over 1 MiB are refused.
pub fn read_message<T: for<'de> Deserialize<'de>>(
    r: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(r, 1 << 20).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control message too long or cut short",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The master's open control connections, one per supervisor directory: each is that
/// supervisor's lifeline (it stops its groups when every lifeline has closed).
static LIFELINES: Mutex<Vec<(PathBuf, UnixStream)>> = Mutex::new(Vec::new());

/// In the master, as root: makes the supervisor of `dir` run `apply`'s groups, starting
/// it from `program` if none answers, and returns each group's endpoint. Call again on
/// every reload with the full set of groups (an empty set stops them all).
pub fn ensure(dir: &Path, program: &Path, apply: &Apply) -> Result<Vec<Endpoint>, String> {
    let mut lifelines = LIFELINES.lock().unwrap_or_else(|e| e.into_inner());
    let held = lifelines.iter().position(|(d, _)| d == dir);
    let mut conn = match held {
        Some(i) => lifelines.remove(i).1,
        None => connect_or_start(dir, program)?,
    };
    let reply = exchange(&mut conn, &ControlRequest::Apply(apply.clone()));
    let reply = match reply {
        Ok(r) => r,
        // The supervisor we held went away (killed by an operator, say): start anew once.
        Err(_) if held.is_some() => {
            conn = connect_or_start(dir, program)?;
            exchange(&mut conn, &ControlRequest::Apply(apply.clone()))?
        }
        Err(e) => return Err(e),
    };
    // The connection stays the lifeline after a refused apply too: the supervisor
    // changed nothing, and the groups of the previous apply keep serving this server's
    // workers (a reload with a bad group must not stop them all).
    lifelines.push((dir.to_path_buf(), conn));
    match reply {
        ControlReply::Applied { groups } => Ok(groups),
        ControlReply::Error { error } => Err(error),
        ControlReply::Status { .. } => Err("the supervisor answered out of turn".into()),
    }
}

/// In a process forked from the master (an nginx worker, an Apache child): closes this
/// process's copies of the lifelines, which must stay the master's alone (a worker runs
/// as the server's user and must not be able to command the supervisor).
pub fn close_lifelines_after_fork() {
    let mut lifelines = LIFELINES.lock().unwrap_or_else(|e| e.into_inner());
    lifelines.clear();
}

/// The descriptor of the lifeline to `dir`'s supervisor this process holds, if any. An
/// Apache parent unloads and reloads the module on every restart, and the module's
/// statics (this file's lifelines among them) start empty again: it keeps the descriptor
/// where httpd keeps things across restarts and hands it back with [`adopt_lifeline`].
pub fn lifeline_fd(dir: &Path) -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let lifelines = LIFELINES.lock().unwrap_or_else(|e| e.into_inner());
    lifelines
        .iter()
        .find(|(d, _)| d == dir)
        .map(|(_, conn)| conn.as_raw_fd())
}

/// Takes back a lifeline kept across a module reload (see [`lifeline_fd`]); does nothing
/// when one to `dir` is held already.
///
/// # Safety
/// `fd` is an open control connection to the supervisor of `dir` that nothing else in
/// this process owns or closes (from now on the lifelines own it).
pub unsafe fn adopt_lifeline(dir: &Path, fd: std::os::fd::RawFd) {
    use std::os::fd::FromRawFd;
    let mut lifelines = LIFELINES.lock().unwrap_or_else(|e| e.into_inner());
    if lifelines.iter().any(|(d, _)| d == dir) {
        return;
    }
    // SAFETY: the caller's contract: an open socket owned by nobody else.
    let conn = unsafe { UnixStream::from_raw_fd(fd) };
    lifelines.push((dir.to_path_buf(), conn));
}

/// Closes the lifeline to `dir`'s supervisor (the configuration no longer has groups
/// there): once no owner holds one, the supervisor stops its groups and exits.
pub fn release_lifeline(dir: &Path) {
    let mut lifelines = LIFELINES.lock().unwrap_or_else(|e| e.into_inner());
    lifelines.retain(|(d, _)| d != dir);
}

/// Asks the supervisor of `dir` for its groups' processes (a fresh connection, as root).
pub fn status(dir: &Path) -> Result<Vec<GroupStatus>, String> {
    let mut conn = UnixStream::connect(dir.join(CONTROL_SOCKET)).map_err(|e| {
        format!(
            "cannot reach the rwsgi supervisor in {}: {e}",
            dir.display()
        )
    })?;
    match exchange(&mut conn, &ControlRequest::Status)? {
        ControlReply::Status { groups } => Ok(groups),
        ControlReply::Error { error } => Err(error),
        ControlReply::Applied { .. } => Err("the supervisor answered out of turn".into()),
    }
}

fn exchange(conn: &mut UnixStream, req: &ControlRequest) -> Result<ControlReply, String> {
    let fail = |e: std::io::Error| format!("rwsgi supervisor: {e}");
    conn.set_read_timeout(Some(REPLY_WAIT)).map_err(fail)?;
    write_message(conn, req).map_err(fail)?;
    let mut reader = BufReader::new(conn.try_clone().map_err(fail)?);
    read_message(&mut reader)
        .map_err(fail)?
        .ok_or_else(|| "the rwsgi supervisor closed the connection".to_string())
}

fn connect_or_start(dir: &Path, program: &Path) -> Result<UnixStream, String> {
    let socket = dir.join(CONTROL_SOCKET);
    if let Ok(conn) = UnixStream::connect(&socket) {
        return Ok(conn);
    }
    super::launch::start_supervisor(dir, program)?;
    let deadline = Instant::now() + START_WAIT;
    loop {
        match UnixStream::connect(&socket) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the rwsgi supervisor ({}) did not open {} within {} s: {e} \
                     (its own errors are in this error log)",
                    program.display(),
                    socket.display(),
                    START_WAIT.as_secs()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Hex digits for a secret (the supervisor's side of [`Endpoint::secret_bytes`]).
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
