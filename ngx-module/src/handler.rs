//! The content handler: waits for nginx to read the body, copies the request into the
//! engine's [`rwsgi::Request`], and hands it to the worker's Python thread pool. From here
//! on the request belongs to output.rs until the thread's final event.

use crate::body::NginxBody;
use crate::config::{location_conf, LocConf};
use crate::exchange::Exchange;
use crate::output::{arm_guard, on_read, RequestCtx};
use crate::{worker, Module};
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleServerConf, NgxHttpCoreModule};
use ngx::ngx_log_error;
use rwsgi::{Request, ResponseSink};
use std::borrow::Cow;
use std::ffi::c_void;
use std::sync::Arc;

const SERVER_SOFTWARE: &str = concat!("nginx rwsgi/", env!("CARGO_PKG_VERSION"));

/// SAFETY: nginx calls content handlers on the event loop with a live request.
pub unsafe extern "C" fn wsgi_content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    crate::no_unwind(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || {
        // `location /app` also matches /appx: that URI is not the app's (WSGIScriptAlias
        // answers 404 for it too), and the app would see it with SCRIPT_NAME ''.
        if let Some(lc) = location_conf(&*r) {
            if lc.script_name.is_none()
                && !rwsgi::is_under_mount((*r).uri.as_bytes(), lc.mount().as_bytes())
            {
                return NGX_HTTP_NOT_FOUND as ngx_int_t;
            }
        }
        // Reads the whole body (memory or temp file, chunked included) before Python
        // sees the request; 413 for client_max_body_size comes from here.
        let rc = ngx_http_read_client_request_body(r, Some(body_ready));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        NGX_DONE as ngx_int_t
    })
}

/// Body post-handler: runs with the request count that read_client_request_body took,
/// which our final ngx_http_finalize_request releases.
extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx passes the live request whose body it has read.
    let internal_error = Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    if let Err(status) = crate::no_unwind(internal_error, || unsafe { start_request(r) }) {
        crate::no_unwind((), || unsafe { ngx_http_finalize_request(r, status) });
    }
}

/// Posts the request to the thread pool; Err(status) answers it right away.
unsafe fn start_request(r: *mut ngx_http_request_t) -> Result<(), ngx_int_t> {
    let c = (*r).connection;
    let log = (*c).log;
    let lc = location_conf(&*r).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)?;
    let Some(spec) = lc.app.clone() else {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let Some(worker) = worker::get() else {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "wsgi: Python is not running in this worker (see the worker start-up error)"
        );
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    // Loop-side context, freed with the request pool.
    let cln = ngx_pool_cleanup_add((*r).pool, 0);
    if cln.is_null() {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    let exchange = Exchange::new();
    let ctx: *mut RequestCtx = Box::into_raw(Box::new(RequestCtx::new(r, exchange.clone())));
    exchange.bind(ctx as usize);
    (*cln).handler = Some(free_ctx);
    (*cln).data = ctx as *mut c_void;
    *(*r).ctx.add(Module::module().ctx_index) = ctx as *mut c_void;
    if !crate::shutdown::watch(r, ctx) {
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }

    let (body, body_len) = NginxBody::capture(r, exchange).map_err(|e| {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "wsgi: cannot read the request body: {}",
            e
        );
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })?;
    let request = build_request(r, lc, body_len);

    let exchange = (*ctx).exchange.clone();
    let runtime = worker.runtime;
    let job = Box::new(move || {
        let sink: Arc<dyn ResponseSink> = exchange.clone();
        crate::exchange::drive(&exchange, || {
            runtime.run(&spec, request, Box::new(body), sink)
        });
    });
    if let Err(_job) = worker.pool.enqueue(job) {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "wsgi: all {} Python threads are busy and {} requests are queued (wsgi_max_queue); answering 503",
            worker.threads,
            worker.max_queue
        );
        return Err(NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
    // While the thread owns the request: `blocked` stops nginx from freeing it (client
    // abort, timeouts), the guard timer keeps a quitting worker alive, and the read
    // handler notices a client that disconnects.
    let main = (*r).main;
    (*main).set_blocked((*main).blocked() + 1);
    (*ctx).blocked = true;
    arm_guard(&mut *ctx);
    (*r).read_event_handler = Some(on_read);
    worker::wake_pool_soon();
    Ok(())
}

extern "C" fn free_ctx(data: *mut c_void) {
    // SAFETY: data is the Box<RequestCtx> leaked in start_request, freed exactly once here
    // when the request pool is destroyed.
    crate::no_unwind((), || unsafe {
        drop(Box::from_raw(data as *mut RequestCtx));
        // Pool cleanups run on the event loop.
        crate::worker::free_dropped_chunks_soon();
    });
}

fn bytes(s: &ngx_str_t) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// SAFETY: r is live and on the event loop.
unsafe fn build_request(r: *mut ngx_http_request_t, lc: &LocConf, body_len: u64) -> Request {
    let rr = &*r;
    let c = rr.connection;
    let (script_name, path_info) = rwsgi::split_mount(rr.uri.as_bytes(), lc.mount().as_bytes());
    let mut headers = Vec::with_capacity(16);
    for (name, value) in ngx::http::list_iterator(&rr.headers_in.headers) {
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
    let mut local_port = 0u16;
    if ngx_connection_local_sockaddr(c, std::ptr::null_mut(), 0) == NGX_OK as ngx_int_t {
        local_port = ngx_inet_get_port((*c).local_sockaddr);
    }
    let server_name = NgxHttpCoreModule::server_conf(rr)
        .map(|cscf| bytes(&cscf.server_name))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| rr.headers_in.server.as_bytes().to_vec());
    let protocol = if rr.http_protocol.len > 0 {
        String::from_utf8_lossy(rr.http_protocol.as_bytes()).into_owned()
    } else {
        "HTTP/0.9".to_string()
    };
    let mut params = Vec::new();
    for param in lc.params.iter().flatten() {
        let mut value = ngx_str_t::default();
        if ngx_http_complex_value(r, param.value, &mut value) == NGX_OK as ngx_int_t {
            params.push((param.name.clone(), bytes(&value)));
        }
    }
    Request {
        method: String::from_utf8_lossy(rr.method_name.as_bytes()).into_owned(),
        script_name,
        path_info,
        query_string: bytes(&rr.args),
        protocol,
        server_name,
        server_port: local_port.to_string(),
        remote_addr: String::from_utf8_lossy((*c).addr_text.as_bytes()).into_owned(),
        remote_port: ngx_inet_get_port((*c).sockaddr).to_string(),
        https: !(*c).ssl.is_null(),
        headers,
        content_length: has_body.then_some(body_len),
        request_uri: bytes(&rr.unparsed_uri),
        server_software: Cow::Borrowed(SERVER_SOFTWARE),
        extra: Vec::new(),
        params,
    }
}
