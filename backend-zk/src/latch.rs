//! [`ZkElection`]: the latch participant, and the background driver that keeps it in the
//! election whatever happens to its session, its node or the latch path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::participant::{self, Fatal};
use succession_core::text::Human;
use succession_core::{
    Contact, Election, Error, ErrorKind, HealthLevel, Participant, Result, Role, Status,
    StatusCell, Term,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn, Instrument};
use zookeeper_client as zk;

use crate::config::{ConnectionPolicy, NodeAcl, ZkConfig};
use crate::error::{map, permanent, session_gone};
use crate::names::{self, protected_prefix};

/// A participant in a ZooKeeper latch election (Curator LeaderLatch-compatible layout).
///
/// Create with [`ZkElection::new`] (no I/O), then [`join`](Election::join). A background
/// task owns the ZooKeeper session and keeps this participant in the election: it repairs
/// the latch path and its own node after any loss (session expiry, a wiped ensemble, the
/// path deleted under it), detects a wiped ensemble early with a probe session, and
/// publishes every change on the [`status`](Election::status) stream.
///
/// # Terms
/// Each grant claims leadership with one atomic multi-operation: check that our node still
/// exists, and write (empty) data to the latch path. The term is
/// `Term::new(ctime of the latch path in ms, mzxid of that write)`. zxids grow with every
/// write, so terms grow with every grant, including a re-grant after a suspension. After a
/// wipe, zxids restart but the latch path is recreated with a later ctime. Assumption: the
/// ZooKeeper servers' clocks do not step back across a wipe by more than the wipe took.
///
/// # Dropping
/// Dropping the handle stops the background task and closes the session: ZooKeeper deletes
/// our node at once, like a process exit. [`close`](Election::close) does the same but
/// publishes `Closed` first and confirms the deletion; it returns once our node is deleted,
/// and the session is closed 20 ms later in the background (so that its teardown does not
/// compete with the successor's claim).
pub struct ZkElection {
    cfg: Arc<ZkConfig>,
    cell: Arc<StatusCell>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZkElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkElection")
            .field("id", &self.cfg.id)
            .field("path", &self.cfg.path)
            .field("role", &self.cell.get().role)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    driver: Mutex<Option<Driver>>,
    closed: AtomicBool,
    fatal: Fatal,
    /// The driver's current client, for reads from the handle.
    client: Mutex<Option<zk::Client>>,
    /// A client for reads when the driver has none (e.g. before `join`).
    reader: Mutex<Option<zk::Client>>,
    /// The path of our node, as far as the driver knows (for a prompt delete on close).
    node: Mutex<Option<String>>,
    /// A node `close` already deleted (the driver need not delete it again).
    deleted: Mutex<Option<String>>,
}

struct Driver {
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

enum Cmd {
    Join,
    Resign(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ZkElection {
    /// A participant for `cfg` (already validated by [`ZkConfig`]'s builder). No I/O happens
    /// until [`join`](Election::join) or a read.
    pub fn new(cfg: ZkConfig) -> Result<ZkElection> {
        let cell = StatusCell::with_metrics(ElectionMetrics::new("zk", cfg.path.clone()));
        cell.set_contact_bound(cfg.session_timeout / 2);
        Ok(ZkElection {
            cfg: Arc::new(cfg),
            cell: Arc::new(cell),
            inner: Arc::new(Inner::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ZkConfig {
        &self.cfg
    }

    /// The id of the ZooKeeper session currently used to take part (None when not
    /// connected). Useful to match this participant in the server's `cons` output.
    pub fn session_id(&self) -> Option<i64> {
        lock(&self.inner.client).as_ref().map(|c| c.session_id().0)
    }

    fn sender(&self) -> Result<mpsc::UnboundedSender<Cmd>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        let mut d = lock(&self.inner.driver);
        if let Some(d) = d.as_ref() {
            if !d.task.is_finished() {
                return Ok(d.tx.clone());
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = DriverState {
            cfg: self.cfg.clone(),
            cell: self.cell.clone(),
            inner: self.inner.clone(),
            rx,
            client: None,
            states: None,
            session_timeout: self.cfg.session_timeout,
            uuid: new_uuid(),
            stale: Vec::new(),
            node: None,
            own_watch: None,
            vacated: None,
            ahead: Vec::new(),
            assert_ahead: true,
            been_in_latch: false,
            want: false,
            pending: None,
            failures: 0,
            failing_since: None,
            connect_took: None,
            led_in_session: false,
        };
        let span = tracing::info_span!("zk_latch", id = %self.cfg.id, path = %self.cfg.path);
        let task = tokio::spawn(state.run().instrument(span));
        *d = Some(Driver {
            tx: tx.clone(),
            task,
        });
        Ok(tx)
    }

    /// Ask the driver to close (delete our node, drop the session) and wait for it, bounded
    /// by 2 x the session timeout.
    async fn stop_driver(&self, driver: Option<Driver>) -> Result<()> {
        let mut result = Ok(());
        if let Some(Driver { tx, task }) = driver {
            let (ack, done) = oneshot::channel();
            let sent = tx.send(Cmd::Close(ack)).is_ok();
            // Without a sender the driver ends as soon as it has handled what it received.
            drop(tx);
            // Deleting our node is retried for at most 1.5 x the session timeout; never
            // wait much longer than that, whatever the driver is doing.
            let bound = self.cfg.session_timeout * 2;
            let mut acked = false;
            if sent {
                result = match timeout(bound, done).await {
                    Ok(Ok(r)) => {
                        acked = true;
                        r
                    }
                    Ok(Err(_)) => Ok(()),
                    Err(_) => Err(Error::timeout(format!(
                        "closing took longer than {}; the session was dropped, so ZooKeeper removes our node when it expires",
                        Human(bound)
                    ))),
                };
            }
            // Acknowledged: the driver closes the session CLOSE_LINGER later and ends by itself.
            if !acked {
                let abort = task.abort_handle();
                if timeout(bound, task).await.is_err() {
                    abort.abort();
                }
            }
        }
        result
    }

    fn closed_error(&self) -> Error {
        Error::closed(&format!("ZooKeeper latch participant {}", self.cfg.id))
    }

    /// A connected client for reads: the driver's, or a lazily connected reader.
    async fn read_client(&self) -> Result<zk::Client> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        if let Some(c) = lock(&self.inner.client).clone() {
            if !c.state().is_terminated() {
                return Ok(c);
            }
        }
        if let Some(c) = lock(&self.inner.reader).clone() {
            if !c.state().is_terminated() {
                return Ok(c);
            }
        }
        let c = connect(&self.cfg, self.cfg.session_timeout).await?;
        *lock(&self.inner.reader) = Some(c.clone());
        Ok(c)
    }

    async fn read_participants(&self) -> Result<Vec<Participant>> {
        let client = self.read_client().await?;
        let bound = self.cfg.session_timeout;
        let path = self.cfg.path.clone();
        let read = async {
            let children = match client.list_children(&path).await {
                Ok(c) => c,
                Err(zk::Error::NoNode) => return Ok(Vec::new()),
                Err(e) => return Err(map(e, &format!("list latch path {path}"))),
            };
            let kids = names::sorted(children);
            if kids.is_empty() {
                return Ok(Vec::new());
            }
            let mut reader = client.new_multi_reader();
            for k in &kids {
                reader
                    .add_get_data(&format!("{path}/{}", k.name))
                    .map_err(|e| map(e, "read participant nodes"))?;
            }
            let results = reader
                .commit()
                .await
                .map_err(|e| map(e, "read participant nodes"))?;
            // The latch path's data names the node of the latest claim; its mzxid is that
            // claim's term sequence. A first node that has not claimed yet (its predecessor
            // just left) or that never claims (a Curator participant) gets no term.
            let claim = client.get_data(&path).await.ok();
            let mut out = Vec::new();
            for (k, r) in kids.iter().zip(results) {
                if let zk::MultiReadResult::Data { data, .. } = r {
                    let leader = out.is_empty();
                    let mut p = Participant::new(String::from_utf8_lossy(&data), leader);
                    if leader {
                        if let Some((by, st)) = &claim {
                            if by.as_slice() == k.name.as_bytes() {
                                p = p.with_term(Term::new(st.ctime as u64, st.mzxid as u64));
                            }
                        }
                    }
                    out.push(p);
                } else {
                    debug!(node = %k.name, "participant node vanished while reading");
                }
            }
            Ok(out)
        };
        timeout(bound, read).await.unwrap_or_else(|_| {
            Err(Error::timeout(format!(
                "reading the participants of {path} took longer than the session timeout {}; ZooKeeper is unreachable or slow",
                Human(bound)
            )))
        })
    }
}

#[async_trait]
impl Election for ZkElection {
    fn id(&self) -> &str {
        &self.cfg.id
    }

    async fn join(&self) -> Result<()> {
        let tx = self.sender()?;
        self.inner.fatal.clear();
        let rx = self.cell.subscribe();
        if rx.borrow().role == Role::Idle {
            self.cell.set_role(Role::Candidate, "joining");
        }
        tx.send(Cmd::Join).map_err(|_| self.closed_error())?;
        let what = format!("ZooKeeper latch participant {}", self.cfg.id);
        participant::wait_joined(rx, Some(&self.inner.fatal), &self.cfg.id, &what, || None).await
    }

    async fn resign(&self) -> Result<()> {
        let tx = {
            let d = lock(&self.inner.driver);
            match d.as_ref() {
                Some(d) if !d.task.is_finished() => d.tx.clone(),
                _ => return Ok(()),
            }
        };
        let (ack, done) = oneshot::channel();
        if tx.send(Cmd::Resign(ack)).is_err() {
            return Ok(());
        }
        done.await.unwrap_or(Ok(()))
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let driver = lock(&self.inner.driver).take();
        // Not leader from here on, for good (a closed cell publishes nothing more): our node
        // goes at once, before the driver winds down and closes the session, so that the
        // successor's claim does not queue behind more of our writes on the server.
        self.cell.close("closed");
        let early = lock(&self.inner.client)
            .clone()
            .filter(|c| c.state() == zk::SessionState::SyncConnected)
            .zip(lock(&self.inner.node).clone());
        if let Some((client, node)) = early {
            // Connected: this takes a round trip. Bounded so that close stays within about
            // 2.5 x the session timeout however the connection fares meanwhile.
            match timeout(self.cfg.session_timeout / 2, client.delete(&node, None)).await {
                Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {
                    *lock(&self.inner.deleted) = Some(node);
                }
                Ok(Err(e)) => debug!(%e, %node, "early delete failed; the driver retries"),
                Err(_) => debug!(%node, "early delete timed out; the driver retries"),
            }
        }
        let result = self.stop_driver(driver).await;
        self.cell.close("closed");
        *lock(&self.inner.client) = None;
        *lock(&self.inner.reader) = None;
        result
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.cell.subscribe()
    }

    async fn leader(&self) -> Result<Option<Participant>> {
        Ok(self.read_participants().await?.into_iter().next())
    }

    async fn participants(&self) -> Result<Vec<Participant>> {
        self.read_participants().await
    }

    /// Last contact: the send instant of the latest request the server answered (a probe
    /// every T/6 while connected; the server heard it no sooner); safe for half the
    /// negotiated session timeout.
    fn contact(&self) -> Contact {
        self.cell.contact()
    }
}

impl Drop for ZkElection {
    fn drop(&mut self) {
        if let Some(d) = lock(&self.inner.driver).take() {
            d.task.abort();
        }
        *lock(&self.inner.client) = None;
        *lock(&self.inner.reader) = None;
        self.cell.close("handle dropped");
    }
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

static CREATOR_ALL_OTHERS_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

fn acls(cfg: &ZkConfig) -> zk::Acls<'static> {
    match cfg.acl {
        NodeAcl::Open => zk::Acls::anyone_all(),
        NodeAcl::CreatorAllOthersRead => zk::Acls::new(&CREATOR_ALL_OTHERS_READ),
        NodeAcl::CreatorAll => zk::Acls::creator_all(),
    }
}

/// Connect a new session (fails fast when no server answers).
pub(crate) async fn connect(cfg: &ZkConfig, session_timeout: Duration) -> Result<zk::Client> {
    let mut c = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(cfg.connection_timeout)
        .with_fail_eagerly();
    if let Some((scheme, cred)) = &cfg.auth {
        c = c.with_auth(scheme, cred);
    }
    #[cfg(feature = "sasl")]
    if let Some((user, password)) = &cfg.sasl {
        c = c.with_sasl(zk::SaslOptions::digest_md5(user.clone(), password.clone()));
    }
    let hosts = cfg.connect.split(',').count() as u32;
    let bound = cfg.connection_timeout * (hosts + 1);
    match timeout(bound, c.connect(&cfg.connect_string())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(map(e, &format!("connect to ZooKeeper at {}", cfg.connect))),
        Err(_) => Err(Error::timeout(format!(
            "connecting to ZooKeeper at {} took longer than {}; is it running?",
            cfg.connect,
            Human(bound)
        ))),
    }
}

/// `fut` bounded by `bound` when given (a timeout error after it).
async fn timed<T>(bound: Option<Duration>, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match bound {
        None => fut.await,
        Some(b) => timeout(b, fut).await.unwrap_or_else(|_| {
            Err(Error::timeout(format!(
                "no answer from ZooKeeper within {}; trying again",
                Human(b)
            )))
        }),
    }
}

/// While our connection is down: can a fresh session reach ZooKeeper, and does ZooKeeper
/// still know our session (our `node`, owned by it)?
async fn probe(cfg: Arc<ZkConfig>, client: zk::Client, node: Option<String>) -> Probe {
    let Ok(fresh) = connect(&cfg, cfg.session_timeout).await else {
        return Probe::Unanswered;
    };
    if client.state() != zk::SessionState::Disconnected {
        return Probe::Unanswered;
    }
    let ours = client.session_id().0;
    match node {
        Some(n) => match timeout(cfg.connection_timeout, fresh.check_stat(&n)).await {
            Ok(Ok(Some(st))) if st.ephemeral_owner == ours => {
                debug!("probe: ZooKeeper still holds our node and session");
                Probe::SessionAlive(fresh)
            }
            Ok(Ok(_)) => Probe::SessionLost(fresh),
            _ => Probe::Unanswered,
        },
        // Nothing of ours to keep: a working session beats waiting.
        None => Probe::SessionLost(fresh),
    }
}

/// The pending `exists` watch on our own node.
type OwnWatch = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send + Sync>>;

/// Our node in the latch.
#[derive(Debug, Clone)]
struct OwnNode {
    name: String,
    path: String,
}

/// What a probe session found while our connection is down.
enum Probe {
    /// No server answered it (or ours reconnected meanwhile).
    Unanswered,
    /// ZooKeeper answers, and no longer knows our session (wiped, or expired it).
    SessionLost(zk::Client),
    /// ZooKeeper answers, and still holds our node under our session.
    SessionAlive(zk::Client),
}

/// What the driver does next.
enum Next {
    /// Run another round (re-verify our node, re-evaluate the queue).
    Again,
    /// Stop the driver (closed or handle gone).
    Exit,
}

struct DriverState {
    cfg: Arc<ZkConfig>,
    cell: Arc<StatusCell>,
    inner: Arc<Inner>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    client: Option<zk::Client>,
    states: Option<zk::StateWatcher>,
    /// The negotiated session timeout.
    session_timeout: Duration,
    /// The protected-name uuid of the current session's node.
    uuid: String,
    /// uuids of nodes earlier sessions of ours may have left behind.
    stale: Vec<String>,
    node: Option<OwnNode>,
    /// A pending watch on our node (registered by this session): while it has not fired,
    /// our node exists, so a round need not read it again.
    own_watch: Option<OwnWatch>,
    /// When we learned that our predecessor is gone. While set, we are first if the nodes in
    /// `ahead` are gone too (sequence numbers only grow, so no node created since sorts
    /// before ours) and our node still exists: the claim asserts both atomically. Also the
    /// start of the handover metric.
    vacated: Option<Instant>,
    /// The nodes before our predecessor at our last reading of the queue (none: our
    /// predecessor was first).
    ahead: Vec<String>,
    /// Whether the claim may assert that the nodes `ahead` are gone (off after the server
    /// refused it, e.g. an ACL without DELETE on the latch path).
    assert_ahead: bool,
    /// Whether this participant ever held a node (a missing path is then a repair).
    been_in_latch: bool,
    want: bool,
    /// A command received while waiting inside a round; handled outside the round, so that
    /// abandoning a round (connection lost) can never cut a command short.
    pending: Option<Cmd>,
    failures: u32,
    failing_since: Option<Instant>,
    /// How long our latest successful connection took to establish (see `hedging`).
    connect_took: Option<Duration>,
    /// Whether we were granted leadership under the current session.
    led_in_session: bool,
}

/// How long to wait after a lost connection before the first probe session (zookeeper-client
/// retries at once and again after 100-200 ms: a short blip is left to it).
const FIRST_PROBE_AFTER: Duration = Duration::from_millis(250);
/// While no server answers: the gap between two probe sessions of a suspended participant,
/// and the longest pause between two connection attempts of one without a session. Fixed,
/// not growing with the outage, so that a server that comes back (empty or with its data)
/// is found within this gap whatever the outage length. What it costs a down server: one
/// connection attempt per participant per gap (10 per second; a refused TCP connect), plus
/// zookeeper-client's own reconnect attempts of the old session (100 ms, doubling).
const RETRY_WHILE_DOWN: Duration = Duration::from_millis(100);
/// How long after deleting our node on `close` the session is closed (in the background).
const CLOSE_LINGER: Duration = Duration::from_millis(20);
/// Connection attempts (or probe sessions) in flight at once, once a connection succeeded.
const MAX_ATTEMPTS: usize = 5;
/// The least time an attempt gets before it is abandoned (see `DriverState::hedging`).
const MIN_ATTEMPT_BOUND: Duration = Duration::from_millis(250);
/// At most this many nodes before our predecessor are asserted gone by the claim; with more,
/// the successor reads the queue first.
const MAX_AHEAD: usize = 8;
/// Longest backoff between repair attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl DriverState {
    async fn run(mut self) {
        loop {
            let next = if let Some(cmd) = self.pending.take() {
                self.command(cmd).await
            } else if !self.want {
                match self.rx.recv().await {
                    Some(cmd) => self.command(cmd).await,
                    None => Next::Exit,
                }
            } else {
                self.step().await
            };
            if let Next::Exit = next {
                self.set_client(None);
                return;
            }
        }
    }

    fn set_client(&mut self, client: Option<zk::Client>) {
        if let Some(c) = &client {
            self.session_timeout = c.session_timeout();
            self.cell.set_contact_bound(self.session_timeout / 2);
            // Contact comes from answered requests only (the probe, the claim): a session
            // just connected says nothing about when the server last heard of an old one.
            self.states = Some(c.state_watcher());
        } else {
            self.states = None;
        }
        if let Some(n) = self.forget_node() {
            debug!(node = %n.name, "forgetting the node of the session we drop");
        }
        if self.client.is_some() {
            // The session we drop may have left nodes under its uuid: remember it for
            // cleanup, and name the next session's node with a fresh uuid.
            self.stale
                .push(std::mem::replace(&mut self.uuid, new_uuid()));
            if self.stale.len() > 16 {
                self.stale.remove(0);
            }
        }
        *lock(&self.inner.client) = client.clone();
        self.client = client;
        self.led_in_session = false;
    }

    /// Forget our node and everything known about it.
    fn forget_node(&mut self) -> Option<OwnNode> {
        self.own_watch = None;
        self.vacated = None;
        *lock(&self.inner.node) = None;
        self.node.take()
    }

    /// Our node is `n` (created or adopted by the current session).
    fn set_node(&mut self, n: OwnNode) {
        self.been_in_latch = true;
        *lock(&self.inner.node) = Some(n.path.clone());
        self.node = Some(n);
    }

    /// Whether our own-node watch is registered and has not fired (then our node exists:
    /// its deletion would have been delivered before any later reply of this session).
    fn own_watch_pending(&mut self) -> bool {
        match self.own_watch.as_mut().map(|w| w.now_or_never()) {
            Some(None) => true,
            Some(Some(ev)) => {
                debug!(?ev.event_type, "our own-node watch fired");
                self.own_watch = None;
                false
            }
            None => false,
        }
    }

    /// One step while participating.
    async fn step(&mut self) -> Next {
        if self.inner.closed.load(Ordering::SeqCst) {
            // close() is under way: it deletes our node itself and then sends Close. Never
            // repair (re-create the node) meanwhile; just wait for that command.
            return match self.rx.recv().await {
                Some(cmd) => self.command(cmd).await,
                None => Next::Exit,
            };
        }
        let client = match self.client.clone() {
            Some(c) if !c.state().is_terminated() => c,
            Some(c) => {
                let st = c.state();
                info!(?st, "session ended; building a new session");
                if st == zk::SessionState::AuthFailed {
                    return self
                        .fatal(
                            ErrorKind::PermissionDenied,
                            "ZooKeeper rejected the credentials (auth failed); fix digest_auth or sasl_digest_md5",
                        )
                        .await;
                }
                self.session_lost();
                return Next::Again;
            }
            None => return self.connect().await,
        };
        if client.state() == zk::SessionState::Disconnected {
            return self.suspended(&client).await;
        }
        // A round's calls wait through a lost connection (up to 1.4 x the session timeout):
        // abandon the round as soon as the connection is lost, so that suspension, probes
        // and commands are handled at once.
        let mut states = self
            .states
            .clone()
            .unwrap_or_else(|| client.state_watcher());
        let lost = async move { while states.changed().await != zk::SessionState::Disconnected {} };
        let outcome = tokio::select! {
            r = self.round(&client) => r,
            _ = lost => Ok(Next::Again),
        };
        match outcome {
            Ok(next) => {
                self.failures = 0;
                self.failing_since = None;
                next
            }
            Err(e) => self.failed(&client, e).await,
        }
    }

    /// Our session ended for good: not leader, no node; a new session comes next.
    fn session_lost(&mut self) {
        self.cell.metrics().count(metrics::SESSION_EXPIRATIONS, &[]);
        // Whatever we held may be someone else's now: no grace for work under it.
        self.cell.forget_contact(std::time::Instant::now());
        self.cell.set(
            Role::Candidate,
            HealthLevel::Degraded,
            "ZooKeeper session expired; rejoining with a new session",
        );
        self.set_client(None);
    }

    /// A round failed with a ZooKeeper error: classify, report, back off.
    async fn failed(&mut self, client: &zk::Client, e: zk::Error) -> Next {
        if permanent(&e) {
            let err = map(e, &format!("take part in latch {}", self.cfg.path));
            return self.fatal(err.kind(), err.message()).await;
        }
        if session_gone(&e) {
            self.session_lost();
            return Next::Again;
        }
        if client.state() == zk::SessionState::Disconnected {
            return Next::Again;
        }
        self.failures += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let level = if since.elapsed() > self.session_timeout {
            HealthLevel::Unhealthy
        } else {
            HealthLevel::Degraded
        };
        let reason = format!(
            "ZooKeeper error, repairing (attempt {}): {e}",
            self.failures
        );
        warn!(%reason);
        let role = self.cell.get().role;
        let role = if role.is_leader() {
            Role::Candidate
        } else {
            role
        };
        self.cell.set(role, level, reason);
        self.backoff().await
    }

    /// Sleep a bounded, jittered backoff while still obeying commands.
    async fn backoff(&mut self) -> Next {
        self.pause(self.failures).await.unwrap_or(Next::Again)
    }

    /// Sleep a jittered 50 ms x 2^attempt (at most [`MAX_BACKOFF`]) while obeying commands.
    /// `Some(next)` when a command ends the wait early (closed, resigned).
    async fn pause(&mut self, attempt: u32) -> Option<Next> {
        let base = Duration::from_millis(50 * (1 << attempt.min(6))).min(MAX_BACKOFF);
        let until = Instant::now() + base.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.pause_until(until).await
    }

    /// Sleep until `until` while obeying commands. `Some(next)` when a command ends the wait
    /// early (closed, resigned).
    async fn pause_until(&mut self, until: Instant) -> Option<Next> {
        loop {
            tokio::select! {
                _ = sleep_until(until) => return None,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        if let Next::Exit = self.command(cmd).await { return Some(Next::Exit); }
                        if !self.want { return Some(Next::Again); }
                    }
                    None => return Some(Next::Exit),
                },
            }
        }
    }

    async fn fatal(&mut self, kind: ErrorKind, msg: &str) -> Next {
        warn!(%msg, "permanent failure; leaving the election");
        // Health first (a `join` returning the failure finds it published), then the
        // failure, then `Idle` (a `join` woken by `Idle` must find the failure).
        self.cell.set_health(HealthLevel::Unhealthy, msg.to_owned());
        self.inner.fatal.report(kind, msg);
        self.want = false;
        self.cell.set_role(Role::Idle, msg.to_owned());
        if let (Some(c), Some(n)) = (self.client.clone(), self.forget_node()) {
            let _ = timeout(self.session_timeout, c.delete(&n.path, None)).await;
        }
        Next::Again
    }

    /// Connect a session, retrying with backoff; Candidate and Degraded/Unhealthy meanwhile.
    async fn connect(&mut self) -> Next {
        let started = Instant::now();
        let mut failures: u32 = 0;
        let (bound, most) = self.hedging();
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut next_start = Instant::now();
        loop {
            tokio::select! {
                _ = sleep_until(next_start), if attempts.len() < most => {
                    let cfg = self.cfg.clone();
                    attempts.push(async move {
                        let t = Instant::now();
                        let r = timed(bound, connect(&cfg, cfg.session_timeout)).await;
                        (r, t.elapsed())
                    });
                    // No growing backoff: a server that comes back is found within one gap.
                    next_start = Instant::now()
                        + RETRY_WHILE_DOWN.mul_f64(rand::thread_rng().gen_range(0.8..1.0));
                }
                Some((result, took)) = attempts.next(), if !attempts.is_empty() => match result {
                    Ok(client) => {
                        info!(session = %client.session_id(), timeout = ?client.session_timeout(), "connected to ZooKeeper");
                        self.connect_took = Some(took);
                        self.set_client(Some(client));
                        return Next::Again;
                    }
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                        return self.fatal(e.kind(), e.message()).await;
                    }
                    Err(e) => {
                        failures += 1;
                        let level = if started.elapsed() > self.cfg.session_timeout {
                            HealthLevel::Unhealthy
                        } else {
                            HealthLevel::Degraded
                        };
                        let reason = format!(
                            "no connection to ZooKeeper for {:.1}s (attempt {failures}): {}",
                            started.elapsed().as_secs_f64(),
                            e.message()
                        );
                        let role = self.cell.get().role;
                        let role = if role.is_joined() || role.is_leader() {
                            Role::Candidate
                        } else {
                            role
                        };
                        self.cell.set(role, level, reason);
                    }
                },
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        if let Next::Exit = self.command(cmd).await { return Next::Exit; }
                        if !self.want { return Next::Again; }
                    }
                    None => return Next::Exit,
                },
            }
        }
    }

    /// How long one connection attempt (or probe) may take before it is abandoned, and how
    /// many may be in flight at once. A server that is starting up can accept a connection
    /// and never answer it; overlapping attempts, each abandoned after a few times what our
    /// last connection took, find it the moment it serves. Before any connection succeeded
    /// (nothing known about the link): one at a time, each with the configured bound.
    fn hedging(&self) -> (Option<Duration>, usize) {
        match self.connect_took {
            Some(t) => {
                let configured = self.cfg.connection_timeout * 2;
                (
                    Some((t * 4).max(MIN_ATTEMPT_BOUND).min(configured)),
                    MAX_ATTEMPTS,
                )
            }
            None => (None, 1),
        }
    }

    /// Make sure our node exists and belongs to our session; repair parents and node.
    async fn ensure_node(
        &mut self,
        client: &zk::Client,
    ) -> std::result::Result<OwnNode, zk::Error> {
        let session = client.session_id().0;
        if let Some(n) = self.node.clone() {
            if self.own_watch_pending() {
                return Ok(n);
            }
            match client.check_and_watch_stat(&n.path).await? {
                (Some(st), w) if st.ephemeral_owner == session => {
                    self.own_watch = Some(Box::pin(w.changed()));
                    return Ok(n);
                }
                (Some(_), _) => {
                    warn!(node = %n.name, "our node is owned by another session; re-creating");
                    self.forget_node();
                }
                (None, _) => {
                    info!(node = %n.name, "our latch node vanished; re-creating it");
                    self.cell
                        .metrics()
                        .count(metrics::REPAIRS, &[("cause", "node_missing")]);
                    self.forget_node();
                }
            }
            let role = self.cell.get().role;
            if role.is_leader() || role.is_joined() {
                self.cell.set(
                    Role::Candidate,
                    HealthLevel::Degraded,
                    "our latch node vanished; repairing",
                );
            }
        }
        let path = self.cfg.path.clone();
        let prefix = protected_prefix(&self.uuid);
        // Look for a node of ours whose create reply was lost, and for leftovers of our
        // earlier sessions.
        let children = match client.list_children(&path).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e),
        };
        for name in &children {
            let full = format!("{path}/{name}");
            if name.starts_with(&prefix) {
                if let Some(st) = client.check_stat(&full).await? {
                    if st.ephemeral_owner == session {
                        info!(node = %name, "adopting our node created before a connection loss");
                        let n = OwnNode {
                            name: name.clone(),
                            path: full,
                        };
                        self.set_node(n.clone());
                        return Ok(n);
                    }
                }
            } else if self
                .stale
                .iter()
                .any(|u| name.starts_with(&protected_prefix(u)))
            {
                info!(node = %name, "deleting a node left by an earlier session of ours");
                match client.delete(&full, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => debug!(node = %name, %e, "could not delete stale node"),
                }
            }
        }
        let data = self.cfg.id.as_bytes().to_vec();
        let acl = acls(&self.cfg);
        let node_opts = zk::CreateMode::EphemeralSequential.with_acls(acl);
        let dir_opts = zk::CreateMode::Container.with_acls(acl);
        let base = format!("{path}/{prefix}{}", names::LOCK_NAME);
        let mut tries = 0;
        loop {
            tries += 1;
            match client.create(&base, &data, &node_opts).await {
                Ok((stat, seq)) => {
                    let name = format!("{prefix}{}{seq}", names::LOCK_NAME);
                    if stat.ephemeral_owner != 0 && stat.ephemeral_owner != session {
                        warn!(node = %name, "created node reports another owner");
                    }
                    debug!(node = %name, "created our latch node");
                    let n = OwnNode {
                        path: format!("{path}/{name}"),
                        name,
                    };
                    self.set_node(n.clone());
                    return Ok(n);
                }
                Err(zk::Error::NoNode) if tries < 6 => {
                    // Parents missing (never created, deleted, or a container reaped
                    // between mkdir and create): recreate them and retry.
                    info!(%path, "latch path missing; creating it");
                    if self.been_in_latch {
                        // Not the first creation: the path was there and is gone.
                        self.cell
                            .metrics()
                            .count(metrics::REPAIRS, &[("cause", "path_missing")]);
                    }
                    match client.mkdir(&path, &dir_opts).await {
                        Ok(()) | Err(zk::Error::NodeExists) => {}
                        Err(zk::Error::NoNode) if self.cfg.chroot.is_some() => {
                            self.create_chroot().await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Create the chroot node (persistent) with a client outside the chroot.
    async fn create_chroot(&self) -> std::result::Result<(), zk::Error> {
        let chroot = self.cfg.chroot.clone().unwrap_or_default();
        info!(%chroot, "chroot missing; creating it");
        let mut cfg = (*self.cfg).clone();
        cfg.chroot = None;
        let outside = connect(&cfg, self.session_timeout)
            .await
            .map_err(|_| zk::Error::ConnectionLoss)?;
        let opts = zk::CreateMode::Persistent.with_acls(acls(&self.cfg));
        match outside.mkdir(&chroot, &opts).await {
            Ok(()) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One election round: repair, evaluate, wait for the next relevant event.
    ///
    /// Round trips on the handover path: after our predecessor's deletion, only the claim
    /// (one multi) stands between the event and `Leader`, with no `getChildren`. We are first
    /// if no node before our predecessor at our last reading of the queue (`ahead`) is left:
    /// sequence numbers only grow, so no node created since sorts before ours. The claim
    /// asserts that atomically (for each such node, a create and a delete of its name:
    /// fails with NodeExists while the node is there, a no-op otherwise) together with our
    /// node's existence (which the pending own-node watch already vouches for) and the
    /// write of the term. When the assertion fails, we read the queue as usual.
    async fn round(&mut self, client: &zk::Client) -> std::result::Result<Next, zk::Error> {
        let node = self.ensure_node(client).await?;
        let path = self.cfg.path.clone();
        let first_next = self.vacated.is_some() && self.own_watch.is_some();
        // Register the own-node watch (a node just created or adopted) and read the queue
        // in one round trip: both requests go out before either answer is awaited.
        let need_watch = self.own_watch.is_none();
        let (watched, listed) = tokio::join!(
            async {
                if need_watch {
                    Some(client.check_and_watch_stat(&node.path).await)
                } else {
                    None
                }
            },
            async {
                if first_next {
                    None
                } else {
                    Some(client.list_children(&path).await)
                }
            }
        );
        if let Some(watched) = watched {
            match watched? {
                (Some(_), w) => self.own_watch = Some(Box::pin(w.changed())),
                (None, _) => {
                    debug!("our node vanished after its creation; repairing");
                    self.forget_node();
                    return Ok(Next::Again);
                }
            }
        }
        let (pos, kids) = match listed {
            None => (0, Vec::new()),
            Some(Ok(c)) => {
                let kids = names::sorted(c);
                let Some(pos) = kids.iter().position(|k| k.name == node.name) else {
                    debug!("our node is not among the children; repairing");
                    self.forget_node();
                    return Ok(Next::Again);
                };
                (pos, kids)
            }
            Some(Err(zk::Error::NoNode)) => return Ok(Next::Again),
            Some(Err(e)) => return Err(e),
        };
        if pos == 0 {
            if let Role::Leader { .. } = self.cell.get().role {
                // Still first and never suspended since the claim (a suspension demotes, or
                // under ConnectionPolicy::Session our node provably survived): the same
                // grant continues.
                self.cell
                    .set_health(HealthLevel::Healthy, "first in the latch");
                return Ok(self.wait(client, None).await);
            }
            // Claim: atomically check our node still exists and write the latch path, whose
            // new mzxid is the term's sequence; its data names the claiming node, so a reader
            // can tell a first node that has claimed from one that has not yet.
            let mut w = client.new_multi_writer();
            w.add_check_version(&node.path, -1)?;
            let ahead = if first_next {
                std::mem::take(&mut self.ahead)
            } else {
                Vec::new()
            };
            if !ahead.is_empty() {
                let gone = zk::CreateMode::Persistent.with_acls(acls(&self.cfg));
                for name in &ahead {
                    let p = format!("{path}/{name}");
                    w.add_create(&p, &[], &gone)?;
                    w.add_delete(&p, None)?;
                }
            }
            w.add_set_data(&path, node.name.as_bytes(), None)?;
            // The claim is an answered request: contact as of its send instant, so a grant is
            // published with a fresh takeover bound (not one left from before a reconnect).
            let sent = std::time::Instant::now();
            let stat = match w.commit().await {
                Ok(mut results) => match results.pop() {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat,
                    _ => return Err(zk::Error::UnexpectedError("claim returned no stat".into())),
                },
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NoNode,
                    ..
                }) => {
                    self.forget_node();
                    return Ok(Next::Again);
                }
                // A node ahead of us is still there (our predecessor left while not first):
                // not first; read the queue.
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NodeExists,
                    ..
                }) if !ahead.is_empty() => {
                    debug!("a node ahead of our predecessor is still there; reading the queue");
                    self.vacated = None;
                    return Ok(Next::Again);
                }
                Err(zk::MultiWriteError::OperationFailed { index, source })
                    if index >= 1 && index <= 2 * ahead.len() =>
                {
                    debug!(%source, "the server refused the assertion that the nodes ahead are gone; reading the queue from now on");
                    self.assert_ahead = false;
                    self.vacated = None;
                    return Ok(Next::Again);
                }
                Err(zk::MultiWriteError::OperationFailed { source, .. }) => return Err(source),
                Err(zk::MultiWriteError::RequestFailed { source }) => return Err(source),
            };
            self.cell.touch(sent);
            let term = Term::new(stat.ctime.max(0) as u64, stat.mzxid.max(0) as u64);
            if !self.cell.get().role.is_leader() {
                info!(%term, "elected");
            }
            let reason = if first_next {
                "the leader before us left"
            } else {
                "first in the latch"
            };
            // Recorded before publishing, so whoever sees `Leader` also sees the sample.
            if let Some(vacated) = self.vacated.take() {
                self.cell.metrics().handover(vacated.into_std());
            }
            self.led_in_session = true;
            self.cell
                .set(Role::Leader { term }, HealthLevel::Healthy, reason);
            return Ok(self.wait(client, None).await);
        }
        self.vacated = None;
        self.ahead = kids[..pos - 1].iter().map(|k| k.name.clone()).collect();
        let pred = &kids[pos - 1];
        let pred_path = format!("{path}/{}", pred.name);
        let leader_path = format!("{path}/{}", kids[0].name);
        // Watch the predecessor and read the leader's id in one round trip.
        let (pred_read, leader_read) = tokio::join!(client.get_and_watch_data(&pred_path), async {
            if pos == 1 {
                None
            } else {
                Some(client.get_data(&leader_path).await)
            }
        });
        let (pred_data, pred_watch) = match pred_read {
            Ok((data, _, w)) => (data, w),
            Err(zk::Error::NoNode) => return Ok(Next::Again),
            Err(e) => return Err(e),
        };
        let leader = match leader_read {
            None => Some(String::from_utf8_lossy(&pred_data).into_owned()),
            Some(Ok((data, _))) => Some(String::from_utf8_lossy(&data).into_owned()),
            Some(Err(_)) => None,
        };
        let reason = if self.cell.get().role.is_leader() {
            "lost first place in the latch"
        } else {
            "waiting for predecessor"
        };
        self.cell
            .set(Role::Follower { leader }, HealthLevel::Healthy, reason);
        let claim_next = pos == 1 || (self.assert_ahead && self.ahead.len() <= MAX_AHEAD);
        Ok(self.wait(client, Some((pred_watch, claim_next))).await)
    }

    /// Wait for whatever can change our position: the predecessor or our own node changing,
    /// the session state changing, or a command. `pred` is the predecessor's watch and
    /// whether its deletion makes us claim at once (see [`round`](Self::round)).
    async fn wait(
        &mut self,
        client: &zk::Client,
        pred: Option<(zk::OneshotWatcher, bool)>,
    ) -> Next {
        let mut states = self
            .states
            .clone()
            .unwrap_or_else(|| client.state_watcher());
        let claim_next = pred.as_ref().is_some_and(|(_, claim)| *claim);
        let pred_changed = async move {
            match pred {
                Some((w, _)) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(pred_changed);
        let mut own = self.own_watch.take();
        let mut own_fired = false;
        let own_changed = async {
            match own.as_mut() {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(own_changed);
        // Contact is the SEND instant of the latest probe the server answered: the server
        // heard that request at or after that instant, so it cannot expire our session
        // before `sent + session timeout`. ("The driver says connected" is not contact: the
        // driver notices silence only 2/5 of the timeout after its last receipt, and that
        // receipt itself lags the server's last hearing of us by the link's delay, so a
        // bound of half the timeout from it can fall after the server's expiry.)
        let tick = (self.session_timeout / 6).max(Duration::from_millis(100));
        type Probe =
            Pin<Box<dyn Future<Output = std::result::Result<Option<zk::Stat>, zk::Error>> + Send>>;
        let mut probe: Option<(std::time::Instant, Probe)> = None;
        let mut last_probe: Option<Instant> = None;
        let next = loop {
            let connected = client.state() == zk::SessionState::SyncConnected
                || client.state() == zk::SessionState::ConnectedReadOnly;
            if connected && probe.is_none() && last_probe.is_none_or(|t| t.elapsed() >= tick) {
                last_probe = Some(Instant::now());
                let sent = std::time::Instant::now();
                probe = Some((sent, Box::pin(client.check_stat("/"))));
            }
            let probing = probe.is_some();
            break tokio::select! {
            _ = sleep(tick) => continue,
            r = async { probe.as_mut().expect("probing").1.as_mut().await }, if probing => {
                if let Some((sent, _)) = probe.take() {
                    if r.is_ok() {
                        self.cell.touch(sent);
                    }
                }
                continue;
            }
            ev = &mut pred_changed => {
                debug!(?ev.event_type, path = %ev.path, "predecessor changed");
                if claim_next && ev.event_type == zk::EventType::NodeDeleted {
                    self.vacated = Some(Instant::now());
                }
                Next::Again
            }
            ev = &mut own_changed => {
                own_fired = true;
                if ev.event_type == zk::EventType::NodeDeleted && !self.inner.closed.load(Ordering::SeqCst) {
                    info!("our latch node was deleted under us; repairing");
                    self.cell.set(Role::Candidate, HealthLevel::Degraded, "our latch node was deleted; repairing");
                    self.cell.metrics().count(metrics::REPAIRS, &[("cause", "node_deleted")]);
                    self.forget_node();
                }
                Next::Again
            }
            st = states.changed() => {
                self.states = Some(states);
                debug!(?st, "session state changed");
                Next::Again
            }
            cmd = self.rx.recv() => match cmd {
                Some(cmd) => {
                    self.pending = Some(cmd);
                    Next::Again
                }
                None => Next::Exit,
            },
            };
        };
        if self.node.is_some() && !own_fired {
            self.own_watch = own;
        }
        next
    }

    /// The connection is in doubt: not leader (per policy), probe for a wiped or expired
    /// session, report health, obey commands, until reconnected or replaced.
    async fn suspended(&mut self, client: &zk::Client) -> Next {
        let t0 = Instant::now();
        let was_leader = self.cell.get().role.is_leader();
        let grace = match self.cfg.connection_policy {
            ConnectionPolicy::Standard => Duration::ZERO,
            ConnectionPolicy::Session => self.session_timeout / 4,
        };
        let demote = |cell: &StatusCell, node: bool| {
            let role = if node {
                Role::Suspended
            } else {
                Role::Candidate
            };
            cell.set(
                role,
                HealthLevel::Degraded,
                "connection to ZooKeeper lost; reconnecting",
            );
        };
        if grace.is_zero() || !was_leader {
            if was_leader {
                info!("connection lost: dropping leadership");
            }
            demote(&self.cell, self.node.is_some());
        } else {
            self.cell.set_health(
                HealthLevel::Degraded,
                "connection to ZooKeeper lost; keeping leadership for the grace period",
            );
        }
        let mut states = self
            .states
            .clone()
            .unwrap_or_else(|| client.state_watcher());
        let mut next_probe = t0 + FIRST_PROBE_AFTER;
        // Probes overlap (see `hedging`): one starts every RETRY_WHILE_DOWN while fewer than
        // `most` are in flight, so a connection the starting server accepted but never
        // answers cannot hide the moment it serves.
        let (bound, most) = self.hedging();
        let mut probes = futures::stream::FuturesUnordered::new();
        // A grant's promise (`takeover_bound`): nobody else is elected before half the
        // session timeout after our last contact, because the server holds our session at
        // least that long. Leaving a session the server still holds deletes our node, which
        // can elect our successor at once: a participant that led keeps its old session
        // (waiting for the client to reconnect) until that bound has passed.
        let keep_until = if self.led_in_session {
            let c = self.cell.contact();
            c.last.map(|last| Instant::from_std(last + c.safe_for))
        } else {
            None
        };
        let node = self.node.as_ref().map(|n| n.path.clone());
        let unhealthy_at = t0 + self.session_timeout;
        let mut marked_unhealthy = false;
        let mut demoted = grace.is_zero() || !was_leader;
        loop {
            if client.state() != zk::SessionState::Disconnected {
                self.states = Some(states);
                return Next::Again;
            }
            tokio::select! {
                st = states.changed() => {
                    debug!(?st, "session state changed while suspended");
                    if st != zk::SessionState::Disconnected {
                        self.states = Some(states);
                        return Next::Again;
                    }
                }
                _ = sleep_until(t0 + grace), if !demoted => {
                    demoted = true;
                    info!("connection lost for the grace period: dropping leadership");
                    demote(&self.cell, self.node.is_some());
                }
                _ = sleep_until(unhealthy_at), if !marked_unhealthy => {
                    marked_unhealthy = true;
                    demoted = true;
                    let reason = format!("no connection to ZooKeeper for {} (the session timeout)", Human(self.session_timeout));
                    self.cell.set_health(HealthLevel::Unhealthy, reason);
                }
                _ = sleep_until(next_probe) => {
                    if probes.len() < most {
                        let probe = probe(self.cfg.clone(), client.clone(), node.clone());
                        probes.push(async move {
                            match bound {
                                Some(b) => timeout(b, probe).await.unwrap_or(Probe::Unanswered),
                                None => probe.await,
                            }
                        });
                    }
                    next_probe = Instant::now() + RETRY_WHILE_DOWN;
                }
                Some(found) = probes.next(), if !probes.is_empty() => {
                    let (fresh, why) = match found {
                        Probe::Unanswered => (None, ""),
                        Probe::SessionLost(fresh) => {
                            info!(old = %client.session_id(), new = %fresh.session_id(),
                                  "ZooKeeper answers a new session but no longer knows ours (ensemble wiped or session expired): switching to the new session");
                            self.cell.metrics().count(metrics::SESSION_EXPIRATIONS, &[]);
                            (Some(fresh), "ZooKeeper lost our session (wiped or expired); rejoining")
                        }
                        // ZooKeeper serves, still with our session, but our client has not
                        // reconnected: it waits out its own backoff (100 ms doubling, up to
                        // seconds after a long outage). Under the grace of
                        // ConnectionPolicy::Session, or before the takeover bound of a grant we
                        // held, we keep waiting for it; otherwise we are not leader anyway, and
                        // the fresh session rejoins now (its first round deletes our old node,
                        // named by the old session's uuid).
                        Probe::SessionAlive(fresh)
                            if demoted && keep_until.is_none_or(|k| Instant::now() >= k) =>
                        {
                            info!(old = %client.session_id(), new = %fresh.session_id(),
                                  "ZooKeeper answers again but our client has not reconnected yet: switching to the new session");
                            (Some(fresh), "ZooKeeper answers again; rejoining with a new session")
                        }
                        Probe::SessionAlive(_) => {
                            // Next look when the grace ends and our grant's takeover bound has
                            // passed (no session churn meanwhile).
                            next_probe = next_probe.max(t0 + grace).max(keep_until.unwrap_or(t0));
                            (None, "")
                        }
                    };
                    if let Some(fresh) = fresh {
                        // Whatever we held may be someone else's by now: no grace for work
                        // under our grant.
                        self.cell.forget_contact(std::time::Instant::now());
                        self.cell.metrics().count(metrics::REPAIRS, &[("cause", "session_replaced")]);
                        if !demoted || self.cell.get().role.is_leader() {
                            demote(&self.cell, false);
                        }
                        self.cell.set(Role::Candidate, HealthLevel::Degraded, why);
                        self.set_client(Some(fresh));
                        return Next::Again;
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        let next = self.command(cmd).await;
                        if let Next::Exit = next { return Next::Exit; }
                        if !self.want { return Next::Again; }
                    }
                    None => return Next::Exit,
                },
            }
        }
    }

    async fn command(&mut self, cmd: Cmd) -> Next {
        match cmd {
            Cmd::Join => {
                self.want = true;
                Next::Again
            }
            Cmd::Resign(ack) => {
                self.want = false;
                if self.cell.get().role.is_leader() {
                    info!("resigning leadership");
                }
                // Stop leading BEFORE deleting the node.
                self.cell.set(Role::Idle, HealthLevel::Healthy, "resigned");
                let r = self.delete_node().await;
                let _ = ack.send(r);
                Next::Again
            }
            Cmd::Close(ack) => {
                self.want = false;
                self.cell.close("closed");
                let r = self.delete_node().await;
                let deleted = r.is_ok() && self.client.is_some();
                let _ = ack.send(r);
                if deleted {
                    // Our node is gone; the session closes a moment later, so that its
                    // teardown (a closeSession write on the server, the connection's end in
                    // our process) does not compete with our successor's claim.
                    sleep(CLOSE_LINGER).await;
                }
                self.set_client(None);
                Next::Exit
            }
        }
    }

    /// Delete our node: retried until done or the session that owns it is gone.
    async fn delete_node(&mut self) -> Result<()> {
        let (Some(client), Some(node)) = (self.client.clone(), self.forget_node()) else {
            return Ok(());
        };
        if lock(&self.inner.deleted).as_deref() == Some(node.path.as_str()) {
            return Ok(());
        }
        let deadline = Instant::now() + self.session_timeout.mul_f64(1.5);
        let mut pause = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, client.delete(&node.path, None)).await {
                Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => return Ok(()),
                Ok(Err(e)) if session_gone(&e) => return Ok(()),
                Ok(Err(e)) if permanent(&e) => {
                    return Err(map(e, &format!("delete our latch node {}", node.path)))
                }
                Ok(Err(e)) => {
                    debug!(%e, "delete failed; retrying");
                }
                Err(_) => {
                    return Err(Error::timeout(format!(
                        "could not delete our latch node {} within 1.5 x the session timeout; ZooKeeper will remove it when the session expires",
                        node.path
                    )))
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(format!(
                    "could not delete our latch node {}; ZooKeeper will remove it when the session expires",
                    node.path
                )));
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
