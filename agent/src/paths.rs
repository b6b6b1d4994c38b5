//! Default locations: root uses system directories, other users their XDG directories.

use std::path::PathBuf;

use mirari_proto::endpoint::Endpoint;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home_relative(xdg_var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(xdg_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(fallback))
}

/// `/var/lib/mirari/agent` for root, else `$XDG_STATE_HOME/mirari/agent`.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/mirari/agent")
    } else {
        home_relative("XDG_STATE_HOME", ".local/state").join("mirari/agent")
    }
}

/// `unix:/run/mirari/agent.sock` for root, else in `$XDG_RUNTIME_DIR` (or the state directory).
pub fn default_agent_endpoint() -> Endpoint {
    let dir = if is_root() {
        PathBuf::from("/run/mirari")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(default_state_dir, |d| PathBuf::from(d).join("mirari"))
    };
    Endpoint::Unix(dir.join("agent.sock"))
}
