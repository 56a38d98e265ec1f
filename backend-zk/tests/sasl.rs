//! SASL (DIGEST-MD5) authentication against a real ZooKeeper that accepts SASL logins
//! (feature `sasl`).
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

async fn server() -> ZkServer {
    ZkServer::start_with_sasl(&[(USER, PASSWORD)])
        .await
        .expect("ZooKeeper with SASL")
}

fn sasl_participant(connect: &str, path: &str, id: &str, password: &str) -> Arc<ZkElection> {
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
    Arc::new(ZkElection::new(cfg).expect("election"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_participants_elect_one_leader_and_hand_over() {
    let zk = server().await;
    let path = unique_path("sasl");
    let checker = LeadershipChecker::new();
    let es: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| sasl_participant(&zk.addr(), &path, id, PASSWORD))
        .collect();
    for e in &es {
        checker.watch(e.as_ref());
        tokio::time::timeout(Duration::from_secs(10), e.join())
            .await
            .expect("join in time")
            .expect("join");
    }
    let first = conformance::one_leader(&es, Duration::from_secs(10)).await;
    let other = 1 - first;
    assert!(matches!(
        es[other].status().borrow().role,
        Role::Follower { .. }
    ));
    es[first].close().await.expect("close the leader");
    es[other]
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("the other takes over");
    es[other].close().await.expect("close");
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_wrong_password_gets_a_clear_error_without_the_password() {
    let zk = server().await;
    let path = unique_path("sasl-wrong");
    let wrong = "pw-WRONG-sasl-42";
    let b = sasl_participant(&zk.addr(), &path, "b", wrong);
    let err = tokio::time::timeout(Duration::from_secs(15), b.join())
        .await
        .expect("join must not hang")
        .expect_err("a wrong SASL password must be refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("credentials") || err.to_string().contains("auth"),
        "says what to check: {err}"
    );
    assert!(!err.to_string().contains(wrong), "no password in: {err}");
    assert_eq!(b.status().borrow().health.level, HealthLevel::Unhealthy);
    assert!(!format!("{:?}", b.config()).contains(wrong));
    b.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_node_cannot_be_deleted_by_an_unauthenticated_client() {
    let zk = server().await;
    let path = unique_path("sasl-acl");
    let a = sasl_participant(&zk.addr(), &path, "a", PASSWORD);
    a.join().await.expect("join");
    let lead = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("leads");
    let anon = common::client(&zk.addr()).await;
    let kids = anon.list_children(&path).await.expect("others may read");
    assert_eq!(kids.len(), 1, "{kids:?}");
    let node = format!("{path}/{}", kids[0]);
    let (acl, _) = anon.get_acl(&node).await.expect("read the ACL");
    assert!(
        acl.iter().any(|a| a.scheme() == "sasl"
            && a.id() == USER
            && a.permission() == zk::Permission::ALL),
        "the node belongs to sasl:{USER}: {acl:?}"
    );
    assert_eq!(
        anon.delete(&node, None).await,
        Err(zk::Error::NoAuth),
        "delete refused"
    );
    assert!(lead.is_current(), "still leading");
    a.close().await.expect("close");
    assert_eq!(
        anon.list_children(&path)
            .await
            .map(|k| k.len())
            .unwrap_or(0),
        0,
        "close removed our node"
    );
}
