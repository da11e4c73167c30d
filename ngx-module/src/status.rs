//! `location /rwsgi-status { wsgi_status; }`: the status page, rendered by the engine
//! (rwsgi::metrics_render) from the counters every worker keeps in the shared zone
//! (config.rs adds it, worker.rs attaches to it). Who may read it is the location's
//! business (allow/deny, auth_basic...): nginx's access phase runs before this handler.

use crate::{no_unwind, Site};
use ngx::ffi::*;
use rwsgi::metrics_render::{render, Format, ServerInfo};
use std::sync::OnceLock;

/// The content handler of a `wsgi_status` location.
///
/// # Safety
/// nginx calls content handlers on the event loop with a live request.
pub unsafe extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live for the whole handler (the contract above).
    let site = unsafe { Site::handler(r) };
    let internal_error = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    // SAFETY: as above; send does not finalize r (it returns the status).
    no_unwind(site, "status handler", internal_error, || unsafe {
        send(r)
    })
}

fn server_info() -> &'static ServerInfo {
    static INFO: OnceLock<ServerInfo> = OnceLock::new();
    INFO.get_or_init(|| ServerInfo {
        server: "nginx",
        python_version: rwsgi::python_version_line(),
    })
}

/// # Safety
/// r is live, on the event loop.
unsafe fn send(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live (caller).
    let method = unsafe { (*r).method } as u32;
    if method & (NGX_HTTP_GET | NGX_HTTP_HEAD) == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let Some(metrics) = crate::worker::metrics() else {
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    };
    // SAFETY: r is live and nothing changes it while this reference is used.
    let rr = unsafe { &*r };
    // SAFETY: the header list and its strings live with r.
    let accept = unsafe { ngx::http::list_iterator(&rr.headers_in.headers) }
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(b"accept"))
        .map(|(_, value)| value.as_bytes().to_vec());
    let format = Format::choose(rr.args.as_bytes(), accept.as_deref());
    let body = render(format, &metrics.snapshot(), server_info());
    let content_type = format.content_type();

    // SAFETY: r and its pool are live (caller); the buffer and link are fresh pool memory
    // filled as nginx's own handlers fill theirs.
    unsafe {
        let pool = (*r).pool;
        let out = &mut (*r).headers_out;
        out.status = NGX_HTTP_OK as ngx_uint_t;
        out.content_length_n = body.len() as off_t;
        out.content_type = static_str(content_type);
        out.content_type_len = content_type.find(';').unwrap_or(content_type.len());
        out.content_type_lowcase = std::ptr::null_mut();
        // The counters change with every request: no cache may keep a copy.
        let h = ngx_list_push(&mut out.headers) as *mut ngx_table_elt_t;
        if h.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*h).hash = 1;
        (*h).key = static_str("Cache-Control");
        (*h).value = static_str("no-store");
        (*h).lowcase_key = std::ptr::null_mut();
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let b = ngx_create_temp_buf(pool, body.len().max(1));
        let link = ngx_alloc_chain_link(pool);
        if b.is_null() || link.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        (*b).set_last_buf(if r == (*r).main { 1 } else { 0 });
        (*b).set_last_in_chain(1);
        (*link).buf = b;
        (*link).next = std::ptr::null_mut();
        ngx_http_output_filter(r, link)
    }
}

/// An nginx string over static bytes (nginx only reads it).
fn static_str(s: &'static str) -> ngx_str_t {
    ngx_str_t {
        len: s.len(),
        data: s.as_ptr() as *mut u8,
    }
}
