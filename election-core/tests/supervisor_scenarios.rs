//! The dual-layer supervisor on two in-memory stores (primary store, fallback store holding
//! the mode record): every transition of its state machine, its damping, its events and its
//! configuration checks. Every scenario watches all supervisors with a `LeadershipChecker`
//! (no two leaders, terms never going backwards) and waits on status streams and events
//! with deadlines, never on bare sleeps.
//!
//! Time is tokio's paused clock (`start_paused`): the timings are the realistic ones of a
//! deployment (1.5 s sessions, 3 s failover and failback, 400 ms checks) and the whole file
//! runs in about a second of real time, with no dependence on the machine's speed. The one
//! exception is the blocked-callback test, which needs a real thread to block.
#![cfg(feature = "conformance")]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use succession_core::conformance::{self, LeadershipChecker};
use succession_core::memory::{MemoryElection, MemoryStore};
use succession_core::supervisor::{
    DampedPolicy, Layer, Mode, Supervisor, SupervisorBuilder, SupervisorEvent,
};
use succession_core::{
    CasOutcome, CasRecord, Election, ElectionExt, ErrorKind, HealthLevel, Role, Term,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

const SESSION: Duration = Duration::from_millis(1500);
const FAILOVER: Duration = Duration::from_millis(3000);
const FAILBACK: Duration = Duration::from_millis(3000);
const CHECK: Duration = Duration::from_millis(400);
const BOUND: Duration = Duration::from_secs(60);

struct Node {
    sup: Arc<Supervisor>,
    primary: Arc<MemoryElection>,
    fallback: Arc<MemoryElection>,
    events: broadcast::Receiver<SupervisorEvent>,
    callbacks: mpsc::UnboundedReceiver<SupervisorEvent>,
}

struct Cluster {
    primary: MemoryStore,
    fallback: MemoryStore,
    nodes: Vec<Node>,
    checker: LeadershipChecker,
}

fn base(
    primary: &MemoryStore,
    fallback: &MemoryStore,
    id: &str,
) -> (SupervisorBuilder, Arc<MemoryElection>, Arc<MemoryElection>) {
    let p = Arc::new(primary.election(id).unwrap());
    let f = Arc::new(fallback.election(id).unwrap());
    let b = Supervisor::builder()
        .primary(p.clone())
        .fallback(f.clone())
        .mode_record(Arc::new(fallback.record("mode")))
        .heartbeat_record(Arc::new(fallback.record("mode.heartbeat")))
        .primary_session_timeout(primary.session_timeout())
        .failover_after(FAILOVER)
        .failback_after(FAILBACK)
        .check_interval(CHECK)
        .layer_names("zk", "etcd");
    (b, p, f)
}

/// `n` supervised participants n0..n{n-1}, built with `tune`, watched, joined in order.
async fn cluster(n: usize, tune: impl Fn(SupervisorBuilder) -> SupervisorBuilder) -> Cluster {
    let primary = MemoryStore::with_session_timeout(SESSION);
    let fallback = MemoryStore::with_session_timeout(SESSION);
    let checker = LeadershipChecker::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let (b, p, f) = base(&primary, &fallback, &format!("n{i}"));
        let (tx, callbacks) = mpsc::unbounded_channel();
        let sup = Arc::new(
            tune(b)
                .on_event(move |e| {
                    let _ = tx.send(e.clone());
                })
                .build()
                .unwrap(),
        );
        let events = sup.events();
        checker.watch(sup.as_ref());
        nodes.push(Node {
            sup,
            primary: p,
            fallback: f,
            events,
            callbacks,
        });
    }
    for n in &nodes {
        tokio::time::timeout(BOUND, n.sup.join())
            .await
            .expect("join in time")
            .expect("join");
    }
    Cluster {
        primary,
        fallback,
        nodes,
        checker,
    }
}

impl Cluster {
    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let s = n.sup.status().borrow().clone();
                format!(
                    "\n  {} mode {:?}: {} ({}) health {} ({}); zk {}; etcd {}",
                    n.sup.id(),
                    n.sup.mode().map(|m| m.to_string()),
                    s.role,
                    s.reason,
                    s.health.level,
                    s.health.reason,
                    n.primary.status().borrow().role,
                    n.fallback.status().borrow().role
                )
            })
            .collect()
    }

    /// Wait until `f` gives an answer, re-checking on every status change of every
    /// supervisor and layer.
    async fn until<T>(
        &self,
        bound: Duration,
        what: &str,
        mut f: impl FnMut(&Cluster) -> Option<T>,
    ) -> T {
        let rxs = self
            .nodes
            .iter()
            .flat_map(|n| [n.sup.status(), n.primary.status(), n.fallback.status()])
            .collect();
        match conformance::wait_on_statuses(rxs, bound, None, || f(self)).await {
            Some(t) => t,
            None => panic!("{what}: not within {bound:?};{}", self.describe()),
        }
    }

    fn leaders(&self) -> Vec<(usize, Term)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.sup.status().borrow().role.term().map(|t| (i, t)))
            .collect()
    }

    /// Wait for one leader leading through `layer`.
    async fn leader_through(&self, layer: Layer) -> (usize, Term) {
        self.until(BOUND, &format!("one leader through {layer}"), |c| {
            let l = c.leaders();
            (l.len() == 1 && c.nodes[l[0].0].sup.mode().is_some_and(|m| m.layer == layer))
                .then(|| l[0])
        })
        .await
    }

    /// Forget the events received so far (so that later checks see only what follows).
    fn drain(&mut self) {
        for n in &mut self.nodes {
            while n.events.try_recv().is_ok() {}
        }
    }

    async fn close(&self) {
        for n in &self.nodes {
            n.sup.close().await.expect("close");
        }
    }
}

async fn set_mode(store: &MemoryStore, value: &str) {
    let rec = store.record("mode");
    let cur = rec.read().await.unwrap().expect("mode record exists");
    let out = rec
        .compare_and_swap(Some(cur.version), value.as_bytes().to_vec())
        .await
        .unwrap();
    assert!(matches!(out, CasOutcome::Swapped(_)), "{out:?}");
}

/// Every participant's next failover (or failback) event; exactly one says it made the change.
async fn everyone_sees(
    c: &mut Cluster,
    what: &str,
    pred: fn(&SupervisorEvent) -> bool,
) -> Vec<SupervisorEvent> {
    let mut seen = Vec::new();
    for n in &mut c.nodes {
        seen.push(next_event(&mut n.events, what, pred).await);
    }
    assert_eq!(
        seen.iter()
            .filter(|e| SupervisorEvent::initiated_here(e))
            .count(),
        1,
        "exactly one participant made the change: {seen:#?}"
    );
    seen
}

// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn steady_state_on_a_healthy_primary_keeps_one_leader_and_the_mode() {
    let mut c = cluster(3, |b| b).await;
    let (i, t) = c.leader_through(Layer::Primary).await;
    assert_eq!(i, 0, "the first joiner leads");
    let mode = c.nodes[0].sup.mode().unwrap();
    assert_eq!(
        t.generation(),
        mode.generation,
        "supervisor term = layer term with the mode generation"
    );
    for n in &c.nodes {
        n.sup
            .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Healthy)
            .await
            .unwrap();
        assert_eq!(n.sup.mode(), Some(mode));
    }
    for n in &c.nodes[1..] {
        assert_eq!(
            n.sup.status().borrow().role,
            Role::Follower {
                leader: Some("n0".into())
            }
        );
    }
    let leader = c.nodes[2].sup.leader().await.unwrap().unwrap();
    assert_eq!(
        (leader.id.as_str(), leader.term),
        ("n0", Some(t)),
        "leader() answers from the active layer"
    );
    assert_eq!(c.nodes[1].sup.participants().await.unwrap().len(), 3);
    c.drain();
    conformance::no_event(
        &mut c.nodes[1].events,
        FAILOVER * 3,
        "change in steady state",
        |e| {
            SupervisorEvent::is_mode_change(e)
                || matches!(e, SupervisorEvent::LeadershipLost { .. })
        },
    )
    .await;
    assert_eq!(c.leaders(), vec![(0, t)]);
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close().await;
    c.checker.assert_ok();
}

async fn fail_over(c: &mut Cluster) -> (Term, Duration) {
    let (_, before) = c.leader_through(Layer::Primary).await;
    let start = Instant::now();
    c.primary.set_available(false);
    c.until(BOUND, "the primary leader stops at once", |c| {
        c.leaders().is_empty().then_some(())
    })
    .await;
    let (_, after) = c.leader_through(Layer::Fallback).await;
    let took = start.elapsed();
    let seen = everyone_sees(c, "failover", SupervisorEvent::is_failover).await;
    for e in &seen {
        let SupervisorEvent::Failover {
            from,
            to,
            generation,
            ..
        } = e
        else {
            unreachable!()
        };
        assert_eq!(
            (from.layer, &*from.name, to.layer, &*to.name),
            (Layer::Primary, "zk", Layer::Fallback, "etcd")
        );
        assert_eq!(*generation, before.generation() + 1);
    }
    assert!(after > before, "{after} > {before}");
    assert_eq!(after.generation(), before.generation() + 1);
    (after, took)
}

#[tokio::test(start_paused = true)]
async fn primary_outage_fails_over_after_failover_after() {
    let mut c = cluster(3, |b| b).await;
    let (_, took) = fail_over(&mut c).await;
    assert!(
        took >= FAILOVER,
        "failed over after {took:?}, before failover_after {FAILOVER:?}"
    );
    assert!(
        took < FAILOVER + Duration::from_secs(1),
        "failed over only after {took:?}"
    );
    let (i, _) = c.leader_through(Layer::Fallback).await;
    let s = c.nodes[i].sup.status().borrow().clone();
    assert_eq!(s.health.level, HealthLevel::Degraded);
    assert!(
        s.health
            .reason
            .contains("running on the fallback layer etcd"),
        "{}",
        s.health.reason
    );
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn primary_recovery_fails_back_after_failback_after() {
    let mut c = cluster(3, |b| b).await;
    let (on_fallback, _) = fail_over(&mut c).await;
    let back = Instant::now();
    c.primary.set_available(true);
    let (_, t) = c.leader_through(Layer::Primary).await;
    let took = back.elapsed();
    assert!(
        took >= FAILBACK,
        "failed back after {took:?}, before failback_after {FAILBACK:?}"
    );
    assert!(
        took < FAILBACK + Duration::from_secs(1),
        "failed back only after {took:?}"
    );
    assert!(
        t > on_fallback && t.generation() == on_fallback.generation() + 1,
        "{t} after {on_fallback}"
    );
    everyone_sees(&mut c, "failback", SupervisorEvent::is_failback).await;
    for n in &c.nodes {
        n.sup
            .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Healthy)
            .await
            .unwrap();
    }
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn fallback_outage_changes_nothing_for_the_primary_leader() {
    let mut c = cluster(3, |b| b).await;
    let (_, t) = c.leader_through(Layer::Primary).await;
    let lead = c.nodes[0].sup.leadership().unwrap();
    c.drain();
    c.fallback.set_available(false);
    c.nodes[0]
        .sup
        .wait_for_status(BOUND, |s| {
            s.health.reason.contains("mode record unreadable")
        })
        .await
        .unwrap();
    // Longer than every timer of the supervisor (lease, takeover delay, failover_after).
    conformance::no_event(
        &mut c.nodes[0].events,
        FAILOVER * 3,
        "change for the leader",
        |e| {
            SupervisorEvent::is_mode_change(e)
                || matches!(e, SupervisorEvent::LeadershipLost { .. })
        },
    )
    .await;
    assert!(lead.is_current(), "still leading with term {t}");
    let s = c.nodes[0].sup.status().borrow().clone();
    assert_eq!(s.health.level, HealthLevel::Degraded, "{}", s.health.reason);
    c.fallback.set_available(true);
    for n in &c.nodes {
        n.sup
            .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Healthy)
            .await
            .unwrap();
    }
    assert!(lead.is_current());
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn unreadable_mode_record_keeps_the_last_mode_and_primary_handover_works() {
    let c = cluster(3, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    let mode = c.nodes[0].sup.mode().unwrap();
    c.fallback.set_available(false);
    for n in &c.nodes {
        n.sup
            .wait_for_status(BOUND, |s| {
                s.health
                    .reason
                    .contains("mode record unreadable, keeping primary/")
            })
            .await
            .unwrap();
    }
    c.nodes[0].sup.resign().await.unwrap();
    let (i, t1) = c.leader_through(Layer::Primary).await;
    assert_eq!(
        i, 1,
        "the next primary participant leads, trusting the last mode it saw"
    );
    assert!(t1 > t0 && t1.generation() == mode.generation);
    for n in &c.nodes {
        assert_eq!(n.sup.mode(), Some(mode), "last mode kept");
    }
    c.fallback.set_available(true);
    c.nodes[1]
        .sup
        .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Healthy)
        .await
        .unwrap();
    assert_eq!(c.leaders(), vec![(1, t1)]);
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn garbage_in_the_mode_record_is_refused_and_the_last_mode_kept() {
    let mut c = cluster(2, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    let mode = c.nodes[0].sup.mode().unwrap();
    set_mode(&c.fallback, "primary/seven").await;
    for n in &c.nodes {
        let s = n
            .sup
            .wait_for_status(BOUND, |s| s.health.reason.contains("not LAYER/GENERATION"))
            .await
            .unwrap();
        assert!(
            s.health.reason.contains("delete the record"),
            "says how to repair: {}",
            s.health.reason
        );
        assert_eq!(n.sup.mode(), Some(mode));
    }
    assert_eq!(
        c.leaders(),
        vec![(0, t0)],
        "the primary leader keeps leading"
    );
    // An operator repairs the record with a newer generation: everyone follows it.
    set_mode(&c.fallback, &format!("primary/{}", mode.generation + 5)).await;
    next_event(&mut c.nodes[1].events, "mode renewed", |e| {
        matches!(e, SupervisorEvent::Mode { generation, initiated_here: false, .. } if *generation == mode.generation + 5)
    })
    .await;
    let (i, t1) = c
        .until(BOUND, "leader under the repaired generation", |c| {
            c.leaders()
                .into_iter()
                .find(|(_, t)| t.generation() == mode.generation + 5)
        })
        .await;
    assert_eq!(i, 0);
    assert!(t1 > t0);
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn primary_leader_steps_down_when_it_sees_the_mode_move_and_the_fallback_leader_decides_failback(
) {
    let mut c = cluster(3, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    // Make n1 or n2 (whichever joined the fallback first), not n0, the fallback leader: the
    // two-leader window is between two participants.
    c.nodes[0].fallback.resign().await.unwrap();
    c.nodes[0].fallback.join().await.unwrap();
    let entries = c.fallback.entries();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2], "n0", "{entries:?}");
    let fb: usize = match entries[0].as_str() {
        "n1" => 1,
        "n2" => 2,
        other => panic!("unexpected fallback leader {other}: {entries:?}"),
    };
    let g = c.nodes[0].sup.mode().unwrap().generation;
    let timings = c.nodes[0].sup.timings();
    // Another participant (here: the test) flips the mode to the fallback.
    let flip = Instant::now();
    set_mode(&c.fallback, &format!("fallback/{}", g + 1)).await;
    c.nodes[0]
        .sup
        .wait_for_status(BOUND, |s| !s.is_leader())
        .await
        .unwrap();
    let stepped_down = flip.elapsed();
    let (i, t1) = c.leader_through(Layer::Fallback).await;
    let led = flip.elapsed();
    assert_eq!(i, fb);
    assert!(
        stepped_down < timings.takeover_delay,
        "n0 stepped down after {stepped_down:?}"
    );
    assert!(
        led >= timings.takeover_delay,
        "n1 led after {led:?}, inside the takeover delay"
    );
    assert!(t1 > t0 && t1.generation() == g + 1);
    let e = next_event(
        &mut c.nodes[0].events,
        "failover seen by n0",
        SupervisorEvent::is_failover,
    )
    .await;
    assert!(!SupervisorEvent::initiated_here(&e), "{e}");
    // The primary is healthy, so the fallback leader fails back after failback_after.
    let e = next_event(
        &mut c.nodes[fb].events,
        "failback decided by n1",
        SupervisorEvent::is_failback,
    )
    .await;
    assert!(
        SupervisorEvent::initiated_here(&e),
        "the fallback leader decides failback: {e}"
    );
    let (i, t2) = c.leader_through(Layer::Primary).await;
    assert_eq!(i, 0);
    assert!(t2 > t1 && t2.generation() == g + 2);
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn one_follower_cut_from_the_primary_alone_does_not_fail_the_cluster_over() {
    let mut c = cluster(3, |b| b).await;
    let (_, t) = c.leader_through(Layer::Primary).await;
    c.drain();
    c.nodes[2].primary.suspend();
    c.nodes[2]
        .primary
        .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Unhealthy)
        .await
        .unwrap();
    // n2 sees the primary unhealthy for far longer than failover_after, but hears n0's heartbeat.
    for n in &mut c.nodes {
        conformance::no_event(
            &mut n.events,
            FAILOVER * 3,
            "failover",
            SupervisorEvent::is_mode_change,
        )
        .await;
    }
    assert_eq!(c.leaders(), vec![(0, t)]);
    assert_eq!(
        c.nodes[2].sup.health_level(),
        HealthLevel::Unhealthy,
        "its active layer is unhealthy here"
    );
    c.nodes[2].primary.resume();
    c.nodes[2]
        .sup
        .wait_for_status(BOUND, |s| {
            matches!(s.role, Role::Follower { .. }) && s.health.level == HealthLevel::Healthy
        })
        .await
        .unwrap();
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn primary_leader_cut_from_the_primary_alone_hands_over_within_the_primary() {
    let mut c = cluster(3, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    c.drain();
    c.nodes[0].primary.suspend();
    assert!(
        !c.nodes[0].sup.is_leader() || {
            c.nodes[0]
                .sup
                .wait_for_status(BOUND, |s| !s.is_leader())
                .await
                .unwrap();
            true
        }
    );
    let (i, t1) = c.leader_through(Layer::Primary).await;
    assert_eq!(
        i, 1,
        "the primary elects the next participant after n0's session expires"
    );
    assert!(
        t1 > t0 && t1.generation() == t0.generation(),
        "same generation: {t0} -> {t1}"
    );
    for n in &mut c.nodes {
        conformance::no_event(
            &mut n.events,
            FAILOVER * 2,
            "failover",
            SupervisorEvent::is_mode_change,
        )
        .await;
    }
    c.nodes[0].primary.resume();
    c.nodes[0]
        .sup
        .wait_for_status(BOUND, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .unwrap();
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn leader_resuming_the_same_layer_grant_leads_again_with_a_higher_term() {
    let c = cluster(2, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    // A short suspension (shorter than the session): the layer gives n0 leadership back,
    // as a new grant with a higher layer term.
    c.nodes[0].primary.suspend();
    c.nodes[0]
        .sup
        .wait_for_status(BOUND, |s| !s.is_leader())
        .await
        .unwrap();
    c.nodes[0].primary.resume();
    let regrant = c.nodes[0]
        .primary
        .wait_for_status(BOUND, |s| s.is_leader())
        .await
        .unwrap()
        .role
        .term()
        .unwrap();
    assert!(
        regrant > Term::new(t0.epoch(), t0.sequence()),
        "the layer re-grant has a new term: {regrant} after {t0}"
    );
    // The supervisor never hands out t0 twice.
    let (i, t1) = c
        .until(BOUND, "n0 leads again", |c| {
            c.leaders().into_iter().find(|(_, t)| *t != t0)
        })
        .await;
    assert_eq!(i, 0);
    // The layer's new grant already orders after t0: no generation renewal is needed.
    assert!(t1 > t0, "{t0} -> {t1}");
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn primary_wipe_in_primary_mode_elects_a_leader_again_with_a_higher_term() {
    let mut c = cluster(3, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    c.drain();
    c.primary.wipe();
    let (_, t1) = c
        .until(BOUND, "a leader after the wipe", |c| {
            c.leaders().into_iter().find(|(_, t)| *t > t0)
        })
        .await;
    assert_eq!(
        t1.generation(),
        t0.generation(),
        "no mode change for a primary wipe"
    );
    assert!(t1.epoch() > t0.epoch());
    conformance::no_event(
        &mut c.nodes[1].events,
        FAILOVER * 2,
        "failover",
        SupervisorEvent::is_mode_change,
    )
    .await;
    assert_eq!(c.primary.entries().len(), 3, "everyone repaired its place");
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn fallback_wipe_recreates_the_mode_record_with_a_higher_generation() {
    let mut c = cluster(3, |b| b).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    c.drain();
    c.fallback.wipe();
    let e = next_event(&mut c.nodes[0].events, "mode re-created", |e| {
        matches!(e, SupervisorEvent::Mode { .. })
    })
    .await;
    let SupervisorEvent::Mode {
        layer, generation, ..
    } = &e
    else {
        unreachable!()
    };
    assert_eq!(layer.layer, Layer::Primary, "the last mode's layer is kept");
    assert!(*generation > t0.generation());
    let (i, t1) = c
        .until(BOUND, "a leader under the new generation", |c| {
            c.leaders()
                .into_iter()
                .find(|(_, t)| t.generation() > t0.generation())
        })
        .await;
    assert_eq!(i, 0);
    assert!(t1 > t0);
    let m: Mode = String::from_utf8(
        c.fallback
            .record("mode")
            .read()
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap()
    .parse()
    .unwrap();
    assert_eq!(m.generation, t1.generation());
    c.close().await;
    c.checker.assert_ok();
}

/// The fallback store goes down, is wiped and serves again (empty) under a healthy
/// primary leader: it re-creates the mode record and keeps leading under its term all
/// along (it could not read the record since its last confirmation, so the wipe hides
/// nothing an unreadable record would not).
#[tokio::test(start_paused = true)]
async fn fallback_wiped_during_an_outage_costs_the_primary_leader_nothing() {
    let mut c = cluster(3, |b| b).await;
    let (i, t0) = c.leader_through(Layer::Primary).await;
    let timings = c.nodes[i].sup.timings();
    c.fallback.set_available(false);
    // Until the leader saw a read of the record fail.
    c.nodes[i]
        .sup
        .wait_for_status(BOUND, |s| {
            s.health.reason.contains("mode record unreadable")
        })
        .await
        .unwrap();
    c.fallback.wipe();
    c.drain();
    c.fallback.set_available(true);
    let e = next_event(&mut c.nodes[i].events, "mode re-created", |e| {
        matches!(e, SupervisorEvent::Mode { .. })
    })
    .await;
    let SupervisorEvent::Mode { generation, .. } = &e else {
        unreachable!()
    };
    assert!(*generation > t0.generation());
    conformance::no_event(
        &mut c.nodes[i].events,
        timings.takeover_delay * 3,
        "leadership change after the wipe",
        |e| {
            matches!(
                e,
                SupervisorEvent::LeadershipLost { .. } | SupervisorEvent::LeadershipGained { .. }
            )
        },
    )
    .await;
    assert_eq!(c.leaders(), vec![(i, t0)], "same leader, same term");
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn strict_mode_lease_steps_the_primary_leader_down_when_the_mode_cannot_be_confirmed() {
    let mut c = cluster(3, |b| b.strict_mode_lease(true)).await;
    let (_, t0) = c.leader_through(Layer::Primary).await;
    let timings = c.nodes[0].sup.timings();
    let cut = Instant::now();
    c.fallback.set_available(false);
    let s = c.nodes[0]
        .sup
        .wait_for_status(BOUND, |s| !s.is_leader())
        .await
        .unwrap();
    assert!(
        cut.elapsed() < timings.takeover_delay,
        "stepped down after {:?}",
        cut.elapsed()
    );
    assert!(
        s.reason.contains("not confirmed within the mode lease"),
        "{}",
        s.reason
    );
    c.drain();
    for n in &mut c.nodes {
        conformance::no_event(
            &mut n.events,
            timings.takeover_delay * 2,
            "leadership",
            |e| matches!(e, SupervisorEvent::LeadershipGained { .. }),
        )
        .await;
    }
    c.fallback.set_available(true);
    let (i, t1) = c.leader_through(Layer::Primary).await;
    assert_eq!(i, 0);
    assert!(
        t1 > t0,
        "{t1} > {t0}: a resumed leadership gets a renewed generation"
    );
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn repeated_failovers_grow_the_failback_delay() {
    let mut c = cluster(2, |b| {
        b.policy(DampedPolicy::new().hold_down(Duration::from_millis(50)))
    })
    .await;
    c.leader_through(Layer::Primary).await;
    let mut delays = Vec::new();
    for round in 0..2 {
        c.primary.set_available(false);
        next_event(
            &mut c.nodes[0].events,
            &format!("failover {round}"),
            SupervisorEvent::is_failover,
        )
        .await;
        let up = Instant::now();
        c.primary.set_available(true);
        next_event(
            &mut c.nodes[0].events,
            &format!("failback {round}"),
            SupervisorEvent::is_failback,
        )
        .await;
        delays.push(up.elapsed());
    }
    // The failback is written the takeover delay G before the primary leader acts.
    let g = c.nodes[0].sup.timings().takeover_delay;
    assert!(
        delays[0] >= FAILBACK - g && delays[0] < FAILBACK * 2,
        "first failback after {:?}",
        delays[0]
    );
    assert!(
        delays[1] >= FAILBACK * 2 - g,
        "second failback after only {:?}: not grown",
        delays[1]
    );
    c.leader_through(Layer::Primary).await;
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn hold_down_delays_a_failover_right_after_a_failback() {
    let hold = Duration::from_millis(700);
    let mut c = cluster(2, |b| b.policy(DampedPolicy::new().hold_down(hold))).await;
    c.leader_through(Layer::Primary).await;
    c.primary.set_available(false);
    next_event(
        &mut c.nodes[0].events,
        "failover",
        SupervisorEvent::is_failover,
    )
    .await;
    c.primary.set_available(true);
    next_event(
        &mut c.nodes[0].events,
        "failback",
        SupervisorEvent::is_failback,
    )
    .await;
    let back = Instant::now();
    c.primary.set_available(false);
    next_event(
        &mut c.nodes[0].events,
        "second failover",
        SupervisorEvent::is_failover,
    )
    .await;
    let took = back.elapsed();
    // Without the hold-down it would fail over after failover_after (300 ms).
    assert!(
        took >= hold - Duration::from_millis(50),
        "failed over again after only {took:?}"
    );
    c.close().await;
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn callbacks_see_health_then_failover_then_leadership_in_order_and_none_lost() {
    let mut c = cluster(2, |b| b).await;
    c.leader_through(Layer::Primary).await;
    c.primary.set_available(false);
    c.leader_through(Layer::Fallback).await;
    c.close().await;
    c.checker.assert_ok();
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let mut streamed = Vec::new();
        loop {
            match tokio::time::timeout(BOUND, n.events.recv())
                .await
                .expect("stream ends after close")
            {
                Ok(e) => streamed.push(e),
                Err(broadcast::error::RecvError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut called = Vec::new();
        while let Some(e) = tokio::time::timeout(BOUND, n.callbacks.recv())
            .await
            .expect("callbacks end after close")
        {
            called.push(e);
        }
        // The stream was subscribed right after build; callbacks see everything from build on.
        assert!(
            called.ends_with(&streamed) && called.len() - streamed.len() <= 2,
            "n{i}: {called:#?}\nvs\n{streamed:#?}"
        );
        let pos = |from: usize, what: &str, f: &dyn Fn(&SupervisorEvent) -> bool| -> usize {
            from + called[from..]
                .iter()
                .position(f)
                .unwrap_or_else(|| panic!("n{i}: no {what} after #{from}: {called:#?}"))
        };
        let sick = pos(
            0,
            "primary health event",
            &|e| matches!(e, SupervisorEvent::LayerHealth { layer, level, .. } if layer.layer == Layer::Primary && *level != HealthLevel::Healthy),
        );
        let failover = pos(sick, "failover", &SupervisorEvent::is_failover);
        if i == 0 {
            // n0 led through the primary, then (first in the fallback queue too) through the fallback.
            let lost = pos(
                sick,
                "leadership lost",
                &|e| matches!(e, SupervisorEvent::LeadershipLost { layer, .. } if layer.layer == Layer::Primary),
            );
            assert!(
                lost < failover,
                "n0 stopped leading before the failover: {called:#?}"
            );
            pos(
                failover,
                "leadership gained through the fallback",
                &|e| matches!(e, SupervisorEvent::LeadershipGained { layer, term } if layer.layer == Layer::Fallback && term.generation() > 0),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_callback_never_blocks_the_supervisor() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g = gate.clone();
    let mut c = cluster(1, move |b| {
        let g = g.clone();
        b.on_leadership(move |_| {
            let (open, cv) = &*g;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        })
    })
    .await;
    // The leadership callback blocks; the supervisor still leads and keeps publishing.
    c.leader_through(Layer::Primary).await;
    next_event(
        &mut c.nodes[0].events,
        "leadership gained on the stream",
        |e| matches!(e, SupervisorEvent::LeadershipGained { .. }),
    )
    .await;
    c.nodes[0].sup.resign().await.unwrap();
    next_event(
        &mut c.nodes[0].events,
        "leadership lost on the stream",
        |e| matches!(e, SupervisorEvent::LeadershipLost { .. }),
    )
    .await;
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    c.close().await;
    let mut kinds = Vec::new();
    while let Some(e) = tokio::time::timeout(BOUND, c.nodes[0].callbacks.recv())
        .await
        .unwrap()
    {
        kinds.push(e.name());
    }
    let lead: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| k.starts_with("leadership"))
        .collect();
    assert_eq!(
        lead,
        ["leadership_gained", "leadership_lost"],
        "all delivered in order once unblocked: {kinds:?}"
    );
    c.checker.assert_ok();
}

#[tokio::test(start_paused = true)]
async fn a_layer_refusing_to_join_is_reported_and_fails_join_when_it_is_the_active_one() {
    let (p, f) = stores();
    // The standby (fallback) layer refuses: the supervisor still leads through the primary.
    let (b, _, fallback) = base(&p, &f, "a");
    fallback.close().await.unwrap();
    let a = b.build().unwrap();
    let checker = LeadershipChecker::new();
    checker.watch(&a);
    a.join().await.unwrap();
    a.wait_for_leadership(BOUND).await.unwrap();
    let s = a
        .wait_for_status(BOUND, |s| {
            s.health
                .reason
                .contains("joining the standby layer etcd failed")
        })
        .await
        .unwrap();
    assert_eq!(s.health.level, HealthLevel::Degraded);
    a.close().await.unwrap();
    // The active (primary) layer refuses: join fails with the layer's error kind.
    let (b, primary, _) = base(&p, &f, "b");
    primary.close().await.unwrap();
    let b = b.build().unwrap();
    checker.watch(&b);
    let e = tokio::time::timeout(BOUND, b.join())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(
        e.to_string()
            .contains("joining the active layer primary (zk) failed"),
        "{e}"
    );
    assert_eq!(b.health_level(), HealthLevel::Unhealthy);
    b.close().await.unwrap();
    checker.assert_ok();
}

// ---------------------------------------------------------------------------------------
// Configuration checks.

fn stores() -> (MemoryStore, MemoryStore) {
    (
        MemoryStore::with_session_timeout(SESSION),
        MemoryStore::with_session_timeout(SESSION),
    )
}

fn err(b: SupervisorBuilder) -> String {
    let e = b.build().expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    e.to_string()
}

#[tokio::test]
async fn failover_after_without_room_for_the_session_timeout_and_the_takeover_delay_is_refused_naming_the_minimum(
) {
    let (p, f) = (
        MemoryStore::with_session_timeout(Duration::from_secs(2)),
        MemoryStore::new(),
    );
    // check_interval 400 ms: takeover delay G = 1.11 s; the decision window (failover_after
    // minus G) must be at least the session timeout.
    for short in [Duration::from_secs(1), Duration::from_secs(2)] {
        let (b, _, _) = base(&p, &f, "a");
        let msg = err(b.failover_after(short));
        assert!(msg.contains("session timeout"), "{msg}");
        assert!(msg.contains("takeover delay (1.11s"), "{msg}");
        assert!(
            msg.contains("raise failover_after to at least 3.11s"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    let (b, _, _) = base(&p, &f, "a");
    let sup = b
        .failover_after(Duration::from_millis(3110))
        .build()
        .expect("the minimum is fine");
    let t = sup.timings();
    assert_eq!(t.failover_decision, Duration::from_secs(2));
}

#[tokio::test]
async fn an_unset_check_interval_shrinks_so_that_failover_after_fits_the_takeover_delay() {
    let (p, f) = (
        MemoryStore::with_session_timeout(Duration::from_secs(2)),
        MemoryStore::new(),
    );
    let build = |failover: Duration, x: Option<Duration>| {
        let b = Supervisor::builder()
            .primary(Arc::new(p.election("a").unwrap()))
            .fallback(Arc::new(f.election("a").unwrap()))
            .mode_record(Arc::new(f.record("mode")))
            .heartbeat_record(Arc::new(f.record("mode.heartbeat")))
            .primary_session_timeout(p.session_timeout())
            .failover_after(failover);
        match x {
            Some(x) => b.check_interval(x),
            None => b,
        }
        .build()
    };
    // The CLI's `--session-timeout 2s --failover-after 3s`: check_interval 360 ms, G = 1 s,
    // decided after 2 s (the session timeout).
    let t = build(Duration::from_secs(3), None).unwrap().timings();
    assert_eq!(
        (t.check_interval, t.takeover_delay, t.failover_decision),
        (
            Duration::from_millis(360),
            Duration::from_secs(1),
            Duration::from_secs(2)
        )
    );
    // Enough room: the default 1 s.
    let t = build(Duration::from_secs(12), None).unwrap().timings();
    assert_eq!(t.check_interval, Duration::from_secs(1));
    // Set by hand, it is kept, and a failover_after too short for it is refused.
    let e = build(Duration::from_secs(3), Some(Duration::from_secs(1))).unwrap_err();
    assert!(
        e.to_string()
            .contains("raise failover_after to at least 4.76s"),
        "{e}"
    );
    // No room even at the smallest derived interval (50 ms, G = 147.5 ms).
    let e = build(Duration::from_millis(2100), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("raise failover_after to at least 2.1475s"),
        "{e}"
    );
}

#[tokio::test]
async fn failback_after_shorter_than_the_takeover_delay_is_refused_naming_the_minimum() {
    let (p, f) = stores();
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b.failback_after(Duration::from_millis(1000)));
    assert!(
        msg.contains("raise failback_after to at least 1.11s"),
        "{msg}"
    );
}

#[tokio::test]
async fn zero_durations_are_refused() {
    let (p, f) = stores();
    type Tune = fn(SupervisorBuilder) -> SupervisorBuilder;
    let cases: [(&str, Tune); 5] = [
        ("failover_after", |b| b.failover_after(Duration::ZERO)),
        ("failback_after", |b| b.failback_after(Duration::ZERO)),
        ("check_interval", |b| b.check_interval(Duration::ZERO)),
        ("record_timeout", |b| b.record_timeout(Duration::ZERO)),
        ("primary_session_timeout", |b| {
            b.primary_session_timeout(Duration::ZERO)
        }),
    ];
    for (what, set) in cases {
        let (b, _, _) = base(&p, &f, "a");
        let msg = err(set(b));
        assert!(msg.contains(what) && msg.contains("zero"), "{what}: {msg}");
    }
}

#[tokio::test]
async fn the_same_election_or_record_for_both_roles_is_refused() {
    let (p, f) = stores();
    let (b, same, _) = base(&p, &f, "a");
    let msg = err(b.fallback(same));
    assert!(msg.contains("same election handle"), "{msg}");
    let (b, _, _) = base(&p, &f, "a");
    let rec: Arc<dyn CasRecord> = Arc::new(f.record("mode"));
    let msg = err(b.mode_record(rec.clone()).heartbeat_record(rec));
    assert!(msg.contains("same record"), "{msg}");
}

#[tokio::test]
async fn inconsistent_or_missing_parts_are_refused_with_what_to_set() {
    let (p, f) = stores();
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b.fallback(Arc::new(f.election("b").unwrap())));
    assert!(msg.contains("same id"), "{msg}");
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b.record_timeout(CHECK * 2));
    assert!(msg.contains("lower record_timeout"), "{msg}");
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b.check_interval(FAILOVER));
    assert!(msg.contains("2 x check_interval"), "{msg}");
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b.layer_names("", "etcd"));
    assert!(msg.contains("layer name"), "{msg}");
    let msg = err(Supervisor::builder());
    assert!(msg.contains("SupervisorBuilder::primary"), "{msg}");
    let msg = err(Supervisor::builder().primary(Arc::new(p.election("a").unwrap())));
    assert!(msg.contains("SupervisorBuilder::fallback"), "{msg}");
}

#[test]
fn building_outside_a_tokio_runtime_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (p, f) = rt.block_on(async { stores() });
    let (b, _, _) = base(&p, &f, "a");
    let msg = err(b);
    assert!(msg.contains("inside a tokio runtime"), "{msg}");
}

/// The next event matching `pred` within [`BOUND`].
async fn next_event(
    rx: &mut broadcast::Receiver<SupervisorEvent>,
    what: &str,
    pred: impl Fn(&SupervisorEvent) -> bool,
) -> SupervisorEvent {
    conformance::next_event(rx, BOUND, what, pred).await.0
}
