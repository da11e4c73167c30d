//! The hand-off from Python threads to nginx's event loop: threads put a request's
//! exchange on a ready list and poke an eventfd; the loop, woken by the eventfd through
//! its normal event machinery, drains the list. One eventfd write per batch, not per
//! event, and no nginx call ever happens off the loop thread.

use crate::exchange::Ready;
use crate::{no_unwind, Site};
use ngx::ffi::*;
use std::sync::{Mutex, OnceLock};

pub struct Bridge {
    eventfd: i32,
    ready: Mutex<Vec<Ready>>,
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();

unsafe extern "C" {
    /// nginx's helper that registers a descriptor's read event with a handler (used for
    /// its own worker channel); exported by the nginx binary.
    fn ngx_add_channel_event(
        cycle: *mut ngx_cycle_t,
        fd: ngx_fd_t,
        event: ngx_int_t,
        handler: ngx_event_handler_pt,
    ) -> ngx_int_t;
}

/// nginx's NGX_READ_EVENT on Linux builds (EPOLLIN | EPOLLRDHUP); poll/select read it as POLLIN.
const NGX_READ_EVENT: ngx_int_t = 0x0001 | 0x2000;

/// Creates the eventfd and registers it with this worker's event loop.
///
/// # Safety
/// Called once, on the event-loop thread, from init_process, with nginx's live cycle.
pub unsafe fn start(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    // SAFETY: eventfd has no memory preconditions; the fd is ours.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: cycle is live and we are on its event loop (caller); nginx keeps a
    // connection for fd whose read event calls on_wakeup.
    let added = unsafe { ngx_add_channel_event(cycle, fd, NGX_READ_EVENT, Some(on_wakeup)) };
    if added != NGX_OK as ngx_int_t {
        // SAFETY: fd is ours and nothing else uses it.
        unsafe { libc::close(fd) };
        return Err("cannot add the completion eventfd to the event loop".into());
    }
    BRIDGE
        .set(Bridge {
            eventfd: fd,
            ready: Mutex::new(Vec::new()),
        })
        .map_err(|_| "bridge started twice".to_string())
}

/// Called from any thread: the exchange has something for the loop.
pub fn schedule(exchange: Ready) {
    let Some(bridge) = BRIDGE.get() else { return };
    let mut ready = bridge.ready.lock().unwrap_or_else(|e| e.into_inner());
    let was_empty = ready.is_empty();
    ready.push(exchange);
    drop(ready);
    if was_empty {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local u64 to our own eventfd. EAGAIN (counter
        // full) still leaves the fd readable, which is all we need.
        unsafe { libc::write(bridge.eventfd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// Event-loop handler of the eventfd's read event.
extern "C" fn on_wakeup(_ev: *mut ngx_event_t) {
    let batch = no_unwind(Site::PROCESS, "bridge", Vec::new(), || {
        let Some(bridge) = BRIDGE.get() else {
            return Vec::new();
        };
        let mut counter: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from our non-blocking eventfd resets it.
        unsafe {
            libc::read(
                bridge.eventfd,
                &mut counter as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        std::mem::take(&mut *bridge.ready.lock().unwrap_or_else(|e| e.into_inner()))
    });
    // Each request's output is guarded on its own (output::pump): one request's panic
    // ends that request, not the others'.
    for exchange in batch {
        no_unwind(Site::PROCESS, "bridge", (), || {
            crate::output::pump(exchange)
        });
    }
}
