//! Build the election the settings ask for.

use std::sync::Arc;

use succession::etcd::{EtcdConfig, EtcdElection};
use succession::zk::{ZkConfig, ZkElection};
use succession::Election;

use crate::args::{Backend, Settings};

/// The election, and the layer name for single-backend modes (None: supervised).
pub struct Built {
    /// The election (a supervisor in supervised mode).
    pub election: Arc<dyn Election>,
    /// `zk` or `etcd` in single-backend mode.
    pub layer: Option<&'static str>,
    /// The supervisor, in supervised mode.
    pub supervisor: Option<Arc<succession::Supervisor>>,
}

/// The ZooKeeper configuration for `connect`/`path`, with the settings' auth.
pub fn zk_config(s: &Settings, connect: &str, path: &str) -> Result<ZkConfig, String> {
    let mut b = ZkConfig::builder(connect, path, &s.id).session_timeout(s.session_timeout);
    if let Some((user, pw)) = &s.auth.zk_digest {
        b = b.digest_auth(user, pw.expose());
    }
    if let Some((user, pw)) = &s.auth.zk_sasl {
        b = b.sasl_digest_md5(user, pw.expose());
    }
    b.build().map_err(|e| e.message().to_string())
}

/// The etcd configuration for `endpoints`/`prefix`, with the settings' auth and TLS.
pub fn etcd_config(s: &Settings, endpoints: &[String], prefix: &str) -> Result<EtcdConfig, String> {
    let mut b = EtcdConfig::builder()
        .endpoints(endpoints.iter().cloned())
        .prefix(prefix)
        .id(&s.id)
        .ttl(s.ttl);
    if let Some((user, pw)) = &s.auth.etcd_credentials {
        b = b.credentials(user, pw.expose());
    }
    if let Some(tls) = &s.auth.etcd_tls {
        b = b.tls_ca_pem(tls.ca_pem.clone());
        if let Some((cert, key)) = &tls.identity {
            b = b.tls_identity_pem(cert.clone(), key.expose().as_bytes().to_vec());
        }
        if let Some(name) = &tls.server_name {
            b = b.tls_domain_name(name);
        }
    }
    b.build().map_err(|e| e.message().to_string())
}

/// A ZooKeeper participant.
pub fn zk(s: &Settings, connect: &str, path: &str) -> Result<ZkElection, String> {
    ZkElection::new(zk_config(s, connect, path)?).map_err(|e| e.to_string())
}

/// An etcd participant.
pub fn etcd(s: &Settings, endpoints: &[String], prefix: &str) -> Result<EtcdElection, String> {
    EtcdElection::new(etcd_config(s, endpoints, prefix)?).map_err(|e| e.to_string())
}

/// The election `s` asks for.
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
