//! The conformance suite on the in-memory backend, and proof that the suite can fail.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use succession_core::conformance::{
    self, Bounds, Capabilities, Factory, Faults, LeadershipChecker,
};
use succession_core::memory::{MemoryElection, MemoryStore};
use succession_core::{
    async_trait, Contact, Election, HealthLevel, Participant, Result, Role, Status, StatusCell,
    Term,
};
use tokio::sync::watch;

struct MemoryFactory {
    store: MemoryStore,
    /// The participants made so far, by id (for [`Faults::partition`]); weak, so that a
    /// dropped handle is gone as the suite expects.
    made: Mutex<HashMap<String, Weak<MemoryElection>>>,
}

#[async_trait]
impl Factory for MemoryFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let e = Arc::new(self.store.election(id)?);
        self.made
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::downgrade(&e));
        Ok(e)
    }
    fn faults(&self) -> Option<&dyn Faults> {
        Some(self)
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

/// The in-memory store's faults: an outage is the store unavailable, a wipe forgets every
/// place, a partition suspends one participant (its place expires after the session
/// timeout, as a cut-off session does).
#[async_trait]
impl Faults for MemoryFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }
    async fn outage(&self, down: bool) {
        self.store.set_available(!down);
    }
    async fn wipe(&self) {
        self.store.wipe();
    }
    async fn partition(&self, id: &str, cut: bool) {
        let e = self.made.lock().unwrap().get(id).and_then(Weak::upgrade);
        let e = e.unwrap_or_else(|| panic!("no live participant {id}"));
        if cut {
            e.suspend();
        } else {
            e.resume();
        }
    }
    async fn expire(&self, id: &str) {
        let e = self.made.lock().unwrap().get(id).and_then(Weak::upgrade);
        e.unwrap_or_else(|| panic!("no live participant {id}"))
            .expire();
    }
}

fn memory() -> MemoryFactory {
    MemoryFactory {
        store: MemoryStore::with_session_timeout(Duration::from_millis(500)),
        made: Mutex::default(),
    }
}

mod conformance_on_memory {
    succession_core::conformance_tests!(super::memory());
    succession_core::fault_conformance_tests!(super::memory());
}

/// How a deliberately broken backend rewrites each status its participant publishes.
type Rewrite = Box<dyn FnMut(&Status) -> Role + Send>;

/// A deliberately broken backend: a memory participant whose published role is rewritten.
#[derive(Debug)]
struct Rewritten {
    inner: Arc<MemoryElection>,
    cell: Arc<StatusCell>,
}

impl Rewritten {
    fn new(inner: Arc<MemoryElection>, mut rewrite: Rewrite) -> Self {
        let cell = Arc::new(StatusCell::new());
        let mut rx = inner.status();
        let out = cell.clone();
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                let role = rewrite(&s);
                if role == Role::Closed {
                    out.close("closed");
                    return;
                }
                // A rewritten leader also claims to be healthy (a status cell does not
                // publish an unhealthy leader).
                let level = if role.is_leader() {
                    HealthLevel::Healthy
                } else {
                    s.health.level
                };
                out.set(role, level, s.reason.clone());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Rewritten { inner, cell }
    }
}

#[async_trait]
impl Election for Rewritten {
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

/// Every participant claims leadership as soon as it holds a place, so two (or more) lead
/// at once.
fn everyone_leads() -> Rewrite {
    Box::new(|s| match s.role {
        Role::Follower { .. } => Role::Leader {
            term: Term::new(0, 1),
        },
        ref other => other.clone(),
    })
}

/// A leader that loses its place without resigning (cut off, expired, superseded) keeps
/// reporting `Leader` with its old term, as a backend that ignores a lost connection would.
fn keeps_leading_when_cut() -> Rewrite {
    let mut led: Option<Role> = None;
    Box::new(move |s| match &s.role {
        r @ Role::Leader { .. } => {
            led = Some(r.clone());
            r.clone()
        }
        r @ (Role::Idle | Role::Closed) => {
            led = None;
            r.clone()
        }
        other => led.clone().unwrap_or_else(|| other.clone()),
    })
}

/// The memory factory (with its faults) whose participants are rewritten by `1`.
struct BrokenFactory(MemoryFactory, fn() -> Rewrite);

#[async_trait]
impl Factory for BrokenFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let inner = Arc::new(self.0.store.election(id)?);
        self.0
            .made
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::downgrade(&inner));
        Ok(Arc::new(Rewritten::new(inner, (self.1)())))
    }
    fn bounds(&self) -> Bounds {
        self.0.bounds()
    }
    async fn leftovers(&self) -> Result<Vec<String>> {
        self.0.leftovers().await
    }
    fn faults(&self) -> Option<&dyn Faults> {
        Some(&self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_fails_on_a_backend_that_lets_two_lead() {
    let run = tokio::spawn(async {
        conformance::ten_participants_ten_rounds_never_two_leaders(&BrokenFactory(
            memory(),
            everyone_leads,
        ))
        .await
    })
    .await;
    let msg = panic_message(run.expect_err("the suite must fail on a broken backend"));
    assert!(
        msg.contains("two leaders at once") || msg.contains("term went backwards"),
        "the checker named the violation: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_scenario_fails_on_a_backend_that_lets_two_lead() {
    let run = tokio::spawn(async {
        conformance::fifo_handover_in_join_order(&BrokenFactory(memory(), everyone_leads)).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_scenario_fails_on_a_backend_whose_cut_off_leader_keeps_leading() {
    let run = tokio::spawn(async {
        let f = BrokenFactory(memory(), keeps_leading_when_cut);
        conformance::partitioned_leader_steps_down_and_another_leads(&f).await
    })
    .await;
    let msg = panic_message(run.expect_err("the partition scenario must fail on this backend"));
    assert!(
        msg.contains("two leaders at once"),
        "the scenario named the violation: {msg}"
    );
}

/// What a scenario that failed (panicked in its task) said.
fn panic_message(err: tokio::task::JoinError) -> String {
    assert!(err.is_panic(), "the scenario panicked: {err}");
    let msg = err.into_panic();
    msg.downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "<non-string panic>".into())
}
