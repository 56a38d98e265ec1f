//! Many elections on one ZooKeeper session ([`ZkSession`]), against real servers started by
//! testkit: one leader per election across sessions, loss signalled to every election of a
//! session at once, closing one election or a whole session, expiry, a wiped server,
//! Curator interop, several participants on one path from one session. Every test watches
//! every election with a leadership checker (never two leaders in one election).
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::curator::Curator;
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, Role};
use succession_testkit::{unique_path, TcpProxy, ZkServer};
use succession_zk::{ZkElection, ZkSession, ZkSessionConfig};
use tokio::time::Instant;
use zookeeper_client as zk;

const SESSION: Duration = Duration::from_secs(4);

/// Counts live heap bytes (for the memory measurement; negligible cost otherwise).
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_heap() -> isize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn session(connect: &str) -> ZkSession {
    let cfg = ZkSessionConfig::builder(connect)
        .session_timeout(SESSION)
        .connection_timeout(Duration::from_millis(1000))
        .build()
        .expect("valid session config");
    ZkSession::new(cfg).expect("session")
}

/// `paths.len()` elections on each session (election `e` of every session on `paths[e]`),
/// each watched by the checker of its path, joined concurrently in rounds: in round `r`,
/// election `e` of session `(e + r) % sessions` joins when `rotate` (so leadership is
/// spread over the sessions), of session `r` otherwise (the first session leads all).
struct Grid {
    paths: Vec<String>,
    /// `by_session[s][e]`.
    by_session: Vec<Vec<Arc<ZkElection>>>,
    checkers: Vec<LeadershipChecker>,
    /// Woken by every status change of every election.
    changed: Arc<tokio::sync::Notify>,
}

impl Grid {
    async fn join(sessions: &[ZkSession], paths: Vec<String>, rotate: bool) -> Grid {
        let checkers: Vec<LeadershipChecker> =
            paths.iter().map(|_| LeadershipChecker::new()).collect();
        let by_session: Vec<Vec<Arc<ZkElection>>> = sessions
            .iter()
            .enumerate()
            .map(|(s, sess)| {
                paths
                    .iter()
                    .map(|p| Arc::new(sess.election(p, &format!("s{s}")).expect("election")))
                    .collect()
            })
            .collect();
        let changed = Arc::new(tokio::sync::Notify::new());
        for es in &by_session {
            for (e, el) in es.iter().enumerate() {
                checkers[e].watch(el.as_ref());
                let mut rx = el.status();
                let wake = changed.clone();
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        wake.notify_one();
                    }
                });
            }
        }
        let n = sessions.len();
        for r in 0..n {
            let joins = (0..paths.len()).map(|e| {
                let s = if rotate { (e + r) % n } else { r };
                let el = by_session[s][e].clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(60), el.join())
                        .await
                        .expect("join in time")
                        .expect("join")
                }
            });
            futures::future::join_all(joins).await;
        }
        Grid {
            paths,
            by_session,
            checkers,
            changed,
        }
    }

    /// For every election: the session that leads it (None: nobody, or more than one).
    fn leaders(&self) -> Vec<Option<usize>> {
        (0..self.paths.len())
            .map(|e| {
                let mut who = None;
                for (s, es) in self.by_session.iter().enumerate() {
                    if es[e].status().borrow().role.is_leader() {
                        assert!(who.is_none(), "two leaders in election {}", self.paths[e]);
                        who = Some(s);
                    }
                }
                who
            })
            .collect()
    }

    /// Wait (woken by status changes, at most `bound`) until every election is led by one
    /// of `allowed` sessions.
    async fn all_led_by(&self, allowed: &[usize], bound: Duration) -> Vec<usize> {
        let deadline = Instant::now() + bound;
        loop {
            let leaders = self.leaders();
            if leaders
                .iter()
                .all(|l| l.is_some_and(|s| allowed.contains(&s)))
            {
                return leaders.into_iter().map(|l| l.unwrap()).collect();
            }
            let missing = leaders
                .iter()
                .filter(|l| !l.is_some_and(|s| allowed.contains(&s)))
                .count();
            assert!(
                Instant::now() < deadline,
                "{missing} of {} elections not led by sessions {allowed:?} after {bound:?}",
                leaders.len()
            );
            let _ = tokio::time::timeout_at(deadline, self.changed.notified()).await;
        }
    }

    fn assert_ok(&self) {
        for c in &self.checkers {
            c.assert_ok();
        }
    }
}

/// Wait (on each election's status stream, at most `bound`) until `f` holds for every
/// election of `es` at once.
async fn all_of<E: std::borrow::Borrow<ZkElection>>(
    es: &[E],
    bound: Duration,
    what: &str,
    f: impl Fn(&Role) -> bool,
) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        for e in es {
            let mut rx = e.borrow().status();
            let held = tokio::time::timeout_at(deadline, rx.wait_for(|s| f(&s.role))).await;
            if held.is_err() {
                let bad = es
                    .iter()
                    .filter(|e| !f(&e.borrow().status().borrow().role))
                    .count();
                panic!("{bad} of {} elections not {what} after {bound:?}", es.len());
            }
        }
        if es.iter().all(|e| f(&e.borrow().status().borrow().role)) {
            return;
        }
    }
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    let base = unique_path(prefix);
    (0..n).map(|i| format!("{base}/e{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_thousand_elections_on_each_of_three_sessions_one_leader_each_and_a_closed_session_hands_all_over(
) {
    const E: usize = 1000;
    let zk = succession_testkit::shared_zk().await;
    let sessions: Vec<ZkSession> = (0..3).map(|_| session(&zk.addr())).collect();
    let t = Instant::now();
    let grid = Grid::join(&sessions, paths("many", E), true).await;
    let leaders = grid.all_led_by(&[0, 1, 2], Duration::from_secs(60)).await;
    eprintln!(
        "{E} elections x 3 sessions: all joined and led in {:?}",
        t.elapsed()
    );
    for s in &sessions {
        assert_eq!(s.elections(), E);
        assert!(s.session_id().is_some());
    }
    let ids: std::collections::HashSet<i64> =
        sessions.iter().filter_map(|s| s.session_id()).collect();
    assert_eq!(ids.len(), 3, "one ZooKeeper session per ZkSession");

    let mut count = [0usize; 3];
    for l in &leaders {
        count[*l] += 1;
    }
    let most = (0..3).max_by_key(|s| count[*s]).unwrap();
    let others: Vec<usize> = (0..3).filter(|s| *s != most).collect();
    assert!(
        count.iter().all(|c| *c > 0),
        "leadership is spread over the sessions: {count:?}"
    );
    let grants_before: Vec<usize> = grid.checkers.iter().map(|c| c.grants()).collect();
    let t = Instant::now();
    sessions[most]
        .close()
        .await
        .expect("close the session leading the most");
    let closed_at = t.elapsed();
    assert_eq!(sessions[most].elections(), 0);
    assert!(
        sessions[most].election("/x", "late").is_err(),
        "a closed session refuses new elections"
    );
    for e in &grid.by_session[most] {
        assert_eq!(e.status().borrow().role, Role::Closed);
    }
    let after = grid.all_led_by(&others, Duration::from_secs(20)).await;
    for e in 0..E {
        if leaders[e] != most {
            assert_eq!(after[e], leaders[e], "election {e} keeps its leader");
            assert_eq!(
                grid.checkers[e].grants(),
                grants_before[e],
                "no new grant in {e}"
            );
        }
    }
    eprintln!(
        "closed the session leading {} of {E}: closed in {closed_at:?}, all led again in {:?}",
        count[most],
        t.elapsed()
    );
    for s in &others {
        sessions[*s].close().await.expect("close");
    }
    grid.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_closing_one_election_leaves_the_others_on_its_session_leading() {
    let zk = succession_testkit::shared_zk().await;
    let s = session(&zk.addr());
    let grid = Grid::join(std::slice::from_ref(&s), paths("close-one", 50), false).await;
    grid.all_led_by(&[0], Duration::from_secs(20)).await;
    let grants_before: Vec<usize> = grid.checkers.iter().map(|c| c.grants()).collect();
    let victim = &grid.by_session[0][7];
    victim.close().await.expect("close one election");
    assert_eq!(victim.status().borrow().role, Role::Closed);
    assert_eq!(s.elections(), 49);
    let c = common::client(&zk.addr()).await;
    let left = c.list_children(&grid.paths[7]).await.unwrap_or_default();
    assert!(
        left.is_empty(),
        "the closed election's node is gone: {left:?}"
    );
    for (e, el) in grid.by_session[0].iter().enumerate() {
        if e != 7 {
            assert!(el.is_leader(), "election {e} still leads");
            assert_eq!(
                grid.checkers[e].grants(),
                grants_before[e],
                "no new grant in {e}"
            );
        }
    }
    assert!(s.session_id().is_some(), "the session stays up");
    // Dropping one election ends just that one (its node deleted in the background).
    let mut by_session = grid.by_session;
    let dropped = by_session[0].remove(3);
    let path3 = grid.paths[3].clone();
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.list_children(&path3).await.unwrap_or_default().is_empty() {
        assert!(
            Instant::now() < deadline,
            "a dropped election's node is deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.elections(), 48);
    s.close().await.expect("close");
    for c in &grid.checkers {
        c.assert_ok();
    }
}

/// Every election on a session reports the session's contact (one record per session,
/// kept by its probe and every claim), including an election that joins later; a session
/// proxied through a cut link loses it for all of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_every_election_on_a_session_reports_the_sessions_contact() {
    let zk = succession_testkit::shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.expect("proxy");
    let s = session(&proxy.addr());
    let grid = Grid::join(std::slice::from_ref(&s), paths("contact", 3), false).await;
    grid.all_led_by(&[0], Duration::from_secs(20)).await;
    let els = &grid.by_session[0];
    let same = |what: &str| {
        let first = els[0].contact();
        for (i, e) in els.iter().enumerate() {
            assert_eq!(
                e.contact(),
                first,
                "{what}: election {i} reports the session's contact"
            );
        }
        first
    };
    let before = same("led").last.expect("a leader has had contact");
    assert_eq!(
        els[0].contact().safe_for,
        SESSION / 2,
        "safe for half the session timeout"
    );
    // The session's probe (every T/6) moves it on, for every election alike.
    let deadline = Instant::now() + SESSION;
    while els[0].contact().last <= Some(before) {
        assert!(
            Instant::now() < deadline,
            "contact advances within the session timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    same("after a probe");
    let late = s
        .election(&unique_path("contact-late"), "late")
        .expect("election");
    assert_eq!(
        late.contact(),
        els[0].contact(),
        "a new election reports it at once"
    );
    // Cut: once the session is in doubt every leader stops, and none reports contact any
    // longer than the bound allows.
    proxy.cut();
    for e in els {
        e.wait_for_status(SESSION * 2, |st| !st.is_leader())
            .await
            .expect("every leader steps down on the cut");
    }
    for (i, e) in els.iter().enumerate() {
        assert!(
            e.takeover_bound()
                .is_none_or(|b| b <= std::time::Instant::now() + SESSION / 2),
            "election {i}: no takeover bound beyond half the session timeout after the cut"
        );
    }
    proxy.restore();
    s.close().await.expect("close");
    for c in &grid.checkers {
        c.assert_ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_session_expiry_stops_every_election_on_it_first_then_they_rejoin() {
    const E: usize = 100;
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let a = session(&proxy.addr());
    let b = session(&server.addr());
    let grid = Grid::join(&[a.clone(), b.clone()], paths("expiry", E), false).await;
    grid.all_led_by(&[0], Duration::from_secs(20)).await;
    let old = a.session_id().expect("connected");

    proxy.cut();
    let cut = Instant::now();
    // Every election of the session stops leading at once (Standard policy)...
    all_of(
        &grid.by_session[0],
        Duration::from_secs(2),
        "demoted",
        |r| !r.is_leader(),
    )
    .await;
    let demoted = cut.elapsed();
    assert!(
        grid.by_session[1].iter().all(|e| !e.is_leader()),
        "nobody else leads before the session expires"
    );
    // ...and the other session takes over once the server expired it.
    grid.all_led_by(&[1], SESSION * 3).await;
    let taken = cut.elapsed();
    proxy.restore();
    all_of(&grid.by_session[0], SESSION * 3, "back as followers", |r| {
        matches!(r, Role::Follower { .. })
    })
    .await;
    let new = a.session_id().expect("reconnected");
    assert_ne!(old, new, "a new session replaced the expired one");
    eprintln!(
        "expiry: {E} elections demoted {demoted:?} after the cut, led by the other session after {taken:?}, back in {:?}",
        cut.elapsed()
    );
    a.close().await.expect("close");
    b.close().await.expect("close");
    grid.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_wiped_server_restarted_empty_every_election_on_shared_sessions_led_again() {
    const E: usize = 100;
    let mut server = ZkServer::start().await.expect("zookeeper");
    let sessions = [session(&server.addr()), session(&server.addr())];
    let grid = Grid::join(&sessions, paths("wipe", E), true).await;
    grid.all_led_by(&[0, 1], Duration::from_secs(20)).await;

    server.kill().await.expect("kill");
    server.wipe().expect("wipe");
    server.restart().await.expect("restart empty");
    let back = Instant::now();
    grid.all_led_by(&[0, 1], SESSION * 3).await;
    eprintln!(
        "wipe: all {E} elections led again {:?} after the server answered",
        back.elapsed()
    );
    // Everyone is back in its latch, not just the leaders.
    for es in &grid.by_session {
        all_of(es, SESSION * 2, "joined", |r| {
            r.is_joined() || r.is_leader()
        })
        .await;
    }
    for s in &sessions {
        s.close().await.expect("close");
    }
    grid.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_curator_latches_and_elections_on_one_session_share_latch_paths() {
    let zk = succession_testkit::shared_zk().await;
    let base = unique_path("curator-shared");
    let (p1, p2) = (format!("{base}/one"), format!("{base}/two"));
    let checker1 = LeadershipChecker::new();
    let checker2 = LeadershipChecker::new();

    // Curator first on path one: it leads; ours queue behind it.
    let mut java = Curator::start(&zk.addr(), &p1, "java-1").await;
    java.expect("leader").await;
    let s = session(&zk.addr());
    let r1 = s.election(&p1, "r1").expect("election");
    let r2 = s.election(&p2, "r2").expect("election");
    checker1.watch(&r1);
    checker2.watch(&r2);
    r1.join().await.expect("join");
    r2.join().await.expect("join");
    r2.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("r2 leads its own path");
    assert!(!r1.is_leader(), "r1 must not lead while Curator does");
    let leader = r1.leader().await.expect("leader").expect("someone leads");
    assert_eq!(leader.id, "java-1");

    // A Curator latch behind our leader on path two.
    let mut java2 = Curator::start(&zk.addr(), &p2, "java-2").await;
    java2.send("status").await;
    java2.expect("not-leader").await;
    // Curator creates its node in the background after "started": wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> = r2
            .participants()
            .await
            .expect("participants")
            .into_iter()
            .map(|p| p.id)
            .collect();
        if ids.len() == 2 {
            assert_eq!(ids, vec!["r2", "java-2"], "ours first, Curator's behind it");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Curator's node shows up: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Java -> Rust on path one, Rust -> Java on path two, on one session.
    java.close().await;
    r1.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("r1 leads after Curator closed");
    r2.close().await.expect("close r2");
    java2.expect("leader").await;
    assert!(r1.is_leader(), "closing r2 leaves r1 leading");
    java2.close().await;
    s.close().await.expect("close");
    checker1.assert_ok();
    checker2.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_several_participants_on_one_path_from_one_session_take_turns() {
    let zk = succession_testkit::shared_zk().await;
    let path = unique_path("same-path");
    let s = session(&zk.addr());
    let checker = LeadershipChecker::new();
    let es: Vec<Arc<ZkElection>> = (0..5)
        .map(|i| Arc::new(s.election(&path, &format!("p{i}")).expect("election")))
        .collect();
    for e in &es {
        checker.watch(e.as_ref());
        e.join().await.expect("join");
    }
    let first = common::one_leader(&es, Duration::from_secs(10)).await;
    assert_eq!(first, 0, "the first to join leads");
    let ids: Vec<String> = es[0]
        .participants()
        .await
        .expect("participants")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        ids,
        vec!["p0", "p1", "p2", "p3", "p4"],
        "each its own node, in join order"
    );
    for i in 0..4 {
        es[i].close().await.expect("close the leader");
        let rest = &es[i + 1..];
        let next = common::one_leader(rest, Duration::from_secs(10)).await;
        assert_eq!(next, 0, "p{} leads after p{i}", i + 1);
    }
    assert_eq!(s.elections(), 1);
    s.close().await.expect("close");
    checker.assert_ok();
}

/// `start()` joins in the background (Curator's `LeaderLatch.start()`): it returns before
/// the node exists, and the status stream shows what `join` would have waited for. 300
/// elections started on one session all lead; started on a second session they all
/// follow; starting again changes nothing; closing the first session hands every one over;
/// a closed election refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_started_elections_join_in_the_background_and_hand_over_like_joined_ones() {
    let zk = succession_testkit::shared_zk().await;
    let ps = paths("started", 300);
    let (a, b) = (session(&zk.addr()), session(&zk.addr()));
    let checkers: Vec<LeadershipChecker> = ps.iter().map(|_| LeadershipChecker::new()).collect();
    let make = |s: &ZkSession, id: &str| -> Vec<ZkElection> {
        ps.iter()
            .zip(&checkers)
            .map(|(p, c)| {
                let e = s.election(p, id).expect("election");
                c.watch(&e);
                e
            })
            .collect()
    };
    let (ea, eb) = (make(&a, "a"), make(&b, "b"));
    for e in &ea {
        e.start().expect("start");
        assert!(
            !matches!(e.status().borrow().role, Role::Idle | Role::Closed),
            "a started election is taking part at once"
        );
    }
    all_of(&ea, Duration::from_secs(60), "leading", Role::is_leader).await;
    let terms: Vec<_> = ea
        .iter()
        .map(|e| e.status().borrow().role.clone())
        .collect();
    for e in &eb {
        e.start().expect("start");
    }
    all_of(&eb, Duration::from_secs(60), "following", |r| {
        matches!(r, Role::Follower { .. })
    })
    .await;
    for (e, before) in ea.iter().zip(&terms) {
        e.start().expect("start again");
        assert_eq!(
            &e.status().borrow().role,
            before,
            "starting again changes nothing"
        );
    }
    a.close().await.expect("close the first session");
    for e in &ea {
        assert_eq!(e.status().borrow().role, Role::Closed);
        let err = e.start().expect_err("a closed election does not start");
        assert_eq!(err.kind(), succession_core::ErrorKind::Closed, "{err}");
    }
    all_of(&eb, Duration::from_secs(60), "leading", Role::is_leader).await;
    b.close().await.expect("close");
    for c in &checkers {
        c.assert_ok();
    }
}

/// Resident memory per election: 10,000 elections joined on one session (each its own
/// path). Run with `cargo test -p succession-zk --release --test shared_session -- --ignored
/// --nocapture memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (prints KiB per election), not a check"]
async fn zk_memory_per_election_at_ten_thousand_elections_on_one_session() {
    const E: usize = 10_000;
    fn rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
    let zk = succession_testkit::shared_zk().await;
    let base = unique_path("memory");
    let s = session(&zk.addr());
    // Warm up: the session connected, one election joined.
    let warm = s.election(&format!("{base}/warm"), "w").expect("election");
    warm.join().await.expect("join");
    let before = rss_kib();
    let heap_before = live_heap();
    let t = Instant::now();
    let es: Vec<ZkElection> = (0..E)
        .map(|i| s.election(&format!("{base}/e{i}"), "m").expect("election"))
        .collect();
    let created = rss_kib();
    let heap_created = live_heap();
    // Started all at once (as a service with many elections would, and as the bench
    // does): no future per election while they join.
    for e in &es {
        e.start().expect("start");
    }
    // Wait until every election leads (each is alone on its path).
    all_of(&es, Duration::from_secs(300), "leading", Role::is_leader).await;
    let took = t.elapsed();
    let after = rss_kib();
    // What stays resident once the allocator returns the free pages the join burst left
    // (glibc keeps them otherwise: RSS is the high-water mark of the burst).
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free memory back to the system.
    unsafe {
        malloc_trim(0);
    }
    let trimmed = rss_kib();
    let heap_after = live_heap();
    eprintln!(
        "live heap per election: {} bytes created, {} bytes joined and leading",
        (heap_created - heap_before) / E as isize,
        (heap_after - heap_before) / E as isize
    );
    let per = (after.saturating_sub(before)) as f64 / E as f64;
    eprintln!(
        "{E} elections on one session: joined and leading in {took:?}; VmRSS {before} KiB -> {after} KiB: {per:.2} KiB per election ({:.2} KiB of it before joining: handle, status cell, config); after malloc_trim {trimmed} KiB: {:.2} KiB per election",
        (created.saturating_sub(before)) as f64 / E as f64,
        (trimmed.saturating_sub(before)) as f64 / E as f64
    );
    // Followers (each behind a leader above, so they also hold a predecessor watch).
    let (rss0, heap0) = (rss_kib(), live_heap());
    let followers: Vec<ZkElection> = (0..E)
        .map(|i| s.election(&format!("{base}/e{i}"), "f").expect("election"))
        .collect();
    for e in &followers {
        e.start().expect("start");
    }
    all_of(&followers, Duration::from_secs(300), "following", |r| {
        matches!(r, Role::Follower { .. })
    })
    .await;
    eprintln!(
        "{E} following elections on the same session: {:.2} KiB RSS, {} live heap bytes per election",
        (rss_kib().saturating_sub(rss0)) as f64 / E as f64,
        (live_heap() - heap0) / E as isize
    );
    let c: zk::Client = common::client(&zk.addr()).await;
    assert!(c.list_children(&base).await.expect("list").len() >= E);
    // For comparison: what zookeeper-client itself keeps per pending exists-watch.
    let h0 = live_heap();
    let mut watches = Vec::new();
    for i in 0..E {
        let (_, w) = c
            .check_and_watch_stat(&format!("{base}/e{i}"))
            .await
            .expect("watch");
        watches.push(Box::pin(w.changed()));
    }
    eprintln!(
        "zookeeper-client: {} live heap bytes per pending exists-watch (boxed changed future included)",
        (live_heap() - h0) / E as isize
    );
    drop(watches);
    let open = s.elections();
    let t = Instant::now();
    s.close().await.expect("close");
    eprintln!(
        "closed the session with {open} elections in {:?}",
        t.elapsed()
    );
}
