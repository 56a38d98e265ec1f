//! Attacks on the resume of a session ZooKeeper still holds after an outage (a new client
//! takes the session over; the old one is retired, and steals the connection for an instant
//! when its own backoff ends). Real servers only (testkit, 127.0.0.1). Every test watches
//! every participant with the leadership checker (never two leaders, terms only grow) and
//! checks the store (one node per live participant, owned by its session; nothing left
//! after close) and the server's session table (`dump`), not only statuses.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    all_in_latch, client, hex, joined, live_sessions, nodes_left, one_leader, owners, participant,
    Clock,
};
use succession_core::conformance::{wait_on_statuses, LeadershipChecker};
use succession_core::{Election, ElectionExt, Role};
use succession_testkit::{four_letter_word, unique_path, TcpProxy, ZkServer};
use succession_zk::{ZkElection, ZkSession, ZkSessionConfig};
use tokio::time::Instant;
use zookeeper_client as zk;

/// Print every status change of `es` (role and health) with a time stamp, while the test
/// runs (for the report; no assertion).
fn trace_statuses(es: &[Arc<ZkElection>], clock: Clock) {
    if std::env::var_os("RESUME_ATTACK_TRACE").is_none() {
        return;
    }
    for e in es {
        let mut rx = e.status();
        let id = e.id().to_string();
        tokio::spawn(async move {
            loop {
                {
                    let s = rx.borrow_and_update();
                    clock.log(format!(
                        "  {id}: {:?} / {:?} {}",
                        s.role, s.health.level, s.health.reason
                    ));
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Print the server's revalidation count (a session taken on a new connection: a resume,
/// a retired client's steal, the current client taking it back) whenever it changes.
fn trace_revalidations(port: u16, clock: Clock) {
    if std::env::var_os("RESUME_ATTACK_TRACE").is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut last = -1;
        loop {
            if let Ok(out) = four_letter_word(port, "mntr", Duration::from_millis(500)).await {
                let n = out
                    .lines()
                    .find_map(|l| l.strip_prefix("zk_connection_revalidate_count"))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap_or(-1);
                if n != last {
                    clock.log(format!("  revalidations: {n}"));
                    last = n;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

async fn flw(port: u16, cmd: &str) -> String {
    four_letter_word(port, cmd, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}"))
}

async fn mntr(port: u16, key: &str) -> i64 {
    let out = flw(port, "mntr").await;
    out.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse::<i64>()))
        .and_then(|r| r.ok())
        .unwrap_or_else(|| panic!("no {key} in mntr"))
}

/// The store holds exactly one node per election in `es`, each owned by its current session.
async fn assert_one_node_each(admin: &zk::Client, path: &str, es: &[&ZkElection], what: &str) {
    let found = owners(admin, path).await;
    let mut want: Vec<i64> = es
        .iter()
        .map(|e| {
            e.session_id()
                .unwrap_or_else(|| panic!("{what}: {} has no session", e.id()))
        })
        .collect();
    let mut got: Vec<i64> = found.iter().map(|(_, o)| *o).collect();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "{what}: one node per participant, owned by its session; store: {found:?}"
    );
}

/// Wait until the store holds no node under any of `paths`, the server counts no
/// ephemeral, and none of `sids` is a live session; returns how long that took.
async fn wait_gone(
    port: u16,
    admin: &zk::Client,
    paths: &[String],
    sids: &[i64],
    bound: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let left = nodes_left(admin, paths).await;
        let eph = mntr(port, "zk_ephemerals_count").await;
        let live = live_sessions(port).await;
        let ours: Vec<String> = sids
            .iter()
            .map(|s| hex(*s))
            .filter(|s| live.contains(s))
            .collect();
        if left.is_empty() && eph == 0 && ours.is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "after {bound:?}: nodes left {left:?}, ephemerals {eph}, our sessions still live {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Close every election, then wait (3 s at most) until their nodes under `path`, every
/// ephemeral and the sessions `sids` are gone from the server; the checker must have seen
/// no violation. Returns how long the store took to be clean.
async fn close_all_and_check(
    es: &[Arc<ZkElection>],
    server: &ZkServer,
    admin: &zk::Client,
    path: &str,
    sids: &[i64],
    checker: &LeadershipChecker,
) -> Duration {
    for e in es {
        e.close().await.expect("close");
    }
    let gone = wait_gone(
        server.port(),
        admin,
        &[path.to_string()],
        sids,
        Duration::from_secs(3),
    )
    .await;
    checker.assert_ok();
    gone
}

/// Nothing of ours reappears during `window` (an observation window: asserts absence).
async fn stays_gone(
    port: u16,
    admin: &zk::Client,
    paths: &[String],
    sids: &[i64],
    window: Duration,
) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        for p in paths {
            let o = owners(admin, p).await;
            assert!(
                o.is_empty(),
                "a node reappeared after close under {p}: {o:?}"
            );
        }
        let eph = mntr(port, "zk_ephemerals_count").await;
        assert_eq!(eph, 0, "an ephemeral reappeared after close");
        let live = live_sessions(port).await;
        for s in sids {
            assert!(
                !live.contains(&hex(*s)),
                "session {} came back after close",
                hex(*s)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn roles(es: &[Arc<ZkElection>]) -> Vec<Role> {
    es.iter()
        .map(|e| e.status().borrow().role.clone())
        .collect()
}

/// No participant's role changes during `window` (an observation window: asserts that no
/// demotion, grant or term change happens, e.g. when a retired client steals the
/// connection).
async fn roles_hold(es: &[Arc<ZkElection>], window: Duration, clock: &Clock, what: &str) {
    let before = roles(es);
    let rxs = es.iter().map(|e| e.status()).collect();
    let changed = wait_on_statuses(rxs, window, None, || {
        let now = roles(es);
        (now != before).then_some(now)
    })
    .await;
    if let Some(now) = changed {
        let st: Vec<String> = es
            .iter()
            .map(|e| format!("{}: {}", e.id(), *e.status().borrow()))
            .collect();
        clock.log(format!("{what}: ROLES CHANGED {before:?} -> {now:?}"));
        panic!(
            "{what}: roles changed during the observation window: {before:?} -> {now:?}\n{}",
            st.join("\n")
        );
    }
}

/// Wait until every participant leads or follows (back in place after a recovery).
async fn settled(es: &[Arc<ZkElection>], bound: Duration) {
    let rxs = es.iter().map(|e| e.status()).collect();
    let ok = wait_on_statuses(rxs, bound, None, || {
        roles(es)
            .iter()
            .all(|r| matches!(r, Role::Leader { .. } | Role::Follower { .. }))
            .then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "not everyone back in place within {bound:?}: {:?}",
        roles(es)
    );
}

fn sids(es: &[Arc<ZkElection>]) -> Vec<Option<i64>> {
    es.iter().map(|e| e.session_id()).collect()
}

/// Kill -9 the server, wait for the leader to be suspended, keep it down for `outage`,
/// restart it with its data; returns the instant it answered again.
async fn outage(
    server: &mut ZkServer,
    es: &[Arc<ZkElection>],
    outage: Duration,
    clock: &Clock,
) -> Instant {
    server.kill().await.expect("kill -9");
    clock.log("server killed");
    let leader = es.iter().position(|e| e.is_leader());
    if let Some(l) = leader {
        es[l]
            .wait_for_status(Duration::from_secs(10), |s| !s.is_leader())
            .await
            .expect("the leader stops leading while the server is away");
    }
    // The outage itself (the scenario parameter).
    tokio::time::sleep(outage).await;
    server.restart().await.expect("restart with data");
    clock.log("server answers again");
    Instant::now()
}

/// Repeated kill -9 + restart with the data at varied outage lengths (0.3 s, 1.5 s, 4 s,
/// 0.3 s): each outage overlaps what the retired clients of the one before still do (their
/// backoff: 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s after their loss). After every restart exactly
/// one leader, back within 1 s of the server answering, with a new term, under the same
/// sessions (resumed or reconnected), and one node per participant owned by its session.
/// Then, until every old client has given up or reconnected (1.4 x the session timeout
/// after the last kill), nobody's role changes. Closing leaves nothing (nodes, ephemerals,
/// sessions) within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_restarts_at_varied_outages_keep_one_leader_one_node_each_and_no_late_demotion() {
    let clock = Clock::new();
    let session = Duration::from_secs(8);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("rr");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    trace_statuses(&es, clock);
    trace_revalidations(server.port(), clock);
    one_leader(&es, Duration::from_secs(10)).await;
    let admin_addr = server.addr();
    let first_sids = sids(&es);
    let mut worst = Duration::ZERO;
    let mut last_term = checker.max_term().expect("a grant");
    let mut last_kill = Instant::now();
    for (round, ms) in [300u64, 1500, 4000, 300].into_iter().enumerate() {
        last_kill = Instant::now();
        let back = outage(&mut server, &es, Duration::from_millis(ms), &clock).await;
        let i = one_leader(&es, session).await;
        let took = back.elapsed();
        worst = worst.max(took);
        let term = es[i].leadership().expect("leads").term();
        clock.log(format!(
            "round {round} (outage {ms} ms): {} leads again {took:?} after the server answered, term {term}",
            es[i].id()
        ));
        assert!(
            term > last_term,
            "round {round}: term {term} after {last_term}"
        );
        last_term = term;
        assert_eq!(sids(&es), first_sids, "round {round}: sessions kept");
        all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
        let admin = client(&admin_addr).await;
        let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
        assert_one_node_each(&admin, &path, &refs, &format!("round {round}")).await;
        assert!(
            took < Duration::from_secs(1),
            "round {round}: leader again only {took:?} after the server answered"
        );
    }
    eprintln!("worst time to leader after the server answered: {worst:?}");
    let grants = checker.grants();
    // Every old client reconnects or gives up within 1.4 x the session timeout of its last
    // receipt: watch until then.
    let settle = (last_kill + session.mul_f64(1.4) + Duration::from_millis(500))
        .saturating_duration_since(Instant::now());
    settled(&es, Duration::from_secs(10)).await;
    roles_hold(&es, settle, &clock, "after the last restart").await;
    assert_eq!(checker.grants(), grants, "{:?}", checker.events());
    let admin = client(&admin_addr).await;
    let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
    assert_one_node_each(&admin, &path, &refs, "settled").await;
    let ids: Vec<i64> = first_sids.iter().flatten().copied().collect();
    let gone = close_all_and_check(&es, &server, &admin, &path, &ids, &checker).await;
    clock.log(format!("closed: nodes and sessions gone after {gone:?}"));
}

/// A second restart DURING the recovery from a long outage: the first resume retires the
/// first client (A1, whose next reconnect is due ~12.7 s after the first loss), the second
/// retires the resumed client (A2). A2 reconnects first and ends; A1 reconnects later,
/// stealing the connection of the current client (A3). Claim under attack: the retired
/// client's later reconnect demotes nobody (no extra grant or term change after recovery).
///
/// Failed in about 4 of 10 cycles while the session task tracked only the latest retired
/// client (A1's reconnect then demoted everyone); whether A2 has ended before A1 steals
/// depends on a handshake race. Every retired client is tracked since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_recovery_every_retired_client_steal_demotes_nobody() {
    let clock = Clock::new();
    let session = Duration::from_secs(12);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("rr2");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    trace_statuses(&es, clock);
    trace_revalidations(server.port(), clock);
    one_leader(&es, Duration::from_secs(10)).await;
    let first_sids = sids(&es);
    // Two cycles: whether the resumed client of the second restart (A2) has ended before A1
    // steals depends on a handshake race (A2 loses it when the current client takes the
    // connection back before A2's first replies); each cycle is another draw.
    for cycle in 0..2 {
        let kill1 = Instant::now();
        let back = outage(&mut server, &es, Duration::from_millis(4000), &clock).await;
        let i = one_leader(&es, session).await;
        clock.log(format!(
            "cycle {cycle}: leader again {:?} after the first restart",
            back.elapsed()
        ));
        assert_eq!(sids(&es), first_sids, "sessions resumed");
        // Right after the resume, before the first clients' next reconnect.
        let back = outage(&mut server, &es, Duration::from_millis(2000), &clock).await;
        let j = one_leader(&es, session).await;
        let took = back.elapsed();
        clock.log(format!(
            "cycle {cycle}: leader again {took:?} after the second restart (was {i}, now {j})"
        ));
        assert_eq!(sids(&es), first_sids, "sessions resumed again");
        all_in_latch(&es[j], 3, Duration::from_secs(10)).await;
        settled(&es, Duration::from_secs(10)).await;
        let grants = checker.grants();
        let term = es[j].leadership().expect("leads").term();
        let rv = mntr(server.port(), "zk_connection_revalidate_count").await;
        // A1 gives up 1.4 x the session timeout after its last receipt (before the first
        // kill): watch until then.
        let settle = (kill1 + session.mul_f64(1.4) + Duration::from_millis(500))
            .saturating_duration_since(Instant::now());
        roles_hold(
            &es,
            settle,
            &clock,
            &format!("cycle {cycle}: after the second restart"),
        )
        .await;
        let rv2 = mntr(server.port(), "zk_connection_revalidate_count").await;
        clock.log(format!(
            "cycle {cycle}: revalidations while watched: {}",
            rv2 - rv
        ));
        assert_eq!(checker.grants(), grants, "{:?}", checker.events());
        assert_eq!(es[j].leadership().expect("still leads").term(), term);
    }
    let admin = client(&server.addr()).await;
    let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
    assert_one_node_each(&admin, &path, &refs, "settled").await;
    let ids: Vec<i64> = first_sids.iter().flatten().copied().collect();
    close_all_and_check(&es, &server, &admin, &path, &ids, &checker).await;
}

fn shared(connect: &str, session: Duration) -> ZkSession {
    let cfg = ZkSessionConfig::builder(connect)
        .session_timeout(session)
        .connection_timeout(Duration::from_millis(1000))
        .build()
        .expect("valid session config");
    ZkSession::new(cfg).expect("session")
}

/// Two shared sessions, each with 200 elections (one per path, so every path has two
/// participants), restarted with the data after 3 s: every election is led again (one
/// grant per path), the store holds exactly the two nodes per path owned by the two
/// (kept) sessions, and closing both sessions removes every node and both sessions at
/// once, not at expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_session_with_200_elections_resumed_after_restart_every_election_led_again_once() {
    const N: usize = 200;
    let clock = Clock::new();
    let session = Duration::from_secs(10);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let paths: Vec<String> = (0..N).map(|i| unique_path(&format!("s200-{i}"))).collect();
    let sessions = [
        shared(&server.addr(), session),
        shared(&server.addr(), session),
    ];
    let checkers: Vec<LeadershipChecker> = (0..N).map(|_| LeadershipChecker::new()).collect();
    let mut by_path: Vec<Vec<Arc<ZkElection>>> = vec![Vec::new(); N];
    for (s, sess) in sessions.iter().enumerate() {
        let joins = paths.iter().enumerate().map(|(p, path)| {
            let e = Arc::new(sess.election(path, &format!("s{s}")).expect("election"));
            checkers[p].watch(e.as_ref());
            by_path[p].push(e.clone());
            async move {
                tokio::time::timeout(Duration::from_secs(30), e.join())
                    .await
                    .expect("join in time")
                    .expect("join")
            }
        });
        futures::future::join_all(joins.collect::<Vec<_>>()).await;
    }
    for es in &by_path {
        one_leader(es, Duration::from_secs(10)).await;
    }
    let sids: Vec<i64> = sessions
        .iter()
        .map(|s| s.session_id().expect("id"))
        .collect();
    let grants_before: usize = checkers.iter().map(|c| c.grants()).sum();
    assert_eq!(grants_before, N);
    let all: Vec<Arc<ZkElection>> = by_path.iter().flatten().cloned().collect();
    let back = outage(&mut server, &all, Duration::from_secs(3), &clock).await;
    // Every path led again.
    let led = wait_on_statuses(
        all.iter().map(|e| e.status()).collect(),
        session,
        None,
        || {
            let mut n = 0;
            for es in &by_path {
                let l = es.iter().filter(|e| e.is_leader()).count();
                assert!(l <= 1, "two leaders on one path");
                n += l;
            }
            (n == N).then_some(())
        },
    )
    .await;
    let took = back.elapsed();
    let leading = by_path
        .iter()
        .filter(|es| es.iter().any(|e| e.is_leader()))
        .count();
    clock.log(format!(
        "{leading} of {N} paths led again {took:?} after the server answered"
    ));
    assert!(
        led.is_some(),
        "only {leading} of {N} paths led again within {session:?}"
    );
    for (s, sess) in sessions.iter().enumerate() {
        assert_eq!(sess.session_id(), Some(sids[s]), "session {s} kept");
    }
    let admin = client(&server.addr()).await;
    for (p, es) in by_path.iter().enumerate() {
        let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
        assert_one_node_each(&admin, &paths[p], &refs, &paths[p]).await;
        assert_eq!(
            checkers[p].grants(),
            2,
            "{}: one grant before, one after: {:?}",
            paths[p],
            checkers[p].events()
        );
    }
    let eph = mntr(server.port(), "zk_ephemerals_count").await;
    assert_eq!(eph as usize, 2 * N, "ephemerals in the server");
    let t = Instant::now();
    for s in &sessions {
        s.close().await.expect("close");
    }
    clock.log(format!("both sessions closed in {:?}", t.elapsed()));
    let gone = wait_gone(server.port(), &admin, &paths, &sids, Duration::from_secs(3)).await;
    clock.log(format!(
        "nodes and sessions gone {gone:?} after close returned"
    ));
    for c in &checkers {
        c.assert_ok();
    }
}

/// close() right after the resume, while the retired clients still wait out their backoff
/// (due ~6.3 s after the loss, ~2 s after the restart): nodes, ephemerals and sessions are
/// gone within 3 s (not at expiry, 30 s), and nothing reappears when the retired clients
/// reconnect (no replayed create, no session brought back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_right_after_resume_removes_nodes_and_sessions_and_retired_clients_bring_nothing_back(
) {
    let clock = Clock::new();
    let session = Duration::from_secs(30);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("close-resume");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    trace_statuses(&es, clock);
    trace_revalidations(server.port(), clock);
    one_leader(&es, Duration::from_secs(10)).await;
    let ids: Vec<i64> = sids(&es).into_iter().flatten().collect();
    let back = outage(&mut server, &es, Duration::from_millis(4000), &clock).await;
    let i = one_leader(&es, session).await;
    clock.log(format!(
        "{} leads {:?} after the server answered",
        es[i].id(),
        back.elapsed()
    ));
    assert_eq!(
        sids(&es).into_iter().flatten().collect::<Vec<_>>(),
        ids,
        "resumed"
    );
    // Close the leader first: the successor must lead, on its resumed session.
    es[i].close().await.expect("close the leader");
    let rest: Vec<Arc<ZkElection>> = es
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != i)
        .map(|(_, e)| e.clone())
        .collect();
    let j = one_leader(&rest, Duration::from_secs(5)).await;
    clock.log(format!("{} leads after the leader closed", rest[j].id()));
    for e in &rest {
        e.close().await.expect("close");
    }
    let admin = client(&server.addr()).await;
    let gone = wait_gone(
        server.port(),
        &admin,
        std::slice::from_ref(&path),
        &ids,
        Duration::from_secs(3),
    )
    .await;
    clock.log(format!("everything gone {gone:?} after the last close"));
    // The retired clients reconnect ~6.3-6.9 s after the loss; watch past that.
    stays_gone(server.port(), &admin, &[path], &ids, Duration::from_secs(6)).await;
    checker.assert_ok();
}

/// kill -9 + WIPE right when the resume is under way (0, 30, 120 ms after the restarted
/// server answers): a session resumed on the old data, or being resumed, must be found
/// lost and replaced; one leader again with a newer term, one node per participant owned
/// by its (new) session, nothing left after close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_while_a_resume_is_under_way_replaces_the_session_and_reelects() {
    let clock = Clock::new();
    let session = Duration::from_secs(10);
    for delay in [0u64, 30, 120] {
        let mut server = ZkServer::start().await.expect("zookeeper");
        let path = unique_path("wipe-resume");
        let checker = LeadershipChecker::new();
        let es = joined(&server.addr(), &path, 3, session, &checker).await;
        trace_statuses(&es, clock);
        trace_statuses(&es, clock);
        trace_revalidations(server.port(), clock);
        one_leader(&es, Duration::from_secs(10)).await;
        let before = checker.max_term().expect("grant");
        let old: Vec<i64> = sids(&es).into_iter().flatten().collect();
        outage(&mut server, &es, Duration::from_millis(2000), &clock).await;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill().await.expect("kill -9 again");
        server.wipe().expect("wipe");
        server.restart().await.expect("restart empty");
        let back = Instant::now();
        clock.log(format!("delay {delay} ms: wiped server answers"));
        let i = one_leader(&es, session).await;
        let term = es[i].leadership().expect("leads").term();
        clock.log(format!(
            "delay {delay} ms: {} leads {:?} after the wiped server answered, term {term}",
            es[i].id(),
            back.elapsed()
        ));
        assert!(term > before, "term {term} after {before}");
        all_in_latch(&es[i], 3, session).await;
        let admin = client(&server.addr()).await;
        let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
        assert_one_node_each(&admin, &path, &refs, &format!("delay {delay}")).await;
        for e in &es {
            assert!(
                !old.contains(&e.session_id().expect("id")),
                "{} still claims a session the wiped server never knew",
                e.id()
            );
        }
        let ids: Vec<i64> = sids(&es).into_iter().flatten().collect();
        close_all_and_check(&es, &server, &admin, &path, &ids, &checker).await;
    }
}

/// SIGSTOP the server for 3 s (past the connection timeout, inside half the 8 s session),
/// then SIGCONT: every session survives (kept or resumed), one leader again within 1 s of
/// the thaw, and no role changes until every old client has reconnected or given up; one
/// node each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_thawed_within_the_session_keeps_sessions_and_one_leader() {
    let clock = Clock::new();
    let session = Duration::from_secs(8);
    let server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("freeze");
    let checker = LeadershipChecker::new();
    let es = joined(&server.addr(), &path, 3, session, &checker).await;
    trace_statuses(&es, clock);
    trace_revalidations(server.port(), clock);
    let first = one_leader(&es, Duration::from_secs(10)).await;
    let ids = sids(&es);
    let frozen = Instant::now();
    server.freeze().expect("freeze");
    clock.log("server frozen");
    es[first]
        .wait_for_status(Duration::from_secs(10), |s| !s.is_leader())
        .await
        .expect("leader demoted while the server is frozen");
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(frozen.elapsed())).await;
    server.thaw().expect("thaw");
    let back = Instant::now();
    clock.log("server thawed");
    let i = one_leader(&es, session).await;
    let took = back.elapsed();
    clock.log(format!("{} leads {took:?} after the thaw", es[i].id()));
    assert_eq!(sids(&es), ids, "sessions kept");
    all_in_latch(&es[i], 3, Duration::from_secs(10)).await;
    let grants = checker.grants();
    let settle = (frozen + session.mul_f64(1.4) + Duration::from_millis(500))
        .saturating_duration_since(Instant::now());
    settled(&es, Duration::from_secs(10)).await;
    roles_hold(&es, settle, &clock, "after the thaw").await;
    assert_eq!(checker.grants(), grants, "{:?}", checker.events());
    let admin = client(&server.addr()).await;
    let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
    assert_one_node_each(&admin, &path, &refs, "after the thaw").await;
    assert!(
        took < Duration::from_secs(1),
        "leader again only {took:?} after the thaw"
    );
    let ids: Vec<i64> = ids.into_iter().flatten().collect();
    close_all_and_check(&es, &server, &admin, &path, &ids, &checker).await;
}

/// The leader's own link (a proxy) is cut while the server restarts with its data: the
/// others resume and follow (the leader's node is still first: nobody else may lead while
/// its session lives), the leader stays suspended; when its link heals it resumes its
/// session and leads again with a new term; exactly one grant since the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_link_cut_during_restart_others_follow_and_leader_resumes_when_healed() {
    let clock = Clock::new();
    let session = Duration::from_secs(10);
    let mut server = ZkServer::start().await.expect("zookeeper");
    let proxy = TcpProxy::start(&server.addr()).await.expect("proxy");
    let path = unique_path("cut-restart");
    let checker = LeadershipChecker::new();
    let a = participant(&proxy.addr(), &path, "a", session);
    checker.watch(a.as_ref());
    a.join().await.expect("join");
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    let mut es = vec![a.clone()];
    es.extend(joined(&server.addr(), &path, 2, session, &checker).await);
    trace_statuses(&es, clock);
    trace_revalidations(server.port(), clock);
    let ids = sids(&es);
    let before = checker.max_term().expect("grant");
    server.kill().await.expect("kill -9");
    proxy.cut();
    a.wait_for_status(Duration::from_secs(10), |s| !s.is_leader())
        .await
        .expect("a demoted");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    server.restart().await.expect("restart with data");
    clock.log("server answers; a's link still cut");
    for e in &es[1..] {
        e.wait_for_status(session, |s| matches!(s.role, Role::Follower { .. }))
            .await
            .unwrap_or_else(|_| panic!("{} follows again", e.id()));
    }
    assert_eq!(sids(&es)[1..], ids[1..], "the others kept their sessions");
    // Nobody may lead while a's node (session alive on the server) is first.
    roles_hold(&es, Duration::from_millis(1500), &clock, "a cut off").await;
    proxy.restore();
    let healed = Instant::now();
    let i = one_leader(&es, session).await;
    clock.log(format!(
        "{} leads {:?} after a's link healed",
        es[i].id(),
        healed.elapsed()
    ));
    assert_eq!(i, 0, "a leads again first (its node was never deleted)");
    assert_eq!(a.session_id(), ids[0], "a kept its session");
    let term = a.leadership().expect("leads").term();
    assert!(term > before);
    assert_eq!(checker.grants(), 2, "{:?}", checker.events());
    let admin = client(&server.addr()).await;
    let refs: Vec<&ZkElection> = es.iter().map(|e| e.as_ref()).collect();
    assert_one_node_each(&admin, &path, &refs, "healed").await;
    let ids: Vec<i64> = ids.into_iter().flatten().collect();
    close_all_and_check(&es, &server, &admin, &path, &ids, &checker).await;
}

/// A program that closes its election and then exits at once (its runtime shut down right
/// after `close()` returned): the node is gone (close confirmed it) and so is the session,
/// not kept by the server until it expires (sessions are detached; only `end_session`
/// closes them).
///
/// FAILS (3 of 3 runs): the session stays in the server's table until it expires (20 s).
/// A program that exits as soon as `close()` returned (its runtime dropped at once) leaves
/// neither its node nor its session behind: sessions are detached (a dropped client does not
/// close them), so a private election's `close()` ends its session itself and returns only
/// once ZooKeeper has closed it. Found by this file while that end was still spawned in the
/// background (the session then stayed until it expired, 20 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_exit_at_once_leaves_no_session_until_expiry() {
    let session = Duration::from_secs(20);
    let server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("exit");
    let addr = server.addr();
    let p = path.clone();
    // The "program": its own runtime, dropped as soon as close() returns.
    let sid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let e = participant(&addr, &p, "p", session);
            e.join().await.expect("join");
            e.wait_for_leadership(Duration::from_secs(10))
                .await
                .expect("leads");
            let sid = e.session_id().expect("session");
            e.close().await.expect("close");
            sid
        })
        // rt dropped here: the process "exits".
    })
    .join()
    .expect("program");
    let admin = client(&server.addr()).await;
    let gone = wait_gone(
        server.port(),
        &admin,
        &[path],
        &[sid],
        Duration::from_secs(5),
    )
    .await;
    eprintln!("node and session gone {gone:?} after the program exited");
}
