//! mod_rwsgi: Apache httpd 2.4 module hosting WSGI (PEP 3333) applications on the rwsgi
//! engine, configured with mod_wsgi's directives (embedded mode).
//!
//! httpd loads `rwsgi_module` ([`module`]); directives fill [`config`]; the translate hook
//! ([`mapping`]) maps URLs to scripts; the content handler ([`handler`]) copies the request
//! ([`request`]) and runs it through `rwsgi::Runtime::run` with a body reader ([`body`]) and
//! a response sink ([`sink`]) over httpd's filter chains. [`status`]: the counters in
//! shared memory, the `rwsgi-status` handler and the stuck-request watchdog.

mod apr;
mod bindings;
mod body;
mod config;
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
