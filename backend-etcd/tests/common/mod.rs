//! Helpers shared by the test binaries of succession-etcd (real etcd from the testkit).
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};
use succession_core::conformance::{Bounds, Capabilities, Factory, Faults, LeadershipChecker};
use succession_core::{async_trait, Election, ElectionExt, Result};
use succession_etcd::{EtcdConfig, EtcdElection};
use tokio::time::Instant;

use std::process::Stdio;
use succession_testkit::etcdctl_bin;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long [`Ctl`] waits for etcdctl.
pub const CTL_BOUND: Duration = Duration::from_secs(10);

/// A configuration for tests: `endpoints`, `prefix`, `id`, TTL in seconds, short timeouts.
pub fn config(endpoints: &[String], prefix: &str, id: &str, ttl_secs: u64) -> EtcdConfig {
    EtcdConfig::builder()
        .endpoints(endpoints.iter().cloned())
        .prefix(prefix)
        .id(id)
        .ttl(Duration::from_secs(ttl_secs))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .build()
        .expect("valid test config")
}

/// A raw etcd-client for checks from the outside.
pub async fn raw_client(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .expect("connect a raw etcd client")
}

/// What etcd still holds for election `prefix`: candidate keys under `<prefix>/`, and
/// leases (other than those in `ignore`) whose attached keys lie under `<prefix>/`. The
/// epoch record (`<prefix>` itself) is election metadata that stays by design.
pub async fn leftovers(client: &Client, prefix: &str) -> Result<Vec<String>> {
    let mut c = client.clone();
    let range = format!("{prefix}/");
    let mut out = Vec::new();
    let keys = c
        .get(range.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| backend(format!("list keys: {e}")))?;
    for kv in keys.kvs() {
        out.push(format!(
            "key {} (lease {:x})",
            String::from_utf8_lossy(kv.key()),
            kv.lease()
        ));
    }
    let leases = c
        .leases()
        .await
        .map_err(|e| backend(format!("list leases: {e}")))?;
    for l in leases.leases() {
        let ttl = match c
            .lease_time_to_live(l.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
        {
            Ok(t) => t,
            Err(_) => continue, // revoked meanwhile
        };
        if ttl.ttl() < 0 {
            continue;
        }
        if ttl.keys().iter().any(|k| k.starts_with(range.as_bytes())) {
            out.push(format!("lease {:x} (ttl {}s)", l.id(), ttl.ttl()));
        }
    }
    Ok(out)
}

/// All lease ids the server holds.
pub async fn lease_ids(client: &Client) -> HashSet<i64> {
    let mut c = client.clone();
    c.leases()
        .await
        .expect("list leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect()
}

fn backend(msg: String) -> succession_core::Error {
    succession_core::Error::new(succession_core::ErrorKind::Backend, msg)
}

/// Conformance factory: the shared etcd of this test binary, a fresh prefix per scenario.
pub struct EtcdFactory {
    pub endpoint: String,
    pub prefix: String,
    pub ttl_secs: u64,
    pub client: Client,
}

impl EtcdFactory {
    /// A participant connecting to `endpoint` (the server, or a proxy in front of it).
    fn participant_via(&self, endpoint: &str, id: &str) -> Result<Arc<EtcdElection>> {
        let cfg = config(&[endpoint.to_owned()], &self.prefix, id, self.ttl_secs);
        Ok(Arc::new(EtcdElection::new(cfg)?))
    }

    pub async fn new(ttl_secs: u64) -> Self {
        let etcd = succession_testkit::shared_etcd().await;
        let endpoint = etcd.endpoint();
        let client = raw_client(&endpoint).await;
        EtcdFactory {
            prefix: succession_testkit::unique_path("conformance"),
            endpoint,
            ttl_secs,
            client,
        }
    }
}

#[async_trait]
impl Factory for EtcdFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        Ok(self.participant_via(&self.endpoint, id)?)
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            join: Duration::from_secs(5),
            handover: Duration::from_secs(3),
            // The lease must expire (TTL, checked by etcd every 500 ms), then the successor
            // hears of the deletion and re-reads.
            crash: Duration::from_secs(self.ttl_secs) + Duration::from_secs(4),
        }
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        leftovers(&self.client, &self.prefix).await
    }
}

/// Participants of one election, each watched by `checker`, joined in order.
pub async fn joined(
    endpoints_per_participant: &[Vec<String>],
    prefix: &str,
    ttl_secs: u64,
    checker: &LeadershipChecker,
) -> Vec<Arc<EtcdElection>> {
    let mut v = Vec::new();
    for (i, eps) in endpoints_per_participant.iter().enumerate() {
        let id = format!("p{i}");
        let e = Arc::new(EtcdElection::new(config(eps, prefix, &id, ttl_secs)).unwrap());
        checker.watch(e.as_ref());
        tokio::time::timeout(Duration::from_secs(10), e.join())
            .await
            .unwrap_or_else(|_| panic!("{id} did not join in time"))
            .unwrap_or_else(|err| panic!("{id} failed to join: {err}"));
        v.push(e);
    }
    v
}

/// Waits (on the status streams, at most `bound`) until exactly one participant leads and
/// returns its index. Panics if two lead at once at any check.
pub async fn one_leader(es: &[Arc<EtcdElection>], bound: Duration) -> usize {
    succession_core::conformance::one_leader(es, bound).await
}

/// Closes every participant (each must succeed).
pub async fn close_all(es: &[Arc<EtcdElection>]) {
    for e in es {
        e.close()
            .await
            .unwrap_or_else(|err| panic!("{} failed to close: {err}", e.id()));
    }
}

/// A leader's current term.
pub fn term_of(e: &EtcdElection) -> succession_core::Term {
    e.leadership().expect("leads").term()
}

/// Waits (on the status streams, at most `bound`) until the participants at `live` have
/// settled: exactly one of them leads, the others follow, all are Healthy, and nobody
/// else leads. Returns the leader's index.
pub async fn settled(es: &[Arc<EtcdElection>], live: &[usize], bound: Duration) -> usize {
    let deadline = Instant::now() + bound;
    loop {
        let mut rxs: Vec<_> = es.iter().map(|e| e.status()).collect();
        let statuses: Vec<succession_core::Status> = rxs
            .iter_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .collect();
        let leaders: Vec<usize> = (0..es.len()).filter(|&i| statuses[i].is_leader()).collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        let ok = leaders.len() == 1
            && live.contains(&leaders[0])
            && live.iter().all(|&i| {
                statuses[i].health.level == succession_core::HealthLevel::Healthy
                    && (statuses[i].is_leader()
                        || matches!(statuses[i].role, succession_core::Role::Follower { .. }))
            });
        if ok {
            return leaders[0];
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = es
                .iter()
                .zip(&statuses)
                .map(|(e, s)| format!("{}: {s}", e.id()))
                .collect();
            panic!("participants {live:?} did not settle within {bound:?}: {states:#?}");
        }
        let waits = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
        let _ = tokio::time::timeout_at(deadline, futures::future::select_all(waits)).await;
    }
}

/// Every participant's role, health and lease, for failure messages.
pub fn describe(es: &[Arc<EtcdElection>]) -> String {
    es.iter()
        .map(|e| {
            let s = e.status().borrow().clone();
            format!("{}: {s}, lease {:?}", e.id(), e.lease())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many `method` calls of etcd's gRPC API the server at `endpoint` (`http://host:port`)
/// has handled so far, whatever their outcome (`grpc_server_handled_total` in `/metrics`).
pub async fn grpc_calls_handled(endpoint: &str, method: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to etcd's /metrics at {addr}: {e}"));
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send the /metrics request");
    let mut body = String::new();
    s.read_to_string(&mut body)
        .await
        .expect("read the /metrics answer");
    let tag = format!("grpc_method=\"{method}\"");
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&tag))
        .collect();
    assert!(
        body.contains("grpc_server_handled_total"),
        "etcd's /metrics has no grpc_server_handled_total; the count cannot be checked"
    );
    lines
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A running `etcdctl` with its stdout lines.
pub struct Ctl {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Ctl {
    pub fn spawn(endpoint: &str, args: &[&str]) -> Ctl {
        let bin = etcdctl_bin().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Ctl {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until etcdctl prints a line equal to `want`.
    pub async fn expect_line(&mut self, want: &str) {
        let deadline = tokio::time::Instant::now() + CTL_BOUND;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    let hit = l == want;
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Ok(None) => panic!(
                    "etcdctl exited before printing {want:?}; printed {:?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "etcdctl did not print {want:?} within {CTL_BOUND:?}; printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// SIGINT (etcdctl elect then resigns and closes its session) and wait for the exit.
    pub async fn interrupt(&mut self) {
        let pid = self.child.id().expect("etcdctl still running") as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        tokio::time::timeout(CTL_BOUND, self.child.wait())
            .await
            .expect("etcdctl exits after SIGINT")
            .expect("wait etcdctl");
    }
}

/// The conformance factory with faults: an etcd server of its own (killed, wiped and
/// restarted by the scenarios) and one testkit proxy per participant (a partition
/// blackholes one participant's proxy).
pub struct EtcdFaultFactory {
    store: succession_testkit::FaultyStore<succession_testkit::EtcdServer>,
    plain: EtcdFactory,
    /// The participants by id (for [`Faults::expire`]); weak, so that a dropped handle is
    /// gone as the suite expects.
    made: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<EtcdElection>>>,
}

impl EtcdFaultFactory {
    pub async fn new(ttl_secs: u64) -> EtcdFaultFactory {
        let server = succession_testkit::EtcdServer::start()
            .await
            .expect("start etcd (scripts/install-deps)");
        let endpoint = server.endpoint();
        let client = raw_client(&endpoint).await;
        EtcdFaultFactory {
            store: succession_testkit::FaultyStore::new(server, endpoint.clone()),
            plain: EtcdFactory {
                prefix: succession_testkit::unique_path("fault-conformance"),
                endpoint,
                ttl_secs,
                client,
            },
            made: Default::default(),
        }
    }
}

#[async_trait]
impl Factory for EtcdFaultFactory {
    async fn participant(&self, id: &str) -> Result<Arc<dyn Election>> {
        let proxy = self.store.proxy_for(id).await.expect("start a proxy");
        let e = self.plain.participant_via(&proxy.endpoint(), id)?;
        self.made
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::downgrade(&e));
        Ok(e)
    }

    fn bounds(&self) -> Bounds {
        self.plain.bounds()
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        // A fresh client: the factory's own may still be reconnecting after a fault.
        leftovers(&raw_client(&self.plain.endpoint).await, &self.plain.prefix).await
    }

    fn faults(&self) -> Option<&dyn Faults> {
        Some(self)
    }
}

#[async_trait]
impl Faults for EtcdFaultFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn outage(&self, down: bool) {
        self.store.outage(down).await.expect("kill or restart etcd");
    }

    async fn wipe(&self) {
        self.store.wipe().await.expect("wipe etcd");
    }

    async fn partition(&self, id: &str, cut: bool) {
        self.store.partition(id, cut);
    }

    /// Revoke the participant's lease from another client (as an operator or a wipe of
    /// that one lease would).
    async fn expire(&self, id: &str) {
        let e = self
            .made
            .lock()
            .unwrap()
            .get(id)
            .and_then(std::sync::Weak::upgrade);
        let e = e.unwrap_or_else(|| panic!("no live participant {id}"));
        let lease = e
            .lease()
            .unwrap_or_else(|| panic!("{id} holds no lease"))
            .id;
        raw_client(&self.plain.endpoint)
            .await
            .lease_revoke(lease)
            .await
            .unwrap_or_else(|err| panic!("revoke {id}'s lease: {err}"));
    }
}
