//! The conformance suite every backend runs (feature `conformance`).
//!
//! Each function takes a [`Factory`] that makes participants of one fresh election, runs
//! one scenario, and panics with a report when the backend breaks the [`Election`]
//! contract. Every scenario watches all its participants with a [`LeadershipChecker`].
//! Generate one `#[tokio::test]` per scenario with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! mod conformance {
//!     succession_core::conformance_tests!(my_backend_factory().await);
//! }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use crate::checker::{EventKind, LeadershipChecker, LeadershipEvent};
use crate::election::{Election, ElectionExt};
use crate::error::{ErrorKind, Result};
use crate::status::Role;
use crate::supervisor::SupervisorEvent;

/// How long the backend under test may take for each kind of transition.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// From `join` being called to our place being held.
    pub join: Duration,
    /// From the leader resigning or closing to its successor leading.
    pub handover: Duration,
    /// From the leader's handle being dropped without close (like a crash) to its
    /// successor leading (e.g. session timeout or lease TTL plus slack).
    pub crash: Duration,
}

/// Makes participants of ONE fresh election (a fresh path or prefix) for one scenario.
#[async_trait]
pub trait Factory: Send + Sync {
    /// A new, not yet joined participant with this id.
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>>;

    /// The backend's time bounds.
    fn bounds(&self) -> Bounds;

    /// What the store still holds for this election (nodes, keys, leases), for the
    /// clean-exit invariant; must be empty once every participant has closed.
    async fn leftovers(&self) -> Result<Vec<String>>;

    /// The faults this harness can inject, for the fault half of the suite
    /// ([`fault_conformance_tests!`](crate::fault_conformance_tests)); `None` (the
    /// default): none, and every fault scenario is skipped, saying so.
    fn faults(&self) -> Option<&dyn Faults> {
        None
    }
}

/// Which faults a [`Faults`] harness can inject. A scenario whose fault is not supported
/// is skipped (it says so on stderr), like object_store's integration suite does with
/// capabilities a store lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Faults::outage`]: the store unreachable for everyone, then back WITH its data.
    pub outage: bool,
    /// [`Faults::wipe`]: the store killed, its data deleted, restarted empty.
    pub wipe: bool,
    /// [`Faults::partition`]: one participant cut from the store, the others not.
    pub partition: bool,
    /// [`Faults::expire`]: one participant's session ended by the store while its link is
    /// up.
    pub expiry: bool,
}

impl Capabilities {
    /// Every fault.
    pub const ALL: Capabilities = Capabilities {
        outage: true,
        wipe: true,
        partition: true,
        expiry: true,
    };
}

/// Fault injection for one factory's election, against its own store (a real server the
/// harness started, or an in-memory store): the fault half of the [`Election`] contract
/// runs from here on every backend. Each call returns once the fault is in place.
#[async_trait]
pub trait Faults: Send + Sync {
    /// What this harness supports.
    fn capabilities(&self) -> Capabilities;

    /// `down`: make the store unreachable for every participant (e.g. kill the server);
    /// `!down`: bring it back with its data (e.g. restart it on the same data dir) and
    /// return once it serves.
    async fn outage(&self, down: bool);

    /// Kill the store, delete its data, restart it empty; return once it serves.
    async fn wipe(&self);

    /// `cut`: cut participant `id` (as given to [`Factory::participant`]) from the store,
    /// silently (packets dropped, as a network partition does); `!cut`: heal it.
    async fn partition(&self, id: &str, cut: bool);

    /// End participant `id`'s session from the store's side while its link stays up (e.g.
    /// revoke its etcd lease). Only called when [`Capabilities::expiry`] is set.
    async fn expire(&self, id: &str) {
        panic!("this harness cannot expire {id}'s session; its capabilities must not claim expiry")
    }
}

/// The factory's fault harness when it supports `want`; otherwise `None`, after saying on
/// stderr that `scenario` is skipped.
fn faults_for<'a>(
    f: &'a dyn Factory,
    scenario: &str,
    want: impl Fn(Capabilities) -> bool,
) -> Option<&'a dyn Faults> {
    match f.faults() {
        Some(x) if want(x.capabilities()) => Some(x),
        _ => {
            eprintln!("{scenario}: skipped, the backend's harness cannot inject this fault");
            None
        }
    }
}

/// Wait until exactly one of `es` leads with a term above `above` (two leaders at any
/// check panic); its index.
async fn leader_above(
    es: &[Arc<dyn Election>],
    above: crate::Term,
    bound: Duration,
    what: &str,
) -> usize {
    let rxs = es.iter().map(|e| e.status()).collect();
    let found = wait_on_statuses(rxs, bound, None, || {
        let l: Vec<usize> = (0..es.len())
            .filter(|&i| es[i].status().borrow().is_leader())
            .collect();
        assert!(l.len() <= 1, "{what}: two leaders at once: {l:?}");
        l.first()
            .copied()
            .filter(|&i| es[i].leadership().is_some_and(|g| g.term() > above))
    })
    .await;
    found.unwrap_or_else(|| {
        let states: Vec<String> = es
            .iter()
            .map(|e| format!("{}: {}", e.id(), *e.status().borrow()))
            .collect();
        panic!(
            "{what}: no leader with a term above {above} within {bound:?}; statuses:\n{}",
            states.join("\n")
        )
    })
}

/// Three joined participants `a`, `b`, `c` watched by a new checker, once one leads: the
/// checker, the participants, the bounds and the leader's index.
async fn three_led(f: &dyn Factory) -> (LeadershipChecker, Vec<Arc<dyn Election>>, Bounds, usize) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b", "c"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let l = one_leader(&es, b.join).await;
    (checker, es, b, l)
}

/// Wait until none of `es` leads.
async fn nobody_leads(es: &[Arc<dyn Election>], bound: Duration, what: &str) {
    let rxs = es.iter().map(|e| e.status()).collect();
    wait_on_statuses(rxs, bound, None, || {
        es.iter().all(|e| !e.is_leader()).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{what}: someone still leads after {bound:?}"));
}

/// Wait on the status streams until exactly one of `es` leads, and return its index.
/// Panics when two lead at once at any check, or when nobody leads within `bound` (with
/// every participant's role, health and reasons in the message). For tests of any backend.
pub async fn one_leader<E: Election + ?Sized>(es: &[Arc<E>], bound: Duration) -> usize {
    let rxs = es.iter().map(|e| e.status()).collect();
    let found = wait_on_statuses(rxs, bound, None, || {
        let l: Vec<usize> = (0..es.len())
            .filter(|&i| es[i].status().borrow().is_leader())
            .collect();
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        l.first().copied()
    })
    .await;
    found.unwrap_or_else(|| {
        let states: Vec<String> = es
            .iter()
            .map(|e| format!("{}: {}", e.id(), *e.status().borrow()))
            .collect();
        panic!(
            "no leader within {bound:?}; statuses:\n{}",
            states.join("\n")
        )
    })
}

/// Call `f` now and again after every change on any of `rxs` (and at least every `poll`,
/// when given) until it answers; `None` once `bound` has passed without an answer.
/// Status streams that end are dropped from the wait. The building block of the "wait
/// until the participants are in this state" helpers of every backend's tests.
pub async fn wait_on_statuses<T>(
    mut rxs: Vec<tokio::sync::watch::Receiver<crate::Status>>,
    bound: Duration,
    poll: Option<Duration>,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        for rx in &mut rxs {
            rx.borrow_and_update();
        }
        if let Some(t) = f() {
            return Some(t);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let wake = poll.map_or(deadline, |p| (now + p).min(deadline));
        let ended = {
            let changed = async {
                if rxs.is_empty() {
                    return std::future::pending().await;
                }
                let waits = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
                let (r, i, _) = futures::future::select_all(waits).await;
                r.is_err().then_some(i)
            };
            tokio::time::timeout_at(wake, changed).await.ok().flatten()
        };
        if let Some(i) = ended {
            rxs.swap_remove(i);
        }
    }
}

/// The next event on `rx` matching `pred` within `bound`, with the events skipped before
/// it. Panics (naming `what` and every event seen) on timeout or a lagged stream.
pub async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<SupervisorEvent>,
    bound: Duration,
    what: &str,
    pred: impl Fn(&SupervisorEvent) -> bool,
) -> (SupervisorEvent, Vec<SupervisorEvent>) {
    let deadline = tokio::time::Instant::now() + bound;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return (e, seen),
            Ok(Ok(e)) => seen.push(e),
            Ok(Err(e)) => panic!("{what}: event stream error {e}; saw {seen:#?}"),
            Err(_) => panic!("{what}: not within {bound:?}; saw {seen:#?}"),
        }
    }
}

/// Panics if an event matching `pred` arrives on `rx` within `window` (an observation
/// window that asserts that something does NOT happen).
pub async fn no_event(
    rx: &mut tokio::sync::broadcast::Receiver<SupervisorEvent>,
    window: Duration,
    what: &str,
    pred: impl Fn(&SupervisorEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return,
            Ok(Ok(e)) if pred(&e) => panic!("unexpected {what}: {e}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{what}: event stream error {e}"),
        }
    }
}

async fn make(
    f: &dyn Factory,
    ids: &[&str],
    checker: &LeadershipChecker,
) -> Vec<Arc<dyn Election>> {
    let mut v = Vec::new();
    for id in ids {
        let e = f
            .participant(id)
            .await
            .unwrap_or_else(|e| panic!("factory could not make participant {id}: {e}"));
        checker.watch(e.as_ref());
        v.push(e);
    }
    v
}

async fn join_all(f: &dyn Factory, es: &[Arc<dyn Election>]) {
    for e in es {
        tokio::time::timeout(f.bounds().join, e.join())
            .await
            .unwrap_or_else(|_| panic!("{} did not join within {:?}", e.id(), f.bounds().join))
            .unwrap_or_else(|err| panic!("{} failed to join: {err}", e.id()));
    }
}

fn leaders(es: &[Arc<dyn Election>]) -> Vec<usize> {
    es.iter()
        .enumerate()
        .filter(|(_, e)| e.is_leader())
        .map(|(i, _)| i)
        .collect()
}

async fn expect_leader(f: &dyn Factory, e: &Arc<dyn Election>, bound: Duration, what: &str) {
    let _ = f;
    e.wait_for_leadership(bound)
        .await
        .unwrap_or_else(|err| panic!("{what}: {} did not lead within {bound:?}: {err}", e.id()));
}

async fn expect_follower(e: &Arc<dyn Election>, bound: Duration) {
    e.wait_for_status(bound, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .unwrap_or_else(|err| panic!("{} did not become a follower: {err}", e.id()));
}

/// Close every one of `es` (in order), then the store must hold nothing of the election.
async fn close_all_leaving_nothing(f: &dyn Factory, es: &[Arc<dyn Election>]) {
    close_all(es).await;
    let left = f.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "left behind after close: {left:?}");
}

/// The ids of the participants as `e` reads them from the store, in queue order.
async fn queue_ids(e: &Arc<dyn Election>) -> Vec<String> {
    e.participants()
        .await
        .expect("participants")
        .into_iter()
        .map(|p| p.id)
        .collect()
}

async fn close_all(es: &[Arc<dyn Election>]) {
    for e in es {
        e.close()
            .await
            .unwrap_or_else(|err| panic!("{} failed to close: {err}", e.id()));
    }
}

/// Participants lead in the order they joined; each resign or close hands over to the next.
pub async fn fifo_handover_in_join_order(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b", "c"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    expect_leader(f, &es[0], b.join, "first joiner").await;
    expect_follower(&es[1], b.join).await;
    expect_follower(&es[2], b.join).await;
    assert_eq!(leaders(&es), vec![0], "only a leads");
    es[0].resign().await.expect("a resigns");
    expect_leader(f, &es[1], b.handover, "after a resigned").await;
    assert_eq!(leaders(&es), vec![1], "only b leads after a resigned");
    es[1].close().await.expect("b closes");
    expect_leader(f, &es[2], b.handover, "after b closed").await;
    assert_eq!(leaders(&es), vec![2]);
    close_all(&es).await;
    checker.assert_ok();
    assert_eq!(checker.grants(), 3, "{:?}", checker.events());
}

/// Every grant carries a larger term than the one before, over repeated handovers and
/// rejoins of the same participants.
pub async fn terms_strictly_increase_across_grants(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let mut last = None;
    for round in 0..4 {
        let i = round % 2;
        let lead = es[i]
            .wait_for_leadership(b.handover.max(b.join))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {} did not lead: {e}", es[i].id()));
        if let Some(prev) = last {
            assert!(
                lead.term() > prev,
                "round {round}: term {} not above {prev}",
                lead.term()
            );
        }
        last = Some(lead.term());
        es[i].resign().await.expect("resign");
        tokio::time::timeout(b.join, es[i].join())
            .await
            .expect("rejoin in time")
            .expect("rejoin");
    }
    // b resigned last, so a leads again: the fifth grant. Close the follower first so
    // that closing creates no further grant.
    es[0]
        .wait_for_leadership(b.handover)
        .await
        .expect("a leads after the last round");
    close_all(&[es[1].clone(), es[0].clone()]).await;
    checker.assert_ok();
    assert_eq!(checker.grants(), 5, "{:?}", checker.events());
}

/// Closing followers (the last, then one in the middle of the queue) elects nobody new and
/// leaves the rest of the queue working.
pub async fn closing_a_follower_elects_nobody_new(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b", "c", "d"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let lead = es[0].wait_for_leadership(b.join).await.expect("a leads");
    es[3].close().await.expect("d closes");
    es[1].close().await.expect("b (middle) closes");
    let ids = queue_ids(&es[0]).await;
    assert_eq!(ids, vec!["a", "c"], "queue after closing followers");
    assert!(lead.is_current(), "a still leads with the same term");
    assert_eq!(leaders(&es), vec![0]);
    assert_eq!(
        checker.grants(),
        1,
        "nobody new was elected: {:?}",
        checker.events()
    );
    // c's predecessor changed from b to a: it must still take over when a leaves.
    es[0].resign().await.expect("a resigns");
    expect_leader(f, &es[2], b.handover, "after a resigned (c re-watched a)").await;
    close_all(&es).await;
    checker.assert_ok();
}

/// A leader that closes hands over, ends `Closed`, and refuses to join again.
pub async fn closing_the_leader_hands_over(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let lead = es[0].wait_for_leadership(b.join).await.expect("a leads");
    es[0].close().await.expect("a closes");
    assert_eq!(es[0].status().borrow().role, Role::Closed);
    assert!(!lead.is_current());
    expect_leader(f, &es[1], b.handover, "after the leader closed").await;
    let err = es[0].join().await.expect_err("join after close must fail");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    es[0].close().await.expect("close is idempotent");
    close_all(&es).await;
    checker.assert_ok();
}

/// A resigned participant is Idle, can join again, and re-enters at the back of the queue.
pub async fn resign_then_rejoin_goes_to_the_back(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let first = es[0].wait_for_leadership(b.join).await.expect("a leads");
    es[0].resign().await.expect("a resigns");
    assert_eq!(es[0].status().borrow().role, Role::Idle);
    expect_leader(f, &es[1], b.handover, "after a resigned").await;
    es[0].join().await.expect("a rejoins");
    expect_follower(&es[0], b.join).await;
    let ids = queue_ids(&es[1]).await;
    assert_eq!(ids, vec!["b", "a"], "a went to the back");
    es[1].resign().await.expect("b resigns");
    let again = es[0]
        .wait_for_leadership(b.handover)
        .await
        .expect("a leads again");
    assert!(again.term() > first.term());
    close_all(&es).await;
    checker.assert_ok();
}

/// `leader()` and `participants()` read the store and agree with the published roles; an
/// election nobody joined has no leader and no participants (not an error).
pub async fn leader_and_participants_match_roles(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b", "c"], &checker).await;
    assert_eq!(
        es[0].leader().await.expect("leader of empty election"),
        None
    );
    assert!(es[0]
        .participants()
        .await
        .expect("participants of empty election")
        .is_empty());
    join_all(f, &es).await;
    let b = f.bounds();
    for round in 0..2 {
        let lead = es[round]
            .wait_for_leadership(b.handover.max(b.join))
            .await
            .expect("leads");
        let leader = es[2]
            .leader()
            .await
            .expect("leader()")
            .expect("someone leads");
        assert_eq!(leader.id, es[round].id());
        assert!(leader.is_leader);
        if let Some(t) = leader.term {
            assert_eq!(t, lead.term(), "leader() term matches the grant");
        }
        let ps = es[2].participants().await.expect("participants()");
        let ids: Vec<&str> = ps.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, es[round..].iter().map(|e| e.id()).collect::<Vec<_>>());
        assert_eq!(ps.iter().filter(|p| p.is_leader).count(), 1);
        assert!(ps[0].is_leader);
        es[round].close().await.expect("close");
    }
    close_all(&es).await;
    checker.assert_ok();
}

/// Ten participants, each winning leadership ten times (wait, resign, rejoin): never two
/// leaders, terms always increasing.
pub async fn ten_participants_ten_rounds_never_two_leaders(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let es = make(f, &refs, &checker).await;
    let b = f.bounds();
    let patience = (b.handover + b.join) * 12;
    let mut tasks = Vec::new();
    for e in &es {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                e.join().await.expect("join");
                e.wait_for_leadership(patience)
                    .await
                    .unwrap_or_else(|err| panic!("{} round {round}: {err}", e.id()));
                e.resign().await.expect("resign");
            }
        }));
    }
    for t in tasks {
        t.await.expect("participant task panicked");
    }
    close_all(&es).await;
    checker.assert_ok();
    assert_eq!(checker.grants(), 100, "every participant led ten times");
}

/// `wait_for_leadership` with a timeout gives up with `Timeout` in time while another leads.
pub async fn wait_for_leadership_times_out_in_time(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    es[0]
        .wait_for_leadership(f.bounds().join)
        .await
        .expect("a leads");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = es[1]
        .wait_for_leadership(timeout)
        .await
        .expect_err("b must not lead while a does");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took >= timeout, "returned early: {took:?}");
    assert!(
        took < timeout + Duration::from_secs(2),
        "returned late: {took:?}"
    );
    close_all(&es).await;
    checker.assert_ok();
}

/// After every participant closed, the store holds nothing of them.
pub async fn close_leaves_nothing_behind(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b", "c"], &checker).await;
    join_all(f, &es).await;
    es[0]
        .wait_for_leadership(f.bounds().join)
        .await
        .expect("a leads");
    // Close the leader last so that closing followers under a live leader is covered too.
    close_all_leaving_nothing(f, &[es[1].clone(), es[2].clone(), es[0].clone()]).await;
    checker.assert_ok();
}

/// Joining twice holds one place; closing twice is fine; a closed handle refuses `join`.
pub async fn join_is_idempotent_and_closed_handle_refuses(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a"], &checker).await;
    join_all(f, &es).await;
    join_all(f, &es).await;
    es[0]
        .wait_for_leadership(f.bounds().join)
        .await
        .expect("a leads");
    assert_eq!(es[0].participants().await.expect("participants").len(), 1);
    es[0].close().await.expect("close");
    es[0].close().await.expect("second close");
    let err = es[0].join().await.expect_err("join after close");
    assert_eq!(err.kind(), ErrorKind::Closed);
    checker.assert_ok();
}

/// The `Leadership` handle learns of the loss at once, and `run_while_leader` cancels work
/// on loss and refuses to start when not leading.
pub async fn leadership_handle_reports_loss_and_cancels_work(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    let lead = es[0].wait_for_leadership(b.join).await.expect("a leads");
    let err = es[1]
        .run_while_leader(async {})
        .await
        .expect_err("b is not leader");
    assert_eq!(err.kind(), ErrorKind::NotLeader);
    let a = es[0].clone();
    let work = tokio::spawn(async move { a.run_while_leader(std::future::pending::<()>()).await });
    // Let the work start before leadership goes away.
    tokio::task::yield_now().await;
    es[0].resign().await.expect("resign");
    tokio::time::timeout(Duration::from_secs(1), lead.lost())
        .await
        .expect("lost() completes once resigned");
    assert!(!lead.is_current());
    let res = tokio::time::timeout(Duration::from_secs(1), work)
        .await
        .expect("work cancelled in time")
        .expect("task");
    assert_eq!(
        res.expect_err("work was cancelled").kind(),
        ErrorKind::NotLeader
    );
    expect_leader(f, &es[1], b.handover, "after a resigned").await;
    close_all(&es).await;
    checker.assert_ok();
}

/// A leader whose handle is dropped without `close` (like a crashed process) is replaced
/// within the backend's crash bound.
pub async fn dropped_leader_is_replaced_within_crash_bound(f: &dyn Factory) {
    let checker = LeadershipChecker::new();
    let mut es = make(f, &["a", "b"], &checker).await;
    join_all(f, &es).await;
    let b = f.bounds();
    es[0].wait_for_leadership(b.join).await.expect("a leads");
    let a = es.remove(0);
    assert_eq!(Arc::strong_count(&a), 1, "the test holds the only handle");
    drop(a);
    expect_leader(f, &es[0], b.crash, "after the leader's handle was dropped").await;
    close_all(&es).await;
    checker.assert_ok();
}

/// The store is wiped (killed, emptied, restarted) under a leader: it stops leading, and
/// exactly one participant leads again, with a higher term, every participant repaired its
/// place (a later close leaves nothing behind), never two leaders.
pub async fn wiped_store_elects_one_leader_again_with_a_higher_term(f: &dyn Factory) {
    let Some(faults) = faults_for(f, "wiped_store", |c| c.wipe) else {
        return;
    };
    let (checker, es, b, l) = three_led(f).await;
    let before = es[l].leadership().expect("leads").term();
    faults.wipe().await;
    leader_above(&es, before, b.crash + b.join, "after the wipe").await;
    // Everyone is back in the election: the rest take over in turn.
    for _ in 0..2 {
        let l = one_leader(&es, b.handover).await;
        let t = es[l].leadership().expect("leads").term();
        es[l].resign().await.expect("resign");
        leader_above(
            &es,
            t,
            b.handover + b.join,
            "after a resign following the wipe",
        )
        .await;
    }
    close_all_leaving_nothing(f, &es).await;
    checker.assert_ok();
}

/// The store is down for longer than the crash bound, then back with its data: nobody
/// leads while it is down (within the crash bound), exactly one leads once it is back,
/// never two at once.
pub async fn store_outage_stops_every_leader_then_one_leads_again(f: &dyn Factory) {
    let Some(faults) = faults_for(f, "store_outage", |c| c.outage) else {
        return;
    };
    let (checker, es, b, _) = three_led(f).await;
    faults.outage(true).await;
    nobody_leads(&es, b.crash, "the store is down").await;
    faults.outage(false).await;
    one_leader(&es, b.crash + b.join).await;
    close_all(&es).await;
    checker.assert_ok();
}

/// The leader alone is cut from the store: it stops leading and another participant leads
/// (within the crash bound), never both at once; once healed, the old leader is back in
/// the election as a follower.
pub async fn partitioned_leader_steps_down_and_another_leads(f: &dyn Factory) {
    let Some(faults) = faults_for(f, "partitioned_leader", |c| c.partition) else {
        return;
    };
    let (checker, es, b, l) = three_led(f).await;
    let before = es[l].leadership().expect("leads").term();
    let cut = es[l].id().to_owned();
    faults.partition(&cut, true).await;
    let others: Vec<Arc<dyn Election>> = (0..es.len())
        .filter(|&i| i != l)
        .map(|i| es[i].clone())
        .collect();
    leader_above(&es, before, b.crash + b.handover, "the leader cut off").await;
    assert!(!es[l].is_leader(), "the cut-off leader no longer leads");
    faults.partition(&cut, false).await;
    expect_follower(&es[l], b.crash + b.join).await;
    assert_eq!(leaders(&others).len(), 1, "one of the others still leads");
    close_all(&es).await;
    checker.assert_ok();
}

/// The store ends the leader's session while its link stays up (e.g. its etcd lease revoked
/// by someone else): another participant leads with a higher term, the expired one stops
/// leading and takes a new place behind the others, as a follower; nothing is left after
/// close. The store removed the leader at once, so it can only stop when it learns of it:
/// the one overlap allowed is that leader's old term with the new, higher one (the
/// documented fencing case), for at most the crash bound; any other overlap, or a grant
/// whose term does not exceed every earlier one, fails.
pub async fn expired_leader_hands_over_and_rejoins_at_the_back(f: &dyn Factory) {
    let Some(faults) = faults_for(f, "expired_leader", |c| c.expiry) else {
        return;
    };
    let (checker, es, b, l) = three_led(f).await;
    let before = es[l].leadership().expect("leads").term();
    let old = es[l].id().to_owned();
    faults.expire(&old).await;
    let rxs = es.iter().map(|e| e.status()).collect();
    let next = wait_on_statuses(rxs, b.crash + b.handover, None, || {
        let leading: Vec<usize> = (0..es.len()).filter(|&i| es[i].is_leader()).collect();
        match leading.as_slice() {
            [i] if *i != l && es[*i].leadership().is_some_and(|g| g.term() > before) => Some(*i),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{old}'s session expired: no other participant alone leading with a higher term within {:?}",
            b.crash + b.handover
        )
    });
    expect_follower(&es[l], b.crash + b.join).await;
    let order = queue_ids(&es[next]).await;
    assert_eq!(
        order.last(),
        Some(&old),
        "the expired participant rejoined at the back: {order:?}"
    );
    close_all_leaving_nothing(f, &es).await;
    // The checker labels participants `<id>#<n>`.
    let is_old = |label: &str| label.split('#').next() == Some(old.as_str());
    let events = checker.events();
    for (a, ta, b2, tb, overlap) in overlaps(&events) {
        let fenced = (is_old(&a) && ta == before && tb > before)
            || (is_old(&b2) && tb == before && ta > before);
        eprintln!("expired_leader: {a} (term {ta}) and {b2} (term {tb}) overlapped {overlap:?}");
        assert!(
            fenced && overlap <= b.crash,
            "{a} (term {ta}) and {b2} (term {tb}) led at once for {overlap:?}: only the expired leader's old term may overlap a higher one, for at most {:?}",
            b.crash
        );
    }
    let mut grants: Vec<(Instant, crate::Term)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Granted(t) => Some((e.at, t)),
            EventKind::Lost(..) => None,
        })
        .collect();
    grants.sort_by_key(|g| g.0);
    let grants: Vec<crate::Term> = grants.into_iter().map(|g| g.1).collect();
    assert!(
        grants.windows(2).all(|w| w[1] > w[0]),
        "every grant's term exceeds the earlier ones: {grants:?}"
    );
}

/// Every pair of leaderships of different participants that overlapped in `events`:
/// (participant, term, participant, term, how long). A leadership not ended is open.
fn overlaps(
    events: &[LeadershipEvent],
) -> Vec<(String, crate::Term, String, crate::Term, Duration)> {
    let now = Instant::now();
    let mut spans: Vec<(String, crate::Term, Instant, Instant)> = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Granted(t) => spans.push((e.participant.clone(), *t, e.at, now)),
            EventKind::Lost(t, _) => {
                if let Some(s) = spans
                    .iter_mut()
                    .rev()
                    .find(|s| s.0 == e.participant && s.1 == *t)
                {
                    s.3 = e.at;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.0 == b.0 {
                continue;
            }
            let (start, end) = (a.2.max(b.2), a.3.min(b.3));
            if end > start {
                out.push((a.0.clone(), a.1, b.0.clone(), b.1, end - start));
            }
        }
    }
    out
}

/// Generates one `#[tokio::test]` per fault scenario (the fault half of the suite);
/// `$make` as for [`conformance_tests!`](crate::conformance_tests), a [`Factory`] whose
/// [`faults`](Factory::faults) says what it can inject (unsupported scenarios pass
/// after saying they were skipped).
#[macro_export]
macro_rules! fault_conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            wiped_store_elects_one_leader_again_with_a_higher_term,
            store_outage_stops_every_leader_then_one_leads_again,
            partitioned_leader_steps_down_and_another_leads,
            expired_leader_hands_over_and_rejoins_at_the_back
        );
    };
}

/// Generates one `#[tokio::test]` per conformance scenario. `$make` is an expression
/// (evaluated inside each async test, so it may `.await`) giving a value that implements
/// [`Factory`](crate::conformance::Factory) for a fresh election.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            fifo_handover_in_join_order,
            terms_strictly_increase_across_grants,
            closing_a_follower_elects_nobody_new,
            closing_the_leader_hands_over,
            resign_then_rejoin_goes_to_the_back,
            leader_and_participants_match_roles,
            ten_participants_ten_rounds_never_two_leaders,
            wait_for_leadership_times_out_in_time,
            close_leaves_nothing_behind,
            join_is_idempotent_and_closed_handle_refuses,
            leadership_handle_reports_loss_and_cancels_work,
            dropped_leader_is_replaced_within_crash_bound
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $make;
                $crate::conformance::$name(&factory).await;
            }
        )*
    };
}
