//! `succession observe` follows the store's watches: a leader that holds for only 50 ms
//! between two others is reported (on etcd even one that resigns at once), with the term that leader itself was granted, on
//! ZooKeeper and on etcd (real servers). Run with `--features cli`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{field, Cli};
use succession::etcd::{EtcdConfig, EtcdElection};
use succession::zk::{ZkConfig, ZkElection};
use succession::{Election, ElectionExt, Term};
use succession_testkit::{shared_etcd, shared_zk, unique_path};

const BOUND: Duration = Duration::from_secs(20);

/// a leads; b and c queue; a leaves, b leads for `hold` and leaves, c leads. The observer
/// must print a, b, c in that order, each with the term its participant was granted.
async fn short_leader_is_reported(mut o: Cli, es: [Arc<dyn Election>; 3], hold: Duration) {
    let none = o.until("leader").await;
    assert_eq!(field(&none, "leader"), Some("null"), "{none}");
    let [a, b, c] = es;
    a.join().await.expect("a joins");
    let a_lead = a.wait_for_leadership(BOUND).await.expect("a leads");
    b.join().await.expect("b joins");
    c.join().await.expect("c joins");
    let seen_a = o
        .until_line("leader", |l| field(l, "leader") == Some("a"))
        .await;
    assert_eq!(
        field(&seen_a, "term"),
        Some(a_lead.term().to_string().as_str())
    );

    a.close().await.expect("a leaves");
    let b_lead = b.wait_for_leadership(BOUND).await.expect("b leads");
    // The scenario itself: b holds for `hold`, then leaves.
    tokio::time::sleep(hold).await;
    b.close().await.expect("b leaves");
    let c_lead = c.wait_for_leadership(BOUND).await.expect("c leads");

    let seen_c = o
        .until_line("leader", |l| field(l, "leader") == Some("c"))
        .await;
    let leaders: Vec<(String, Option<Term>)> = o
        .seen
        .iter()
        .filter(|l| l.contains("\"event\":\"leader\""))
        .filter_map(|l| {
            let id = field(l, "leader")?;
            (id != "null").then(|| {
                (
                    id.to_string(),
                    field(l, "term").and_then(|t| t.parse().ok()),
                )
            })
        })
        .collect();
    let expected = vec![
        ("a".to_string(), Some(a_lead.term())),
        ("b".to_string(), Some(b_lead.term())),
        ("c".to_string(), Some(c_lead.term())),
    ];
    assert_eq!(
        leaders, expected,
        "every leader, in order, with its own term; saw {:#?}",
        o.seen
    );
    assert!(a_lead.term() < b_lead.term() && b_lead.term() < c_lead.term());
    assert!(field(&seen_c, "term").is_some());
    c.close().await.expect("c leaves");
    o.until_line("leader", |l| field(l, "leader") == Some("null"))
        .await;
    assert_eq!(o.stop().await, 0);
    o.until("closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_reports_a_50ms_zookeeper_leader_between_two_others() {
    let zk = shared_zk().await;
    let path = unique_path("cli-observe-short");
    // A long fallback re-read: what is reported comes from the watches.
    let o = Cli::start(&[
        "observe",
        "--zk",
        &zk.addr(),
        "--path",
        &path,
        "--interval",
        "1h",
    ]);
    let mk = |id: &str| -> Arc<dyn Election> {
        let cfg = ZkConfig::builder(zk.addr(), path.as_str(), id)
            .session_timeout(Duration::from_secs(4))
            .build()
            .expect("config");
        Arc::new(ZkElection::new(cfg).expect("election"))
    };
    short_leader_is_reported(o, [mk("a"), mk("b"), mk("c")], Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_reports_a_50ms_etcd_leader_between_two_others() {
    etcd_short_leader(Duration::from_millis(50)).await;
}

/// etcd's watch delivers every revision: even a leader that resigns the moment it is
/// elected is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_reports_an_etcd_leader_that_resigns_at_once() {
    etcd_short_leader(Duration::ZERO).await;
}

async fn etcd_short_leader(hold: Duration) {
    let etcd = shared_etcd().await;
    let prefix = unique_path("cli-observe-short");
    let o = Cli::start(&[
        "observe",
        "--etcd",
        &etcd.endpoint(),
        "--prefix",
        &prefix,
        "--interval",
        "1h",
    ]);
    let mk = |id: &str| -> Arc<dyn Election> {
        let cfg = EtcdConfig::builder()
            .endpoint(etcd.endpoint())
            .prefix(prefix.as_str())
            .id(id)
            .ttl(Duration::from_secs(3))
            .build()
            .expect("config");
        Arc::new(EtcdElection::new(cfg).expect("election"))
    };
    short_leader_is_reported(o, [mk("a"), mk("b"), mk("c")], hold).await;
}

/// Supervised mode: the observer follows both stores' watches and reports the supervised
/// leader with the same term the leader prints, and no leader once it resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_supervised_reports_the_leader_with_its_supervised_term() {
    let zk = shared_zk().await;
    let etcd = shared_etcd().await;
    let path = unique_path("cli-observe-sup");
    let store = [
        "--zk",
        &zk.addr(),
        "--path",
        &path,
        "--etcd",
        &etcd.endpoint(),
        "--prefix",
        &path,
    ]
    .map(String::from);
    let args = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(store.iter().cloned())
            .chain(tail.iter().map(|s| s.to_string()))
            .collect()
    };
    let oargs = args(&["observe"], &["--interval", "1h"]);
    let mut o = Cli::start(&oargs.iter().map(String::as_str).collect::<Vec<_>>());
    let none = o.until("leader").await;
    assert_eq!(field(&none, "leader"), Some("null"), "{none}");
    let aargs = args(&["campaign"], &["--id", "a"]);
    let mut a = Cli::start(&aargs.iter().map(String::as_str).collect::<Vec<_>>());
    let elected = a.until("elected").await;
    let seen = o
        .until_line("leader", |l| field(l, "leader") == Some("a"))
        .await;
    assert_eq!(field(&seen, "term"), field(&elected, "term"), "{seen}");
    assert_eq!(a.stop().await, 0);
    o.until_line("leader", |l| field(l, "leader") == Some("null"))
        .await;
    assert_eq!(o.stop().await, 0);
}

/// The observer survives a restart of the store: a leader change after the restart is
/// still reported (the etcd watch stream is reopened; the ZooKeeper session reconnects and
/// the server re-arms the watches, or a new session reads again).
async fn follows_across_a_restart(
    mut o: Cli,
    mk: impl Fn(&str) -> Arc<dyn Election>,
    restart: impl std::future::Future<Output = ()>,
) {
    o.until("leader").await;
    let a = mk("a");
    a.join().await.expect("a joins");
    a.wait_for_leadership(BOUND).await.expect("a leads");
    o.until_line("leader", |l| field(l, "leader") == Some("a"))
        .await;
    a.close().await.expect("a leaves");
    o.until_line("leader", |l| field(l, "leader") == Some("null"))
        .await;
    restart.await;
    let b = mk("b");
    b.join().await.expect("b joins after the restart");
    let lead = b.wait_for_leadership(BOUND).await.expect("b leads");
    let seen = o
        .until_line("leader", |l| field(l, "leader") == Some("b"))
        .await;
    assert_eq!(field(&seen, "term"), Some(lead.term().to_string().as_str()));
    b.close().await.expect("b leaves");
    assert_eq!(o.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_follows_etcd_across_a_restart() {
    let mut etcd = succession_testkit::EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ep = etcd.endpoint();
    let prefix = unique_path("cli-observe-restart");
    let o = Cli::start(&[
        "observe",
        "--etcd",
        &ep,
        "--prefix",
        &prefix,
        "--interval",
        "1h",
    ]);
    let mk = |id: &str| -> Arc<dyn Election> {
        let cfg = EtcdConfig::builder()
            .endpoint(ep.as_str())
            .prefix(prefix.as_str())
            .id(id)
            .ttl(Duration::from_secs(3))
            .build()
            .expect("config");
        Arc::new(EtcdElection::new(cfg).expect("election"))
    };
    let restart = async {
        etcd.restart().await.expect("restart etcd");
    };
    follows_across_a_restart(o, mk, restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_follows_zookeeper_across_a_restart() {
    let mut zk = succession_testkit::ZkServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = zk.addr();
    let path = unique_path("cli-observe-restart");
    let o = Cli::start(&[
        "observe",
        "--zk",
        &addr,
        "--path",
        &path,
        "--interval",
        "1h",
    ]);
    let mk = |id: &str| -> Arc<dyn Election> {
        let cfg = ZkConfig::builder(addr.as_str(), path.as_str(), id)
            .session_timeout(Duration::from_secs(4))
            .build()
            .expect("config");
        Arc::new(ZkElection::new(cfg).expect("election"))
    };
    let restart = async {
        zk.restart().await.expect("restart ZooKeeper");
    };
    follows_across_a_restart(o, mk, restart).await;
}
