//! Digest authentication and ACLs on the nodes the latch creates.
mod common;

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, ErrorKind, HealthLevel};
use succession_testkit::{shared_zk, unique_path};
use succession_zk::{NodeAcl, ZkConfig, ZkElection};
use zookeeper_client as zk;

fn secured(connect: &str, path: &str, id: &str, password: &str) -> Arc<ZkElection> {
    let cfg = ZkConfig::builder(connect, path, id)
        .session_timeout(Duration::from_secs(4))
        .digest_auth("scheduler", password)
        .build()
        .expect("config");
    assert_eq!(
        cfg.acl,
        NodeAcl::CreatorAllOthersRead,
        "the default with auth"
    );
    Arc::new(ZkElection::new(cfg).expect("election"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_creator_acl_nodes_cannot_be_deleted_or_forged_by_an_unauthenticated_client() {
    let zk = shared_zk().await;
    let path = unique_path("acl");
    let checker = LeadershipChecker::new();
    let a = secured(&zk.addr(), &path, "a", "s3cret");
    checker.watch(a.as_ref());
    a.join().await.expect("join");
    let lead = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("leads");

    let anon = common::client(&zk.addr()).await;
    let kids = anon.list_children(&path).await.expect("others may read");
    assert_eq!(kids.len(), 1, "{kids:?}");
    let node = format!("{path}/{}", kids[0]);
    assert_eq!(
        anon.delete(&node, None).await,
        Err(zk::Error::NoAuth),
        "delete refused"
    );
    let forged = anon
        .create(
            &format!("{path}/_c_forged-latch-"),
            b"intruder",
            &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all()),
        )
        .await;
    assert_eq!(
        forged.err(),
        Some(zk::Error::NoAuth),
        "forging a participant refused"
    );
    assert!(lead.is_current(), "still leading");
    // Observers without credentials still see the leader.
    let observer = common::participant(&zk.addr(), &path, "observer", Duration::from_secs(4));
    assert_eq!(
        observer.leader().await.expect("read").map(|p| p.id),
        Some("a".into())
    );
    observer.close().await.expect("close");
    a.close().await.expect("close");
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_participant_with_wrong_credentials_gets_a_clear_error() {
    let zk = shared_zk().await;
    let path = unique_path("acl-wrong");
    let a = secured(&zk.addr(), &path, "a", "s3cret");
    a.join().await.expect("join");
    let b = secured(&zk.addr(), &path, "b", "pw-WRONG-123");
    let err = tokio::time::timeout(Duration::from_secs(10), b.join())
        .await
        .expect("join must not hang")
        .expect_err("wrong credentials must be refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
    assert!(
        !err.to_string().contains("pw-WRONG-123"),
        "the password never appears: {err}"
    );
    assert_eq!(b.status().borrow().health.level, HealthLevel::Unhealthy);
    assert!(
        !format!("{b:?}").contains("pw-WRONG") && !format!("{:?}", b.config()).contains("pw-WRONG")
    );
    b.close().await.expect("close");
    a.close().await.expect("close");
}

/// A participant started in the background with wrong credentials ends `Idle` and
/// unhealthy, its status reason naming the refused credentials (what `join` would have
/// returned), and never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_started_participant_with_wrong_credentials_ends_idle_naming_the_refusal() {
    let zk = shared_zk().await;
    let path = unique_path("acl-start");
    let a = secured(&zk.addr(), &path, "a", "s3cret");
    a.join().await.expect("join");
    let b = secured(&zk.addr(), &path, "b", "pw-WRONG-456");
    b.start().expect("start");
    let mut rx = b.status();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.role == succession_core::Role::Idle),
    )
    .await
    .expect("the refusal shows on the status stream in time")
    .expect("status")
    .clone();
    assert_eq!(refused.health.level, HealthLevel::Unhealthy);
    let reason = refused.health.reason.to_string();
    assert!(reason.contains("credentials"), "{reason}");
    assert!(!reason.contains("pw-WRONG-456"), "no password: {reason}");
    assert!(a.is_leader(), "the authorised participant keeps leading");
    b.close().await.expect("close");
    a.close().await.expect("close");
}
