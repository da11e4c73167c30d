//! What daemon mode shares between the server modules, the supervisor and the app
//! processes: the group options as configured (group.rs), the control protocol between a
//! server's master and the supervisor (control.rs, launch.rs), and the wire protocol of a
//! connection to an app process (frame.rs, messages.rs, fd_passing.rs). None of it runs
//! Python. See docs/daemon-internals.md for the whole design.

pub mod control;
pub mod fd_passing;
pub mod frame;
pub mod group;
pub mod launch;
pub mod leftover_logs;
pub mod messages;

#[cfg(test)]
mod proptests;

pub use frame::{read_frame, Frame, FrameBuffer, WireError, DATA_FRAME, MAX_FRAME};
pub use group::GroupSpec;
pub use messages::{encode_event, AppRef, FromApp, RequestFrame, ToApp, SECRET_LEN};
