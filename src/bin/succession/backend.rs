//! Build the election the settings ask for.

use std::sync::Arc;

use succession::etcd::{EtcdConfig, EtcdElection};
use succession::zk::{ZkConfig, ZkElection};
use succession::Election;

use crate::args::{Backend, Settings};

/// The election, and the layer name for single-backend modes (None: supervised).
pub struct Built {
    pub election: Arc<dyn Election>,
    pub layer: Option<&'static str>,
    pub supervisor: Option<Arc<succession::Supervisor>>,
}

pub fn zk(s: &Settings, connect: &str, path: &str) -> Result<ZkElection, String> {
    let cfg = ZkConfig::builder(connect, path, &s.id)
        .session_timeout(s.session_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    ZkElection::new(cfg).map_err(|e| e.to_string())
}

pub fn etcd(s: &Settings, endpoints: &[String], prefix: &str) -> Result<EtcdElection, String> {
    let cfg = EtcdConfig::builder()
        .endpoints(endpoints.iter().cloned())
        .prefix(prefix)
        .id(&s.id)
        .ttl(s.ttl)
        .build()
        .map_err(|e| e.to_string())?;
    EtcdElection::new(cfg).map_err(|e| e.to_string())
}

pub fn build(s: &Settings) -> Result<Built, String> {
    match &s.backend {
        Backend::Zk { connect, path } => Ok(Built {
            election: Arc::new(zk(s, connect, path)?),
            layer: Some("zk"),
            supervisor: None,
        }),
        Backend::Etcd { endpoints, prefix } => Ok(Built {
            election: Arc::new(etcd(s, endpoints, prefix)?),
            layer: Some("etcd"),
            supervisor: None,
        }),
        Backend::Supervised { .. } => crate::supervised::build(s),
    }
}
