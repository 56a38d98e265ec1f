//! The shared conformance suite on supervised participants: each one a [`Supervisor`] over a
//! primary and a fallback in-memory store, with the mode record in the fallback store.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::{Bounds, Factory};
use succession_core::memory::MemoryStore;
use succession_core::supervisor::Supervisor;
use succession_core::{async_trait, Election, Result};

struct SupervisedFactory {
    primary: MemoryStore,
    fallback: MemoryStore,
}

#[async_trait]
impl Factory for SupervisedFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let s = Supervisor::builder()
            .primary(Arc::new(self.primary.election(id)?))
            .fallback(Arc::new(self.fallback.election(id)?))
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
}

fn supervised() -> SupervisedFactory {
    SupervisedFactory {
        primary: MemoryStore::new(),
        fallback: MemoryStore::new(),
    }
}

mod conformance_on_supervised_memory {
    succession_core::conformance_tests!(super::supervised());
}
