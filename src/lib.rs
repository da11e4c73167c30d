//! rwsgi: the server-agnostic WSGI (PEP 3333) engine. A server module starts Python with
//! [`Runtime::start`], copies each request into a [`Request`], hands over a [`BodyReader`]
//! and a [`ResponseSink`], and calls [`Runtime::run`] on a thread that may run Python.
//! Nothing here knows nginx or Apache, and nothing exported shows a Python type: the
//! server modules do not depend on pyo3.

mod app;
mod call;
mod chunk;
mod config_names;
pub mod daemon;
mod environ;
mod errors;
mod file_wrapper;
mod input;
mod interpreter;
mod log_label;
pub mod metrics;
pub mod metrics_render;
pub mod pool;
mod py_bytes;
mod response;
mod runtime;
mod server;
mod stack;
mod start_response;
mod status;

#[cfg(test)]
mod proptests;

pub use app::{AppSpec, AppTarget, DEFAULT_CALLABLE};
pub use call::Parked;
pub use chunk::Chunk;
pub use config_names::{check_callable_name, check_param_name, is_reserved_environ_key};
pub use environ::{is_under_mount, split_mount};
pub use log_label::LogLabel;
pub use runtime::{python_version_line, LoadError, Runtime, ServerTraits, PYTHON_VERSION};
pub use server::{
    BodyReader, ClientGone, ExtraValue, Flow, LogLevel, OutputEvent, Request, ResponseHead,
    ResponseSink, Stage,
};
