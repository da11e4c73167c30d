//! Puts the app's validated status and headers into nginx's headers_out. The engine has
//! already refused anything unsafe (CR/LF, non-latin-1, bad names); here we only copy
//! into the request pool and point nginx's well-known header slots at them.

use ngx::ffi::*;
use rwsgi::ResponseHead;

/// Copies `bytes` into the request pool.
///
/// # Safety
/// r is a live request; the returned string lives as long as its pool.
unsafe fn pool_str(r: *mut ngx_http_request_t, bytes: &[u8]) -> Result<ngx_str_t, ()> {
    // SAFETY: r and its pool are live (caller).
    let data = unsafe { ngx_pnalloc((*r).pool, bytes.len().max(1)) } as *mut u8;
    if data.is_null() {
        return Err(());
    }
    // SAFETY: data is a fresh allocation of at least bytes.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
    Ok(ngx_str_t {
        len: bytes.len(),
        data,
    })
}

/// # Safety
/// r is a live request whose header has not been sent; runs on the event loop.
pub unsafe fn set_response_head(r: *mut ngx_http_request_t, head: &ResponseHead) -> Result<(), ()> {
    // SAFETY: r is live (caller); pool_str only allocates from its pool, leaving
    // headers_out alone while this reference is in use.
    let out = unsafe { &mut (*r).headers_out };
    out.status = head.status as ngx_uint_t;
    // SAFETY: r is live (caller).
    out.status_line = unsafe { pool_str(r, &head.status_line) }?;
    // nginx's header filter marks 204 and 304 header-only only when status_line is empty,
    // and we always set it (the app's reason phrase). The engine sends no body after
    // them; this keeps nginx from adding one of its own (a chunked terminator).
    if head.forbids_body() {
        // SAFETY: r is live (caller).
        unsafe { (*r).set_header_only(1) };
    }
    out.content_length_n = head.content_length.map_or(-1, |n| n as off_t);
    for (name, value) in &head.headers {
        // SAFETY: r is live (caller).
        let value = unsafe { pool_str(r, value) }?;
        if name.eq_ignore_ascii_case(b"content-type") {
            // nginx matches types (charset, gzip_types) on the part before parameters.
            // SAFETY: pool_str made value.data point at value.len initialized bytes.
            let bytes = unsafe { std::slice::from_raw_parts(value.data, value.len) };
            out.content_type_len = bytes
                .iter()
                .position(|&b| b == b';' || b == b' ')
                .unwrap_or(value.len);
            out.content_type = value;
            out.content_type_lowcase = std::ptr::null_mut();
            continue;
        }
        // SAFETY: headers_out.headers is r's live header list of ngx_table_elt_t.
        let h = unsafe { ngx_list_push(&mut out.headers) } as *mut ngx_table_elt_t;
        if h.is_null() {
            return Err(());
        }
        // SAFETY: h is a fresh element of that list; r is live (caller).
        unsafe {
            (*h).hash = 1;
            (*h).key = pool_str(r, name)?;
            (*h).value = value;
            (*h).lowcase_key = std::ptr::null_mut();
        }
        // The app's Server and Date replace nginx's own instead of doubling them.
        if name.eq_ignore_ascii_case(b"server") {
            out.server = h;
        } else if name.eq_ignore_ascii_case(b"date") {
            out.date = h;
        }
    }
    Ok(())
}
