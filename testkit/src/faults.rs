//! Fault injection on one test server for a whole scenario: the server killed and
//! restarted with its data (an outage), killed, wiped and restarted empty, and one
//! participant cut off through a proxy of its own. What the conformance suite's fault
//! harnesses of the ZooKeeper and etcd backends are made of.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::{EtcdServer, Result, TcpProxy, ZkServer};

/// A single server that can be killed, wiped and restarted ([`ZkServer`], [`EtcdServer`]).
pub trait Restartable: Send {
    /// SIGKILL it.
    fn kill(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Delete its data (it must be down).
    fn wipe(&mut self) -> Result<()>;
    /// Start it again on its ports and data dir; returns once it serves.
    fn restart(&mut self) -> impl Future<Output = Result<()>> + Send;
}

impl Restartable for ZkServer {
    fn kill(&mut self) -> impl Future<Output = Result<()>> + Send {
        ZkServer::kill(self)
    }
    fn wipe(&mut self) -> Result<()> {
        ZkServer::wipe(self)
    }
    fn restart(&mut self) -> impl Future<Output = Result<()>> + Send {
        ZkServer::restart(self)
    }
}

impl Restartable for EtcdServer {
    fn kill(&mut self) -> impl Future<Output = Result<()>> + Send {
        EtcdServer::kill(self)
    }
    fn wipe(&mut self) -> Result<()> {
        EtcdServer::wipe(self)
    }
    fn restart(&mut self) -> impl Future<Output = Result<()>> + Send {
        EtcdServer::restart(self)
    }
}

/// One server of a scenario and a proxy per participant in front of it.
pub struct FaultyStore<S> {
    server: tokio::sync::Mutex<S>,
    upstream: String,
    proxies: Mutex<HashMap<String, Arc<TcpProxy>>>,
}

impl<S: Restartable> FaultyStore<S> {
    /// Faults on `server`, whose clients connect to `upstream` (`host:port`).
    pub fn new(server: S, upstream: String) -> Self {
        FaultyStore {
            server: tokio::sync::Mutex::new(server),
            upstream,
            proxies: Mutex::default(),
        }
    }

    /// A new proxy for participant `id` (which then connects through it).
    pub async fn proxy_for(&self, id: &str) -> Result<Arc<TcpProxy>> {
        let proxy = Arc::new(TcpProxy::start(&self.upstream).await?);
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), proxy.clone());
        Ok(proxy)
    }

    /// `down`: kill the server; `!down`: restart it with its data.
    pub async fn outage(&self, down: bool) -> Result<()> {
        let mut s = self.server.lock().await;
        if down {
            s.kill().await
        } else {
            s.restart().await
        }
    }

    /// Kill the server, delete its data, restart it empty.
    pub async fn wipe(&self) -> Result<()> {
        let mut s = self.server.lock().await;
        s.kill().await?;
        s.wipe()?;
        s.restart().await
    }

    /// `cut`: drop everything between participant `id` and the server (its proxy
    /// blackholes); `!cut`: heal. Panics naming `id` when it has no proxy.
    pub fn partition(&self, id: &str, cut: bool) {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let proxy = proxies
            .get(id)
            .unwrap_or_else(|| panic!("participant {id} has no proxy (make it with proxy_for)"));
        if cut {
            proxy.blackhole();
        } else {
            proxy.restore();
        }
    }
}
