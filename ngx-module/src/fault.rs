//! Fault injection for the tests, compiled in only with the `fault-injection` cargo
//! feature (`make fault-module`; never `make build`). A request carrying the header
//! `X-Rwsgi-Fault: <point>` makes the loop side panic at that point, so the tests can
//! show that the guard every nginx callback goes through (lib.rs) ends such a request
//! instead of stranding it. Without the feature everything here is an empty no-op.
//!
//! Points: `pump` panics when the loop takes the request's first batch of output, before
//! anything was sent (the request gets a 500); `body` panics at the first body part,
//! after the header went out (the connection is closed).

use ngx::ffi::ngx_http_request_t;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Pump,
    Body,
}

/// The fault a request asked for.
pub struct Fault {
    #[cfg(feature = "fault-injection")]
    point: Option<Point>,
}

impl Fault {
    /// # Safety
    /// r is live; on the event loop.
    #[cfg(feature = "fault-injection")]
    pub unsafe fn of(r: *mut ngx_http_request_t) -> Fault {
        // SAFETY: r is live (caller); its header list lives with it.
        let headers = unsafe { ngx::http::list_iterator(&(*r).headers_in.headers) };
        let point = headers
            .filter(|(name, _)| name.as_bytes().eq_ignore_ascii_case(b"x-rwsgi-fault"))
            .find_map(|(_, value)| match value.as_bytes() {
                b"pump" => Some(Point::Pump),
                b"body" => Some(Point::Body),
                _ => None,
            });
        Fault { point }
    }

    /// # Safety
    /// As with the feature.
    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub unsafe fn of(_r: *mut ngx_http_request_t) -> Fault {
        Fault {}
    }

    /// Panics if the request asked for a fault at `point` (located at the caller).
    #[inline(always)]
    #[track_caller]
    pub fn at(&self, point: Point) {
        #[cfg(feature = "fault-injection")]
        if self.point == Some(point) {
            panic!("fault injected at {point:?} (X-Rwsgi-Fault)");
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = point;
    }
}
