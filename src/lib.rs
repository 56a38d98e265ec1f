#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub use succession_core::*;

#[cfg(all(feature = "process", target_os = "linux"))]
pub mod process;

/// The ZooKeeper latch backend (feature `zk`): [`zk::ZkElection`], [`zk::ZkConfig`].
#[cfg(feature = "zk")]
pub mod zk {
    pub use succession_zk::*;
}

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub mod etcd {
    pub use succession_etcd::*;
}

/// The standard pairing (features `zk` and `etcd`): a ZooKeeper latch as the primary and an
/// etcd election as the fallback, with the supervisor's records next to the etcd prefix.
///
/// ```no_run
/// # async fn f() -> succession::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use succession::etcd::{EtcdConfig, EtcdElection};
/// use succession::zk::{ZkConfig, ZkElection};
///
/// let zk = ZkElection::new(ZkConfig::builder("127.0.0.1:2181", "/app/leader", "node-1").build()?)?;
/// let etcd = EtcdElection::new(
///     EtcdConfig::builder().endpoint("http://127.0.0.1:2379").prefix("/app/leader").id("node-1").build()?,
/// )?;
/// let sup = succession::supervised::builder(Arc::new(zk), Arc::new(etcd))?
///     .failover_after(Duration::from_secs(12))
///     .build()?;
/// # Ok(()) }
/// ```
///
/// Many supervised elections (a leader per shard) share one ZooKeeper session and one etcd
/// lease with [`on_sessions`](supervised::on_sessions):
///
/// ```no_run
/// # async fn f() -> succession::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use succession::etcd::{EtcdSession, EtcdSessionConfig};
/// use succession::zk::{ZkSession, ZkSessionConfig};
/// use succession::Election;
///
/// let zk = ZkSession::new(ZkSessionConfig::builder("127.0.0.1:2181").build()?)?;
/// let etcd = EtcdSession::new(EtcdSessionConfig::builder().endpoint("http://127.0.0.1:2379").build()?)?;
/// let mut shards = Vec::new();
/// for i in 0..1000 {
///     let path = format!("/app/shards/{i}");
///     let sup = succession::supervised::on_sessions(&zk, &etcd, &path, &path, "node-1")?.build()?;
///     sup.join().await?;
///     shards.push(sup);
/// }
/// // ... later: every supervisor closes its two elections, then the sessions close.
/// for s in &shards {
///     s.close().await?;
/// }
/// zk.close().await?;
/// etcd.close().await?;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "zk", feature = "etcd"))]
pub mod supervised {
    use std::sync::Arc;

    use crate::etcd::{EtcdElection, EtcdSession};
    use crate::zk::{ZkElection, ZkSession};
    use crate::{Result, Supervisor, SupervisorBuilder};

    /// [`builder`] for one supervised election over shared sessions: a latch at
    /// `latch_path` on the ZooKeeper session `zk`, an etcd election under `etcd_prefix` on the
    /// etcd session `etcd` (whose connection also serves this election's mode and heartbeat
    /// records, next to the prefix), participant `id`. Call it once per election: any number
    /// of supervised elections then share one ZooKeeper session and one etcd lease, and a
    /// loss of either session reaches all of them at once. Each election keeps its own mode
    /// record, so each fails over and back on its own.
    pub fn on_sessions(
        zk: &ZkSession,
        etcd: &EtcdSession,
        latch_path: &str,
        etcd_prefix: &str,
        id: &str,
    ) -> Result<SupervisorBuilder> {
        builder(
            Arc::new(zk.election(latch_path, id)?),
            Arc::new(etcd.election(etcd_prefix, id)?),
        )
    }

    /// The keys of the mode and heartbeat records for an etcd election `prefix`: next to
    /// it, outside its candidate range `<prefix>/` (`<prefix>.succession-mode`,
    /// `<prefix>.succession-heartbeat`). Every participant must use the same keys.
    pub fn record_keys(prefix: &str) -> (String, String) {
        (
            format!("{prefix}.succession-mode"),
            format!("{prefix}.succession-heartbeat"),
        )
    }

    /// A [`SupervisorBuilder`] with `primary` and `fallback` set, the records at
    /// [`record_keys`] in the fallback's etcd, the primary's session timeout, layer names
    /// `zk` and `etcd`, and the latch path as the supervisor's name. Tune the timings on
    /// the result, then `build()`.
    pub fn builder(
        primary: Arc<ZkElection>,
        fallback: Arc<EtcdElection>,
    ) -> Result<SupervisorBuilder> {
        let (mode_key, heartbeat_key) = record_keys(fallback.config().prefix());
        let mode = fallback.record(&mode_key)?;
        let heartbeat = fallback.record(&heartbeat_key)?;
        let session_timeout = primary.config().session_timeout;
        let name = primary.config().path.clone();
        Ok(Supervisor::builder()
            .primary(primary)
            .fallback(fallback)
            .mode_record(Arc::new(mode))
            .heartbeat_record(Arc::new(heartbeat))
            .primary_session_timeout(session_timeout)
            .layer_names("zk", "etcd")
            .name(&name))
    }
}
