//! The request body nginx has read, as the engine's [`BodyReader`]. nginx keeps small
//! bodies in memory buffers and spills large ones to a temp file; both are captured on
//! the event loop (memory copied, the file's descriptor duplicated) so the Python thread
//! never touches nginx structures.

use ngx::ffi::*;
use rwsgi::BodyReader;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

enum Segment {
    Memory(Vec<u8>, usize),
    File { file: File, pos: u64, end: u64 },
}

pub struct NginxBody {
    segments: VecDeque<Segment>,
}

impl NginxBody {
    /// Captures `r`'s body; returns it and its length.
    ///
    /// SAFETY: r is a live request whose body nginx has finished reading (we are in the
    /// body post-handler, on the event loop thread).
    pub unsafe fn capture(r: *mut ngx_http_request_t) -> io::Result<(NginxBody, u64)> {
        let mut segments = VecDeque::new();
        let mut total = 0u64;
        let rb = (*r).request_body;
        let mut cl = if rb.is_null() {
            std::ptr::null_mut()
        } else {
            (*rb).bufs
        };
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && !(*b).file.is_null() {
                let (pos, end) = ((*b).file_pos as u64, (*b).file_last as u64);
                if end > pos {
                    let dup = libc::fcntl((*(*b).file).fd, libc::F_DUPFD_CLOEXEC, 0);
                    if dup < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: dup is a fresh descriptor owned by nothing else.
                    let file = File::from_raw_fd(dup);
                    segments.push_back(Segment::File { file, pos, end });
                    total += end - pos;
                }
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                let len = (*b).last.offset_from((*b).pos) as usize;
                let data = std::slice::from_raw_parts((*b).pos, len).to_vec();
                segments.push_back(Segment::Memory(data, 0));
                total += len as u64;
            }
            cl = (*cl).next;
        }
        Ok((NginxBody { segments }, total))
    }
}

impl BodyReader for NginxBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.front_mut() {
            let n = match segment {
                Segment::Memory(data, pos) => {
                    let n = buf.len().min(data.len() - *pos);
                    buf[..n].copy_from_slice(&data[*pos..*pos + n]);
                    *pos += n;
                    n
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
                    n
                }
            };
            let done = match segment {
                Segment::Memory(data, pos) => *pos == data.len(),
                Segment::File { pos, end, .. } => pos == end,
            };
            if done {
                self.segments.pop_front();
            }
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
        }
        Ok(0)
    }
}
