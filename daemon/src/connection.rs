//! One connection from a server worker: check who it is, read its REQUEST, run the app
//! through the engine with the socket as body reader and response sink.
//!
//! Who may be served: a peer whose uid (SO_PEERCRED) is the server's worker user or root,
//! that knows the group's secret, asking for an app configured for this group. Anything
//! else is logged and the connection closed without an answer: a local process that
//! reached the socket learns nothing.

use crate::lifecycle::Lifecycle;
use crate::socket_body::SocketBody;
use crate::socket_sink::SocketSink;
use rwsgi::daemon::messages::{now_us, RequestFrame, ToApp};
use rwsgi::daemon::peer::peer_uid;
use rwsgi::daemon::{read_frame, GroupSpec, SECRET_LEN};
use rwsgi::{AppSpec, LogLevel, OutputEvent, ResponseSink, Runtime};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// What every connection of this process is checked against.
pub struct Served {
    /// Err: why Python could not start (every request is answered 500).
    pub runtime: Result<Runtime, String>,
    pub group: GroupSpec,
    pub secret: [u8; SECRET_LEN],
    pub allowed_uids: Vec<u32>,
}

pub fn serve(conn: UnixStream, served: &Served, lifecycle: &Lifecycle) {
    let log = |what: &str| {
        eprintln!(
            "rwsgi-app[{}] warn: group {}: {what}",
            std::process::id(),
            served.group.name
        )
    };
    let timeout = Some(Duration::from_secs(served.group.socket_timeout));
    if conn
        .set_read_timeout(timeout)
        .and(conn.set_write_timeout(timeout))
        .is_err()
    {
        return;
    }
    match peer_uid(&conn) {
        Ok(uid) if served.allowed_uids.contains(&uid) => {}
        Ok(uid) => return log(&format!("refused a connection from uid {uid}")),
        Err(e) => return log(&format!("refused a connection whose peer is unknown: {e}")),
    }
    let frame = match read_frame(&mut &conn) {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        Err(e) => return log(&format!("no request on a new connection: {e}")),
    };
    let req: Box<RequestFrame> = match ToApp::decode(&frame) {
        Ok(ToApp::Request(req)) => req,
        Ok(ToApp::Body(_)) => return log("a connection began with BODY instead of REQUEST"),
        Err(e) => return log(&e.to_string()),
    };
    if !same_secret(&req.secret, &served.secret) {
        return log("refused a request with a wrong secret");
    }
    let what = format!(
        "{} {}",
        req.request.method,
        String::from_utf8_lossy(&req.request.request_uri)
    );
    let Ok(reader) = conn.try_clone() else { return };
    let context = format!("group {}, {what}", served.group.name);
    let sink = Arc::new(SocketSink::new(
        conn,
        req.accepts_files,
        req.accepts_stages,
        context,
    ));
    let Some(app) = find_app(&served.group, &req) else {
        let name = match &req.app.target {
            rwsgi::AppTarget::Script(p) => p.display().to_string(),
            rwsgi::AppTarget::Module(m) => m.clone(),
        };
        return fail(
            &sink,
            500,
            &format!(
                "{name} is not an app of process group {}: refused",
                served.group.name
            ),
        );
    };
    let waited = waited_us(req.connected_at_us);
    let limit = served.group.queue_timeout;
    if limit > 0 && waited > limit * 1_000_000 {
        return fail(
            &sink,
            504,
            &format!(
                "{what} waited {:.1} s for a process of group {}, past queue-timeout={limit}",
                waited as f64 / 1e6,
                served.group.name
            ),
        );
    }
    let runtime = match &served.runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let why = format!("{what}: Python cannot start in this process: {e}");
            return fail(&sink, 500, &why);
        }
    };
    let body = SocketBody::new(reader, sink.clone(), req.request.content_length);
    let id = lifecycle.begin(sink.clone(), what);
    let _ = runtime.run(app, req.request, Box::new(body), sink);
    lifecycle.finish(id);
}

/// Answers `status` from the server's error page, with the reason in its error log.
fn fail(sink: &SocketSink, status: u16, why: &str) {
    sink.log(LogLevel::Error, why);
    let _ = sink.send(&mut vec![OutputEvent::Fail(status)]);
}

/// The configured app the request names.
fn find_app<'a>(group: &'a GroupSpec, req: &RequestFrame) -> Option<&'a AppSpec> {
    group
        .apps
        .iter()
        .find(|a| a.target == req.app.target && a.callable == req.app.callable)
}

/// Microseconds since the server worker began to connect (0 when it did not say).
fn waited_us(connected_at_us: u64) -> u64 {
    if connected_at_us == 0 {
        return 0;
    }
    now_us().saturating_sub(connected_at_us)
}

/// Compares without an early exit, so the time taken says nothing about the secret.
fn same_secret(a: &[u8; SECRET_LEN], b: &[u8; SECRET_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
