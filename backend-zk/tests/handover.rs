//! Handovers along a queue on a real ZooKeeper (the shared testkit server): a successor
//! claims right after its predecessor's deletion when the nodes it saw ahead of its
//! predecessor are gone (the claim asserts that atomically), and reads the queue instead
//! when one of them is still there. Every test watches all participants with the
//! leadership checker (never two leaders, terms only grow).
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{joined, one_leader};
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt, Role};
use succession_testkit::{four_letter_word, unique_path};
use succession_zk::ZkElection;

const SESSION: Duration = Duration::from_secs(6);
const BOUND: Duration = Duration::from_secs(10);

/// The children of the latch path, as a plain client sees them.
async fn children(connect: &str, path: &str) -> Vec<String> {
    let c = common::client(connect).await;
    let mut kids = c.list_children(path).await.expect("list the latch path");
    kids.sort();
    kids
}

/// The full path of the latch node whose data is `id`.
async fn node_of(connect: &str, path: &str, id: &str) -> String {
    let c = common::client(connect).await;
    for k in c.list_children(path).await.expect("list the latch path") {
        let full = format!("{path}/{k}");
        if let Ok((data, _)) = c.get_data(&full).await {
            if data == id.as_bytes() {
                return full;
            }
        }
    }
    panic!("no latch node of {id} under {path}");
}

/// Whether `wchp` output (paths, each followed by the ids of the sessions watching it)
/// shows `session` watching `node`.
fn watched_by(wchp: &str, node: &str, session: &str) -> bool {
    let mut current = false;
    for line in wchp.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.trim() == node;
        } else if current && line.trim() == session {
            return true;
        }
    }
    false
}

/// Wait until `e` follows the participant `leader`.
async fn follows(e: &ZkElection, leader: &str) {
    e.wait_for_status(
        BOUND,
        |s| matches!(&s.role, Role::Follower { leader: Some(l) } if l == leader),
    )
    .await
    .unwrap_or_else(|err| panic!("{} does not follow {leader}: {err}", e.id()));
}

/// Queue p0..p3, the leader leaves each time: p2 and p3 were two and three places back
/// when they last read the queue, so each claims on its predecessor's deletion while
/// asserting that the nodes it saw ahead are gone. Each successor leads with a newer term,
/// `leader()` reports it with that term, and the assertion leaves nothing in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_successor_further_back_claims_when_the_nodes_it_saw_ahead_are_gone() {
    let zk = succession_testkit::shared_zk().await;
    let path = unique_path("handover-chain");
    let checker = LeadershipChecker::new();
    let es: Vec<Arc<ZkElection>> = joined(&zk.addr(), &path, 4, SESSION, &checker).await;
    assert_eq!(one_leader(&es, BOUND).await, 0, "p0 joined first");
    // Everyone has read the queue with p0 leading (p2, p3 name p0 as the leader).
    for e in &es[1..] {
        follows(e, "p0").await;
    }
    let mut last = es[0].leadership().expect("p0 leads").term();
    for i in 1..4 {
        es[i - 1].close().await.expect("close the leader");
        let lead = es[i]
            .wait_for_leadership(BOUND)
            .await
            .unwrap_or_else(|e| panic!("p{i} does not lead after p{} left: {e}", i - 1));
        assert!(lead.term() > last, "term {} after {last}", lead.term());
        last = lead.term();
        let reported = es[i].leader().await.expect("leader()").expect("a leader");
        assert_eq!(reported.id, format!("p{i}"));
        assert_eq!(
            reported.term,
            Some(lead.term()),
            "leader() reports the grant"
        );
        // Only the live participants' nodes: the assertion created and deleted its names
        // in one transaction.
        let kids = children(&zk.addr(), &path).await;
        assert_eq!(
            kids.len(),
            4 - i,
            "latch children after p{} left: {kids:?}",
            i - 1
        );
    }
    es[3].close().await.expect("close");
    checker.assert_ok();
}

/// Queue p0..p2: p1, a follower, leaves while p0 leads. p2 (whose predecessor p1 was) must
/// not lead: its claim's assertion finds p0 still there, so it reads the queue and waits
/// for p0. When p0 leaves, p2 leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_follower_leaving_ahead_of_us_does_not_make_us_leader() {
    let zk = succession_testkit::shared_zk().await;
    let path = unique_path("handover-follower-left");
    let checker = LeadershipChecker::new();
    let es: Vec<Arc<ZkElection>> = joined(&zk.addr(), &path, 3, SESSION, &checker).await;
    assert_eq!(one_leader(&es, BOUND).await, 0, "p0 joined first");
    follows(&es[2], "p0").await;
    let p0 = es[0].leadership().expect("p0 leads");

    let p0_node = node_of(&zk.addr(), &path, "p0").await;
    let p2_session = format!("0x{:x}", es[2].session_id().expect("p2 has a session"));

    es[1].close().await.expect("close the follower p1");
    // p2 handles p1's deletion: its claim's assertion finds p0's node, so it reads the queue
    // and watches p0 (p1's watch on p0 went with p1's session).
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let w = four_letter_word(zk.port(), "wchp", Duration::from_secs(2))
            .await
            .expect("wchp");
        if watched_by(&w, &p0_node, &p2_session) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "p2 never watched p0's node {p0_node}; watches:\n{w}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ps = es[2].participants().await.expect("participants");
    let ids: Vec<&str> = ps.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p0", "p2"], "p1 is gone, p0 still first");
    assert!(p0.is_current(), "p0 still leads");
    assert!(!es[2].is_leader(), "p2 must not lead while p0 does");
    assert_eq!(children(&zk.addr(), &path).await.len(), 2);

    es[0].close().await.expect("close the leader p0");
    let lead = es[2]
        .wait_for_leadership(BOUND)
        .await
        .expect("p2 leads after p0 left");
    assert!(lead.term() > p0.term());
    es[2].close().await.expect("close");
    checker.assert_ok();
}
