//! What the supervisor hands an app process it starts: one JSON object on fd 4 (see
//! docs/daemon-internals.md, "App process start-up"). A pipe, not the command line or the
//! environment, because the group's secret must not show in `ps` or /proc/PID/environ.

use rwsgi::daemon::GroupSpec;
use serde::{Deserialize, Serialize};

/// The listening socket's descriptor in an app process.
pub const LISTEN_FD: i32 = 3;
/// The descriptor the configuration is read from.
pub const CONFIG_FD: i32 = 4;

/// Exit status of an app process that stopped on purpose (recycled, drained or told to
/// stop): the supervisor starts the next one at once. Any other exit is a crash.
pub const EXIT_RECYCLED: i32 = 0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppProcessConfig {
    pub group: GroupSpec,
    /// The group's secret, hex (rwsgi::daemon::control::encode_hex).
    pub secret: String,
    /// Peers (SO_PEERCRED uids) whose requests are served: the server's worker user and
    /// root. Anyone else who reaches the socket is refused.
    pub allowed_uids: Vec<u32>,
    /// "nginx" or "apache", for the environ's wsgi.multiprocess and the logs.
    pub server: String,
}
