//! A latch inside a chroot: created when missing, and invisible outside it.
mod common;

use std::time::Duration;

use succession_core::{Election, ElectionExt};
use succession_testkit::{shared_zk, unique_path};
use succession_zk::{ZkConfig, ZkElection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_chroot_is_created_and_holds_the_latch() {
    let zk = shared_zk().await;
    let chroot = unique_path("chroot");
    let cfg = ZkConfig::builder(zk.addr(), "/leader", "a")
        .chroot(&chroot)
        .session_timeout(Duration::from_secs(4))
        .build()
        .expect("config");
    let a = ZkElection::new(cfg).expect("election");
    a.join().await.expect("join");
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("leads");
    let outside = common::client(&zk.addr()).await;
    let kids = outside
        .list_children(&format!("{chroot}/leader"))
        .await
        .expect("the latch lives under the chroot");
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert!(
        outside.list_children("/leader").await.is_err(),
        "nothing at /leader outside the chroot"
    );
    assert_eq!(
        a.leader().await.expect("leader").map(|p| p.id),
        Some("a".into())
    );
    a.close().await.expect("close");
}
