//! Who writes a request's response: a Python thread of this worker (embedded mode, through
//! the request's exchange) or an app process of a daemon group (through its socket). The
//! loop-side output code (output.rs) is the same for both; this is the little it asks of
//! either: take acknowledgements of bytes sent, learn that the client has gone, and let go
//! of the request when it ends. Every method runs on the event-loop thread.

use crate::daemon_client::AppConn;
use crate::exchange::LoopSide;
use rwsgi::LogLabel;

pub enum Producer {
    /// Embedded: a pool thread runs the app (exchange.rs, thread.rs).
    Thread(LoopSide),
    /// Daemon mode: an app process answers over a unix socket (daemon_client.rs).
    Daemon(Box<AppConn>),
}

impl Producer {
    /// `bytes` (counted with exchange::cost) have left nginx for the client.
    pub fn acknowledge(&mut self, bytes: usize) {
        match self {
            Producer::Thread(side) => side.acknowledge(bytes),
            Producer::Daemon(conn) => conn.acknowledge(bytes),
        }
    }

    /// The client is gone: the producer stops (a thread at its next write; an app
    /// process's connection is closed once the loop comes back to it).
    pub fn mark_gone(&mut self) {
        match self {
            Producer::Thread(side) => side.mark_gone(),
            Producer::Daemon(conn) => conn.mark_gone(),
        }
    }

    /// The loop is done with the request. Returns the pool thread still running its
    /// Python work, if one is (an app process's connection is simply closed).
    pub fn finish(&mut self) -> Option<u64> {
        match self {
            Producer::Thread(side) => side.finish(),
            Producer::Daemon(conn) => {
                conn.close();
                None
            }
        }
    }

    /// The pool thread running the request's Python work now, if one is.
    pub fn running_thread(&self) -> Option<u64> {
        match self {
            Producer::Thread(side) => side.running_thread(),
            Producer::Daemon(_) => None,
        }
    }

    /// The label of the request's log lines (log.rs).
    pub fn label(&self) -> &LogLabel {
        match self {
            Producer::Thread(side) => side.label(),
            Producer::Daemon(conn) => conn.label(),
        }
    }

    /// The daemon group answering the request, if it runs in one.
    pub fn group(&self) -> Option<&str> {
        match self {
            Producer::Thread(_) => None,
            Producer::Daemon(conn) => Some(conn.group()),
        }
    }
}
