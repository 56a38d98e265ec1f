//! Chaos against real ZooKeeper servers started by testkit (dedicated per test): wipes,
//! deleted paths, expired sessions, restarts, dead ensemble members. Every test watches all
//! participants with the leadership checker (never two leaders, terms only grow).
mod common;

use std::time::Duration;

use common::{all_in_latch, client, delete_recursive, joined, one_leader, participant};
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, ErrorKind, HealthLevel, Role};
use succession_testkit::{four_letter_word, unique_path, TcpProxy, ZkEnsemble, ZkServer};
use tokio::time::Instant;
use zookeeper_client as zk;

const SESSION: Duration = Duration::from_secs(6);

/// The seed scenario (CURATOR-724): the ensemble comes back empty. Everyone must re-enter,
/// promptly: well before the client library itself would declare the session expired
/// (1.4 x session timeout after it lost the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_wipe_reelects_leader_before_the_session_timeout() {
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("wipe");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, SESSION, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let before = es[first].leadership().expect("leads").term();

    server.stop().await.expect("stop");
    server.wipe().expect("wipe");
    server.restart().await.expect("restart empty");
    let back = Instant::now();
    let i = one_leader(&es, SESSION).await;
    let took = back.elapsed();
    let after = es[i].leadership().expect("leads").term();
    eprintln!(
        "wipe: leader again {took:?} after the server answered (session timeout {SESSION:?})"
    );
    assert!(after > before, "term {after} must be above {before}");
    // Everyone is back in the latch, not just the leader.
    all_in_latch(&es[i], 3, SESSION).await;
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_wipe_of_whole_ensemble_reelects_leader() {
    let mut ens = ZkEnsemble::start(3).await.expect("ensemble");
    let path = unique_path("ens-wipe");
    let checker = LeadershipChecker::new();
    let es = joined(&ens.connect_string(), &path, 3, SESSION, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let before = es[first].leadership().expect("leads").term();
    ens.stop_all().await.expect("stop all");
    ens.wipe_all().await.expect("wipe all");
    ens.restart_all().await.expect("restart all");
    ens.wait_quorum(Duration::from_secs(30))
        .await
        .expect("quorum");
    let i = one_leader(&es, SESSION * 2).await;
    let after = es[i].leadership().expect("leads").term();
    assert!(after > before, "term {after} must be above {before}");
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_path_deleted_under_live_participants_reelects_leader() {
    let server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("deleted");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, SESSION, &checker).await;
    one_leader(&es, Duration::from_secs(10)).await;
    let admin = client(&server.addr()).await;
    for round in 0..3 {
        let before = checker.max_term().expect("a grant");
        delete_recursive(&admin, &path).await;
        // Whoever leads next, it must be a grant newer than the deletion.
        let deadline = Instant::now() + Duration::from_secs(10);
        let i = loop {
            let i = one_leader(&es, deadline.saturating_duration_since(Instant::now())).await;
            if es[i].leadership().is_some_and(|l| l.term() > before) {
                break i;
            }
            // Still the old grant: wait until it ends, then look again.
            let _ = es[i]
                .wait_for_status(deadline.saturating_duration_since(Instant::now()), |s| {
                    s.role.term().is_none_or(|t| t > before)
                })
                .await;
            assert!(
                Instant::now() < deadline,
                "round {round}: no new grant after the deletion"
            );
        };
        // Everyone re-enters (the followers repair on their own watch events).
        all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
    }
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// The leader's link goes silent (a blackholed proxy), so ZooKeeper expires its session:
/// the next participant leads; the old leader dropped leadership first, and when its link
/// comes back it rejoins at the back with a new node, never under its old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_leader_session_expiry_hands_over_and_old_leader_rejoins_at_the_back() {
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path("expiry");
    let session = Duration::from_secs(3);
    let checker = LeadershipChecker::new();
    let a = participant(&proxy.addr(), &path, "a", session);
    checker.watch(a.as_ref());
    a.join().await.expect("a joins");
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    let mut rest = joined(&server.addr(), &path, 2, session, &checker).await;
    let old_session = a.session_id().expect("session");

    proxy.blackhole();
    rest[0]
        .wait_for_leadership(session * 4)
        .await
        .expect("p0 leads after a's session expired");
    assert!(!a.is_leader(), "a dropped leadership");
    let a_status = a.status().borrow().clone();
    assert_ne!(
        a_status.health.level,
        HealthLevel::Healthy,
        "a knows it is cut off"
    );

    proxy.restore();
    a.wait_for_status(session * 4, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .expect("a rejoins as a follower");
    assert_ne!(a.session_id(), Some(old_session), "a uses a new session");
    let ids: Vec<String> = rest[0]
        .participants()
        .await
        .expect("participants")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec!["p0", "p1", "a"], "a re-entered at the back");
    a.close().await.expect("close");
    for e in rest.drain(..) {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// A restart with the data kept, after an outage long enough for zookeeper-client's own
/// reconnect backoff to have grown: it retries 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7 s after
/// the loss (each + up to 0.1 s of jitter, cumulated). The server is down for OUTAGE = 8 s
/// and answers 0.5-3 s after its restart, i.e. between the client's attempts at ~7 s and
/// ~12.7 s, so the client alone reconnects seconds after the server answers (6.4 s in a
/// run with that path disabled). Our participants do not wait for it: a probe session
/// every 100 ms finds the server still holding their sessions, and each resumes its
/// session in a new client (same node). A leader again within 1.5 s of the server
/// answering (44 ms in a run); every participant back with exactly one node; terms grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_restart_with_data_after_a_long_outage_reelects_without_waiting_for_client_backoff() {
    const OUTAGE: Duration = Duration::from_secs(8);
    const BOUND: Duration = Duration::from_millis(1500);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("restart");
    // Long enough that no session expires, on the client (1.4 x) or on the server; the
    // leader's takeover bound (half of it after its last contact) passes during the outage.
    let session = Duration::from_secs(10);
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let before_term = es[first].leadership().expect("leads").term();

    server.kill().await.expect("kill -9");
    es[first]
        .wait_for_status(Duration::from_secs(10), |s| s.role == Role::Suspended)
        .await
        .expect("leader suspended while the server is away");
    // The outage itself (the scenario), not a wait for a condition.
    tokio::time::sleep(OUTAGE).await;
    server.restart().await.expect("restart with data");
    let back = Instant::now();
    let i = one_leader(&es, session).await;
    let took = back.elapsed();
    eprintln!(
        "restart with data after {OUTAGE:?} down: leader again {took:?} after the server answered"
    );
    assert!(
        took < BOUND,
        "leader again only {took:?} after the server answered (bound {BOUND:?})"
    );
    let again = es[i].leadership().expect("leads");
    assert!(again.term() > before_term, "a new grant has a new term");
    all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
    // No node of an old session is left behind (the server keeps old sessions until they
    // expire, 20 s after the restart).
    let admin = client(&server.addr()).await;
    let kids = admin.list_children(&path).await.expect("children");
    assert_eq!(kids.len(), 3, "one node per participant: {kids:?}");
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// A restart with the data kept after 2 s, sessions of 20 s: the leader's grant promised that
/// nobody else is elected before its takeover bound (10 s after its last contact), so it
/// keeps its old session and node (resumed in a new client, or reconnected by its own) and
/// leads again first; no other participant leads in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_restart_with_data_leader_keeps_its_session_within_its_takeover_bound() {
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("restart-bound");
    let session = Duration::from_secs(20);
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let before = es[first].leadership().expect("leads").term();
    let sid = es[first].session_id();

    server.kill().await.expect("kill -9");
    es[first]
        .wait_for_status(Duration::from_secs(10), |s| s.role == Role::Suspended)
        .await
        .expect("leader suspended while the server is away");
    // The outage (the scenario): long enough that the client's next reconnect comes after
    // our probes find the server (its attempts at ~1.5-1.9 and ~3.1-3.6 s after the loss).
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await.expect("restart with data");
    let i = one_leader(&es, session).await;
    assert_eq!(
        i, first,
        "the leader before the restart leads first after it"
    );
    let again = es[i].leadership().expect("leads");
    assert!(again.term() > before, "a new grant has a new term");
    assert_eq!(es[i].session_id(), sid, "the leader kept its session");
    assert_eq!(checker.grants(), 2, "{:?}", checker.events());
    all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// How many times the server has taken an existing session on a new connection (its
/// `mntr` counter `connection_revalidate_count`).
async fn revalidations(server: &ZkServer) -> u64 {
    let mntr = four_letter_word(server.port(), "mntr", Duration::from_secs(5))
        .await
        .expect("mntr");
    mntr.lines()
        .find_map(|l| l.strip_prefix("zk_connection_revalidate_count"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no zk_connection_revalidate_count in mntr: {mntr}"))
}

/// A restart with the data kept, every session still alive: each participant takes its
/// session over in a new client as soon as the server answers, instead of waiting for
/// zookeeper-client's own reconnect (after this outage its attempts come ~6.3-6.9 s and
/// ~12.7-13.5 s after the loss, the server answers ~8-10 s after it). The leader leads
/// again within 1 s, under the same session and node (its grant's promise, nobody else
/// before its takeover bound, is kept: no node was deleted). Then each old client does
/// reconnect, taking the connection from the new client for an instant (the server counts
/// three revalidations per session: the resume, the old client, the new client again):
/// nobody is demoted by it, and there is still exactly the one grant since the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_restart_with_data_resumes_every_session_without_waiting_for_client_backoff() {
    const BOUND: Duration = Duration::from_millis(1000);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("resume");
    // Above the outage, with the takeover bound (half of it after the last contact) too.
    let session = Duration::from_secs(30);
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let before = es[first].leadership().expect("leads").term();
    let sessions: Vec<_> = es.iter().map(|e| e.session_id()).collect();

    server.kill().await.expect("kill -9");
    es[first]
        .wait_for_status(Duration::from_secs(10), |s| s.role == Role::Suspended)
        .await
        .expect("leader suspended while the server is away");
    // The outage (the scenario): the server answers between two of the client's attempts.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    server.restart().await.expect("restart with data");
    let back = Instant::now();
    let revalidated = revalidations(&server).await;
    let i = one_leader(&es, session).await;
    let took = back.elapsed();
    eprintln!("restart with data: leader again {took:?} after the server answered");
    assert_eq!(
        i, first,
        "the leader before the restart leads first after it"
    );
    assert!(
        took < BOUND,
        "leader again only {took:?} after the server answered (bound {BOUND:?})"
    );
    let again = es[i].leadership().expect("leads");
    assert!(again.term() > before, "a new grant has a new term");
    for (e, sid) in es.iter().zip(&sessions) {
        assert_eq!(e.session_id(), *sid, "{} kept its session", e.id());
    }
    all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
    // Every old client reconnects within its own deadline (1.4 x the session timeout).
    let deadline = Instant::now() + session * 2;
    while revalidations(&server).await < revalidated + 3 * 3 {
        assert!(
            Instant::now() < deadline,
            "the old clients never reconnected: {} revalidations since the restart",
            revalidations(&server).await - revalidated
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever the old clients did is done: the same grant holds, no other was made.
    let still = es[i].leadership().expect("still leads");
    assert_eq!(
        still.term(),
        again.term(),
        "the grant survived the old clients' reconnects"
    );
    assert_eq!(checker.grants(), 2, "{:?}", checker.events());
    for e in &es {
        let st = e.status().borrow().clone();
        assert!(
            matches!(st.role, Role::Leader { .. } | Role::Follower { .. }),
            "{} after the old clients' reconnects: {st:?}",
            e.id()
        );
    }
    let admin = client(&server.addr()).await;
    let kids = admin.list_children(&path).await.expect("children");
    assert_eq!(kids.len(), 3, "one node per participant: {kids:?}");
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_started_before_server_is_up_elects_once_it_is() {
    let mut server = ZkServer::start().await.expect("zookeeper");
    server.stop().await.expect("stop");
    let path = unique_path("early");
    let checker = LeadershipChecker::new();
    let mut es = Vec::new();
    let mut joins = Vec::new();
    for i in 0..2 {
        let e = participant(&server.addr(), &path, &format!("p{i}"), SESSION);
        checker.watch(e.as_ref());
        let j = e.clone();
        joins.push(tokio::spawn(async move { j.join().await }));
        es.push(e);
    }
    // Without a server, nobody joins; health says why.
    es[0]
        .wait_for_status(Duration::from_secs(10), |s| {
            s.health.level != HealthLevel::Healthy
        })
        .await
        .expect("health reports the missing server");
    assert!(!joins[0].is_finished(), "join waits for the server");
    server.restart().await.expect("start");
    for j in joins {
        tokio::time::timeout(Duration::from_secs(20), j)
            .await
            .expect("joined once the server is up")
            .expect("task")
            .expect("join");
    }
    one_leader(&es, Duration::from_secs(10)).await;
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// 3-node ensemble: the server the leader's session is connected to is killed; the session
/// moves to another server and exactly one participant leads throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_ensemble_server_of_the_leader_killed_keeps_one_leader() {
    let mut ens = ZkEnsemble::start(3).await.expect("ensemble");
    let path = unique_path("ens-kill");
    let checker = LeadershipChecker::new();
    let es = joined(&ens.connect_string(), &path, 3, SESSION, &checker).await;
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let sid = es[first].session_id().expect("session");
    let needle = format!("sid=0x{sid:x}");
    let mut victim = None;
    for i in 0..ens.len() {
        let out = succession_testkit::four_letter_word(
            ens.nodes()[i].port(),
            "cons",
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        if out.contains(&needle) {
            victim = Some(i);
        }
    }
    let victim = victim.expect("found the server the leader is connected to");
    ens.node(victim)
        .kill()
        .await
        .expect("kill -9 the leader's server");
    one_leader(&es, SESSION * 2).await;
    // Settle: the leader is re-granted (or replaced) on a live server.
    let i = one_leader(&es, SESSION * 2).await;
    es[i]
        .wait_for_status(SESSION, |s| {
            s.is_leader() && s.health.level == HealthLevel::Healthy
        })
        .await
        .expect("a healthy leader");
    for e in &es {
        e.close().await.expect("close");
    }
    checker.assert_ok();
}

/// A latch path under a node nobody may write to: join fails fast with PermissionDenied and
/// a message naming the ACL, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_participant_without_acl_permission_gets_clear_error() {
    let zk = succession_testkit::shared_zk().await;
    let admin = client(&zk.addr()).await;
    let locked = unique_path("locked");
    admin
        .mkdir(
            locked.rsplit_once('/').expect("parent").0,
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .expect("parent");
    admin
        .create(
            &locked,
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_read()),
        )
        .await
        .expect("read-only node");
    let e = participant(&zk.addr(), &format!("{locked}/latch"), "intruder", SESSION);
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), e.join())
        .await
        .expect("join must not hang")
        .expect_err("join must fail");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("ACL"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.status().borrow().health.level, HealthLevel::Unhealthy);
    e.close().await.expect("close");
}

/// With `ConnectionPolicy::Session`, a leader keeps leading (same term, no second grant)
/// through a connection blip shorter than a quarter of the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_session_policy_keeps_leadership_through_a_short_blip() {
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path("blip");
    let checker = LeadershipChecker::new();
    let cfg = succession_zk::ZkConfig::builder(proxy.addr(), &path, "sticky")
        .session_timeout(Duration::from_secs(20))
        .connection_policy(succession_zk::ConnectionPolicy::Session)
        .build()
        .expect("config");
    let a = std::sync::Arc::new(succession_zk::ZkElection::new(cfg).expect("election"));
    checker.watch(a.as_ref());
    let b = participant(&server.addr(), &path, "b", SESSION);
    checker.watch(b.as_ref());
    a.join().await.expect("join");
    b.join().await.expect("join");
    let lead = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    proxy.cut();
    a.wait_for_status(Duration::from_secs(5), |s| {
        s.health.level == HealthLevel::Degraded
    })
    .await
    .expect("a notices the lost connection");
    assert!(lead.is_current(), "still leading within the grace period");
    proxy.restore();
    a.wait_for_status(Duration::from_secs(5), |s| {
        s.health.level == HealthLevel::Healthy
    })
    .await
    .expect("a reconnects");
    assert!(lead.is_current(), "the same grant continues");
    assert_eq!(checker.grants(), 1, "{:?}", checker.events());
    a.close().await.expect("close");
    b.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("b leads");
    b.close().await.expect("close");
    checker.assert_ok();
}

/// close() while join() still waits for an unreachable server: both return promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_close_cancels_a_join_waiting_for_the_server() {
    let mut server = ZkServer::start().await.expect("zookeeper");
    server.stop().await.expect("stop");
    let e = participant(&server.addr(), &unique_path("cancel"), "p", SESSION);
    let j = e.clone();
    let join = tokio::spawn(async move { j.join().await });
    e.wait_for_status(Duration::from_secs(10), |s| {
        s.health.level != HealthLevel::Healthy
    })
    .await
    .expect("joining, without a server");
    tokio::time::timeout(Duration::from_secs(5), e.close())
        .await
        .expect("close returns promptly")
        .expect("close");
    let err = tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("join returns promptly")
        .expect("task")
        .expect_err("join was cancelled");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// zookeeper-client reports `SyncConnected` as soon as a reconnect's connect response
/// arrives; when the connection dies before the rest of the handshake and every later
/// connect is refused, it keeps saying so, while nothing is answered, until its own
/// deadline (1.4 x the session timeout). The server meanwhile expires the session (the
/// handshake was its last sign of us) and elects someone else. A leader under
/// `ConnectionPolicy::Session` whose short disconnect "healed" that way must still stop
/// leading before then: the contact probe, unanswered, puts the session in doubt whatever
/// the client's state says. (Without that, `a` led until the client gave up, up to 0.4 x T
/// (1.6 s here) after `b` was elected: two leaders.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_client_claiming_connected_after_a_half_handshake_stops_leading_before_its_session_expires(
) {
    let server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path("phantom");
    let session = Duration::from_secs(4);
    let checker = LeadershipChecker::new();
    let cfg = succession_zk::ZkConfig::builder(proxy.addr(), &path, "a")
        .session_timeout(session)
        .connection_timeout(Duration::from_millis(1000))
        .connection_policy(succession_zk::ConnectionPolicy::Session)
        .build()
        .expect("config");
    let a = std::sync::Arc::new(succession_zk::ZkElection::new(cfg).expect("election"));
    checker.watch(a.as_ref());
    a.join().await.expect("a joins");
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    let b = participant(&server.addr(), &path, "b", session);
    checker.watch(b.as_ref());
    b.join().await.expect("b joins");

    let cut = Instant::now();
    proxy.one_frame_then_refuse();
    b.wait_for_leadership(session * 3)
        .await
        .expect("b leads once the server expired a's session");
    let b_led = cut.elapsed();
    assert!(!a.is_leader(), "a stopped leading before b was elected");
    let a_status = a.status().borrow().clone();
    assert_ne!(a_status.health.level, HealthLevel::Healthy, "{a_status:?}");

    proxy.restore();
    a.wait_for_status(session * 4, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .expect("a rejoins as a follower once the link is back");
    eprintln!("b led {b_led:?} after the half handshake");
    a.close().await.expect("close a");
    b.close().await.expect("close b");
    checker.assert_ok();
}
