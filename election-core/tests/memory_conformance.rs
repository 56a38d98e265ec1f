//! The conformance suite on the in-memory backend, and proof that the suite can fail.

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::{self, Bounds, Factory, LeadershipChecker};
use succession_core::memory::{MemoryElection, MemoryStore};
use succession_core::{
    async_trait, Contact, Election, HealthLevel, Participant, Result, Role, Status, StatusCell,
    Term,
};
use tokio::sync::watch;

struct MemoryFactory {
    store: MemoryStore,
}

#[async_trait]
impl Factory for MemoryFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        Ok(Arc::new(self.store.election(id)?))
    }
    fn bounds(&self) -> Bounds {
        Bounds {
            join: Duration::from_secs(1),
            handover: Duration::from_secs(1),
            crash: self.store.session_timeout() + Duration::from_secs(1),
        }
    }
    async fn leftovers(&self) -> Result<Vec<String>> {
        Ok(self.store.entries())
    }
}

fn memory() -> MemoryFactory {
    MemoryFactory {
        store: MemoryStore::new(),
    }
}

mod conformance_on_memory {
    succession_core::conformance_tests!(super::memory());
}

/// A deliberately broken backend: every participant claims leadership as soon as it holds
/// a place, so two (or more) lead at once.
#[derive(Debug)]
struct EveryoneLeads {
    inner: MemoryElection,
    cell: Arc<StatusCell>,
}

impl EveryoneLeads {
    fn new(inner: MemoryElection) -> Self {
        let cell = Arc::new(StatusCell::new());
        let mut rx = inner.status();
        let out = cell.clone();
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                let role = match s.role {
                    Role::Follower { .. } => Role::Leader {
                        term: Term::new(0, 1),
                    },
                    other => other,
                };
                if role == Role::Closed {
                    out.close("closed");
                    return;
                }
                out.set(role, s.health.level, s.reason.clone());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        EveryoneLeads { inner, cell }
    }
}

#[async_trait]
impl Election for EveryoneLeads {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn join(&self) -> Result<()> {
        self.inner.join().await
    }
    async fn resign(&self) -> Result<()> {
        self.inner.resign().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn status(&self) -> watch::Receiver<Status> {
        self.cell.subscribe()
    }
    async fn leader(&self) -> Result<Option<Participant>> {
        self.inner.leader().await
    }
    async fn participants(&self) -> Result<Vec<Participant>> {
        self.inner.participants().await
    }
    fn contact(&self) -> Contact {
        self.inner.contact()
    }
}

struct BrokenFactory(MemoryFactory);

#[async_trait]
impl Factory for BrokenFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        Ok(Arc::new(EveryoneLeads::new(self.0.store.election(id)?)))
    }
    fn bounds(&self) -> Bounds {
        self.0.bounds()
    }
    async fn leftovers(&self) -> Result<Vec<String>> {
        self.0.leftovers().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_on_a_backend_that_lets_two_lead() {
    let run = tokio::spawn(async {
        conformance::ten_participants_ten_rounds_never_two_leaders(&BrokenFactory(memory())).await
    })
    .await;
    let err = run.expect_err("the suite must fail on a broken backend");
    assert!(err.is_panic());
    let msg = err.into_panic();
    let msg = msg
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "<non-string panic>".into());
    assert!(
        msg.contains("two leaders at once") || msg.contains("term went backwards"),
        "the checker named the violation: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_scenario_fails_on_a_backend_that_lets_two_lead() {
    let run = tokio::spawn(async {
        conformance::fifo_handover_in_join_order(&BrokenFactory(memory())).await
    })
    .await;
    assert!(run.expect_err("must fail").is_panic());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_flags_overlapping_leaders_directly() {
    let a = StatusCell::new();
    let b = StatusCell::new();
    let checker = LeadershipChecker::new();
    checker.watch_stream("a".into(), a.subscribe());
    checker.watch_stream("b".into(), b.subscribe());
    a.set_role(
        Role::Leader {
            term: Term::new(1, 1),
        },
        "x",
    );
    b.set_role(
        Role::Leader {
            term: Term::new(1, 2),
        },
        "x",
    );
    let report = checker.check().expect_err("overlap must be flagged");
    assert!(report.contains("two leaders at once"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_flags_a_term_going_backwards() {
    let a = StatusCell::new();
    let b = StatusCell::new();
    let checker = LeadershipChecker::new();
    checker.watch_stream("a".into(), a.subscribe());
    checker.watch_stream("b".into(), b.subscribe());
    a.set_role(
        Role::Leader {
            term: Term::new(1, 5),
        },
        "x",
    );
    a.set_role(Role::Idle, "resigned");
    b.set_role(
        Role::Leader {
            term: Term::new(1, 4),
        },
        "x",
    );
    let report = checker.check().expect_err("backwards term must be flagged");
    assert!(report.contains("term went backwards"), "{report}");
    let _ = HealthLevel::Healthy;
}
