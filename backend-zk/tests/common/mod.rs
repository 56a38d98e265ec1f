//! Helpers shared by the ZooKeeper backend's test files.
#![allow(dead_code)]

pub mod curator;

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::{Bounds, Capabilities, Factory, Faults, LeadershipChecker};
use succession_core::{async_trait, Election, Result};
use succession_zk::{ZkConfig, ZkElection};
use tokio::time::Instant;
use zookeeper_client as zk;

/// With `SUCCESSION_TEST_LOG` (a tracing filter, e.g. `succession_zk=debug`; CI sets it)
/// or `RUST_LOG` set, the library's logs go to the test's captured output (printed only
/// when the test fails).
pub fn log_to_test_output() {
    let filter = std::env::var("SUCCESSION_TEST_LOG").or_else(|_| std::env::var("RUST_LOG"));
    if let Ok(filter) = filter {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A participant of the latch at `path` on `connect`.
pub fn participant(connect: &str, path: &str, id: &str, session: Duration) -> Arc<ZkElection> {
    log_to_test_output();
    let cfg = ZkConfig::builder(connect, path, id)
        .session_timeout(session)
        .connection_timeout(Duration::from_millis(1000))
        .build()
        .expect("valid config");
    Arc::new(ZkElection::new(cfg).expect("participant"))
}

/// `n` participants p0..pn, watched by `checker`, joined in order.
pub async fn joined(
    connect: &str,
    path: &str,
    n: usize,
    session: Duration,
    checker: &LeadershipChecker,
) -> Vec<Arc<ZkElection>> {
    let mut v = Vec::new();
    for i in 0..n {
        let e = participant(connect, path, &format!("p{i}"), session);
        checker.watch(e.as_ref());
        tokio::time::timeout(Duration::from_secs(20), e.join())
            .await
            .expect("join in time")
            .expect("join");
        v.push(e);
    }
    v
}

/// Wait until exactly one of `es` leads (never two at a time), within `bound`.
pub async fn one_leader(es: &[Arc<ZkElection>], bound: Duration) -> usize {
    succession_core::conformance::one_leader(es, bound).await
}

/// Wait until `reader` sees `n` participants in the latch (everyone repaired its place).
pub async fn all_in_latch(reader: &ZkElection, n: usize, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        // A retryable error (the connection dropped for a moment, e.g. by a retired client
        // of a resumed session) is "not yet", as for any caller that retries.
        let seen = match reader.participants().await {
            Ok(ps) if ps.len() == n => return,
            Ok(ps) => format!("only {} of {n} participants: {ps:?}", ps.len()),
            Err(e) if e.is_retryable() => format!("the last read failed: {e}"),
            Err(e) => panic!("participants: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "not all {n} participants back in the latch after {bound:?}; {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain client for inspecting or damaging the store.
pub async fn client(connect: &str) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(5))
        .connect(connect)
        .await
        .expect("inspection client connects")
}

/// Delete the latch `path` and its children in one atomic multi-op (retried while live
/// participants race to re-create nodes in between).
pub async fn delete_recursive(c: &zk::Client, path: &str) {
    for _ in 0..100 {
        let kids = match c.list_children(path).await {
            Ok(k) => k,
            Err(zk::Error::NoNode) => return,
            Err(e) => panic!("list {path}: {e}"),
        };
        let mut w = c.new_multi_writer();
        for k in &kids {
            w.add_delete(&format!("{path}/{k}"), None)
                .expect("add delete");
        }
        w.add_delete(path, None).expect("add delete");
        match w.commit().await {
            Ok(_) => return,
            Err(e) => eprintln!("delete {path} raced with participants ({e}); retrying"),
        }
    }
    panic!("could not delete {path} in 100 attempts");
}

/// The conformance factory: a fresh latch path per scenario on one server.
pub struct ZkFactory {
    pub connect: String,
    pub path: String,
    pub session: Duration,
}

impl ZkFactory {
    /// A participant connecting to `connect` (the server, or a proxy in front of it).
    fn participant_via(&self, connect: &str, id: &str) -> Result<Arc<dyn Election>> {
        let cfg = ZkConfig::builder(connect, &self.path, id)
            .session_timeout(self.session)
            .build()?;
        Ok(Arc::new(ZkElection::new(cfg)?))
    }

    pub async fn on_shared_server() -> ZkFactory {
        let zk = succession_testkit::shared_zk().await;
        ZkFactory {
            connect: zk.addr(),
            path: succession_testkit::unique_path("conformance"),
            session: Duration::from_secs(2),
        }
    }
}

#[async_trait]
impl Factory for ZkFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        self.participant_via(&self.connect, id)
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            join: Duration::from_secs(10),
            handover: Duration::from_secs(5),
            // Dropping the handle closes the session: ZooKeeper deletes the node at once.
            crash: self.session + Duration::from_secs(5),
        }
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let c = client(&self.connect).await;
        match c.list_children(&self.path).await {
            Ok(kids) => Ok(kids),
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => panic!("list {}: {e}", self.path),
        }
    }
}

/// The conformance factory with faults: a ZooKeeper server of its own (killed, wiped and
/// restarted by the scenarios) and one testkit proxy per participant (a partition
/// blackholes one participant's proxy).
pub struct ZkFaultFactory {
    store: succession_testkit::FaultyStore<succession_testkit::ZkServer>,
    plain: ZkFactory,
}

impl ZkFaultFactory {
    pub async fn new() -> ZkFaultFactory {
        let server = succession_testkit::ZkServer::start()
            .await
            .expect("start ZooKeeper (scripts/install-deps)");
        let connect = server.addr();
        ZkFaultFactory {
            store: succession_testkit::FaultyStore::new(server, connect.clone()),
            plain: ZkFactory {
                connect,
                path: succession_testkit::unique_path("fault-conformance"),
                session: Duration::from_secs(2),
            },
        }
    }
}

#[async_trait]
impl Factory for ZkFaultFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let proxy = self.store.proxy_for(id).await.expect("start a proxy");
        self.plain.participant_via(&proxy.addr(), id)
    }

    fn bounds(&self) -> Bounds {
        self.plain.bounds()
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        self.plain.leftovers().await
    }

    fn faults(&self) -> Option<&dyn Faults> {
        Some(self)
    }
}

#[async_trait]
impl Faults for ZkFaultFactory {
    /// All but expiry: ending a session from outside needs its password, which the latch
    /// does not expose; the partition scenario expires the cut leader's session instead
    /// (the server expires it after the session timeout).
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::ALL;
        c.expiry = false;
        c
    }

    async fn outage(&self, down: bool) {
        self.store
            .outage(down)
            .await
            .expect("kill or restart ZooKeeper");
    }

    async fn wipe(&self) {
        self.store.wipe().await.expect("wipe ZooKeeper");
    }

    async fn partition(&self, id: &str, cut: bool) {
        self.store.partition(id, cut);
    }
}

/// The session ids the server on `port` holds (`dump`, "Session Sets"), as 0x.. strings.
pub async fn live_sessions(port: u16) -> std::collections::BTreeSet<String> {
    let out = succession_testkit::four_letter_word(port, "dump", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("`dump`: {e}"));
    let mut v = std::collections::BTreeSet::new();
    let mut in_sessions = false;
    for l in out.lines() {
        if l.starts_with("SessionTracker dump") {
            in_sessions = true;
        } else if l.starts_with("ephemeral nodes dump") {
            break;
        } else if in_sessions {
            let t = l.trim();
            if t.starts_with("0x") {
                v.insert(t.to_string());
            }
        }
    }
    v
}

/// A session id as the server's `dump` writes it.
pub fn hex(sid: i64) -> String {
    format!("0x{sid:x}")
}

/// The children of `path` with the owner session of each.
pub async fn owners(admin: &zk::Client, path: &str) -> Vec<(String, i64)> {
    let kids = match admin.list_children(path).await {
        Ok(k) => k,
        Err(zk::Error::NoNode) => return Vec::new(),
        Err(e) => panic!("list {path}: {e}"),
    };
    let mut v = Vec::new();
    for k in kids {
        if let Ok(Some(st)) = admin.check_stat(&format!("{path}/{k}")).await {
            v.push((k, st.ephemeral_owner));
        }
    }
    v
}

/// Every path of `paths` that still has nodes, with their names and owners (empty: none).
pub async fn nodes_left(admin: &zk::Client, paths: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for p in paths {
        let o = owners(admin, p).await;
        if !o.is_empty() {
            left.push(format!("{p}: {o:?}"));
        }
    }
    left
}

/// Time stamps relative to the start of a scenario, for the report.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// `msg`, stamped with the time since the start, to stderr.
    pub fn log(&self, msg: impl std::fmt::Display) {
        eprintln!("[{:7.3}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}
