//! Entry points.

pub mod headers;
pub mod histogram;
pub mod hop;
pub mod hop_server;
pub mod http;
pub mod routes;
pub mod tcp;
pub mod upstream;
