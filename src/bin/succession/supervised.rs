//! Supervised mode: ZooKeeper primary, etcd fallback.

use crate::args::Settings;
use crate::backend::Built;

pub fn build(_s: &Settings) -> Result<Built, String> {
    Err("supervised mode (--zk and --etcd together) is not available yet; use one store".into())
}

/// Extra events of the supervisor (per-layer health, failover, failback); None otherwise.
pub fn follow_events(
    _built: &Built,
    _em: crate::events::Emitter,
) -> Option<tokio::task::JoinHandle<()>> {
    None
}

/// The layer currently active for a supervised election.
pub fn active_layer(_e: &std::sync::Arc<dyn succession::Election>) -> &'static str {
    "zk"
}
