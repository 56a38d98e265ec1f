//! One lazily started server per test binary, shared by its ordinary tests.

use crate::error::Result;
use crate::etcd::EtcdServer;
use crate::zk::ZkServer;
use tokio::sync::OnceCell;

static SHARED_ZK: OnceCell<SharedZk> = OnceCell::const_new();
static SHARED_ETCD: OnceCell<SharedEtcd> = OnceCell::const_new();

/// The ZooKeeper server shared by all tests of one test binary (see [`shared_zk`]).
///
/// Read-only on purpose: tests that stop, kill, freeze or wipe a server start their own
/// [`ZkServer`].
#[derive(Debug)]
pub struct SharedZk {
    server: ZkServer,
}

impl SharedZk {
    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The pid of the JVM.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The last zxid from `srvr`.
    pub fn last_zxid(&self) -> Result<Option<u64>> {
        self.server.last_zxid()
    }
}

/// The etcd server shared by all tests of one test binary (see [`shared_etcd`]).
///
/// Read-only on purpose: tests that stop, kill, freeze or wipe a server start their own
/// [`EtcdServer`].
#[derive(Debug)]
pub struct SharedEtcd {
    server: EtcdServer,
}

impl SharedEtcd {
    /// `"http://127.0.0.1:PORT"`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The pid of etcd.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }
}

extern "C" fn cleanup_shared_at_exit() {
    if let Some(zk) = SHARED_ZK.get() {
        zk.server.shutdown_for_exit();
    }
    if let Some(etcd) = SHARED_ETCD.get() {
        etcd.server.shutdown_for_exit();
    }
}

fn register_exit_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" fn; it only signals/reaps our own children and
        // removes their temp dirs. (PDEATHSIG kills them anyway; this also removes the dirs.)
        unsafe {
            libc::atexit(cleanup_shared_at_exit);
        }
    });
}

/// The shared ZooKeeper server, started on first use (or an error if it cannot start).
pub async fn try_shared_zk() -> Result<&'static SharedZk> {
    register_exit_cleanup();
    SHARED_ZK
        .get_or_try_init(|| async {
            Ok(SharedZk {
                server: ZkServer::start().await?,
            })
        })
        .await
}

/// ONE standalone ZooKeeper per test binary, started lazily by the first test that asks.
/// Give each test its own root with [`crate::unique_path`]. The server dies with the test
/// process (PDEATHSIG) and its temp dir is removed at exit.
///
/// Panics with the start error (which says what is missing) if it cannot start.
pub async fn shared_zk() -> &'static SharedZk {
    match try_shared_zk().await {
        Ok(s) => s,
        Err(e) => panic!("the shared ZooKeeper server failed to start: {e}"),
    }
}

/// The shared etcd server, started on first use (or an error if it cannot start).
pub async fn try_shared_etcd() -> Result<&'static SharedEtcd> {
    register_exit_cleanup();
    SHARED_ETCD
        .get_or_try_init(|| async {
            Ok(SharedEtcd {
                server: EtcdServer::start().await?,
            })
        })
        .await
}

/// ONE single-member etcd per test binary, started lazily by the first test that asks.
/// Give each test its own key prefix with [`crate::unique_path`]. The server dies with the
/// test process (PDEATHSIG) and its temp dir is removed at exit.
///
/// Panics with the start error (which says what is missing) if it cannot start.
pub async fn shared_etcd() -> &'static SharedEtcd {
    match try_shared_etcd().await {
        Ok(s) => s,
        Err(e) => panic!("the shared etcd server failed to start: {e}"),
    }
}
