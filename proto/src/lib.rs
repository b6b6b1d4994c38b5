//! Mirari's wire format and transport.
//!
//! - [`agent`]: the generated messages and gRPC client/server for the agent API.
//! - [`registry`]: the registry's raft log entries (a prost `oneof`, append-only).
//! - [`coordinator`]: the raft transport between coordinators and the coordinator API.
//! - [`convert`]: conversions between wire messages and `mirari-core` types, validating what
//!   arrives.
//! - [`endpoint`]: addresses (`unix:/path` or `host:port`), connecting and serving on them.
//! - [`tls`]: mutual TLS, certificates and the roles they carry.
//! - [`daemon_config`]: the daemons' `--config` files, one struct for their flags and keys.
//! - [`man`]: man pages from the clap definitions of the CLI and the daemons.
//! - [`auth`]: which role may call which RPC, checked for every server in one place.
//! - [`blob_stream`]: blobs as chunk streams, sent from and received into a blob store.
//! - [`etcd`]: etcd's `KV.Put`, for the benchmarks that run etcd beside Mirari as an anchor.

#![allow(missing_debug_implementations)] // generated gRPC clients and servers

/// Generated code, nested as the proto packages are so cross-package references resolve.
mod generated {
    pub mod mirari {
        pub mod agent {
            pub mod v1 {
                tonic::include_proto!("mirari.agent.v1");
            }
        }
        pub mod registry {
            pub mod v1 {
                tonic::include_proto!("mirari.registry.v1");
            }
        }
        pub mod coordinator {
            pub mod v1 {
                tonic::include_proto!("mirari.coordinator.v1");
            }
        }
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

pub use generated::etcdserverpb as etcd;
pub use generated::mirari::agent::v1 as agent;
pub use generated::mirari::coordinator::v1 as coordinator;
pub use generated::mirari::registry::v1 as registry;

pub mod auth;
pub mod blob_stream;
pub mod convert;
pub mod daemon_config;
pub mod endpoint;
pub mod log_codec;
pub mod man;
pub mod tls;
