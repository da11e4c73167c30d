//! mod_rwsgi: Apache httpd 2.4 module hosting WSGI (PEP 3333) applications on the rwsgi
//! engine, configured with mod_wsgi's directives: embedded in Apache's children, or in
//! daemon process groups.
//!
//! httpd loads `rwsgi_module` ([`module`]); directives fill [`config`]; the translate hook
//! ([`mapping`]) maps URLs to scripts; the content handler ([`handler`]) copies the request
//! ([`request`]) and runs it through `rwsgi::Runtime::run` with a body reader ([`body`]) and
//! a response sink ([`sink`]) over httpd's filter chains. [`status`]: the counters in
//! shared memory, the `rwsgi-status` handler and the stuck-request watchdog.
//!
//! Daemon mode (docs/daemon-internals.md): [`daemon_conf`] reads WSGIDaemonProcess and
//! friends, [`daemon_start`] has the supervisor run the groups at post_config,
//! [`daemon_groups`] is what the children know of them, and [`daemon_proxy`] carries a
//! request over an [`app_stream`] to its group, with the same body reader and sink.

mod accounts;
mod app_stream;
mod apr;
mod bindings;
mod body;
mod config;
mod daemon_conf;
mod daemon_groups;
mod daemon_proxy;
mod daemon_start;
mod directives;
mod ffi;
mod handler;
mod live;
mod log;
mod mapping;
mod module;
mod options;
mod python;
mod req;
mod request;
mod sink;
mod status;

pub use module::rwsgi_module;
