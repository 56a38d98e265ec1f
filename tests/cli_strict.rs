//! `--strict-mode-lease` on real servers: when etcd (the fallback store, which holds the
//! mode record) goes away, a strict ZooKeeper leader steps down within the mode lease,
//! while a default one keeps leading; when etcd is back, the strict one leads again.
//! Run with `--features cli`.

mod common;

use std::time::Duration;

use common::{field, Cli};
use succession_testkit::{shared_zk, unique_path, EtcdServer};

fn supervised(zk: &str, etcd: &str, path: &str, id: &str, strict: bool) -> Cli {
    let mut flags = vec!["--session-timeout", "2s", "--ttl", "2s"];
    if strict {
        flags.push("--strict-mode-lease");
    }
    let args = common::supervised_args(zk, etcd, path, id, &flags);
    Cli::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_strict_mode_lease_steps_the_zookeeper_leader_down_when_etcd_is_gone() {
    let zk = shared_zk().await;
    // Stopped and restarted below: a dedicated server.
    let mut etcd = EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let ep = etcd.endpoint();
    let mut strict = supervised(&zk.addr(), &ep, &unique_path("cli-strict"), "strict", true);
    let mut lenient = supervised(
        &zk.addr(),
        &ep,
        &unique_path("cli-lenient"),
        "lenient",
        false,
    );
    for c in [&mut strict, &mut lenient] {
        let l = c.until("elected").await;
        assert_eq!(field(&l, "layer"), Some("zk"), "{l}");
    }

    etcd.stop().await.expect("stop etcd");
    // The strict leader cannot confirm the mode record: it steps down (mode lease 2.5 s).
    strict.until("revoked").await;
    // The default leader keeps leading through the etcd outage: watched for longer than a
    // mode lease after the strict one stepped down.
    lenient.none_within("revoked", Duration::from_secs(3)).await;

    etcd.restart().await.expect("restart etcd");
    let again = strict.until("elected").await;
    assert_eq!(field(&again, "layer"), Some("zk"), "{again}");
    for c in [&mut strict, &mut lenient] {
        assert_eq!(c.stop().await, 0, "stderr: {}", c.stderr());
    }
}
