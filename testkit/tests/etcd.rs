//! etcd servers and clusters: every operation against the real server.

mod common;

use common::*;
use std::time::Duration;
use succession_testkit::{Error, EtcdCluster, EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_start_put_get_and_drop_kills_process() {
    let etcd = EtcdServer::start().await.unwrap();
    let pid = etcd.pid().expect("running");
    assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{}", etcd.port()));

    let mut client = etcd_connect(&[etcd.endpoint()]).await;
    client.put("k", "v", None).await.unwrap();
    assert_eq!(etcd_get(&mut client, "k").await.as_deref(), Some(&b"v"[..]));
    drop(client);

    let data_dir = etcd.data_dir().to_path_buf();
    drop(etcd);
    assert_pid_gone(pid);
    assert!(!data_dir.exists(), "temp dir removed on drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_kill9_restart_keeps_data() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let port = etcd.port();
    let old_pid = etcd.pid().unwrap();
    let mut client = etcd_connect(&[etcd.endpoint()]).await;
    client.put("kept", "v1", None).await.unwrap();

    etcd.kill().await.unwrap();
    assert_eq!(etcd.pid(), None);
    assert_pid_gone(old_pid);
    assert!(
        client.get("kept", None).await.is_err(),
        "a killed server answers nothing"
    );

    etcd.restart().await.unwrap();
    assert_eq!(etcd.port(), port);
    let value = eventually("a read after restart", Duration::from_secs(20), || {
        let mut c = client.clone();
        async move { c.get("kept", None).await.ok() }
    })
    .await;
    assert_eq!(value.kvs()[0].value(), b"v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wipe_restart_comes_back_empty() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut client = etcd_connect(&[etcd.endpoint()]).await;
    for i in 0..5 {
        client.put(format!("k{i}"), "x", None).await.unwrap();
    }
    let before = client
        .get("k0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(matches!(etcd.wipe(), Err(Error::StillRunning { .. })));

    etcd.stop().await.unwrap();
    etcd.wipe().unwrap();
    etcd.restart().await.unwrap();

    let mut fresh = etcd_connect(&[etcd.endpoint()]).await;
    let resp = fresh.get("k0", None).await.unwrap();
    assert!(resp.kvs().is_empty(), "k0 is gone");
    let after = resp.header().unwrap().revision();
    assert!(after < before, "revision went back: {after} < {before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_freeze_blocks_requests_and_thaw_resumes() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut client = etcd_connect(&[etcd.endpoint()]).await;
    client.put("f", "v", None).await.unwrap();

    etcd.freeze().unwrap();
    let r = tokio::time::timeout(Duration::from_millis(1500), client.get("f", None)).await;
    assert!(!matches!(r, Ok(Ok(_))), "a frozen etcd answered");
    etcd.thaw().unwrap();
    etcd.wait_ready(Duration::from_secs(10)).await.unwrap();
    let v = eventually("a read after thaw", Duration::from_secs(20), || {
        let mut c = client.clone();
        async move { c.get("f", None).await.ok() }
    })
    .await;
    assert_eq!(v.kvs()[0].value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_serves_with_one_member_down() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.endpoints().len(), 3);
    let mut client = etcd_connect(&cluster.endpoints()).await;
    client.put("before", "1", None).await.unwrap();

    let dead = cluster.member(0).pid().unwrap();
    cluster.member(0).kill().await.unwrap();
    assert_pid_gone(dead);
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();

    let survivors: Vec<String> = cluster.endpoints()[1..].to_vec();
    let writer = etcd_connect(&survivors).await;
    eventually(
        "a write with one member down",
        Duration::from_secs(30),
        || {
            let mut c = writer.clone();
            async move { c.put("after", "2", None).await.ok() }
        },
    )
    .await;
    let mut reader = etcd_connect(&[cluster.member(2).endpoint()]).await;
    assert_eq!(
        etcd_get(&mut reader, "after").await.as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(
        etcd_get(&mut reader, "before").await.as_deref(),
        Some(&b"1"[..])
    );

    // The killed member rejoins with its data.
    cluster.member(0).restart().await.unwrap();
    let mut back = etcd_connect(&[cluster.member(0).endpoint()]).await;
    let v = eventually("member 0 catches up", Duration::from_secs(20), || {
        let mut c = back.clone();
        async move {
            let r = c.get("after", None).await.ok()?;
            r.kvs().first().map(|kv| kv.value().to_vec())
        }
    })
    .await;
    assert_eq!(v, b"2");
    assert_eq!(
        etcd_get(&mut back, "before").await.as_deref(),
        Some(&b"1"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_wipe_all_restart_all_comes_back_empty() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let mut client = etcd_connect(&cluster.endpoints()).await;
    client.put("old", "x", None).await.unwrap();
    assert!(matches!(
        cluster.wipe_all().await,
        Err(Error::StillRunning { .. })
    ));
    cluster.stop_all().await.unwrap();
    cluster.wipe_all().await.unwrap();
    cluster.restart_all().await.unwrap();
    let mut fresh = etcd_connect(&cluster.endpoints()).await;
    assert_eq!(etcd_get(&mut fresh, "old").await, None);
    cluster.kill_all().await.unwrap();
    assert!((0..3).all(|i| cluster.member(i).pid().is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_refuses_signals_and_stop_is_idempotent() {
    let mut etcd = EtcdServer::start().await.unwrap();
    etcd.stop().await.unwrap();
    assert_eq!(etcd.pid(), None);
    assert!(matches!(etcd.freeze(), Err(Error::NotRunning { .. })));
    assert!(matches!(etcd.thaw(), Err(Error::NotRunning { .. })));
    etcd.stop().await.unwrap();
    etcd.kill().await.unwrap();
    assert!(matches!(
        etcd.wait_ready(Duration::from_secs(1)).await,
        Err(Error::NotRunning { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_stops_gracefully() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let pid = etcd.pid().unwrap();
    etcd.freeze().unwrap();
    let t = std::time::Instant::now();
    etcd.stop().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "SIGTERM was acted on (SIGCONT sent), no 10 s SIGKILL fallback: {:?}",
        t.elapsed()
    );
    assert_pid_gone(pid);
    etcd.restart().await.unwrap();
    assert!(etcd.pid().is_some());
}
