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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuse_refuses_new_connections_until_restore_listens_again() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.unwrap();
    let client = zk_connect(&proxy.addr()).await;
    assert_eq!(proxy.active_connections(), 1);

    proxy.refuse();
    eventually("connections dropped", Duration::from_secs(5), || async {
        (proxy.active_connections() == 0).then_some(())
    })
    .await;
    eventually("a refused connect", Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(proxy.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;

    proxy.restore();
    eventually(
        "listening again on the same port",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(proxy.addr()).await.ok() },
    )
    .await;
    let root = unique_path("proxy-refuse");
    eventually("a write after restore", Duration::from_secs(30), || async {
        tokio::time::timeout(Duration::from_secs(2), client.mkdir(&root, &persistent()))
            .await
            .ok()?
            .ok()
    })
    .await;
}

/// The trap this mode exists for (CLIENT-NOTES.md): zookeeper-client reports
/// `SyncConnected` as soon as the connect response arrives; when the connection dies before
/// the rest of the handshake is answered and every reconnect is refused, it keeps
/// reporting `SyncConnected` while no request can be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_one_frame_leaves_a_zookeeper_client_claiming_connected_while_cut_off() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.unwrap();
    let client = zk_connect_with(&proxy.addr(), Duration::from_secs(6)).await;
    let mut states = client.state_watcher();
    states.state();

    proxy.one_frame_then_refuse();
    // Disconnected, then "connected" again by the one frame (a watch may merge the two).
    let reconnected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if states.changed().await == zookeeper_client::SessionState::SyncConnected {
                return;
            }
        }
    })
    .await;
    assert!(
        reconnected.is_ok(),
        "the client took the one frame as a connection"
    );
    assert!(proxy.accepted_connections() >= 2);
    let r = tokio::time::timeout(Duration::from_secs(2), client.check_stat("/")).await;
    assert!(
        r.is_err(),
        "nothing can answer through a refusing proxy: {r:?}"
    );
    assert_eq!(
        client.state(),
        zookeeper_client::SessionState::SyncConnected,
        "the client still claims to be connected"
    );
    proxy.restore();
}
