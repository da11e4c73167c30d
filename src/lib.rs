//! rwsgi: the server-agnostic WSGI (PEP 3333) engine. A server module copies its request
//! into a [`Request`], hands over a [`BodyReader`] and a [`ResponseSink`], and calls
//! [`run_request`] on a thread that may run Python. Nothing here knows nginx or Apache.

pub mod app;
pub mod call;
pub mod chunk;
pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod input;
pub mod interpreter;
pub mod pool;
pub mod py_bytes;
pub mod response;
pub mod server;
pub mod stack;
pub mod start_response;
pub mod status;

#[cfg(test)]
mod proptests;

pub use app::{AppSpec, AppTarget};
pub use call::{run_request, Parked, ServerTraits};
pub use chunk::Chunk;
pub use server::{
    BodyReader, ClientGone, ExtraValue, Flow, LogLevel, OutputEvent, Request, ResponseHead,
    ResponseSink,
};
