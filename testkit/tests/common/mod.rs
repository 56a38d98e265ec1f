//! Helpers shared by the testkit's own tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};
use zookeeper_client as zk;

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `pid` is gone (no /proc entry or a zombie, and kill(pid, 0) fails).
pub fn assert_pid_gone(pid: u32) {
    assert!(
        !succession_testkit::process_alive(pid),
        "process {pid} is still alive"
    );
    // SAFETY: signal 0 only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z"))
        .unwrap_or(false);
    assert!(r == -1 || zombie, "kill({pid}, 0) succeeded");
}

/// Waits (with a deadline) until `pid` is gone.
pub async fn wait_pid_gone(pid: u32, timeout: Duration) {
    eventually(&format!("process {pid} gone"), timeout, || async {
        (!succession_testkit::process_alive(pid)).then_some(())
    })
    .await;
}

/// Persistent node options, open ACL.
pub fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// A ZooKeeper client with a 10 s session, retried until connected (30 s deadline).
pub async fn zk_connect(addr: &str) -> zk::Client {
    zk_connect_with(addr, Duration::from_secs(10)).await
}

/// A ZooKeeper client with the given session timeout, retried until connected.
pub async fn zk_connect_with(addr: &str, session: Duration) -> zk::Client {
    eventually(
        &format!("a ZooKeeper session on {addr}"),
        Duration::from_secs(30),
        || async {
            tokio::time::timeout(
                Duration::from_secs(5),
                zk::Client::connector()
                    .with_session_timeout(session)
                    .connect(addr),
            )
            .await
            .ok()?
            .ok()
        },
    )
    .await
}

/// An etcd client on `endpoints` with a per-request timeout of 3 s.
pub async fn etcd_connect(endpoints: &[String]) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    etcd_client::Client::connect(endpoints, Some(opts))
        .await
        .expect("etcd client (connect is lazy)")
}

/// `get` of one key: `Some(value)` or `None`, panicking on errors.
pub async fn etcd_get(client: &mut etcd_client::Client, key: &str) -> Option<Vec<u8>> {
    let resp = client.get(key, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}
