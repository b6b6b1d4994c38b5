//! Mirari's wire format and transport.
//!
//! - [`agent`]: the generated messages and gRPC client/server for the agent API.
//! - [`convert`]: conversions between wire messages and `mirari-core` types, validating what
//!   arrives.
//! - [`endpoint`]: addresses (`unix:/path` or `host:port`), connecting and serving on them.

#![allow(missing_debug_implementations)] // generated gRPC clients and servers

pub mod agent {
    tonic::include_proto!("mirari.agent.v1");
}

pub mod convert;
pub mod endpoint;
