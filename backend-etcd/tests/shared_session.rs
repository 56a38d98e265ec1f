//! Many elections on one [`EtcdSession`] (one connection, one lease, one keeper), against
//! real etcd: one leader per election across several sessions, closing a session hands every
//! election it led to another session with ONE LeaseRevoke, closing one election leaves the
//! others alone, a session that loses its lease demotes every election on it before anything
//! else, a wiped etcd, `etcdctl elect` interop, several participants of one session on one
//! prefix. The 10,000-election memory figure is an ignored measurement.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{grpc_calls_handled, raw_client, Ctl};
use etcd_client::GetOptions;
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, HealthLevel, Role};
use succession_etcd::{EtcdElection, EtcdSession, EtcdSessionConfig};
use succession_testkit::{shared_etcd, unique_path, EtcdServer, TcpProxy};
use tokio::sync::Notify;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(20);

fn session(endpoint: &str, ttl_secs: u64) -> EtcdSession {
    EtcdSession::new(
        EtcdSessionConfig::builder()
            .endpoint(endpoint)
            .ttl(Duration::from_secs(ttl_secs))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .build()
            .expect("valid session config"),
    )
    .expect("session")
}

/// `grid[p][s]`: the election of session `s` on prefix `p`, all watched (one checker per
/// prefix) and woken through one `Notify`.
struct Grid {
    prefixes: Vec<String>,
    grid: Vec<Vec<Arc<EtcdElection>>>,
    checkers: Vec<LeadershipChecker>,
    changed: Arc<Notify>,
}

impl Grid {
    /// Elections on `prefixes` for every session in `sessions`, joined session by session
    /// (so the first session leads everywhere), elections of one session concurrently.
    async fn join(sessions: &[EtcdSession], prefixes: Vec<String>) -> Grid {
        let changed = Arc::new(Notify::new());
        let checkers: Vec<LeadershipChecker> =
            prefixes.iter().map(|_| LeadershipChecker::new()).collect();
        let mut grid: Vec<Vec<Arc<EtcdElection>>> = prefixes.iter().map(|_| Vec::new()).collect();
        for (s, session) in sessions.iter().enumerate() {
            let mine: Vec<Arc<EtcdElection>> = prefixes
                .iter()
                .map(|p| Arc::new(session.election(p, &format!("s{s}")).unwrap()))
                .collect();
            for (p, e) in mine.iter().enumerate() {
                checkers[p].watch(e.as_ref());
                let mut rx = e.status();
                let wake = changed.clone();
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        wake.notify_one();
                    }
                    wake.notify_one();
                });
                grid[p].push(e.clone());
            }
            let joins = mine.iter().map(|e| e.join());
            tokio::time::timeout(BOUND, futures::future::try_join_all(joins))
                .await
                .expect("every election of the session joined in time")
                .expect("join");
        }
        Grid {
            prefixes,
            grid,
            checkers,
            changed,
        }
    }

    /// The sessions leading election `p` now.
    fn leaders(&self, p: usize) -> Vec<usize> {
        (0..self.grid[p].len())
            .filter(|&s| self.grid[p][s].is_leader())
            .collect()
    }

    /// Waits (woken by status changes, at most `bound`) until `cond` holds.
    async fn until(&self, bound: Duration, what: &str, mut cond: impl FnMut(&Grid) -> bool) {
        let deadline = Instant::now() + bound;
        loop {
            for p in 0..self.grid.len() {
                let l = self.leaders(p);
                assert!(
                    l.len() <= 1,
                    "two leaders at once in {}: {l:?}",
                    self.prefixes[p]
                );
            }
            if cond(self) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{what}: not within {bound:?}; {}", self.describe());
            }
            let _ = tokio::time::timeout_at(deadline, self.changed.notified()).await;
        }
    }

    /// Every election led by exactly one session, among `live`, which are healthy.
    fn all_led_by(&self, live: &[usize]) -> bool {
        (0..self.grid.len()).all(|p| {
            let l = self.leaders(p);
            l.len() == 1
                && live.contains(&l[0])
                && live.iter().all(|&s| {
                    let st = self.grid[p][s].status().borrow().clone();
                    st.health.level == HealthLevel::Healthy
                        && (st.is_leader() || matches!(st.role, Role::Follower { .. }))
                })
        })
    }

    fn describe(&self) -> String {
        let bad: Vec<String> = (0..self.grid.len())
            .filter(|&p| self.leaders(p).len() != 1)
            .take(5)
            .map(|p| {
                let st: Vec<String> = self.grid[p]
                    .iter()
                    .map(|e| e.status().borrow().to_string())
                    .collect();
                format!("{}: {st:?}", self.prefixes[p])
            })
            .collect();
        format!("first elections without exactly one leader: {bad:#?}")
    }

    fn assert_ok(&self) {
        for c in &self.checkers {
            c.assert_ok();
        }
    }
}

fn prefixes(tag: &str, n: usize) -> Vec<String> {
    let base = unique_path(tag);
    (0..n).map(|i| format!("{base}/shard-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_elections_on_each_of_three_sessions_fail_over_when_the_busiest_session_closes_with_one_lease_revoke(
) {
    // A server of its own: the LeaseRevoke count must not see other tests' revokes.
    let etcd = EtcdServer::start().await.unwrap();
    let sessions: Vec<EtcdSession> = (0..3).map(|_| session(&etcd.endpoint(), 5)).collect();
    let started = Instant::now();
    let g = Grid::join(&sessions, prefixes("thousand", 1000)).await;
    g.until(BOUND, "every election led", |g| g.all_led_by(&[0, 1, 2]))
        .await;
    eprintln!(
        "3 x 1000 elections joined and led in {:?}",
        started.elapsed()
    );
    for s in &sessions {
        assert_eq!(s.elections(), 1000);
        assert!(s.lease_id().is_some());
    }
    let leases: std::collections::HashSet<i64> =
        sessions.iter().map(|s| s.lease_id().unwrap()).collect();
    assert_eq!(leases.len(), 3, "one lease per session");
    // Every election of a session is on the session's lease.
    for p in 0..g.grid.len() {
        for (s, session) in sessions.iter().enumerate() {
            assert_eq!(
                g.grid[p][s].lease().unwrap().id,
                session.lease_id().unwrap()
            );
        }
    }
    let led_by = |s: usize| (0..g.grid.len()).filter(|&p| g.leaders(p) == [s]).count();
    let busiest = (0..3).max_by_key(|&s| led_by(s)).unwrap();
    let led: Vec<usize> = (0..g.grid.len())
        .filter(|&p| g.leaders(p) == [busiest])
        .collect();
    assert!(!led.is_empty());

    let before = grpc_calls_handled(&etcd.endpoint(), "LeaseRevoke").await;
    let closing = Instant::now();
    sessions[busiest].close().await.unwrap();
    let closed_in = closing.elapsed();
    let after = grpc_calls_handled(&etcd.endpoint(), "LeaseRevoke").await;
    assert_eq!(
        after - before,
        1,
        "LeaseRevoke calls handled during close()"
    );
    assert_eq!(sessions[busiest].elections(), 0);
    assert!(sessions[busiest].election("/x", "y").is_err(), "closed");
    for p in 0..g.grid.len() {
        assert_eq!(g.grid[p][busiest].status().borrow().role, Role::Closed);
    }
    let live: Vec<usize> = (0..3).filter(|&s| s != busiest).collect();
    g.until(BOUND, "every election led by the other sessions", |g| {
        g.all_led_by(&live)
    })
    .await;
    eprintln!(
        "session {busiest} led {} elections; closed in {closed_in:?}, all led again {:?} after close",
        led.len(),
        closing.elapsed()
    );
    for s in &live {
        sessions[*s].close().await.unwrap();
    }
    g.assert_ok();
    let mut c = raw_client(&etcd.endpoint()).await;
    let left = c
        .get("/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    // Only the epoch records (one per election prefix) stay.
    assert_eq!(left.kvs().len(), 1000, "candidate keys left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_one_election_deletes_its_key_and_leaves_the_others_on_the_session_leading() {
    let etcd = shared_etcd().await;
    let s = session(&etcd.endpoint(), 3);
    let g = Grid::join(std::slice::from_ref(&s), prefixes("close-one", 5)).await;
    g.until(BOUND, "every election led", |g| g.all_led_by(&[0]))
        .await;
    let terms: Vec<_> = g
        .grid
        .iter()
        .map(|row| row[0].leadership().unwrap().term())
        .collect();
    let lease = s.lease_id().unwrap();
    g.grid[2][0].close().await.unwrap();
    assert_eq!(s.elections(), 4);
    let mut c = raw_client(&etcd.endpoint()).await;
    let keys = c
        .get(
            format!("{}/", g.prefixes[2]),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(keys.kvs().is_empty(), "the closed election's key is gone");
    for p in [0, 1, 3, 4] {
        let l = g.grid[p][0].leadership().expect("still leading");
        assert_eq!(l.term(), terms[p], "same term: untouched");
        let keys = c
            .get(
                format!("{}/", g.prefixes[p]),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert_eq!(keys.kvs().len(), 1);
        assert_eq!(keys.kvs()[0].lease(), lease);
    }
    assert_eq!(s.lease_id(), Some(lease), "the lease lives on");
    s.close().await.unwrap();
    g.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_session_demotes_every_election_at_once_before_its_lease_can_expire_then_rejoins_under_a_new_lease(
) {
    const TTL: Duration = Duration::from_secs(2);
    let etcd = EtcdServer::start().await.unwrap();
    let proxy = TcpProxy::start(&etcd.addr()).await.unwrap();
    // Session 0 reaches etcd only through the proxy; session 1 directly.
    let sessions = [
        session(&proxy.endpoint(), TTL.as_secs()),
        session(&etcd.endpoint(), TTL.as_secs()),
    ];
    let g = Grid::join(&sessions, prefixes("partition", 50)).await;
    g.until(BOUND, "session 0 leads every election", |g| {
        g.all_led_by(&[0, 1]) && (0..g.grid.len()).all(|p| g.leaders(p) == [0])
    })
    .await;
    let old_lease = sessions[0].lease_id().unwrap();

    proxy.blackhole();
    // (Loose for a loaded machine; the safety claim is the expiry check below.)
    g.until(TTL * 3, "session 0 stepped down everywhere", |g| {
        (0..g.grid.len()).all(|p| !g.grid[p][0].is_leader())
    })
    .await;
    // All at once (one signal for the session), before the server could expire the lease.
    let downs: Vec<std::time::Instant> = g
        .grid
        .iter()
        .map(|row| {
            let st = row[0].status().borrow().clone();
            st.leaderships
                .last()
                .and_then(|l| l.end)
                .expect("led, then stepped down")
        })
        .collect();
    let first = *downs.iter().min().unwrap();
    let last = *downs.iter().max().unwrap();
    assert!(
        last.duration_since(first) < Duration::from_millis(100),
        "demotions spread over {:?}",
        last.duration_since(first)
    );
    let info = g.grid[0][0]
        .lease()
        .expect("the lease is not known lost yet");
    assert!(
        last < info.expires_no_earlier_than,
        "stepped down before the server could expire the lease"
    );
    for row in &g.grid {
        assert_eq!(row[0].status().borrow().role, Role::Suspended);
    }
    // Session 1 takes over once the lease expired on the server.
    g.until(BOUND, "session 1 leads every election", |g| {
        (0..g.grid.len()).all(|p| g.leaders(p) == [1])
    })
    .await;

    proxy.restore();
    g.until(BOUND, "session 0 re-joined behind session 1", |g| {
        g.all_led_by(&[0, 1]) && (0..g.grid.len()).all(|p| g.leaders(p) == [1])
    })
    .await;
    let new_lease = sessions[0].lease_id().unwrap();
    assert_ne!(new_lease, old_lease, "a new lease after the loss");
    for row in &g.grid {
        assert_eq!(row[0].lease().unwrap().id, new_lease);
    }
    for s in &sessions {
        s.close().await.unwrap();
    }
    g.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoked_by_another_client_moves_every_election_to_one_new_lease_with_one_grant() {
    // A server of its own: the LeaseGrant count must not see other tests' grants.
    let etcd = EtcdServer::start().await.unwrap();
    let s = session(&etcd.endpoint(), 3);
    let g = Grid::join(std::slice::from_ref(&s), prefixes("revoked", 50)).await;
    g.until(BOUND, "every election led", |g| g.all_led_by(&[0]))
        .await;
    let old = s.lease_id().unwrap();
    let terms: Vec<_> = g
        .grid
        .iter()
        .map(|row| row[0].leadership().unwrap().term())
        .collect();
    let grants = grpc_calls_handled(&etcd.endpoint(), "LeaseGrant").await;
    let txns = grpc_calls_handled(&etcd.endpoint(), "Txn").await;
    let mut c = raw_client(&etcd.endpoint()).await;
    c.lease_revoke(old).await.unwrap();
    g.until(BOUND, "every election led again on a new lease", |g| {
        g.all_led_by(&[0])
            && g.grid
                .iter()
                .all(|row| row[0].lease().is_some_and(|l| l.id != old))
    })
    .await;
    let new = s.lease_id().unwrap();
    for (p, row) in g.grid.iter().enumerate() {
        assert!(row[0].leadership().unwrap().term() > terms[p], "a new term");
        assert_eq!(row[0].lease().unwrap().id, new);
    }
    assert_eq!(
        grpc_calls_handled(&etcd.endpoint(), "LeaseGrant").await - grants,
        1,
        "one new lease for the whole session"
    );
    // No election spins on the dead lease: a handful of txns each (campaign, reads).
    let txns = grpc_calls_handled(&etcd.endpoint(), "Txn").await - txns;
    assert!(txns <= 50 * 8, "{txns} txns to recover 50 elections");
    s.close().await.unwrap();
    g.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wiped_and_restarted_empty_every_election_of_every_session_is_led_again() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let sessions = [session(&etcd.endpoint(), 3), session(&etcd.endpoint(), 3)];
    let g = Grid::join(&sessions, prefixes("wipe", 20)).await;
    g.until(BOUND, "every election led", |g| g.all_led_by(&[0, 1]))
        .await;
    let before: Vec<_> = g
        .grid
        .iter()
        .map(|row| row.iter().find_map(|e| e.leadership()).unwrap().term())
        .collect();
    let leases: Vec<_> = sessions.iter().map(|s| s.lease_id().unwrap()).collect();

    etcd.stop().await.unwrap();
    etcd.wipe().unwrap();
    etcd.restart().await.unwrap(); // empty: revision 1, no keys, no leases
    g.until(BOUND, "every election led again on new leases", |g| {
        g.all_led_by(&[0, 1])
            && sessions
                .iter()
                .zip(&leases)
                .all(|(s, old)| s.lease_id().is_some_and(|l| l != *old))
    })
    .await;
    for (p, row) in g.grid.iter().enumerate() {
        let after = row.iter().find_map(|e| e.leadership()).unwrap().term();
        assert!(after > before[p], "term {after} not above {}", before[p]);
    }
    for s in &sessions {
        s.close().await.unwrap();
    }
    g.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_sees_our_shared_session_leaders_and_we_follow_its_leader() {
    let etcd = shared_etcd().await;
    let ps = prefixes("ctl-shared", 3);
    // etcdctl leads the third election before we join.
    let mut ctl = Ctl::spawn(&etcd.endpoint(), &["elect", &ps[2], "ctl-1"]);
    ctl.expect_line("ctl-1").await;
    let s = session(&etcd.endpoint(), 3);
    let g = Grid::join(std::slice::from_ref(&s), ps.clone()).await;
    g.until(BOUND, "we lead the first two", |g| {
        g.leaders(0) == [0] && g.leaders(1) == [0]
    })
    .await;
    for p in &ps[..2] {
        let mut listener = Ctl::spawn(&etcd.endpoint(), &["elect", "-l", p]);
        listener.expect_line("s0").await;
    }
    g.grid[2][0]
        .wait_for_status(
            BOUND,
            |st| matches!(&st.role, Role::Follower { leader: Some(l) } if l == "ctl-1"),
        )
        .await
        .unwrap();
    ctl.interrupt().await; // etcdctl resigns
    g.until(BOUND, "we lead all three", |g| g.all_led_by(&[0]))
        .await;
    s.close().await.unwrap();
    g.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_participants_of_one_session_on_one_prefix_take_turns_with_distinct_keys() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("same-prefix");
    let s = session(&etcd.endpoint(), 3);
    let checker = LeadershipChecker::new();
    let mut es = Vec::new();
    for id in ["a", "b", "c"] {
        let e = Arc::new(s.election(&prefix, id).unwrap());
        checker.watch(e.as_ref());
        tokio::time::timeout(BOUND, e.join())
            .await
            .expect("joined in time")
            .unwrap();
        es.push(e);
    }
    es[0].wait_for_leadership(BOUND).await.unwrap();
    let lease = s.lease_id().unwrap();
    let mut c = raw_client(&etcd.endpoint()).await;
    let keys = c
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut names: Vec<String> = keys
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{prefix}/{lease:x}"),
            format!("{prefix}/{lease:x}_1"),
            format!("{prefix}/{lease:x}_2"),
        ]
    );
    let mut listener = Ctl::spawn(&etcd.endpoint(), &["elect", "-l", &prefix]);
    listener.expect_line("a").await;
    for e in &es[1..] {
        e.wait_for_status(
            BOUND,
            |st| matches!(&st.role, Role::Follower { leader: Some(l) } if l == "a"),
        )
        .await
        .unwrap();
    }
    es[0].close().await.unwrap();
    es[1].wait_for_leadership(BOUND).await.unwrap();
    listener.expect_line("b").await;
    es[1].resign().await.unwrap();
    es[2].wait_for_leadership(BOUND).await.unwrap();
    listener.expect_line("c").await;
    // b campaigns again on the same lease and queues behind c.
    es[1].join().await.unwrap();
    assert!(!es[1].is_leader());
    s.close().await.unwrap();
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_of_a_session_revokes_its_lease_and_dropping_one_election_deletes_its_key(
) {
    let etcd = shared_etcd().await;
    let ps = prefixes("drop", 2);
    let s = session(&etcd.endpoint(), 3);
    let a = s.election(&ps[0], "a").unwrap();
    let b = s.election(&ps[1], "b").unwrap();
    a.join().await.unwrap();
    b.join().await.unwrap();
    a.wait_for_leadership(BOUND).await.unwrap();
    b.wait_for_leadership(BOUND).await.unwrap();
    let lease = s.lease_id().unwrap();
    let mut c = raw_client(&etcd.endpoint()).await;
    let keys = |c: &mut etcd_client::Client, p: String| {
        let mut c = c.clone();
        async move {
            c.get(format!("{p}/"), Some(GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .kvs()
                .len()
        }
    };
    // One election dropped: its key goes (in the background), the session lives on.
    drop(a);
    let deadline = Instant::now() + BOUND;
    while keys(&mut c, ps[0].clone()).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped election's key stays"
        );
        tokio::task::yield_now().await;
    }
    assert!(b.is_leader());
    assert_eq!(s.elections(), 1);
    // The last handles dropped: the lease is revoked (in the background).
    drop(s);
    drop(b);
    while common::lease_ids(&c).await.contains(&lease) {
        assert!(
            Instant::now() < deadline,
            "the lease of a dropped session stays"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(keys(&mut c, ps[1].clone()).await, 0);
}

/// Live heap bytes of this test binary (a counting wrapper of the system allocator), so
/// that the measurement below can tell retained memory from allocator fragmentation.
struct Counting;

static LIVE_HEAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Live allocations by size class (log2 of the size).
static LIVE_BY_CLASS: [std::sync::atomic::AtomicIsize; 40] =
    [const { std::sync::atomic::AtomicIsize::new(0) }; 40];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).leading_zeros()) as usize
}

fn classes() -> Vec<isize> {
    LIVE_BY_CLASS
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect()
}

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
            LIVE_BY_CLASS[class(layout.size())].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout);
        LIVE_HEAP.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        LIVE_BY_CLASS[class(layout.size())].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = std::alloc::System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
            LIVE_HEAP.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
            LIVE_BY_CLASS[class(new_size)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            LIVE_BY_CLASS[class(layout.size())].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap_kib() -> f64 {
    LIVE_HEAP.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
}

/// Resident memory of this process in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Measurement (run with `--ignored --nocapture`): resident memory per election with 10,000
/// elections joined (each leading its own prefix) on one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: 10,000 elections against a dedicated etcd"]
async fn memory_per_election_with_ten_thousand_elections_on_one_session() {
    const N: usize = 10_000;
    let etcd = EtcdServer::start().await.unwrap();
    let s = session(&etcd.endpoint(), 10);
    // Warm up: connection, lease, one election (so shared costs are not counted).
    let warm = s.election(&unique_path("warm"), "w").unwrap();
    warm.join().await.unwrap();
    warm.wait_for_leadership(BOUND).await.unwrap();
    let ps = prefixes("memory", N);
    let before = rss_kib();
    let heap_before = live_heap_kib();
    let classes_before = classes();
    let started = Instant::now();
    let es: Vec<EtcdElection> = ps.iter().map(|p| s.election(p, "m").unwrap()).collect();
    let made = rss_kib();
    let heap_made = live_heap_kib();
    for chunk in es.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|e| e.join()))
            .await
            .unwrap();
    }
    for e in &es {
        e.wait_for_leadership(Duration::from_secs(120))
            .await
            .unwrap();
    }
    let joined_in = started.elapsed();
    let after = rss_kib();
    // What stays once the allocator returns the free memory of the join burst.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let trimmed = rss_kib();
    let heap_after = live_heap_kib();
    eprintln!(
        "{N} elections on one session: live heap {heap_before:.0} KiB -> {heap_made:.0} KiB made -> {heap_after:.0} KiB joined: {:.2} KiB per election ({:.2} KiB made, unjoined)",
        (heap_after - heap_before) / N as f64,
        (heap_made - heap_before) / N as f64
    );
    let per_class: Vec<String> = classes()
        .iter()
        .zip(&classes_before)
        .enumerate()
        .filter(|(_, (a, b))| (**a - **b) as f64 / N as f64 >= 0.5)
        .map(|(c, (a, b))| {
            format!(
                "<={} B: {:.1}/election",
                1usize << c,
                (a - b) as f64 / N as f64
            )
        })
        .collect();
    eprintln!("live allocations per election by size: {per_class:?}");
    eprintln!(
        "{N} elections on one session: all leading after {joined_in:?}; VmRSS {before} KiB -> {made} KiB made -> {after} KiB joined ({trimmed} KiB after malloc_trim): {:.2} KiB per election ({:.2} KiB after malloc_trim; {:.2} KiB made, unjoined)",
        (after - before) as f64 / N as f64,
        (trimmed - before) as f64 / N as f64,
        (made - before) as f64 / N as f64
    );
    s.close().await.unwrap();
}

/// The records of a session's elections (each supervised election polls two) read in
/// batches: 400 reads at once cost a few txns, not 400 requests, and each read still
/// answers for its own key (value, version, absence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_reads_of_one_session_go_in_batches_and_each_answers_for_its_own_key() {
    use succession_core::CasRecord;
    // A server of its own: the request counts are this test's alone.
    let etcd = EtcdServer::start()
        .await
        .expect("start etcd (scripts/install-deps)");
    let s = session(&etcd.endpoint(), 3);
    let prefix = unique_path("batched-reads");
    let e = s.election(&prefix, "reader").expect("election");
    const N: usize = 400;
    let mut c = raw_client(&etcd.endpoint()).await;
    let mut versions = Vec::new();
    for i in 0..N {
        // Every third record is absent.
        if i % 3 == 2 {
            versions.push(None);
            continue;
        }
        let r = c
            .put(format!("{prefix}.r{i}"), format!("v{i}"), None)
            .await
            .expect("put");
        versions.push(Some(r.header().expect("header").revision() as u64));
    }
    let records: Vec<_> = (0..N)
        .map(|i| e.record(&format!("{prefix}.r{i}")).expect("record"))
        .collect();
    let calls = |ep: String| async move {
        grpc_calls_handled(&ep, "Txn").await + grpc_calls_handled(&ep, "Range").await
    };
    let before = calls(etcd.endpoint()).await;
    let read = futures::future::join_all(records.iter().map(|r| r.read())).await;
    let after = calls(etcd.endpoint()).await;
    for (i, r) in read.into_iter().enumerate() {
        let got = r.unwrap_or_else(|err| panic!("read of record {i}: {err}"));
        match versions[i] {
            None => assert!(got.is_none(), "record {i} is absent, read {got:?}"),
            Some(v) => {
                let got = got.unwrap_or_else(|| panic!("record {i} is present"));
                assert_eq!(
                    got.value,
                    format!("v{i}").into_bytes(),
                    "record {i}'s value"
                );
                assert_eq!(got.version, v, "record {i}'s version is its put's revision");
            }
        }
    }
    let requests = after - before;
    assert!(
        requests <= (N / 16) as u64,
        "{N} concurrent record reads cost {requests} requests; batched, they cost a few txns"
    );
    eprintln!("{N} concurrent record reads: {requests} requests");
    s.close().await.expect("close");
}
