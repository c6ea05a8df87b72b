//! Where things live. Everything the local stack writes goes under `.local/`
//! (git-ignored); tools shared between clones go to a per-user cache.

use std::path::PathBuf;

/// The repository root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(PathBuf::from).unwrap_or(manifest_dir)
}

/// Per-checkout, git-ignored state: databases, Durable Object and KV state, logs.
pub fn local() -> PathBuf {
    root().join(".local")
}

/// Per-user cache of installed tools, keyed by tool and version, shared by every
/// clone on the machine. `PETNET_TOOL_CACHE` overrides it.
pub fn tool_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PETNET_TOOL_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("petnet").join("tools");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("petnet").join("tools"),
        None => root().join(".local").join("tools"),
    }
}
