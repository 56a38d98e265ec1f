//! SASL (DIGEST-MD5) authentication against a real ZooKeeper that accepts SASL logins
//! (feature `sasl`). Every test starts its own SASL-enabled server
//! ([`ZkServer::start_with_sasl`]): nodes created under one SASL identity keep their ACLs,
//! so a shared server would let one test's parents lock out another's.
mod common;

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::{self, LeadershipChecker};
use succession_core::{Election, ElectionExt, ErrorKind, HealthLevel, Role};
use succession_testkit::{unique_path, ZkServer};
use succession_zk::{NodeAcl, ZkConfig, ZkElection};
use zookeeper_client as zk;

const USER: &str = "scheduler";
const PASSWORD: &str = "s3cret-sasl";
/// How long any single step may take before the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

async fn sasl_server() -> ZkServer {
    ZkServer::start_with_sasl(&[(USER, PASSWORD)])
        .await
        .expect("ZooKeeper with SASL")
}

fn sasl_config(connect: &str, path: &str, id: &str, password: &str) -> ZkConfig {
    let cfg = ZkConfig::builder(connect, path, id)
        .session_timeout(Duration::from_secs(4))
        .connection_timeout(Duration::from_secs(2))
        .sasl_digest_md5(USER, password)
        .build()
        .expect("config");
    assert_eq!(
        cfg.acl,
        NodeAcl::CreatorAllOthersRead,
        "the default with SASL"
    );
    cfg
}

fn sasl_participant(connect: &str, path: &str, id: &str, password: &str) -> Arc<ZkElection> {
    Arc::new(ZkElection::new(sasl_config(connect, path, id, password)).expect("election"))
}

async fn join_in_time(e: &ZkElection) -> succession_core::Result<()> {
    tokio::time::timeout(BOUND, e.join())
        .await
        .expect("join must not hang")
}

/// Waits on `e`'s status stream until it follows `leader`.
async fn follows(e: &ZkElection, leader: &str) {
    let mut status = e.status();
    let wanted = Some(leader.to_owned());
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| matches!(&s.role, Role::Follower { leader } if *leader == wanted)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} does not follow {leader}: {}",
            e.id(),
            *e.status().borrow()
        )
    })
    .expect("status stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_participant_elects_leader() {
    let zk = sasl_server().await;
    let path = unique_path("sasl");
    let checker = LeadershipChecker::new();
    let es: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| sasl_participant(&zk.addr(), &path, id, PASSWORD))
        .collect();
    for e in &es {
        checker.watch(e.as_ref());
        join_in_time(e).await.expect("join with the right password");
    }
    let first = conformance::one_leader(&es, BOUND).await;
    let other = 1 - first;
    follows(&es[other], es[first].id()).await;
    let leader = es[other].leader().await.expect("read the leader");
    assert_eq!(leader.map(|p| p.id), Some(es[first].id().to_owned()));

    es[first].close().await.expect("close the leader");
    es[other]
        .wait_for_leadership(BOUND)
        .await
        .expect("the other takes over");
    es[other].close().await.expect("close");
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_wrong_password_gets_clear_error() {
    let zk = sasl_server().await;
    let path = unique_path("sasl-wrong");
    let a = sasl_participant(&zk.addr(), &path, "a", PASSWORD);
    join_in_time(&a).await.expect("join");
    let lead = a.wait_for_leadership(BOUND).await.expect("a leads");

    let wrong = "pw-WRONG-sasl-42";
    let b = sasl_participant(&zk.addr(), &path, "b", wrong);
    let err = join_in_time(&b)
        .await
        .expect_err("a wrong SASL password must be refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable(), "a refused login is permanent: {err}");
    let text = err.to_string();
    assert!(
        text.contains("rejected the credentials") && text.contains("sasl_digest_md5"),
        "says what to check: {text}"
    );
    assert!(!text.contains(wrong), "no password in: {text}");
    let status = b.status().borrow().clone();
    assert_eq!(status.health.level, HealthLevel::Unhealthy, "{status}");
    assert!(
        status.health.reason.contains("sasl_digest_md5") && !status.health.reason.contains(wrong),
        "the health reason names what to check, not the password: {}",
        status.health.reason
    );
    assert!(!status.role.is_leader());
    assert!(!format!("{:?}", b.config()).contains(wrong));
    assert!(
        lead.is_current(),
        "a refused login does not disturb the leader"
    );
    assert_eq!(
        a.participants().await.expect("read").len(),
        1,
        "b holds no place in the latch"
    );
    b.close().await.expect("close");
    a.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_node_cannot_be_deleted_by_unauthenticated_client() {
    let zk = sasl_server().await;
    let path = unique_path("sasl-acl");
    let checker = LeadershipChecker::new();
    let a = sasl_participant(&zk.addr(), &path, "a", PASSWORD);
    checker.watch(a.as_ref());
    join_in_time(&a).await.expect("join");
    let lead = a.wait_for_leadership(BOUND).await.expect("leads");

    let anon = common::client(&zk.addr()).await;
    let kids = anon.list_children(&path).await.expect("others may read");
    assert_eq!(kids.len(), 1, "{kids:?}");
    let node = format!("{path}/{}", kids[0]);
    let (acl, _) = anon.get_acl(&node).await.expect("read the ACL");
    assert!(
        acl.iter().any(|a| a.scheme() == "sasl"
            && a.id() == USER
            && a.permission() == zk::Permission::ALL),
        "the node belongs to sasl:{USER} (the `auth` ACL took the SASL identity): {acl:?}"
    );
    assert!(
        acl.iter()
            .all(|a| a.scheme() == "sasl" || a.permission() == zk::Permission::READ),
        "everyone else may only read: {acl:?}"
    );

    assert_eq!(
        anon.delete(&node, None).await,
        Err(zk::Error::NoAuth),
        "delete refused"
    );
    assert!(
        anon.check_stat(&node).await.expect("stat").is_some(),
        "the node is still there"
    );
    assert!(lead.is_current(), "still leading");
    let leader = a.leader().await.expect("read").expect("a leader");
    assert_eq!(
        (leader.id.as_str(), leader.term),
        ("a", Some(lead.term())),
        "leader and term unchanged"
    );

    a.close().await.expect("close");
    assert_eq!(
        anon.list_children(&path)
            .await
            .map(|k| k.len())
            .unwrap_or(0),
        0,
        "close removed our node"
    );
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_and_digest_together_own_nodes_under_both_identities() {
    let zk = sasl_server().await;
    let path = unique_path("sasl-digest");
    let checker = LeadershipChecker::new();
    let both = ZkConfig::builder(zk.addr(), &path, "both")
        .session_timeout(Duration::from_secs(4))
        .sasl_digest_md5(USER, PASSWORD)
        .digest_auth("ops", "digest-pw")
        .build()
        .expect("SASL and digest together are allowed");
    let both = Arc::new(ZkElection::new(both).expect("election"));
    checker.watch(both.as_ref());
    join_in_time(&both).await.expect("join");
    let lead = both.wait_for_leadership(BOUND).await.expect("leads");

    let anon = common::client(&zk.addr()).await;
    let kids = anon.list_children(&path).await.expect("read");
    let (acl, _) = anon
        .get_acl(&format!("{path}/{}", kids[0]))
        .await
        .expect("read the ACL");
    let mut owners: Vec<&str> = acl
        .iter()
        .filter(|a| a.permission() == zk::Permission::ALL)
        .map(|a| a.scheme())
        .collect();
    owners.sort_unstable();
    assert_eq!(
        owners,
        ["digest", "sasl"],
        "both identities own it: {acl:?}"
    );

    // A digest-only participant with the same digest credentials shares the latch.
    let digest_only = ZkConfig::builder(zk.addr(), &path, "digest-only")
        .session_timeout(Duration::from_secs(4))
        .digest_auth("ops", "digest-pw")
        .build()
        .expect("config");
    let digest_only = Arc::new(ZkElection::new(digest_only).expect("election"));
    checker.watch(digest_only.as_ref());
    join_in_time(&digest_only).await.expect("join");
    follows(&digest_only, "both").await;
    assert!(lead.is_current());
    both.close().await.expect("close");
    digest_only
        .wait_for_leadership(BOUND)
        .await
        .expect("the digest-only participant takes over");
    digest_only.close().await.expect("close");
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_against_a_server_without_sasl_fails_with_a_hint() {
    // The server ignores the SASL login (it logs "cnxn.saslServer is null") and the session
    // stays unauthenticated: creating a node with a creator ACL is then refused.
    let zk = ZkServer::start().await.expect("ZooKeeper without SASL");
    let e = sasl_participant(&zk.addr(), &unique_path("no-sasl"), "a", PASSWORD);
    let err = join_in_time(&e)
        .await
        .expect_err("a creator ACL needs an authenticated session");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("SASLAuthenticationProvider"),
        "points at the server's SASL set-up: {err}"
    );
    assert_eq!(e.status().borrow().health.level, HealthLevel::Unhealthy);
    e.close().await.expect("close");
}

/// A refused login on a shared session is a fatal error of every election on it: each
/// `join` fails with PermissionDenied, none holds a place; a session with the right
/// password carries several elections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_wrong_password_on_a_shared_session_fails_every_election_join() {
    use succession_zk::{ZkSession, ZkSessionConfig};
    let zk = sasl_server().await;
    let base = unique_path("sasl-shared");
    let session = |password: &str| {
        ZkSession::new(
            ZkSessionConfig::builder(zk.addr())
                .session_timeout(Duration::from_secs(4))
                .connection_timeout(Duration::from_secs(2))
                .sasl_digest_md5(USER, password)
                .build()
                .expect("config"),
        )
        .expect("session")
    };
    let good = session(PASSWORD);
    let leaders: Vec<ZkElection> = (0..3)
        .map(|i| {
            good.election(&format!("{base}/e{i}"), "good")
                .expect("election")
        })
        .collect();
    for e in &leaders {
        join_in_time(e).await.expect("join");
        e.wait_for_leadership(BOUND).await.expect("leads");
    }
    let wrong = "pw-WRONG-sasl-43";
    let bad = session(wrong);
    let refused: Vec<ZkElection> = (0..3)
        .map(|i| {
            bad.election(&format!("{base}/e{i}"), "bad")
                .expect("election")
        })
        .collect();
    let joins = futures::future::join_all(refused.iter().map(join_in_time)).await;
    for r in joins {
        let err = r.expect_err("a wrong SASL password must be refused");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(!err.to_string().contains(wrong), "no password in: {err}");
    }
    for e in &refused {
        assert!(!e.is_leader());
    }
    for e in &leaders {
        assert!(e.is_leader(), "the refused session disturbs nobody");
        assert_eq!(e.participants().await.expect("read").len(), 1);
    }
    bad.close().await.expect("close");
    good.close().await.expect("close");
}
