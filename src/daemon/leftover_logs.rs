//! What a server worker does with an app connection it gives up on (its client went
//! away): the app's log lines already on their way must still reach the error log. A
//! plain close would drop everything unread in the socket; instead the worker shuts its
//! reading side (the app's later writes fail at once, so its sink sends the lines that
//! follow to stderr), reads what arrived before that without waiting, and keeps the LOG
//! frames, discarding the response.

use super::fd_passing::recv_with_files;
use super::{FrameBuffer, FromApp};
use crate::LogLevel;
use std::collections::VecDeque;
use std::os::fd::RawFd;

/// The most bytes read back: a socket buffer's worth, whatever the app had queued.
const MAX_DRAIN: usize = 16 << 20;

/// Shuts down reading on `sock`, then returns the log lines among the frames left in
/// `frames` and in the socket. Never waits.
pub fn leftover_logs(sock: RawFd, frames: &mut FrameBuffer) -> Vec<(LogLevel, String)> {
    // SAFETY: shutdown on a descriptor the caller owns and keeps open for this call.
    unsafe { libc::shutdown(sock, libc::SHUT_RD) };
    let mut files = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = Vec::new();
    let mut read = 0;
    loop {
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(FromApp::Log(level, message)) = FromApp::decode(&frame, &mut files) {
                        lines.push((level, message));
                    }
                    files.clear();
                }
                Ok(None) => break,
                Err(_) => return lines,
            }
        }
        if read >= MAX_DRAIN {
            return lines;
        }
        match recv_with_files(sock, &mut buf, &mut files, libc::MSG_DONTWAIT) {
            Ok(n) if n > 0 => {
                read += n;
                frames.extend(&buf[..n]);
            }
            _ => return lines,
        }
    }
}
