//! The shared conformance suite on supervised participants: each one a [`Supervisor`] over a
//! primary and a fallback in-memory store, with the mode record in the fallback store.
#![cfg(feature = "conformance")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use succession_core::conformance::{Bounds, Capabilities, Factory, Faults};
use succession_core::memory::{MemoryElection, MemoryStore};
use succession_core::supervisor::Supervisor;
use succession_core::{async_trait, Election, Result};

struct SupervisedFactory {
    primary: MemoryStore,
    fallback: MemoryStore,
    /// Each participant's two layer elections, by id (for [`Faults::partition`]); weak, so
    /// that a dropped supervisor's layers are gone as the suite expects.
    layers: Mutex<HashMap<String, [Weak<MemoryElection>; 2]>>,
}

#[async_trait]
impl Factory for SupervisedFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let (p, f) = (
            Arc::new(self.primary.election(id)?),
            Arc::new(self.fallback.election(id)?),
        );
        self.layers
            .lock()
            .unwrap()
            .insert(id.to_owned(), [Arc::downgrade(&p), Arc::downgrade(&f)]);
        let s = Supervisor::builder()
            .primary(p)
            .fallback(f)
            .mode_record(Arc::new(self.fallback.record("mode")))
            .heartbeat_record(Arc::new(self.fallback.record("mode.heartbeat")))
            .primary_session_timeout(self.primary.session_timeout())
            .check_interval(Duration::from_millis(40))
            .layer_names("zk", "etcd")
            .build()?;
        Ok(Arc::new(s))
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            join: Duration::from_secs(1),
            handover: Duration::from_secs(1),
            crash: self.primary.session_timeout() + Duration::from_secs(1),
        }
    }

    /// Places held in either layer's store. The mode and heartbeat records are cluster
    /// state shared by all participants and deliberately survive them.
    async fn leftovers(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .primary
            .entries()
            .into_iter()
            .map(|e| format!("primary:{e}"))
            .collect();
        v.extend(
            self.fallback
                .entries()
                .into_iter()
                .map(|e| format!("fallback:{e}")),
        );
        Ok(v)
    }

    fn faults(&self) -> Option<&dyn Faults> {
        Some(self)
    }
}

/// A supervised participant's store is both layers' stores: an outage or a wipe hits both
/// (one layer alone is the supervisor's own business: failover, tested in
/// `supervisor_scenarios.rs`), and a partitioned participant is cut from both.
#[async_trait]
impl Faults for SupervisedFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }
    async fn outage(&self, down: bool) {
        self.primary.set_available(!down);
        self.fallback.set_available(!down);
    }
    async fn wipe(&self) {
        self.primary.wipe();
        self.fallback.wipe();
    }
    async fn partition(&self, id: &str, cut: bool) {
        let layers = self.layers.lock().unwrap().get(id).cloned();
        for layer in layers.unwrap_or_else(|| panic!("no participant {id}")) {
            let e = layer
                .upgrade()
                .unwrap_or_else(|| panic!("{id} was dropped"));
            if cut {
                e.suspend();
            } else {
                e.resume();
            }
        }
    }
    async fn expire(&self, id: &str) {
        let layers = self.layers.lock().unwrap().get(id).cloned();
        for layer in layers.unwrap_or_else(|| panic!("no participant {id}")) {
            layer
                .upgrade()
                .unwrap_or_else(|| panic!("{id} was dropped"))
                .expire();
        }
    }
}

fn supervised() -> SupervisedFactory {
    SupervisedFactory {
        primary: MemoryStore::with_session_timeout(Duration::from_millis(500)),
        fallback: MemoryStore::with_session_timeout(Duration::from_millis(500)),
        layers: Mutex::default(),
    }
}

mod conformance_on_supervised_memory {
    succession_core::conformance_tests!(super::supervised());
    succession_core::fault_conformance_tests!(super::supervised());
}
