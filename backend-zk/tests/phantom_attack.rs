//! Attacks on the "phantom connection" fix (ba4c2dc): zookeeper-client reports
//! `SyncConnected` on a reconnect's connect response; when that connection dies before the
//! rest of the handshake and every later connect is refused, it keeps saying so, answering
//! nothing, until its own deadline (1.4 x the session timeout). The session task's contact
//! probe, unanswered for `probe_bound`, suspends the session from its last contact on.
//!
//! Faults not scripted before: the half handshake under `ConnectionPolicy::Standard`, the
//! link coming back while the session is in doubt, repeated half handshakes on a leader and
//! a follower with a server restart in between, a shared session with many elections, and
//! a close while the client claims a dead connection. Real servers only (testkit,
//! 127.0.0.1). Every test watches every election with the leadership checker (never two
//! leaders, terms only grow) and checks the store (one node per participant, owned by its
//! live session; nothing left after close).
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    all_in_latch, client, hex, live_sessions, log_to_test_output, nodes_left, one_leader, owners,
    participant, Clock,
};
use succession_core::conformance::{wait_on_statuses, LeadershipChecker};
use succession_core::{Election, ElectionExt, ErrorKind, Role};
use succession_testkit::{unique_path, TcpProxy, ZkServer};
use succession_zk::{ConnectionPolicy, ZkConfig, ZkElection, ZkSession, ZkSessionConfig};
use tokio::time::Instant;
use zookeeper_client as zk;

/// Every participant's connection timeout.
const CONNECTION: Duration = Duration::from_millis(1000);

/// The fix's bound (session.rs `probe_bound`) for [`CONNECTION`]: how long the contact
/// probe may go unanswered while the client claims a connection.
fn probe_bound(session: Duration) -> Duration {
    let silence = if CONNECTION > session * 3 / 5 {
        session * 2 / 5
    } else {
        CONNECTION
    };
    let tick = (session / 6).max(Duration::from_millis(100));
    (silence + tick).min(session / 2)
}

/// How long after a half handshake a leader may still lead: the next contact probe is
/// sent at most one probe interval (T/6) after the fault and then goes unanswered for the
/// probe bound; plus scheduling slack. (For T = 4 s: 2.83 s, well before ZooKeeper can
/// expire the session, T after the half handshake's connect request.)
fn step_down_bound(session: Duration) -> Duration {
    session / 6 + probe_bound(session) + Duration::from_millis(500)
}

/// A participant of the latch at `path` connecting through `proxy`.
fn proxied(
    proxy: &TcpProxy,
    path: &str,
    id: &str,
    session: Duration,
    policy: ConnectionPolicy,
) -> Arc<ZkElection> {
    log_to_test_output();
    let cfg = ZkConfig::builder(proxy.addr(), path, id)
        .session_timeout(session)
        .connection_timeout(CONNECTION)
        .connection_policy(policy)
        .build()
        .expect("valid config");
    Arc::new(ZkElection::new(cfg).expect("participant"))
}

/// Join `e` (bounded).
async fn join(e: &ZkElection) {
    tokio::time::timeout(Duration::from_secs(20), e.join())
        .await
        .unwrap_or_else(|_| panic!("{} joins in time", e.id()))
        .unwrap_or_else(|err| panic!("{} joins: {err}", e.id()));
}

fn is_follower(s: &succession_core::Status) -> bool {
    matches!(s.role, Role::Follower { .. })
}

/// Leader or follower: back in the latch and in touch with ZooKeeper.
fn is_placed(s: &succession_core::Status) -> bool {
    s.is_leader() || is_follower(s)
}

/// The store holds exactly one node per participant (`sids`: the current session of
/// each), each owned by that session, and the server holds each of those sessions.
async fn assert_one_node_each(port: u16, admin: &zk::Client, path: &str, sids: &[i64], what: &str) {
    let found = owners(admin, path).await;
    let mut got: Vec<i64> = found.iter().map(|(_, o)| *o).collect();
    let mut want = sids.to_vec();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "{what}: one node per participant, owned by its session; store of {path}: {found:?}"
    );
    let live = live_sessions(port).await;
    for s in sids {
        assert!(
            live.contains(&hex(*s)),
            "{what}: session {} owns a node but the server does not hold it ({live:?})",
            hex(*s)
        );
    }
}

/// Wait until no node is left under any of `paths` (bounded).
async fn wait_store_empty(admin: &zk::Client, paths: &[String], bound: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let left = nodes_left(admin, paths).await;
        if left.is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "nodes left {bound:?} after close: {left:?}"
        );
        // Polling the store (no status stream tells when the server removed a node).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sid(e: &ZkElection) -> i64 {
    e.session_id()
        .unwrap_or_else(|| panic!("{} has no session", e.id()))
}

/// The store holds one node each for `a` and `b` (owned by their live sessions); then
/// both close and nothing is left under `path` within `t`.
async fn one_node_each_then_close_both(
    server: &ZkServer,
    admin: &zk::Client,
    path: &str,
    a: &ZkElection,
    b: &ZkElection,
    t: Duration,
    what: &str,
) {
    assert_one_node_each(server.port(), admin, path, &[sid(a), sid(b)], what).await;
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    wait_store_empty(admin, &[path.to_string()], t).await;
}

/// What [`leader_behind_proxy`] sets up.
struct Setup {
    server: ZkServer,
    proxy: TcpProxy,
    path: String,
    checker: LeadershipChecker,
    /// Behind `proxy`, `ConnectionPolicy::Standard`, leading with term `first`.
    a: Arc<ZkElection>,
    /// Connected directly, following.
    b: Arc<ZkElection>,
    first: succession_core::Term,
    /// `a`'s session.
    a_sid: i64,
}

/// A server and a proxy to it; `a` behind the proxy leads, `b` (direct) follows; both
/// watched by the checker; session timeout `t`, latch path tagged `tag`.
async fn leader_behind_proxy(t: Duration, tag: &str) -> Setup {
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path(tag);
    let checker = LeadershipChecker::new();
    let a = proxied(&proxy, &path, "a", t, ConnectionPolicy::Standard);
    checker.watch(a.as_ref());
    join(&a).await;
    let first = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads")
        .term();
    let b = participant(&server.addr(), &path, "b", t);
    checker.watch(b.as_ref());
    join(&b).await;
    b.wait_for_status(Duration::from_secs(10), is_follower)
        .await
        .expect("b follows");
    let a_sid = sid(&a);
    Setup {
        server,
        proxy,
        path,
        checker,
        a,
        b,
        first,
        a_sid,
    }
}

/// Cut leader `a`'s next reconnect after the connect response (see the module docs) and
/// wait until it stops leading, within the probe bound; returns when the fault began.
async fn half_handshake_on_leader(
    clock: &Clock,
    proxy: &TcpProxy,
    a: &ZkElection,
    t: Duration,
) -> Instant {
    let fault = Instant::now();
    clock.log("half handshake on a (the leader)");
    proxy.one_frame_then_refuse();
    a.wait_for_status(step_down_bound(t), |s| !s.is_leader())
        .await
        .expect("a stops leading within the probe bound");
    clock.log(format!(
        "a stopped leading {:?} after the fault",
        fault.elapsed()
    ));
    fault
}

/// Under the default policy, a leader whose reconnect is cut after the connect response
/// (the client then claims `SyncConnected` and answers nothing) stops leading within one
/// probe interval plus the probe bound of the fault, nobody else leads meanwhile, and once
/// the link is back it takes part again: leader with a HIGHER term, or follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_leader_stops_within_the_probe_bound_of_a_half_handshake_and_rejoins_with_a_higher_term(
) {
    let t = Duration::from_secs(4);
    let clock = Clock::new();
    let Setup {
        server,
        proxy,
        path,
        checker,
        a,
        b,
        first,
        a_sid,
    } = leader_behind_proxy(t, "phantom-standard").await;

    let bound = step_down_bound(t);
    let fault = half_handshake_on_leader(&clock, &proxy, &a, t).await;
    // Whether or not the session task saw the moment of `Disconnected` before the half
    // handshake's `SyncConnected` (then a stepped down at once), the contact probe must
    // find out that the connection the client claims answers nothing, within the bound,
    // and a must not lead in between.
    let phantom = a
        .wait_for_status(bound.saturating_sub(fault.elapsed()), |s| {
            s.health.reason.contains("does not answer")
        })
        .await
        .expect("the session is suspended as a phantom connection within the bound");
    clock.log(format!(
        "phantom connection detected {:?} after the fault: {} ({})",
        fault.elapsed(),
        phantom.role,
        phantom.health.reason
    ));
    assert!(!phantom.is_leader(), "a leads on a phantom connection");
    assert!(!b.is_leader(), "b cannot lead while a's session lives");

    proxy.restore();
    clock.log("link restored");
    let placed = a
        .wait_for_status(t * 3, is_placed)
        .await
        .expect("a takes part again once the link is back");
    let back = fault.elapsed();
    let i = one_leader(&[a.clone(), b.clone()], t * 3).await;
    if i == 0 {
        let term = a.leadership().expect("a leads").term();
        assert!(
            term > first,
            "a leads again with term {term}, not above {first}"
        );
    }
    clock.log(format!(
        "a back as {} {back:?} after the fault (same session: {})",
        placed.role,
        a.session_id() == Some(a_sid)
    ));
    all_in_latch(&b, 2, t * 2).await;
    let admin = client(&server.addr()).await;
    one_node_each_then_close_both(&server, &admin, &path, &a, &b, t, "after restore").await;
    checker.assert_ok();
}

/// The link of a phantom session (client claims a connection, ZooKeeper answers nothing)
/// comes back 3.8 s after the half handshake: after the old client's last retry before
/// the expiry (zookeeper-client backs off 100 ms doubling: its fifth retry comes 3.1-3.6 s
/// after the fault, the sixth 6.3 s or later) and more than a second before ZooKeeper can
/// expire the session (T = 5 s after the half handshake). The suspended session's probes
/// (fresh clients, every 100 ms) must find ZooKeeper still holding it and resume it in a
/// new client, as they do for a client that reports `Disconnected`: the leader keeps its
/// session and its node and leads again with a higher term; the follower is not elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phantom_session_whose_link_returns_before_the_server_expires_it_is_resumed_and_keeps_its_place(
) {
    let t = Duration::from_secs(5);
    let clock = Clock::new();
    let Setup {
        server,
        proxy,
        path,
        checker,
        a,
        b,
        first,
        a_sid,
    } = leader_behind_proxy(t, "phantom-resume").await;

    let fault = half_handshake_on_leader(&clock, &proxy, &a, t).await;
    // Spacing the faults: the link comes back after the client's fifth retry (3.1-3.6 s
    // after the fault) and 1.2 s before the server can expire the session (T after the
    // half handshake's connect request).
    tokio::time::sleep_until(fault + Duration::from_millis(3800)).await;
    assert!(!b.is_leader(), "b cannot lead while a's session lives");
    proxy.restore();
    let restored = Instant::now();
    clock.log("link restored");
    // The premise: ZooKeeper still holds a's session (and node) when the link is back.
    let admin = client(&server.addr()).await;
    assert!(
        live_sessions(server.port()).await.contains(&hex(a_sid)),
        "premise: ZooKeeper still holds a's session when the link comes back"
    );
    assert!(
        owners(&admin, &path).await.iter().any(|(_, o)| *o == a_sid),
        "premise: a's node is still there when the link comes back"
    );
    clock.log(format!(
        "ZooKeeper still holds a's session {} and its node",
        hex(a_sid)
    ));
    // When did ZooKeeper drop it (for the report)?
    let port = server.port();
    let dropped = tokio::spawn(async move {
        loop {
            if !live_sessions(port).await.contains(&hex(a_sid)) {
                return restored.elapsed();
            }
            // Polling the server's session table (nothing to wait on).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let i = one_leader(&[a.clone(), b.clone()], t * 2).await;
    clock.log(format!(
        "{} leads {:?} after the fault; a's session {} (was {})",
        if i == 0 { "a" } else { "b" },
        fault.elapsed(),
        a.session_id().map_or("none".into(), hex),
        hex(a_sid)
    ));
    if i == 1 {
        let gone = dropped.await.expect("session watch");
        panic!(
            "ZooKeeper still held a's session when the link came back and dropped it only \
             {gone:?} later, yet a never resumed it: b was elected {:?} after the fault",
            fault.elapsed()
        );
    }
    dropped.abort();
    assert_eq!(a.session_id(), Some(a_sid), "a resumed its own session");
    let term = a.leadership().expect("a leads").term();
    assert!(
        term > first,
        "a leads again with term {term}, not above {first}"
    );
    all_in_latch(&b, 2, t).await;
    one_node_each_then_close_both(&server, &admin, &path, &a, &b, t, "after the resume").await;
    checker.assert_ok();
}

/// Half handshakes again and again, on a leader (ConnectionPolicy::Session, which keeps
/// leading through short losses) and a follower (Standard) at once, with the link restored
/// after varied gaps, some shorter than the probe bound and some longer, and one fault
/// overlapping a kill and restart of the server: never two leaders, terms only grow, a
/// proxied participant never leads once a fault has lasted the step-down bound, and in
/// the end everyone is back in the latch, one node each, owned by its live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_half_handshakes_on_leader_and_follower_with_a_restart_never_give_two_leaders() {
    let t = Duration::from_secs(4);
    let clock = Clock::new();
    let mut server = ZkServer::start().await.expect("zookeeper");
    let pa = TcpProxy::start(&server.addr()).await.expect("proxy a");
    let pc = TcpProxy::start(&server.addr()).await.expect("proxy c");
    let path = unique_path("phantom-repeat");
    let checker = LeadershipChecker::new();
    let a = proxied(&pa, &path, "a", t, ConnectionPolicy::Session);
    checker.watch(a.as_ref());
    join(&a).await;
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    let b = participant(&server.addr(), &path, "b", t);
    checker.watch(b.as_ref());
    join(&b).await;
    let c = proxied(&pc, &path, "c", t, ConnectionPolicy::Standard);
    checker.watch(c.as_ref());
    join(&c).await;
    all_in_latch(&b, 3, t).await;
    let es = [a.clone(), b.clone(), c.clone()];
    let bound = step_down_bound(t);
    // (fault for, link up for, kill and restart the server during the fault)
    let cycles: [(u64, u64, bool); 7] = [
        (400, 300, false),
        (3000, 600, false),
        (900, 1800, false),
        (3200, 200, false),
        (300, 300, false),
        (1500, 2500, true),
        (2900, 400, false),
    ];
    for (n, &(down, up, restart)) in cycles.iter().enumerate() {
        let who: Vec<String> = es
            .iter()
            .filter(|e| e.is_leader())
            .map(|e| e.id().to_string())
            .collect();
        clock.log(format!(
            "cycle {n}: half handshake on a and c for {down} ms (leader: {who:?}){}",
            if restart { ", server restart" } else { "" }
        ));
        let fault = Instant::now();
        pa.one_frame_then_refuse();
        pc.one_frame_then_refuse();
        if restart {
            // Spacing: the half handshakes are done before the server goes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.kill().await.expect("kill");
            server.restart().await.expect("restart");
            clock.log(format!("cycle {n}: server back"));
        }
        let down = Duration::from_millis(down);
        if down > bound {
            // Spacing the faults: the fault lasts past the step-down bound.
            tokio::time::sleep_until(fault + bound).await;
            for e in [&a, &c] {
                assert!(
                    !e.is_leader(),
                    "cycle {n}: {} still leads {bound:?} after a half handshake",
                    e.id()
                );
            }
        }
        // Spacing the faults: the gaps are the point of the test.
        tokio::time::sleep_until(fault + down).await;
        pa.restore();
        pc.restore();
        tokio::time::sleep(Duration::from_millis(up)).await;
    }
    clock.log("all faults over");
    // The old clients may wait out their backoff or their own deadline (1.4 x T), then a
    // new session joins.
    for e in &es {
        e.wait_for_status(t * 4, is_placed)
            .await
            .unwrap_or_else(|err| panic!("{} back in the latch: {err}", e.id()));
    }
    let i = one_leader(&es, t * 2).await;
    clock.log(format!("settled: {} leads", es[i].id()));
    all_in_latch(&b, 3, t * 2).await;
    let admin = client(&server.addr()).await;
    assert_one_node_each(
        server.port(),
        &admin,
        &path,
        &[sid(&a), sid(&b), sid(&c)],
        "after the cycles",
    )
    .await;
    eprintln!("grants over the run: {}", checker.grants());
    for e in &es {
        e.close().await.expect("close");
    }
    wait_store_empty(&admin, &[path], t).await;
    checker.assert_ok();
}

/// Elections per shared session in [`shared_session_with_many_elections_hit_by_a_half_handshake_hands_each_over_once`].
const ELECTIONS: usize = 100;

/// A shared session (ConnectionPolicy::Session) leading 100 elections through a proxy,
/// and a second session connected directly following all of them. A half handshake on
/// the first: every one of its elections stops leading within the step-down bound, the
/// second session leads every election once ZooKeeper expired the first (never two
/// leaders in any election), and after the link is back the first session's elections
/// all follow: exactly one leader per election, two nodes per election owned by the two
/// live sessions, nothing left after both sessions close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_session_with_many_elections_hit_by_a_half_handshake_hands_each_over_once() {
    let t = Duration::from_secs(4);
    let clock = Clock::new();
    log_to_test_output();
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let base = unique_path("phantom-shared");
    let paths: Vec<String> = (0..ELECTIONS).map(|i| format!("{base}/e{i:03}")).collect();
    let s1 = ZkSession::new(
        ZkSessionConfig::builder(proxy.addr())
            .session_timeout(t)
            .connection_timeout(CONNECTION)
            .connection_policy(ConnectionPolicy::Session)
            .build()
            .expect("config s1"),
    )
    .expect("s1");
    let s2 = ZkSession::new(
        ZkSessionConfig::builder(server.addr())
            .session_timeout(t)
            .connection_timeout(CONNECTION)
            .build()
            .expect("config s2"),
    )
    .expect("s2");
    let checkers: Vec<LeadershipChecker> = paths.iter().map(|_| LeadershipChecker::new()).collect();
    let e1: Vec<Arc<ZkElection>> = paths
        .iter()
        .map(|p| Arc::new(s1.election(p, "s1").expect("election")))
        .collect();
    let e2: Vec<Arc<ZkElection>> = paths
        .iter()
        .map(|p| Arc::new(s2.election(p, "s2").expect("election")))
        .collect();
    for (i, ch) in checkers.iter().enumerate() {
        ch.watch(e1[i].as_ref());
        ch.watch(e2[i].as_ref());
    }
    futures::future::join_all(e1.iter().map(|e| join(e))).await;
    let rx1: Vec<_> = e1.iter().map(|e| e.status()).collect();
    let rx2: Vec<_> = e2.iter().map(|e| e.status()).collect();
    wait_on_statuses(rx1.clone(), Duration::from_secs(20), None, || {
        e1.iter().all(|e| e.is_leader()).then_some(())
    })
    .await
    .expect("s1 leads every election");
    futures::future::join_all(e2.iter().map(|e| join(e))).await;
    wait_on_statuses(rx2.clone(), Duration::from_secs(20), None, || {
        e2.iter()
            .all(|e| is_follower(&e.status().borrow()))
            .then_some(())
    })
    .await
    .expect("s2 follows in every election");
    clock.log(format!("{ELECTIONS} elections led by s1, followed by s2"));

    let fault = Instant::now();
    proxy.one_frame_then_refuse();
    wait_on_statuses(rx1.clone(), step_down_bound(t), None, || {
        e1.iter().all(|e| !e.is_leader()).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        let still = e1.iter().filter(|e| e.is_leader()).count();
        panic!(
            "{still} of s1's elections still lead after {:?}",
            step_down_bound(t)
        )
    });
    clock.log(format!(
        "s1 led nothing {:?} after the fault",
        fault.elapsed()
    ));
    wait_on_statuses(rx2.clone(), t * 3, None, || {
        e2.iter().all(|e| e.is_leader()).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        let led = e2.iter().filter(|e| e.is_leader()).count();
        panic!("s2 leads only {led} of {ELECTIONS} elections")
    });
    clock.log(format!(
        "s2 leads every election {:?} after the fault",
        fault.elapsed()
    ));

    proxy.restore();
    wait_on_statuses(rx1.clone(), t * 3, None, || {
        e1.iter()
            .all(|e| is_follower(&e.status().borrow()))
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        let f = e1
            .iter()
            .filter(|e| is_follower(&e.status().borrow()))
            .count();
        panic!("only {f} of s1's {ELECTIONS} elections follow again")
    });
    clock.log(format!(
        "s1 follows everywhere {:?} after the fault",
        fault.elapsed()
    ));
    for i in 0..ELECTIONS {
        let leaders = usize::from(e1[i].is_leader()) + usize::from(e2[i].is_leader());
        assert_eq!(leaders, 1, "election {i}: {leaders} leaders");
    }
    let admin = client(&server.addr()).await;
    let (sid1, sid2) = (
        s1.session_id().expect("s1 session"),
        s2.session_id().expect("s2 session"),
    );
    for p in &paths {
        assert_one_node_each(server.port(), &admin, p, &[sid1, sid2], "after restore").await;
    }
    let closing = Instant::now();
    s1.close().await.expect("close s1");
    s2.close().await.expect("close s2");
    clock.log(format!("both sessions closed in {:?}", closing.elapsed()));
    wait_store_empty(&admin, &paths, t).await;
    for (i, ch) in checkers.iter().enumerate() {
        if let Err(report) = ch.check() {
            panic!("election {i}: {report}");
        }
    }
}

/// A leader closed while its client claims a connection ZooKeeper no longer answers (a
/// half handshake just happened): close returns within its bound (2 x the session
/// timeout for the driver, after an early delete bounded by half of it), never leads
/// again, the follower is elected once ZooKeeper expired the session, and none of the
/// closed participant's nodes or sessions survives, even after the link comes back and
/// the stuck client may send what it queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_closed_while_its_client_claims_a_dead_connection_returns_in_bound_and_leaves_nothing(
) {
    let t = Duration::from_secs(4);
    let clock = Clock::new();
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path("phantom-close");
    let checker = LeadershipChecker::new();
    let a = proxied(&proxy, &path, "a", t, ConnectionPolicy::Standard);
    checker.watch(a.as_ref());
    join(&a).await;
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    let b = participant(&server.addr(), &path, "b", t);
    checker.watch(b.as_ref());
    join(&b).await;
    b.wait_for_status(Duration::from_secs(10), is_follower)
        .await
        .expect("b follows");
    let a_sid = sid(&a);

    let fault = Instant::now();
    proxy.one_frame_then_refuse();
    // Spacing: the half handshake is done (the client claims SyncConnected again), the
    // contact probe has not yet given up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.log("closing a while its client claims a dead connection");
    let closing = Instant::now();
    let closed = a.close().await;
    let took = closing.elapsed();
    clock.log(format!("a's close returned {closed:?} after {took:?}"));
    if let Err(e) = &closed {
        assert_eq!(e.kind(), ErrorKind::Timeout, "close failed otherwise: {e}");
    }
    // The bound a caller is promised: 2 x the session timeout (latch.rs bounds the early
    // delete by T/2 and the driver by 2 x T; the client gives up at 1.4 x T).
    let close_bound = t * 2;
    assert!(
        took <= close_bound,
        "close took {took:?}, above {close_bound:?}"
    );
    assert_eq!(a.status().borrow().role, Role::Closed);

    b.wait_for_leadership(t * 3)
        .await
        .expect("b leads once ZooKeeper expired a's session");
    clock.log(format!("b leads {:?} after the fault", fault.elapsed()));
    proxy.restore();
    let admin = client(&server.addr()).await;
    // The stuck client of a closed participant gives up at its own deadline (1.4 x T
    // after its last receipt) and ZooKeeper expires the session T after the half
    // handshake: both are past once close returned; allow one more session timeout.
    let deadline = Instant::now() + t;
    loop {
        let found = owners(&admin, &path).await;
        let live = live_sessions(server.port()).await;
        let a_left = found.iter().any(|(_, o)| *o == a_sid) || live.contains(&hex(a_sid));
        if !a_left {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's node or session still there {:?} after the fault: {found:?}, live {live:?}",
            fault.elapsed()
        );
        // Polling the server (nothing to wait on).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_one_node_each(server.port(), &admin, &path, &[sid(&b)], "after a's close").await;
    assert!(b.is_leader(), "b still leads");
    b.close().await.expect("close b");
    wait_store_empty(&admin, &[path], t).await;
    checker.assert_ok();
}
