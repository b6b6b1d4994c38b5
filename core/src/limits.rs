//! The largest sizes and counts Mirari accepts, in one place.
//!
//! Every number that arrives from the wire or a config file is checked against these where it
//! is converted into a core type (`mirari-proto`'s conversions, the config parser), so nothing
//! above that layer allocates or loops in proportion to an unchecked number. Limits only ever
//! grow from one version to the next: entries already in a raft log were checked against the
//! limits of the version that proposed them, and must still decode.

/// Instances one deployment may ask for (`count`).
pub const MAX_INSTANCES_PER_DEPLOYMENT: u32 = 100_000;
/// Memory of one instance, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
pub const MAX_VCPUS: u32 = 256;
/// Boot arguments of one instance, and their total length in bytes.
pub const MAX_BOOT_ARGS: usize = 256;
pub const MAX_BOOT_ARGS_BYTES: usize = 16 * 1024;
/// The graceful stop of one instance.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3_600;
/// Failed runs in a row the on-failure restart policy may restart.
pub const MAX_RESTART_LIMIT: u32 = 1_000;
/// Network interfaces of one instance.
pub const MAX_INTERFACES: usize = 8;
/// Networks the cluster knows, and networks one host carries.
pub const MAX_NETWORKS: usize = 256;
/// File images attached to one instance.
pub const MAX_FILE_IMAGES: usize = 64;
/// App, version, host and label names, and label values.
pub const MAX_NAME_BYTES: usize = 253;
/// Labels (and placement constraints) of one host or app.
pub const MAX_LABELS: usize = 64;
/// Instances one host may offer to run.
pub const MAX_INSTANCES_PER_HOST: u32 = 10_000;
/// Versions a deployment's history remembers (their artifacts are kept).
pub const MAX_HISTORY: usize = 20;
/// Versions of an app kept registered beside those deployed or in its history.
pub const MAX_UNDEPLOYED_VERSIONS: usize = 10;
/// Apps one deployment may wait for (`after`).
pub const MAX_AFTER: usize = 16;
/// A blob (an artifact, a file image, a source bundle).
pub const MAX_BLOB_BYTES: u64 = 4 << 30;
/// One gRPC request to a coordinator or an agent (a registry entry, a heartbeat, a blob chunk).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A number above its limit, for the error a layer reports.
pub fn exceeds<T: PartialOrd + std::fmt::Display>(what: &str, value: T, max: T) -> Option<String> {
    (value > max).then(|| format!("{what} is {value}, above the limit of {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_too_large() {
        assert_eq!(exceeds("count", 7u32, 5), Some("count is 7, above the limit of 5".into()));
        assert_eq!(exceeds("count", 5u32, 5), None);
    }
}
