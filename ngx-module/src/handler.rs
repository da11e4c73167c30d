//! The content handler, where a request starts: waits for nginx to read the body, copies
//! the request into the engine's [`rwsgi::Request`], splits it into its two sides
//! (exchange.rs) and hands the thread's side to the worker's Python thread pool
//! (thread.rs). From here on the loop's side of the request is output.rs's, until the
//! thread's final event.

use crate::body::NginxBody;
use crate::config::{location_conf, LocConf};
use crate::output::RequestCtx;
use crate::producer::Producer;
use crate::{exchange, no_unwind, thread, worker, Site};
use ngx::ffi::*;
use ngx::http::{HttpModuleServerConf, NgxHttpCoreModule};
use rwsgi::{LogLevel, Request};
use std::borrow::Cow;

const SERVER_SOFTWARE: &str = concat!("nginx rwsgi/", env!("CARGO_PKG_VERSION"));

/// # Safety
/// nginx calls content handlers on the event loop with a live request.
pub unsafe extern "C" fn wsgi_content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live for the whole handler (the contract above).
    let site = unsafe { Site::handler(r) };
    let internal_error = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    no_unwind(site, "content handler", internal_error, || {
        // `location /app` also matches /appx: that URI is not the app's (WSGIScriptAlias
        // answers 404 for it too), and the app would see it with SCRIPT_NAME ''.
        // SAFETY: r is live (the contract above); the conf is static.
        if let Some(lc) = location_conf(unsafe { &*r }) {
            // SAFETY: as above.
            let uri = unsafe { (*r).uri.as_bytes() };
            if lc.script_name.is_none() && !rwsgi::is_under_mount(uri, lc.mount().as_bytes()) {
                return NGX_HTTP_NOT_FOUND as ngx_int_t;
            }
        }
        // Reads the whole body (memory or temp file, chunked included) before Python
        // sees the request; 413 for client_max_body_size comes from here.
        // SAFETY: r is live; body_ready is called with it once the body is read.
        let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_ready)) };
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        NGX_DONE as ngx_int_t
    })
}

/// Body post-handler: runs with the request count that read_client_request_body took,
/// which our final ngx_http_finalize_request releases.
extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx passes the live request whose body it has read, on the event loop;
    // start_request does not finalize it (it returns the status instead).
    let site = unsafe { Site::request(r) };
    // After a panic the guard has finalized the request already.
    // SAFETY: as above.
    let started = no_unwind(site, "request body handler", Ok(()), || unsafe {
        start_request(r)
    });
    if let Err(status) = started {
        // SAFETY: as above; this releases the body's request count.
        unsafe { ngx_http_finalize_request(r, status) };
    }
}

/// Posts the request to the thread pool; Err(status) answers it right away.
///
/// # Safety
/// r is a live request whose body nginx has read; on the event loop.
unsafe fn start_request(r: *mut ngx_http_request_t) -> Result<(), ngx_int_t> {
    // SAFETY: r is live (caller), so is its connection.
    let log = unsafe { (*(*r).connection).log };
    // SAFETY: as above (the reference ends with the statement; the conf is static).
    let lc = location_conf(unsafe { &*r }).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
    let Some(spec) = lc.app.clone() else {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    // SAFETY: r is live, on the event loop (caller).
    let label = unsafe { crate::log::request_label(r, &lc.metrics_name) };
    if let Some(group) = lc.daemon {
        // SAFETY: as for this function.
        return unsafe { crate::daemon_client::start(r, lc, &spec, group, label) };
    }
    let Some(worker) = worker::get() else {
        // SAFETY: log is the live connection's, on the event loop.
        unsafe {
            crate::log::write(
                log,
                LogLevel::Error,
                &label,
                "Python is not running in this worker (see the worker start-up error)",
            )
        };
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    // The request's two sides: the loop's goes into its context (output.rs), freed with
    // the request pool; the thread's goes with the job (thread.rs).
    let (thread_side, loop_side) = exchange::pair(label, lc.app_metrics());
    // SAFETY: r is live, on the event loop (caller).
    let ctx = unsafe { RequestCtx::install(r, Producer::Thread(loop_side)) }
        .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
    // SAFETY: as above; ctx is r's context.
    if !unsafe { crate::shutdown::watch(r, ctx) } {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }

    // SAFETY: r's body is read (caller), and thread_side is its request's.
    let captured = unsafe { NginxBody::capture(r, Some(thread_side.clone())) };
    let (body, body_len) = captured.map_err(|e| {
        let label = thread_side.label();
        let message = format!("cannot read the request body: {e}");
        // SAFETY: log is the live connection's, on the event loop.
        unsafe { crate::log::write(log, LogLevel::Error, label, message) };
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })?;
    // SAFETY: r is live, on the event loop (caller).
    let request = unsafe { build_request(r, lc, body_len) };

    let job = thread::start(spec, worker.runtime, request, Box::new(body), thread_side);
    if let Err(_job) = worker.pool.enqueue(job) {
        if let Some(app) = lc.app_metrics() {
            app.queue_full();
            app.count(rwsgi::metrics::RequestEnd {
                status: Some(503),
                // SAFETY: ctx is r's context, unused elsewhere now.
                duration: unsafe { ctx.as_ref() }.age(),
                ..Default::default()
            });
        }
        let message = format!(
            "all {} Python threads are busy and {} requests are queued (wsgi_max_queue); answering 503",
            worker.threads, worker.max_queue
        );
        // SAFETY: ctx is r's context, unused elsewhere now; log is the live connection's,
        // on the event loop.
        unsafe { crate::log::write(log, LogLevel::Error, ctx.as_ref().label(), message) };
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
    // SAFETY: ctx lives with r's pool and nothing else refers to it now; r is live, on
    // the event loop.
    unsafe { (*ctx.as_ptr()).lend(worker.stuck_after, lc.app_metrics()) };
    // SAFETY: on the event loop.
    unsafe { worker::wake_pool_soon() };
    Ok(())
}

fn bytes(s: &ngx_str_t) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// # Safety
/// r is live and on the event loop.
pub unsafe fn build_request(r: *mut ngx_http_request_t, lc: &LocConf, body_len: u64) -> Request {
    // wsgi_param values first: evaluating them may fill r's variable cache.
    let mut params = Vec::new();
    for param in lc.params.iter().flatten() {
        let mut value = ngx_str_t::default();
        // SAFETY: r is live (caller); param.value was compiled for this location, and
        // the value it yields lives in r's pool.
        if unsafe { ngx_http_complex_value(r, param.value, &mut value) } == NGX_OK as ngx_int_t {
            params.push((param.name.clone(), bytes(&value)));
        }
    }
    // SAFETY: r is live (caller), so is its connection.
    let c = unsafe { (*r).connection };
    let mut local_port = 0u16;
    // SAFETY: c is live; this fills c->local_sockaddr if nginx has not yet.
    if unsafe { ngx_connection_local_sockaddr(c, std::ptr::null_mut(), 0) } == NGX_OK as ngx_int_t {
        // SAFETY: c->local_sockaddr was filled just above.
        local_port = unsafe { ngx_inet_get_port((*c).local_sockaddr) };
    }
    // SAFETY: r and c are live, and nothing changes them while these are in use.
    let (rr, cc) = unsafe { (&*r, &*c) };
    let (script_name, path_info) = rwsgi::split_mount(rr.uri.as_bytes(), lc.mount().as_bytes());
    let mut headers = Vec::with_capacity(16);
    // SAFETY: the header list and its strings live with r.
    for (name, value) in unsafe { ngx::http::list_iterator(&rr.headers_in.headers) } {
        // nginx has read the whole body and taken off its chunked framing: the app gets
        // it with CONTENT_LENGTH, and a Transfer-Encoding beside that would be a lie
        // (apps that refuse chunked requests, as httpbin does, would answer 501).
        if name.as_bytes().eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        headers.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    let has_body =
        rr.headers_in.content_length_n >= 0 || rr.headers_in.chunked() != 0 || body_len > 0;
    let server_name = NgxHttpCoreModule::server_conf(rr)
        .map(|cscf| bytes(&cscf.server_name))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| rr.headers_in.server.as_bytes().to_vec());
    let protocol = if rr.http_protocol.len > 0 {
        String::from_utf8_lossy(rr.http_protocol.as_bytes()).into_owned()
    } else {
        "HTTP/0.9".to_string()
    };
    // SAFETY: c->sockaddr is the client's address, set when the connection was accepted.
    let remote_port = unsafe { ngx_inet_get_port(cc.sockaddr) };
    Request {
        method: String::from_utf8_lossy(rr.method_name.as_bytes()).into_owned(),
        script_name,
        path_info,
        query_string: bytes(&rr.args),
        protocol,
        server_name,
        server_port: local_port.to_string(),
        remote_addr: String::from_utf8_lossy(cc.addr_text.as_bytes()).into_owned(),
        remote_port: remote_port.to_string(),
        https: !cc.ssl.is_null(),
        headers,
        content_length: has_body.then_some(body_len),
        request_uri: bytes(&rr.unparsed_uri),
        server_software: Cow::Borrowed(SERVER_SOFTWARE),
        extra: Vec::new(),
        params,
    }
}
