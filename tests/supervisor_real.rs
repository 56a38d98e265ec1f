//! The dual-layer supervisor on REAL servers (issue 5, "Must show"): three supervised
//! participants n0, n1, n2, each a ZooKeeper latch participant (primary) plus an etcd
//! election participant (fallback), with the mode and heartbeat records in etcd next to the
//! election prefix, built exactly like the CLI's supervised mode. Every test starts its own
//! ZooKeeper and etcd (testkit, dedicated: they get stopped, wiped and restarted) and uses
//! its own paths, so the tests are independent and run in parallel.
//!
//! Every test watches every supervisor's status stream with a `LeadershipChecker` (no two
//! leaders at any instant, terms never going backwards; also checked on every wake-up while
//! waiting) and waits on status streams and supervisor events with deadlines. Fixed windows
//! appear only where the test asserts that nothing happens.
//!
//! Parameters: ZooKeeper session timeout 2 s, etcd lease TTL 2 s, `failover_after` 3 s,
//! `failback_after` 4 s, `check_interval` 250 ms (so `record_timeout` 250 ms, mode lease
//! V = 625 ms, takeover delay G ≈ 698 ms; the failover is written G before
//! `failover_after`, the failback G before `failback_after`). Bounds are computed from
//! `Supervisor::timings()`:
//!
//! * failover: `failover_after + SLACK` after the ZooKeeper-layer leader stepped down
//!   because its server went away;
//! * failback: `failback_after + RECONNECT + SLACK` after ZooKeeper serves again (its
//!   clients first have to find it back);
//!
//! where `SLACK` (2 s) covers two loaded cores and a few etcd round trips, and
//! `RECONNECT` (5 s) the ZooKeeper backend's way back (probes every ≤ 2 s, backoff ≤ 2 s).
//! The leader-cut test uses the builder's default `failover_after` (2 x the session
//! timeout) instead; its doc says why.
//!
//! Measured figures are printed with `eprintln!` (run with `-- --nocapture` to see them);
//! `SUPERVISOR_REAL_LOG=1` also prints every participant's final state and event log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use succession::etcd::{EtcdConfig, EtcdElection};
use succession::supervisor::{Layer, Supervisor, SupervisorEvent, Timings};
use succession::zk::{ZkConfig, ZkElection};
use succession::{Election, ElectionExt, HealthLevel, Role, Status, Term};
use succession_core::conformance::{
    next_event, no_event, wait_on_statuses, EventKind, LeadershipChecker,
};
use succession_testkit::{unique_path, EtcdServer, TcpProxy, ZkServer};
use tokio::sync::broadcast;
use tokio::time::Instant;

const ZK_SESSION: Duration = Duration::from_secs(2);
const ETCD_TTL: Duration = Duration::from_secs(2);
const FAILOVER_AFTER: Duration = Duration::from_secs(3);
const FAILBACK_AFTER: Duration = Duration::from_secs(4);
const CHECK: Duration = Duration::from_millis(250);
/// Scheduling on two loaded cores, a few etcd round trips, ZooKeeper's own shutdown.
const SLACK: Duration = Duration::from_secs(2);
/// How long a ZooKeeper participant may take to find its server back once it serves again.
const RECONNECT: Duration = Duration::from_secs(5);
/// Joining and electing the first leader on freshly started servers.
const START: Duration = Duration::from_secs(30);
/// Re-check conditions at least this often (the mode is not a status stream).
const POLL: Duration = Duration::from_millis(100);

/// Failover deadline after ZooKeeper goes away.
fn failover_bound(t: &Timings) -> Duration {
    t.failover_after + SLACK
}

/// Failback deadline after ZooKeeper serves again.
fn failback_bound(t: &Timings) -> Duration {
    t.failback_after + RECONNECT + SLACK
}

struct Node {
    sup: Arc<Supervisor>,
    zk: Arc<ZkElection>,
    etcd: Arc<EtcdElection>,
    events: broadcast::Receiver<SupervisorEvent>,
}

struct Cluster {
    zk: ZkServer,
    etcd: EtcdServer,
    /// `proxies[i]`: participant i's own link to ZooKeeper, when it goes through a proxy.
    proxies: Vec<Option<TcpProxy>>,
    nodes: Vec<Node>,
    checker: LeadershipChecker,
    timings: Timings,
    log: Arc<Mutex<Vec<String>>>,
    name: String,
    started: Instant,
}

impl Cluster {
    /// Dedicated ZooKeeper and etcd, three supervised participants joined in order n0, n1,
    /// n2 (so n0 heads both queues); `proxied` participants reach ZooKeeper through a proxy.
    async fn start(name: &str, proxied: &[usize], failover_after: Duration) -> Cluster {
        let t0 = Instant::now();
        let (zk, etcd) = tokio::join!(ZkServer::start(), EtcdServer::start());
        let zk = zk.expect("start a dedicated ZooKeeper (missing? run scripts/install-deps)");
        let etcd = etcd.expect("start a dedicated etcd (missing? run scripts/install-deps)");
        let path = unique_path(name);
        let checker = LeadershipChecker::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let id = format!("n{i}");
            let proxy = if proxied.contains(&i) {
                Some(TcpProxy::start(&zk.addr()).await.expect("proxy"))
            } else {
                None
            };
            let connect = proxy.as_ref().map_or_else(|| zk.addr(), |p| p.addr());
            let zk_cfg = ZkConfig::builder(connect, &path, &id)
                .session_timeout(ZK_SESSION)
                .connection_timeout(Duration::from_secs(1))
                .build()
                .expect("valid ZooKeeper config");
            let zk_e = Arc::new(ZkElection::new(zk_cfg).expect("ZooKeeper participant"));
            let etcd_cfg = EtcdConfig::builder()
                .endpoint(etcd.endpoint())
                .prefix(&path)
                .id(&id)
                .ttl(ETCD_TTL)
                .connect_timeout(Duration::from_secs(2))
                .request_timeout(Duration::from_secs(2))
                .build()
                .expect("valid etcd config");
            let etcd_e = Arc::new(EtcdElection::new(etcd_cfg).expect("etcd participant"));
            let (log2, id2) = (log.clone(), id.clone());
            // As the CLI: the records sit next to the election prefix, outside `<prefix>/`.
            let sup = succession::supervised::builder(zk_e.clone(), etcd_e.clone())
                .expect("records")
                .failover_after(failover_after)
                .failback_after(FAILBACK_AFTER)
                .check_interval(CHECK)
                .on_event(move |e| {
                    let ms = t0.elapsed().as_millis();
                    log2.lock().unwrap().push(format!("+{ms:>6} ms {id2}: {e}"));
                })
                .build()
                .expect("supervisor");
            let sup = Arc::new(sup);
            checker.watch(sup.as_ref());
            let events = sup.events();
            nodes.push(Node {
                sup,
                zk: zk_e,
                etcd: etcd_e,
                events,
            });
            proxies.push(proxy);
        }
        let timings = nodes[0].sup.timings();
        let c = Cluster {
            zk,
            etcd,
            proxies,
            nodes,
            checker,
            timings,
            log,
            name: name.to_owned(),
            started: t0,
        };
        for n in &c.nodes {
            tokio::time::timeout(START, n.sup.join())
                .await
                .unwrap_or_else(|_| panic!("{} did not join in time;{}", n.sup.id(), c.describe()))
                .unwrap_or_else(|e| panic!("{} failed to join: {e}", n.sup.id()));
        }
        c
    }

    fn describe(&self) -> String {
        let status = |s: &Status| {
            format!(
                "{} ({}) {} ({})",
                s.role, s.reason, s.health.level, s.health.reason
            )
        };
        let mut out: String = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "\n  {} mode {:?}: {}\n     zk: {}\n     etcd: {}",
                    n.sup.id(),
                    n.sup.mode().map(|m| m.to_string()),
                    status(&n.sup.status().borrow()),
                    status(&n.zk.status().borrow()),
                    status(&n.etcd.status().borrow()),
                )
            })
            .collect();
        out.push_str("\n  events:");
        for l in self.log.lock().unwrap().iter() {
            out.push_str("\n    ");
            out.push_str(l);
        }
        out
    }

    /// Wait until `f` answers, re-checking on every status change of every supervisor and
    /// layer (and every `POLL`); the leadership invariants are checked on every wake-up.
    async fn until<T>(
        &self,
        bound: Duration,
        what: &str,
        mut f: impl FnMut(&Cluster) -> Option<T>,
    ) -> T {
        let rxs = self
            .nodes
            .iter()
            .flat_map(|n| [n.sup.status(), n.zk.status(), n.etcd.status()])
            .collect();
        let check = || {
            if let Err(report) = self.checker.check() {
                panic!("{what}: {report}");
            }
            f(self)
        };
        match wait_on_statuses(rxs, bound, Some(POLL), check).await {
            Some(t) => t,
            None => panic!("{what}: not within {bound:?};{}", self.describe()),
        }
    }

    /// Who publishes `Leader` now: (index, term, layer it leads through).
    fn leaders(&self) -> Vec<(usize, Term, Option<Layer>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let term = n.sup.status().borrow().role.term()?;
                let layer = n
                    .sup
                    .mode()
                    .filter(|m| m.generation == term.generation())
                    .map(|m| m.layer);
                Some((i, term, layer))
            })
            .collect()
    }

    /// One leader, leading through `layer`, matching `pred`.
    async fn leader_through(
        &self,
        layer: Layer,
        bound: Duration,
        what: &str,
        pred: impl Fn(Term) -> bool,
    ) -> (usize, Term) {
        self.until(bound, what, |c| match c.leaders()[..] {
            [(i, t, Some(l))] if l == layer && pred(t) => Some((i, t)),
            _ => None,
        })
        .await
    }

    /// Steady state on ZooKeeper: one leader through it, everyone else following, every
    /// supervisor Healthy.
    async fn settled_on_zk(&self, bound: Duration, what: &str) -> (usize, Term) {
        self.until(bound, what, |c| {
            let [(i, t, Some(Layer::Primary))] = c.leaders()[..] else {
                return None;
            };
            let all = c.nodes.iter().all(|n| {
                let s = n.sup.status().borrow().clone();
                s.health.level == HealthLevel::Healthy
                    && (s.is_leader() || matches!(s.role, Role::Follower { .. }))
            });
            all.then_some((i, t))
        })
        .await
    }

    /// Forget the events received so far.
    fn drain(&mut self) {
        for n in &mut self.nodes {
            while n.events.try_recv().is_ok() {}
        }
    }

    /// Stop ZooKeeper for good and wait for the etcd-layer leader; checks the bound (from the
    /// moment the zk-layer leader stepped down), the events and the terms. Returns (leader,
    /// its term, time from the stop call).
    async fn stop_zk_and_fail_over(&mut self, before: Term) -> (usize, Term, Duration) {
        let t = self.timings;
        self.drain();
        let stop_called = Instant::now();
        self.zk.stop().await.expect("stop ZooKeeper");
        let stop_took = stop_called.elapsed();
        self.until(
            ZK_SESSION + SLACK,
            "the zk-layer leader steps down when its link drops",
            |c| c.leaders().is_empty().then_some(()),
        )
        .await;
        // The instant the zk-layer leader published that it stopped: its client saw the
        // server go. The bound counts from there (a loaded JVM may take a while to exit).
        let gone = self
            .checker
            .events()
            .iter()
            .rev()
            .find_map(|e| match e.kind {
                EventKind::Lost(term, _) if term == before => Some(Instant::from_std(e.at)),
                _ => None,
            })
            .expect("the zk-layer leader's loss is recorded");
        let stepped_down = gone - stop_called;
        let bound = failover_bound(&t);
        let (i, term) = self
            .leader_through(
                Layer::Fallback,
                bound.saturating_sub(gone.elapsed()),
                "an etcd-layer leader after ZooKeeper stopped",
                |_| true,
            )
            .await;
        let took = stop_called.elapsed();
        let since_gone = gone.elapsed();
        eprintln!(
            "[figures] ZooKeeper stop -> etcd-layer leader n{i}: {took:.2?} from the stop call, {since_gone:.2?} from the \
             zk leader stepping down (stop call took {stop_took:.2?}, leader stepped down after {stepped_down:.2?}); \
             bound {bound:.2?} = failover_after {:?} + slack {SLACK:?} (takeover delay {:.2?} included)",
            t.failover_after, t.takeover_delay
        );
        assert!(
            took >= t.failover_after,
            "failed over after {took:?}, sooner than failover_after"
        );
        let (seen, _) = self
            .everyone_sees("failover", SupervisorEvent::is_failover)
            .await;
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
            assert_eq!(*generation, before.generation() + 1, "{e}");
        }
        assert!(
            term > before,
            "etcd-layer term {term} must order after {before}"
        );
        // Under load the etcd-layer leader may have renewed its generation since (a lapse of
        // its mode lease), so only a lower bound.
        assert!(
            term.generation() > before.generation(),
            "{term} after {before}"
        );
        let s = self.nodes[i].sup.status().borrow().clone();
        assert_eq!(s.health.level, HealthLevel::Degraded, "{}", s.health.reason);
        assert!(
            s.health
                .reason
                .contains("running on the fallback layer etcd"),
            "{}",
            s.health.reason
        );
        (i, term, took)
    }

    /// Every participant's next event matching `pred`; at most one says it made the change.
    /// Returns them in participant order, with the initiator's index and the events it
    /// reported before the change. The initiator is normally known; it is not when its
    /// compare-and-swap outlived `record_timeout` (a slow etcd write on loaded cores): then
    /// it learns the outcome from its next read, like everyone else.
    async fn everyone_sees(
        &mut self,
        what: &str,
        pred: fn(&SupervisorEvent) -> bool,
    ) -> (Vec<SupervisorEvent>, Option<(usize, Vec<SupervisorEvent>)>) {
        let mut seen = Vec::new();
        let mut initiator = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let (e, before) = next_event(&mut n.events, SLACK, what, pred).await;
            if initiated_here(&e) {
                initiator.push((i, before));
            }
            seen.push(e);
        }
        assert!(
            initiator.len() <= 1,
            "at most one participant made the change: {seen:#?}"
        );
        if initiator.is_empty() {
            eprintln!(
                "note: no participant knows it made the {what} (its write outlived record_timeout)"
            );
        }
        (seen, initiator.pop())
    }

    /// Assert that no participant reports an event matching `pred` within `window`.
    async fn nothing_for(
        &mut self,
        window: Duration,
        what: &str,
        pred: fn(&SupervisorEvent) -> bool,
    ) {
        join_all(
            self.nodes
                .iter_mut()
                .map(|n| no_event(&mut n.events, window, what, pred)),
        )
        .await;
    }

    /// Drop participant i entirely (supervisor and both layer handles): like a crash, its
    /// etcd lease is left to expire and its ZooKeeper session to time out.
    fn crash(&mut self, i: usize) {
        let n = self.nodes.remove(i);
        drop(n);
    }

    /// Close everyone (concurrently); with ZooKeeper down a close may report that it could
    /// not delete its latch node (ZooKeeper removes it with the session), nothing else.
    async fn close(self, zk_up: bool) {
        if std::env::var_os("SUPERVISOR_REAL_LOG").is_some() {
            eprintln!("final state:{}", self.describe());
        }
        let results = join_all(self.nodes.iter().map(|n| n.sup.close())).await;
        for (n, r) in self.nodes.iter().zip(results) {
            match r {
                Ok(()) => {}
                Err(e) if !zk_up && e.kind() == succession::ErrorKind::Timeout => {
                    eprintln!("{}: close with ZooKeeper down: {e}", n.sup.id())
                }
                Err(e) => panic!("{} failed to close: {e}", n.sup.id()),
            }
            assert_eq!(n.sup.status().borrow().role, Role::Closed);
        }
        self.checker.assert_ok();
        eprintln!(
            "[duration] {}: {:.1?} including server starts",
            self.name,
            self.started.elapsed()
        );
    }
}

fn is_mode_or_leadership_change(e: &SupervisorEvent) -> bool {
    e.is_mode_change() || e.is_leadership_change()
}

fn initiated_here(e: &SupervisorEvent) -> bool {
    matches!(
        e,
        SupervisorEvent::Failover {
            initiated_here: true,
            ..
        } | SupervisorEvent::Failback {
            initiated_here: true,
            ..
        } | SupervisorEvent::Mode {
            initiated_here: true,
            ..
        }
    )
}

// ---------------------------------------------------------------------------------------

/// ZooKeeper stopped for good: the primary leader stops leading at once, an etcd-layer
/// leader acts `failover_after` later (the failover is written the takeover delay before), every
/// participant sees the failover (one made it), and the etcd-layer leader's term orders
/// after the ZooKeeper-layer term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_zk_stopped_for_good_fails_over_to_an_etcd_leader() {
    let mut c = Cluster::start("sup-zk-stop", &[], FAILOVER_AFTER).await;
    let (_, before) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let (i, on_etcd, _) = c.stop_zk_and_fail_over(before).await;
    for n in &c.nodes {
        assert_eq!(n.sup.mode().map(|m| m.layer), Some(Layer::Fallback));
    }
    // The leader's own view agrees with the store.
    let leader = c.nodes[(i + 1) % 3]
        .sup
        .leader()
        .await
        .expect("leader()")
        .expect("a leader");
    assert_eq!(leader.id, c.nodes[i].sup.id());
    assert!(
        leader.term.is_some_and(|t| t >= on_etcd),
        "{leader:?} vs {on_etcd}"
    );
    c.close(false).await;
}

/// After a failover, ZooKeeper comes back (data kept): the etcd-layer leader — and only
/// it — decides the failback once ZooKeeper has been healthy for `failback_after`; a
/// ZooKeeper-layer leader follows with a higher generation; never two leaders in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_zk_back_fails_back_to_a_zk_leader() {
    let mut c = Cluster::start("sup-zk-back", &[], FAILOVER_AFTER).await;
    let t = c.timings;
    let (_, before) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let (etcd_leader, on_etcd, _) = c.stop_zk_and_fail_over(before).await;
    c.drain();
    let restart_called = Instant::now();
    c.zk.restart()
        .await
        .expect("restart ZooKeeper with its data");
    let served = Instant::now();
    let restart_took = served - restart_called;
    // Counted from the moment ZooKeeper serves again (its restart is the JVM's business).
    let bound = failback_bound(&t);
    let primary_ok = c
        .until(
            bound,
            "ZooKeeper healthy again at the etcd-layer leader",
            |c| {
                let s = c.nodes[etcd_leader].zk.status().borrow().clone();
                (s.health.level == HealthLevel::Healthy).then(|| served.elapsed())
            },
        )
        .await;
    let (i, term) = c
        .leader_through(
            Layer::Primary,
            bound.saturating_sub(served.elapsed()),
            "a zk-layer leader after ZooKeeper came back",
            |t| t > on_etcd,
        )
        .await;
    let failback = served.elapsed();
    let took = restart_called.elapsed();
    eprintln!(
        "[figures] ZooKeeper serving again -> zk-layer leader n{i}: {failback:.2?} (ZooKeeper healthy again at the \
         etcd leader after {primary_ok:.2?}; restart call took {restart_took:.2?}; failback_after {:?}; bound {bound:.2?} \
         = failback_after + reconnect {RECONNECT:?} + slack {SLACK:?}; takeover delay included)",
        t.failback_after
    );
    // The primary cannot have been healthy before its restart began.
    assert!(
        took >= t.failback_after,
        "failed back after {took:?}, sooner than failback_after"
    );
    assert!(
        term.generation() > on_etcd.generation(),
        "{term} after {on_etcd}"
    );
    // Only the etcd-layer leader decides the failback, and it stops leading first.
    let (_, initiator) = c
        .everyone_sees("failback", SupervisorEvent::is_failback)
        .await;
    if let Some((k, before_failback)) = initiator {
        let last_leadership = before_failback.iter().rev().find(|e| {
            matches!(
                e,
                SupervisorEvent::LeadershipGained { .. } | SupervisorEvent::LeadershipLost { .. }
            )
        });
        let stopped_first = matches!(
            last_leadership,
            Some(SupervisorEvent::LeadershipLost { layer, .. }) if layer.layer == Layer::Fallback
        );
        assert!(
            stopped_first,
            "n{k} made the failback, so it led through etcd and stopped first: {before_failback:#?}"
        );
        if k != etcd_leader {
            eprintln!("note: the etcd-layer leadership moved from n{etcd_leader} to n{k} first");
        }
    }
    let (j, settled) = c
        .settled_on_zk(RECONNECT + SLACK, "everyone healthy on ZooKeeper")
        .await;
    assert_eq!((j, settled), (i, term));
    c.close(true).await;
}

/// ZooKeeper stopped, wiped and restarted EMPTY (CURATOR-724's situation): whichever comes
/// first — the ZooKeeper backend repairing its latch, or a failover — a leader with a
/// higher term follows, and in the end everyone is back in the ZooKeeper latch under a
/// ZooKeeper-layer leader (nobody stuck outside the election).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_zk_wiped_and_restarted_empty_elects_a_leader_again() {
    let mut c = Cluster::start("sup-zk-wipe", &[], FAILOVER_AFTER).await;
    let t = c.timings;
    let (_, before) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    c.drain();
    let stop_called = Instant::now();
    c.zk.stop().await.expect("stop ZooKeeper");
    c.zk.wipe().expect("wipe ZooKeeper");
    c.zk.restart().await.expect("restart ZooKeeper empty");
    let down_for = stop_called.elapsed();
    // Repair: reconnect and re-create the latch. Failover: counted from the stop.
    let bound = (RECONNECT + SLACK).max(failover_bound(&t).saturating_sub(down_for));
    let (i, first, layer) = c
        .until(
            bound,
            "a leader with a higher term after the wipe",
            |c| match c.leaders()[..] {
                [(i, term, Some(layer))] if term > before => Some((i, term, layer)),
                _ => None,
            },
        )
        .await;
    let first_after = stop_called.elapsed();
    let path = match layer {
        Layer::Primary => "repair (no failover)",
        Layer::Fallback => "failover",
    };
    if layer == Layer::Primary {
        assert_eq!(
            first.generation(),
            before.generation(),
            "no mode change for a repair"
        );
        assert!(
            first.epoch() > before.epoch(),
            "a new latch path after the wipe: {first} vs {before}"
        );
    } else {
        next_event(
            &mut c.nodes[i].events,
            SLACK,
            "failover event",
            SupervisorEvent::is_failover,
        )
        .await;
    }
    // Nobody stuck: a ZooKeeper-layer leader (after a failback if it failed over), and
    // every participant back in the ZooKeeper latch.
    let (j, last) = c
        .settled_on_zk(
            failback_bound(&t) + t.failover_after,
            "everyone back on ZooKeeper",
        )
        .await;
    let all_back = stop_called.elapsed();
    assert!(
        last >= first && last > before,
        "{last} after {first} after {before}"
    );
    let ps = c.nodes[j]
        .zk
        .participants()
        .await
        .expect("latch participants");
    assert_eq!(
        ps.len(),
        3,
        "every participant re-entered the wiped latch: {ps:?}"
    );
    for n in &c.nodes {
        let s = n.zk.status().borrow().clone();
        assert!(
            s.role.is_joined(),
            "{}: {} ({})",
            n.sup.id(),
            s.role,
            s.reason
        );
    }
    eprintln!(
        "[figures] ZooKeeper wiped: down (stop + wipe + restart) {down_for:.2?}; first leader n{i} with a higher term \
         {first_after:.2?} after the stop call, by {path}; everyone back on ZooKeeper (leader n{j}) after {all_back:.2?}"
    );
    c.close(true).await;
}

/// The other order of the wipe: ZooKeeper stays down long enough to fail over, is wiped
/// meanwhile and comes back EMPTY while the cluster runs on etcd. The failback must find
/// every participant back in the re-created latch (a new latch path: a higher epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_zk_wiped_during_a_failover_fails_back_to_the_rebuilt_latch() {
    let mut c = Cluster::start("sup-zk-wipe-fo", &[], FAILOVER_AFTER).await;
    let t = c.timings;
    let (_, before) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let (_, on_etcd, _) = c.stop_zk_and_fail_over(before).await;
    c.zk.wipe().expect("wipe ZooKeeper");
    c.drain();
    c.zk.restart().await.expect("restart ZooKeeper empty");
    let served = Instant::now();
    let (i, term) = c
        .leader_through(
            Layer::Primary,
            failback_bound(&t),
            "a zk-layer leader after the empty ZooKeeper came back",
            |t| t > on_etcd,
        )
        .await;
    let took = served.elapsed();
    assert!(
        term.generation() > on_etcd.generation(),
        "{term} after {on_etcd}"
    );
    assert!(
        term.epoch() > before.epoch(),
        "a new latch path after the wipe: {term} vs {before}"
    );
    c.everyone_sees("failback", SupervisorEvent::is_failback)
        .await;
    let (j, _) = c
        .settled_on_zk(RECONNECT + SLACK, "everyone healthy on ZooKeeper")
        .await;
    let ps = c.nodes[j]
        .zk
        .participants()
        .await
        .expect("latch participants");
    assert_eq!(
        ps.len(),
        3,
        "every participant re-entered the wiped latch: {ps:?}"
    );
    eprintln!(
        "[figures] ZooKeeper wiped while failed over: serving again (empty) -> zk-layer leader n{i}: {took:.2?} \
         (failback_after {:?})",
        t.failback_after
    );
    c.close(true).await;
}

/// etcd (the fallback store, holder of the mode record) stopped while ZooKeeper is healthy:
/// the ZooKeeper-layer leader keeps leading with the same term (default, non-strict mode),
/// nobody fails over, nobody loses or gains leadership — while etcd is down and after it
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_etcd_down_while_zk_healthy_changes_nothing_for_the_leader() {
    let mut c = Cluster::start("sup-etcd-down", &[], FAILOVER_AFTER).await;
    let t = c.timings;
    let (li, t0) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let lead = c.nodes[li].sup.leadership().expect("leads");
    let mode = c.nodes[li].sup.mode().expect("mode");
    c.drain();
    c.etcd.stop().await.expect("stop etcd");
    for n in &c.nodes {
        let s = n
            .sup
            .wait_for_status(t.check_interval + t.record_timeout + SLACK, |s| {
                s.health.reason.contains("mode record unreadable")
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} did not notice etcd is down: {e};{}",
                    n.sup.id(),
                    c.describe()
                )
            });
        assert_eq!(s.health.level, HealthLevel::Degraded, "{}", s.health.reason);
    }
    // Longer than every timer of the supervisor (mode lease, takeover delay, failover_after).
    c.nothing_for(
        t.failover_after * 2,
        "change while etcd is down",
        is_mode_or_leadership_change,
    )
    .await;
    assert!(lead.is_current(), "n{li} still leads with term {t0}");
    assert_eq!(c.leaders(), vec![(li, t0, Some(Layer::Primary))]);
    let back = Instant::now();
    c.etcd.restart().await.expect("restart etcd with its data");
    let (lj, tj) = c
        .settled_on_zk(RECONNECT + SLACK, "everyone healthy once etcd is back")
        .await;
    let healthy_again = back.elapsed();
    eprintln!(
        "[figures] etcd down for {:.2?}: leader and term unchanged; everyone healthy again \
         {healthy_again:.2?} after the etcd restart call",
        t.failover_after * 2
    );
    assert_eq!((lj, tj), (li, t0), "same leader, same term");
    c.nothing_for(
        t.failover_after,
        "change after etcd returned",
        is_mode_or_leadership_change,
    )
    .await;
    assert!(lead.is_current());
    for n in &c.nodes {
        assert_eq!(
            n.sup.mode(),
            Some(mode),
            "{}: the mode never changed",
            n.sup.id()
        );
    }
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close(true).await;
}

/// etcd killed, wiped and restarted EMPTY while ZooKeeper is healthy (the mode record is
/// gone): the ZooKeeper-layer leader, which could not read the record meanwhile, keeps
/// leading under its term while the record is re-created with a higher generation — no
/// leaderless instant, no leadership lost or gained anywhere, no failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_etcd_wiped_under_a_healthy_zk_leader_keeps_leader_and_term() {
    let mut c = Cluster::start("sup-etcd-wipe", &[], FAILOVER_AFTER).await;
    let t = c.timings;
    let (li, t0) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let lead = c.nodes[li].sup.leadership().expect("leads");
    let mode = c.nodes[li].sup.mode().expect("mode");
    c.drain();
    c.etcd.kill().await.expect("kill -9 etcd");
    c.nodes[li]
        .sup
        .wait_for_status(t.check_interval + t.record_timeout + SLACK, |s| {
            s.health.reason.contains("mode record unreadable")
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the leader did not notice etcd is down: {e};{}",
                c.describe()
            )
        });
    c.etcd.wipe().expect("wipe etcd");
    let back = Instant::now();
    c.etcd.restart().await.expect("restart etcd empty");
    let renewed = c
        .until(RECONNECT + SLACK, "the mode record re-created", |c| {
            c.nodes[li]
                .sup
                .mode()
                .filter(|m| m.generation > mode.generation)
                .map(|m| (m, back.elapsed()))
        })
        .await;
    c.nothing_for(
        t.takeover_delay * 2,
        "leadership change after the etcd wipe",
        |e| e.is_leadership_change() || e.is_failover() || e.is_failback(),
    )
    .await;
    eprintln!(
        "[figures] etcd killed, wiped, restarted empty: mode re-created as {} {:.2?} after the restart call; \
         leader n{li} kept term {t0} throughout (no leaderless instant)",
        renewed.0, renewed.1
    );
    assert!(lead.is_current(), "n{li} still leads with term {t0}");
    // It leads under its term's generation while following the renewed mode.
    let leaders: Vec<(usize, Term)> = c.leaders().into_iter().map(|(i, t, _)| (i, t)).collect();
    assert_eq!(leaders, vec![(li, t0)]);
    assert_eq!(c.nodes[li].sup.mode(), Some(renewed.0));
    assert_eq!(renewed.0.layer, Layer::Primary);
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close(true).await;
}

/// A follower (n2) cut from ZooKeeper only (its proxy drops and refuses connections): it
/// sees ZooKeeper unhealthy for twice `failover_after`, but the leader's heartbeats in etcd
/// keep it from failing the cluster over (the heartbeat rule). Same leader, same term; n2
/// rejoins as a healthy follower when its link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_one_participant_cut_from_zk_only_follower_cut_no_failover() {
    let mut c = Cluster::start("sup-cut-follower", &[2], FAILOVER_AFTER).await;
    let t = c.timings;
    let (li, t0) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    assert_ne!(li, 2, "n2 (the proxied one) must be a follower");
    c.drain();
    c.proxies[2].as_ref().expect("n2's proxy").cut();
    c.nodes[2]
        .zk
        .wait_for_status(ZK_SESSION + SLACK, |s| {
            s.health.level == HealthLevel::Unhealthy
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "n2's ZooKeeper layer did not turn unhealthy: {e};{}",
                c.describe()
            )
        });
    c.nothing_for(
        t.failover_after * 2,
        "cluster change for a follower cut from ZooKeeper",
        is_mode_or_leadership_change,
    )
    .await;
    assert_eq!(c.leaders(), vec![(li, t0, Some(Layer::Primary))]);
    assert_eq!(
        c.nodes[2].sup.health_level(),
        HealthLevel::Unhealthy,
        "its active layer is unhealthy there"
    );
    let restored = Instant::now();
    c.proxies[2].as_ref().expect("n2's proxy").restore();
    c.nodes[2]
        .sup
        .wait_for_status(RECONNECT + SLACK, |s| {
            matches!(s.role, Role::Follower { .. }) && s.health.level == HealthLevel::Healthy
        })
        .await
        .unwrap_or_else(|e| panic!("n2 did not come back as a follower: {e};{}", c.describe()));
    let back = restored.elapsed();
    eprintln!(
        "[figures] follower cut from ZooKeeper for {:.2?} past its session: no failover; \
         back as a healthy follower {back:.2?} after restore",
        t.failover_after * 2
    );
    assert_eq!(c.leaders(), vec![(li, t0, Some(Layer::Primary))]);
    assert_eq!(c.checker.grants(), 1, "{:?}", c.checker.events());
    c.close(true).await;
}

/// The leader (n0) cut from ZooKeeper only, silently (its proxy stalls every byte): it
/// stops leading when its client notices (before the server can expire its session), the
/// next participant leads through ZooKeeper under the same generation, and its heartbeats
/// keep n0 from failing the cluster over. Never two leaders.
///
/// `failover_after` is the builder's default here, 2 x the session timeout: the heartbeat
/// gap during a ZooKeeper handover is the session timeout plus the server's expiry tick
/// plus a notification, which 3 s would cover with well under a second to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_one_participant_cut_from_zk_only_leader_blackholed_hands_over_in_zk() {
    let mut c = Cluster::start("sup-cut-leader", &[0], ZK_SESSION * 2).await;
    let t = c.timings;
    let (li, t0) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    assert_eq!(li, 0, "n0 (the proxied one) joined first and leads");
    c.drain();
    let cut = Instant::now();
    c.proxies[0].as_ref().expect("n0's proxy").blackhole();
    c.nodes[0]
        .sup
        .wait_for_status(ZK_SESSION + SLACK, |s| !s.is_leader())
        .await
        .unwrap_or_else(|e| panic!("n0 did not step down: {e};{}", c.describe()));
    let stepped = cut.elapsed();
    let (i, t1) = c
        .leader_through(
            Layer::Primary,
            ZK_SESSION + SLACK * 2,
            "another zk-layer leader",
            |t| t > t0,
        )
        .await;
    let handed = cut.elapsed();
    assert_ne!(i, 0);
    assert_eq!(
        t1.generation(),
        t0.generation(),
        "a handover inside ZooKeeper, no mode change: {t0} -> {t1}"
    );
    eprintln!(
        "[figures] leader blackholed from ZooKeeper: it stepped down after {stepped:.2?}, \
         n{i} led through zk after {handed:.2?} (session timeout {ZK_SESSION:?})"
    );
    c.nothing_for(
        t.failover_after * 2,
        "mode change for a leader cut from ZooKeeper",
        SupervisorEvent::is_mode_change,
    )
    .await;
    assert_eq!(c.leaders(), vec![(i, t1, Some(Layer::Primary))]);
    c.proxies[0].as_ref().expect("n0's proxy").restore();
    c.nodes[0]
        .sup
        .wait_for_status(RECONNECT + SLACK, |s| {
            matches!(s.role, Role::Follower { .. }) && s.health.level == HealthLevel::Healthy
        })
        .await
        .unwrap_or_else(|e| panic!("n0 did not come back as a follower: {e};{}", c.describe()));
    assert_eq!(c.leaders(), vec![(i, t1, Some(Layer::Primary))]);
    c.close(true).await;
}

/// In fallback mode (ZooKeeper stopped), the etcd-layer leader's supervisor and layer
/// handles are dropped, like a crash: its etcd lease expires and another participant leads
/// through etcd, with a higher term in the same generation (no mode change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_leader_handle_dropped_in_fallback_mode_another_leads() {
    let mut c = Cluster::start("sup-drop", &[], FAILOVER_AFTER).await;
    let (_, before) = c.settled_on_zk(START, "a zk-layer leader at start").await;
    let (li, on_etcd, _) = c.stop_zk_and_fail_over(before).await;
    let gone = c.nodes[li].sup.id().to_owned();
    c.drain();
    let dropped = Instant::now();
    c.crash(li);
    let bound = ETCD_TTL + SLACK * 2;
    let (i, term) = c
        .leader_through(Layer::Fallback, bound, "another etcd-layer leader", |t| {
            t > on_etcd
        })
        .await;
    let took = dropped.elapsed();
    let next = c.nodes[i].sup.id().to_owned();
    eprintln!(
        "[figures] etcd-layer leader {gone} dropped (crash): {next} led through etcd after {took:.2?} \
         (etcd lease TTL {ETCD_TTL:?})"
    );
    assert_ne!(c.nodes[i].sup.id(), gone);
    assert!(
        term.generation() >= on_etcd.generation(),
        "{on_etcd} -> {term}"
    );
    // ZooKeeper is still down: the cluster stays on etcd.
    c.nothing_for(CHECK * 4, "mode change", SupervisorEvent::is_mode_change)
        .await;
    c.close(false).await;
}
