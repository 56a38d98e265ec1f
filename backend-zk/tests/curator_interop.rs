//! Interop with a real Apache Curator LeaderLatch (Java, Debian's libcurator-recipes-java
//! 5.4.0): Rust and Java participants share one latch path, one leader among all, and
//! leadership hands over both ways.
mod common;

use std::time::Duration;

use common::curator::Curator;
use common::{joined, participant};
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt};
use succession_testkit::unique_path;

const SESSION: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_curator_and_rust_share_one_latch_and_hand_over_both_ways() {
    let zk = succession_testkit::shared_zk().await;
    let path = unique_path("curator");
    let checker = LeadershipChecker::new();

    // Java first: it leads; the Rust participants queue behind it and see it as leader.
    let mut java = Curator::start(&zk.addr(), &path, "java-1").await;
    java.expect("leader").await;
    let rust = joined(&zk.addr(), &path, 2, SESSION, &checker).await;
    for r in &rust {
        assert!(
            !r.is_leader(),
            "{} must not lead while Curator does",
            r.id()
        );
    }
    let leader = rust[0]
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(leader.id, "java-1", "we read Curator's participant id");
    assert_eq!(
        leader.term, None,
        "Curator never claims, so no term is reported for its leader"
    );
    let ids: Vec<String> = rust[0]
        .participants()
        .await
        .expect("participants")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec!["java-1", "p0", "p1"]);

    // Java -> Rust.
    java.close().await;
    rust[0]
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("p0 leads after Curator closed");

    // A second Curator queues behind p1; Rust -> Rust -> Java.
    let mut java2 = Curator::start(&zk.addr(), &path, "java-2").await;
    java2.send("status").await;
    java2.expect("not-leader").await;
    rust[0].close().await.expect("close p0");
    let p1 = rust[1]
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("p1 leads");
    let read = rust[1].leader().await.expect("leader").expect("p1 leads");
    assert_eq!(
        (read.id.as_str(), read.term),
        ("p1", Some(p1.term())),
        "leader() reports the claimed term of the leader"
    );
    java2.send("status").await;
    java2.expect("not-leader").await;
    rust[1].close().await.expect("close p1");
    java2.expect("leader").await;
    let observer = participant(&zk.addr(), &path, "observer", SESSION);
    assert_eq!(
        observer
            .leader()
            .await
            .expect("leader")
            .map(|p| (p.id, p.term)),
        Some(("java-2".to_string(), None)),
        "p1's claim is not reported as the term of the Curator leader after it"
    );
    java2.close().await;
    observer.close().await.expect("close");
    checker.assert_ok();
}
