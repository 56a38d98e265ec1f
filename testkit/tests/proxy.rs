//! The TCP proxy partitions one client from a real server.

mod common;

use common::*;
use std::time::{Duration, Instant};
use succession_testkit::{shared_etcd, shared_zk, unique_path, TcpProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cut_breaks_and_restore_reconnects() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.unwrap();
    let client = zk_connect(&proxy.addr()).await;
    let session = client.session_id();
    let root = unique_path("proxy-cut");
    client.mkdir(&root, &persistent()).await.unwrap();
    assert_eq!(proxy.active_connections(), 1);

    proxy.cut();
    eventually("connections dropped", Duration::from_secs(5), || async {
        (proxy.active_connections() == 0).then_some(())
    })
    .await;
    let r = tokio::time::timeout(Duration::from_millis(1500), client.get_data(&root)).await;
    assert!(!matches!(r, Ok(Ok(_))), "a cut link answered: {r:?}");

    proxy.restore();
    eventually("a read after restore", Duration::from_secs(20), || async {
        tokio::time::timeout(Duration::from_secs(2), client.get_data(&root))
            .await
            .ok()?
            .ok()
    })
    .await;
    assert_eq!(
        client.session_id(),
        session,
        "the session survived the short cut"
    );
    assert!(proxy.accepted_connections() >= 2, "the client reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cut_breaks_and_restore_reconnects_etcd() {
    let etcd = shared_etcd().await;
    let proxy = TcpProxy::start(&etcd.endpoint()).await.unwrap();
    let key = unique_path("proxy-etcd");
    let mut client = etcd_connect(&[proxy.endpoint()]).await;
    client.put(key.as_str(), "v", None).await.unwrap();

    proxy.cut();
    let r = tokio::time::timeout(Duration::from_secs(2), client.get(key.as_str(), None)).await;
    assert!(!matches!(r, Ok(Ok(_))), "a cut link answered");

    proxy.restore();
    let v = eventually("a read after restore", Duration::from_secs(20), || {
        let mut c = client.clone();
        let key = key.clone();
        async move { c.get(key, None).await.ok() }
    })
    .await;
    assert_eq!(v.kvs()[0].value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_blackhole_stalls_requests() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.unwrap();
    let client = zk_connect(&proxy.addr()).await;
    let root = unique_path("proxy-blackhole");
    client.mkdir(&root, &persistent()).await.unwrap();

    proxy.blackhole();
    let r = tokio::time::timeout(Duration::from_secs(1), client.get_data(&root)).await;
    assert!(
        r.is_err(),
        "the request must stall, not fail or answer: {r:?}"
    );
    assert_eq!(
        proxy.active_connections(),
        1,
        "a blackhole keeps the connection open"
    );

    proxy.restore();
    eventually("a read after restore", Duration::from_secs(20), || async {
        tokio::time::timeout(Duration::from_secs(2), client.get_data(&root))
            .await
            .ok()?
            .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_delay_adds_latency() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.unwrap();
    let client = zk_connect(&proxy.addr()).await;
    let root = unique_path("proxy-delay");
    client.mkdir(&root, &persistent()).await.unwrap();

    proxy.set_delay(Duration::from_millis(1000));
    let t = Instant::now();
    client.get_data(&root).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "took {:?}",
        t.elapsed()
    );

    proxy.set_delay(Duration::ZERO);
    // A chunk (e.g. a ping) forwarded just before the change may still sit out its delay,
    // and requests queue behind it: let one request drain that first.
    client.get_data(&root).await.unwrap();
    let t = Instant::now();
    client.get_data(&root).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        t.elapsed()
    );
}
