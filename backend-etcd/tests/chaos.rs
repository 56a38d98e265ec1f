//! Chaos against dedicated real etcd servers (never the shared one): restart, freeze,
//! wipe, a silent partition of the leader, and the loss of the cluster member the leader
//! talks to. Every participant is watched by a `LeadershipChecker`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{close_all, describe, joined, one_leader, settled, term_of};
use std::time::Instant;
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, HealthLevel, Role};
use succession_etcd::EtcdElection;
use succession_testkit::{unique_path, EtcdCluster, EtcdServer, TcpProxy};

const TTL_SECS: u64 = 2;
const TTL: Duration = Duration::from_secs(TTL_SECS);
/// Time for a new leader after a fault ends: reconnect (~1.5 s), the old lease's expiry
/// (TTL + etcd's 500 ms check), campaign.
const RECOVERY: Duration = Duration::from_secs(15);

fn eps(endpoint: String, n: usize) -> Vec<Vec<String>> {
    vec![vec![endpoint]; n]
}

/// Waits until `e` publishes a non-leader role and returns that status.
async fn stepped_down(e: &EtcdElection, bound: Duration) -> succession_core::Status {
    e.wait_for_status(bound, |s| !s.is_leader())
        .await
        .unwrap_or_else(|err| panic!("{} did not step down: {err}", e.id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_with_data_reelects_exactly_one_leader() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let prefix = unique_path("restart");
    let checker = LeadershipChecker::new();
    let es = joined(&eps(etcd.endpoint(), 3), &prefix, TTL_SECS, &checker).await;
    let first = settled(&es, &[0, 1, 2], RECOVERY).await;
    let before = term_of(&es[first]);
    let leases: Vec<i64> = es.iter().map(|e| e.lease().unwrap().id).collect();

    etcd.restart().await.unwrap(); // graceful stop, same data, same port
    let leader = settled(&es, &[0, 1, 2], RECOVERY).await;
    let after = term_of(&es[leader]);
    assert!(after >= before, "term {after} after {before}");
    assert_eq!(
        es[0].leader().await.unwrap().unwrap().id,
        es[leader].id(),
        "store agrees"
    );
    // Leases survive a restart: followers kept their places (only a leader that stepped
    // down re-joins with a new lease).
    let kept = es
        .iter()
        .zip(&leases)
        .filter(|(e, id)| e.lease().map(|l| l.id) == Some(**id))
        .count();
    assert!(
        kept >= 2,
        "followers kept their leases across the restart ({kept} of 3)"
    );
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_frozen_longer_than_ttl_leader_steps_down_before_its_lease_can_expire() {
    let etcd = EtcdServer::start().await.unwrap();
    let prefix = unique_path("freeze");
    let checker = LeadershipChecker::new();
    let es = joined(&eps(etcd.endpoint(), 2), &prefix, TTL_SECS, &checker).await;
    let l = settled(&es, &[0, 1], RECOVERY).await;
    let before = term_of(&es[l]);

    let frozen_at = Instant::now();
    etcd.freeze().unwrap();
    let down = stepped_down(&es[l], TTL + Duration::from_secs(1)).await;
    assert_eq!(down.role, Role::Suspended, "{}", down.reason);
    let info = es[l]
        .lease()
        .expect("the lease is not known to be lost while etcd is frozen");
    // The server answered nothing after the freeze, so the last answered renewal was sent
    // before it; the server cannot expire the lease before that send time + TTL.
    assert!(info.last_renewal <= frozen_at);
    assert_eq!(info.expires_no_earlier_than, info.last_renewal + info.ttl);
    let stepped = down.since;
    assert!(
        stepped < info.expires_no_earlier_than,
        "stepped down {:?} after the earliest server-side expiry",
        stepped - info.expires_no_earlier_than
    );
    // It stepped down at the planned instant (TTL/6, at least 300 ms, before that expiry),
    // give or take scheduling.
    assert!(
        stepped >= info.drop_leadership_at,
        "stepped down before its own deadline: renewals were still valid"
    );
    assert!(!es[1 - l].is_leader(), "nobody leads while etcd is frozen");

    // Stay frozen past the TTL: every lease expires on the server when it resumes.
    tokio::time::sleep_until((frozen_at + TTL + Duration::from_secs(1)).into()).await;
    assert!(es.iter().all(|e| !e.is_leader()));
    etcd.thaw().unwrap();
    let leader = settled(&es, &[0, 1], RECOVERY).await;
    assert!(term_of(&es[leader]) > before);
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wipe_reelects_with_higher_term() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let prefix = unique_path("wipe");
    let checker = LeadershipChecker::new();
    let es = joined(&eps(etcd.endpoint(), 3), &prefix, TTL_SECS, &checker).await;
    let l = settled(&es, &[0, 1, 2], RECOVERY).await;
    let before = term_of(&es[l]);

    etcd.stop().await.unwrap();
    etcd.wipe().unwrap();
    etcd.restart().await.unwrap(); // empty: revision 1, no keys, no leases
    let leader = settled(&es, &[0, 1, 2], RECOVERY).await;
    let after = term_of(&es[leader]);
    assert!(after > before, "term {after} not above {before}");
    assert!(
        after.epoch() > before.epoch(),
        "a new epoch after the wipe: {after} vs {before}"
    );
    assert_eq!(
        es[0].participants().await.unwrap().len(),
        3,
        "everyone re-joined"
    );
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_partitioned_leader_steps_down_before_its_lease_can_expire() {
    let etcd = EtcdServer::start().await.unwrap();
    let proxy = TcpProxy::start(&etcd.addr()).await.unwrap();
    let prefix = unique_path("partition");
    let checker = LeadershipChecker::new();
    // a reaches etcd only through the proxy; b directly.
    let es = joined(
        &[vec![proxy.endpoint()], vec![etcd.endpoint()]],
        &prefix,
        TTL_SECS,
        &checker,
    )
    .await;
    es[0].wait_for_leadership(RECOVERY).await.unwrap();
    let before = term_of(&es[0]);

    let cut_at = Instant::now();
    proxy.blackhole();
    let down = stepped_down(&es[0], TTL + Duration::from_secs(1)).await;
    assert_eq!(down.role, Role::Suspended, "{}", down.reason);
    let info = es[0].lease().expect("lease not known lost yet");
    assert!(info.last_renewal <= cut_at);
    assert!(down.since < info.expires_no_earlier_than);
    // b takes over once a's lease expired on the server (etcd checks every 500 ms).
    let lead_b = es[1].wait_for_leadership(RECOVERY).await.unwrap();
    assert!(lead_b.term() > before);
    assert!(
        Instant::now() >= info.expires_no_earlier_than,
        "b led before a's lease could have expired"
    );
    es[0]
        .wait_for_status(RECOVERY, |s| s.health.level == HealthLevel::Unhealthy)
        .await
        .unwrap();

    proxy.restore();
    let leader = settled(&es, &[0, 1], RECOVERY).await;
    assert_eq!(leader, 1, "b keeps leading; a re-joined behind it");
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_of_the_leader_killed_reelects_exactly_one_leader() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let endpoints = cluster.endpoints();
    let prefix = unique_path("cluster");
    let checker = LeadershipChecker::new();
    // One endpoint each: participant i talks only to member i.
    let per: Vec<Vec<String>> = endpoints.iter().map(|e| vec![e.clone()]).collect();
    let es: Vec<Arc<EtcdElection>> = joined(&per, &prefix, TTL_SECS, &checker).await;
    let l = settled(&es, &[0, 1, 2], RECOVERY).await;
    let before = term_of(&es[l]);

    cluster.member(l).kill().await.unwrap(); // kill -9 the leader's member
    stepped_down(&es[l], TTL + Duration::from_secs(1)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let next = one_leader(&es, RECOVERY).await;
    assert_ne!(
        next,
        l,
        "the cut-off participant must not lead:\n{}\nevents: {:#?}",
        describe(&es),
        checker.events()
    );
    assert!(term_of(&es[next]) > before);
    let next = settled(&es, &others, RECOVERY).await;

    // The member comes back: its participant re-joins behind the new leader.
    cluster.member(l).restart().await.unwrap();
    let again = settled(&es, &[0, 1, 2], RECOVERY).await;
    assert_eq!(again, next, "leadership stays where it went");
    close_all(&es).await;
    checker.assert_ok();
}
