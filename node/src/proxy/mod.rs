//! # proxy: entry points
//!
//! The HTTP/1.1 ([`http`]) and TCP ([`tcp`]) entry points of each service, the routing table
//! that knows this node's slot and peers' instances ([`routes`]), per-slot upstreams with
//! in-flight counts and signals ([`upstream`], [`histogram`]), cumulative meters per slot for
//! the metrics endpoint ([`meters`]), the open connections an `upgrade` lets finish
//! ([`closing`]), forwarding headers
//! ([`headers`]), and the mesh hop to a peer's instance: the sending side ([`hop`]) and the
//! receiving side ([`hop_server`]).
//!
//! ## Guarantees
//! - A request is retried on another instance only when nothing of it reached an upstream.
//! - Slots listen on 127.0.0.1 only; peers reach them through the mesh hop.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`, `store`, `mesh`, `cluster`.

pub mod closing;
pub mod headers;
pub mod histogram;
pub mod hop;
pub mod hop_server;
pub mod http;
pub mod meters;
pub mod routes;
pub mod tcp;
pub mod upstream;
