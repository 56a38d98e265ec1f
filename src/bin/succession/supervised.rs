//! Supervised mode: ZooKeeper primary, etcd fallback, one `Supervisor` over both.

use std::sync::Arc;

use succession::supervisor::Layer;
use succession::SupervisorEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::args::{Backend, Settings};
use crate::backend::{self, Built};
use crate::events::{Emitter, V};

/// The supervisor over a ZooKeeper and an etcd participant.
pub fn build(s: &Settings) -> Result<Built, String> {
    let Backend::Supervised {
        connect,
        path,
        endpoints,
        prefix,
    } = &s.backend
    else {
        unreachable!("supervised::build is only called for supervised settings")
    };
    let zk = backend::zk(s, connect, path)?;
    let etcd = backend::etcd(s, endpoints, prefix)?;
    let sup = succession::supervised::builder(Arc::new(zk), Arc::new(etcd))
        .map_err(|e| e.to_string())?
        .failover_after(s.failover_after)
        .failback_after(s.failback_after)
        .strict_mode_lease(s.strict_mode_lease)
        .build()
        .map_err(|e| e.to_string())?;
    let sup = Arc::new(sup);
    Ok(Built {
        election: sup.clone(),
        layer: None,
        supervisor: Some(sup),
    })
}

/// Print the supervisor's events: per-layer health, failover, failback, and leadership
/// with the layer it came through.
pub fn follow_events(built: &Built, em: Emitter) -> Option<tokio::task::JoinHandle<()>> {
    let sup = built.supervisor.as_ref()?;
    let mut rx = sup.events();
    Some(tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    eprintln!("succession: {n} supervisor events were dropped (slow stdout)");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            match ev {
                SupervisorEvent::LayerHealth {
                    layer,
                    level,
                    reason,
                } => em.emit(
                    "health",
                    &[
                        ("layer", V::S(&layer.name)),
                        ("state", V::S(level.name())),
                        ("reason", V::S(&reason)),
                    ],
                ),
                SupervisorEvent::Failover {
                    from,
                    to,
                    generation,
                    reason,
                    ..
                } => em.emit(
                    "failover",
                    &[
                        ("from", V::S(&from.name)),
                        ("to", V::S(&to.name)),
                        ("generation", V::N(generation)),
                        ("reason", V::S(&reason)),
                    ],
                ),
                SupervisorEvent::Failback {
                    from,
                    to,
                    generation,
                    reason,
                    ..
                } => em.emit(
                    "failback",
                    &[
                        ("from", V::S(&from.name)),
                        ("to", V::S(&to.name)),
                        ("generation", V::N(generation)),
                        ("reason", V::S(&reason)),
                    ],
                ),
                SupervisorEvent::LeadershipGained { layer, term } => {
                    let term = term.to_string();
                    em.emit(
                        "elected",
                        &[("term", V::S(&term)), ("layer", V::S(&layer.name))],
                    )
                }
                SupervisorEvent::LeadershipLost { reason, .. } => {
                    em.emit("revoked", &[("reason", V::S(&reason))])
                }
                _ => {}
            }
        }
    }))
}

/// The layer that counts now, by name.
pub fn active_layer(built: &Built) -> String {
    match &built.supervisor {
        Some(sup) => {
            let layer = sup.mode().map(|m| m.layer).unwrap_or(Layer::Primary);
            sup.layer_ref(layer).name.to_string()
        }
        None => built.layer.unwrap_or("zk").to_string(),
    }
}
