//! What daemon mode shares between the server modules, the supervisor and the app
//! processes: the group options as configured (group.rs) and the accounts they name
//! (accounts.rs), the control protocol between a server's master and the supervisor
//! (control.rs, launch.rs), the wire protocol of a connection to an app process
//! (frame.rs, messages.rs, fd_passing.rs), where that socket is (socket_path.rs) and who
//! is at the other end of one (peer.rs).
//! None of it runs Python. See docs/daemon-internals.md for the whole design.

pub mod accounts;
pub mod control;
pub mod fd_passing;
pub mod frame;
pub mod group;
pub mod launch;
pub mod leftover_logs;
pub mod messages;
pub mod peer;
pub mod socket_path;

#[cfg(test)]
mod proptests;

pub use frame::{read_frame, Frame, FrameBuffer, WireError, DATA_FRAME, MAX_FRAME};
pub use group::GroupSpec;
pub use messages::{encode_event, AppRef, FromApp, RequestFrame, ToApp, SECRET_LEN};
