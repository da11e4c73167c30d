//! The request body nginx has read, as the engine's [`BodyReader`]. nginx keeps small
//! bodies in memory buffers of the request pool and spills large ones to a temp file.
//! Memory is read in place (no copy on the event loop): the pool lives until the loop
//! finishes the request, and every read runs only while it has not, with the loop kept
//! from finishing it meanwhile (ThreadSide::while_live) — the app may keep wsgi.input
//! after its request. A temp file is read through a
//! duplicate of its descriptor, which stays valid whatever nginx does.
//!
//! In daemon mode the same reader answers an app process's READ frames, on the event loop
//! itself (daemon_client.rs): there is no thread side then, and the request is live
//! whenever the loop reads.

use crate::exchange::ThreadSide;
use ngx::ffi::*;
use rwsgi::BodyReader;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

enum Segment {
    /// Bytes in the request pool: start, length, read position.
    Memory(*const u8, usize, usize),
    File {
        file: File,
        pos: u64,
        end: u64,
    },
}

pub struct NginxBody {
    segments: VecDeque<Segment>,
    remaining: u64,
    /// The Python thread's side of the request; None when read on the event loop.
    side: Option<ThreadSide>,
}

// SAFETY: the raw pointers point into the request pool, which is only freed after the
// loop has finished the request; reads off the loop run under ThreadSide::while_live,
// which fails once it has and keeps it from finishing meanwhile (a body without a side is
// only read on the loop, while its request is live).
unsafe impl Send for NginxBody {}

impl NginxBody {
    /// Captures `r`'s body; returns it and its length.
    ///
    /// # Safety
    /// r is a live request whose body nginx has finished reading (we are in the body
    /// post-handler, on the event loop thread), and `side` belongs to it. Without a side,
    /// the body is read only on the event loop and only while r is live.
    pub unsafe fn capture(
        r: *mut ngx_http_request_t,
        side: Option<ThreadSide>,
    ) -> io::Result<(NginxBody, u64)> {
        let mut segments = VecDeque::new();
        let mut total = 0u64;
        // SAFETY: r is live (caller); its request_body, if any, lives in its pool.
        let mut cl = unsafe {
            let rb = (*r).request_body;
            if rb.is_null() {
                std::ptr::null_mut()
            } else {
                (*rb).bufs
            }
        };
        while !cl.is_null() {
            // SAFETY: cl is a link of the body's chain, which nginx built in r's pool with
            // a live buffer in each link.
            let (b, next) = unsafe { (&*(*cl).buf, (*cl).next) };
            if b.in_file() != 0 && !b.file.is_null() {
                let (pos, end) = (b.file_pos as u64, b.file_last as u64);
                if end > pos {
                    // SAFETY: b.file is nginx's live ngx_file_t of the body's temp file;
                    // duplicating its descriptor leaves it untouched.
                    let dup = unsafe { libc::fcntl((*b.file).fd, libc::F_DUPFD_CLOEXEC, 0) };
                    if dup < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: dup is a fresh descriptor owned by nothing else.
                    let file = unsafe { File::from_raw_fd(dup) };
                    segments.push_back(Segment::File { file, pos, end });
                    total += end - pos;
                }
            } else if !b.pos.is_null() && b.last > b.pos {
                // SAFETY: pos..last lie in one allocation, the buffer's memory.
                let len = unsafe { b.last.offset_from(b.pos) } as usize;
                segments.push_back(Segment::Memory(b.pos, len, 0));
                total += len as u64;
            }
            cl = next;
        }
        let body = NginxBody {
            segments,
            remaining: total,
            side,
        };
        Ok((body, total))
    }

    fn read_segment(
        segment: &mut Segment,
        buf: &mut [u8],
        side: Option<&ThreadSide>,
    ) -> io::Result<(usize, bool)> {
        match segment {
            Segment::Memory(start, len, pos) => {
                let n = buf.len().min(*len - *pos);
                let mut copy = || {
                    // SAFETY: start..start+len is a body buffer in the request pool, alive
                    // while the request is not finished: while_live holds the loop off, or
                    // this runs on the loop with the request live (capture's contract).
                    let src = unsafe { std::slice::from_raw_parts(start.add(*pos), n) };
                    buf[..n].copy_from_slice(src);
                };
                match side {
                    Some(side) => side
                        .while_live(copy)
                        .ok_or_else(|| io::Error::other("the request is over; its body is gone"))?,
                    None => copy(),
                }
                *pos += n;
                Ok((n, *pos == *len))
            }
            Segment::File { file, pos, end } => {
                let want = buf.len().min((*end - *pos) as usize);
                let n = file.read_at(&mut buf[..want], *pos)?;
                if n == 0 && want > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "request body temp file is short",
                    ));
                }
                *pos += n as u64;
                Ok((n, *pos == *end))
            }
        }
    }
}

impl BodyReader for NginxBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.front_mut() {
            let (n, done) = Self::read_segment(segment, buf, self.side.as_ref())?;
            if done {
                self.segments.pop_front();
            }
            self.remaining -= n as u64;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
        }
        Ok(0)
    }

    fn remaining(&self) -> Option<u64> {
        Some(self.remaining)
    }
}
