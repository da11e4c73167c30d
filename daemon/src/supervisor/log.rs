//! The supervisor's log lines: `rwsgi-supervisor[PID] LEVEL: message` on stderr, which is
//! the server's error log (or the journal under systemd). Each line is one write, so the
//! lines of the supervisor and of its app processes, which share that stderr, never
//! interleave mid-line.

use std::io::Write;

#[derive(Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

pub fn write(level: Level, args: std::fmt::Arguments) {
    let level = match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    };
    let line = format!("rwsgi-supervisor[{}] {level}: {args}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

macro_rules! info {
    ($($arg:tt)*) => {
        $crate::supervisor::log::write($crate::supervisor::log::Level::Info, format_args!($($arg)*))
    };
}
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::supervisor::log::write($crate::supervisor::log::Level::Warn, format_args!($($arg)*))
    };
}
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::supervisor::log::write($crate::supervisor::log::Level::Error, format_args!($($arg)*))
    };
}
pub(crate) use {error, info, warning};
