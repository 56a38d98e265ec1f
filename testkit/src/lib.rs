//! # succession-testkit
//!
//! Starts REAL ZooKeeper 3.8 and etcd 3.4 servers (Debian packages) as child processes on
//! 127.0.0.1, with free ports and temp dirs, for the tests of the succession crates. Nothing
//! is mocked. It can stop, kill -9, freeze (SIGSTOP), thaw, wipe and restart them, and a
//! [`TcpProxy`] cuts or blackholes one client's link.
//!
//! ## No leftover processes
//! * Every handle SIGKILLs and reaps its process on drop, also while unwinding from a panic.
//! * Every child is spawned by one dedicated, never-exiting thread with
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so it dies with the test process even when that is
//!   killed, and the shared servers (statics, never dropped) die at exit too.
//! * Children get their own process group; only pids the testkit spawned (and has not yet
//!   reaped) are ever signalled.
//!
//! ```no_run
//! # async fn demo() -> succession_testkit::Result<()> {
//! use succession_testkit::{ZkServer, unique_path};
//! let mut zk = ZkServer::start().await?;
//! let root = unique_path("latch");
//! // ... connect a client to zk.addr(), use `root` ...
//! zk.kill().await?;     // kill -9
//! zk.restart().await?;  // same port, same data
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod deps;
mod error;
mod etcd;
mod faults;
mod process;
mod proxy;
mod shared;
mod zk;

pub use deps::{
    curator_classpath, etcd_bin, etcdctl_bin, find_binary, find_curator_classpath,
    find_zk_classpath, java_bin, zk_classpath, DEBIAN_JAVA_DIR, JVM_QUIET_LOGGING,
};
pub use error::{Error, Result};
pub use etcd::{EtcdCluster, EtcdMember, EtcdServer, EtcdTls};
pub use faults::{FaultyStore, Restartable};
pub use process::process_alive;
pub use proxy::TcpProxy;
pub use shared::{shared_etcd, shared_zk, try_shared_etcd, try_shared_zk, SharedEtcd, SharedZk};
pub use zk::{four_letter_word, ZkEnsemble, ZkNode, ZkServer, ZK_TICK_MS};

/// A fresh path `"/succession-test/<prefix>-<16 random hex digits>"`, for a test's own
/// ZooKeeper root or etcd key prefix on a shared server.
pub fn unique_path(prefix: &str) -> String {
    format!("/succession-test/{prefix}-{:016x}", process::random_u64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_paths_differ() {
        let a = super::unique_path("x");
        let b = super::unique_path("x");
        assert!(a.starts_with("/succession-test/x-"));
        assert_ne!(a, b);
    }
}
