//! [`ZkElection`]: the latch participant, and the lean per-election driver that keeps it in
//! the election whatever happens to its node or the latch path. The session (connection,
//! contact probe, loss detection, session replacement) is [`crate::session`]'s.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rand::Rng;
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::participant::{self, Fatal};
use succession_core::text::Human;
use succession_core::{
    Contact, Election, Error, ErrorKind, HealthLevel, Participant, Result, Role, Status,
    StatusCell, Term,
};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn, Instrument};
use zookeeper_client as zk;

use crate::config::{NodeAcl, ZkConfig};
use crate::error::{map, permanent, session_gone};
use crate::names::{self, protected_prefix};
use crate::session::{self, Conn, Core, SessionClient, View, ZkSession, CLOSE_LINGER};
use crate::standing::{standing, Standing};

/// A status reason shared by every election (no allocation per status change: memory per
/// election matters).
macro_rules! reason {
    ($s:literal) => {{
        static REASON: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        REASON.get_or_init(|| Arc::from($s)).clone()
    }};
}

/// A participant in a ZooKeeper latch election (Curator LeaderLatch-compatible layout).
///
/// Create with [`ZkElection::new`] (a session of its own) or
/// [`ZkSession::election`](crate::ZkSession::election) (many elections on one session; no
/// I/O either way), then [`join`](Election::join). The session's task owns the ZooKeeper
/// session (connection, contact probe, wipe/expiry detection with probe sessions, session
/// replacement); a lean per-election task keeps this participant in the election: it
/// repairs the latch path and its own node after any loss (session expiry, a wiped
/// ensemble, the path deleted under it) and publishes every change on the
/// [`status`](Election::status) stream.
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
/// Dropping the handle stops this participant. With a session of its own
/// ([`ZkElection::new`]) the session closes too: ZooKeeper deletes our node at once, like a
/// process exit. On a shared session our node is deleted in the background (when the
/// session is up). [`close`](Election::close) publishes `Closed` first and confirms the
/// deletion; it returns once our node is deleted (a session of its own is closed 20 ms
/// later in the background, so that its teardown does not compete with the successor's
/// claim).
pub struct ZkElection {
    inner: Arc<Inner>,
    session: ZkSession,
    /// Whether the session is this participant's own (made by [`ZkElection::new`]).
    private: bool,
}

impl std::fmt::Debug for ZkElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkElection")
            .field("id", &self.inner.cfg.id)
            .field("path", &self.inner.cfg.path)
            .field("role", &self.inner.cell.get().role)
            .finish()
    }
}

/// One election's shared state (the handle's, the driver's, and the session registry's).
pub(crate) struct Inner {
    pub(crate) cfg: ZkConfig,
    pub(crate) cell: StatusCell,
    /// Key in the session's registry.
    pub(crate) key: u64,
    driver: Mutex<Option<Driver>>,
    cmds: Commands,
    closed: AtomicBool,
    /// Where the driver reports a permanent failure to the `join`s in progress; only
    /// allocated while one is (a `join` clears earlier failures anyway), as memory per
    /// election matters.
    fatal: Mutex<Option<Fatal>>,
    /// `join` calls in progress.
    joining: std::sync::atomic::AtomicUsize,
    /// The path of our node, as far as the driver knows (for a prompt delete on close, and
    /// for the session's probe).
    node: Mutex<Option<Arc<str>>>,
    /// A node `close` already deleted (the driver need not delete it again).
    deleted: Mutex<Option<Arc<str>>>,
    /// What the driver is doing (one of the `PHASE_*` values), for the warning when it does
    /// not acknowledge a close in time.
    phase: std::sync::atomic::AtomicU8,
}

const PHASE_IDLE: u8 = 0;
const PHASE_ROUND: u8 = 1;
const PHASE_WAIT: u8 = 2;
const PHASE_PAUSE: u8 = 3;
const PHASE_SESSION: u8 = 4;
const PHASE_COMMAND: u8 = 5;
const PHASE_FATAL: u8 = 6;

/// A `PHASE_*` value in words.
fn phase_name(phase: u8) -> &'static str {
    match phase {
        PHASE_IDLE => "idle, waiting for a command",
        PHASE_ROUND => "in a round",
        PHASE_WAIT => "waiting for a watch or the session",
        PHASE_PAUSE => "pausing before a retry",
        PHASE_SESSION => "waiting for the session to change",
        PHASE_COMMAND => "deleting its node for a command",
        PHASE_FATAL => "leaving after a permanent failure",
        _ => "unknown",
    }
}

impl Inner {
    pub(crate) fn has_node(&self) -> bool {
        lock(&self.node).is_some()
    }

    pub(crate) fn node(&self) -> Option<Arc<str>> {
        lock(&self.node).clone()
    }

    fn closed_error(&self) -> Error {
        Error::closed(&format!("ZooKeeper latch participant {}", self.cfg.id))
    }
}

struct Driver {
    task: JoinHandle<()>,
}

/// The driver's command queue: lighter than a tokio mpsc channel (which allocates a block
/// of 32 slots and cache-padded state per channel); memory per election matters.
#[derive(Default)]
struct Commands {
    queue: Mutex<VecDeque<Cmd>>,
    notify: Notify,
    /// No more commands (closing): `recv` returns None once the queue is drained.
    closed: AtomicBool,
}

impl Commands {
    fn send(&self, cmd: Cmd) -> std::result::Result<(), Cmd> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(cmd);
        }
        lock(&self.queue).push_back(cmd);
        self.notify.notify_one();
        Ok(())
    }

    /// The next command that ends a round early (resign, close), or None once closed and
    /// drained. A join while participating changes nothing, so it is dropped here instead:
    /// a caller retrying `join` must not keep cutting short a slow round. Cancel-safe.
    async fn recv_stop(&self) -> Option<Cmd> {
        loop {
            match self.recv().await {
                Some(Cmd::Join) => continue,
                other => return other,
            }
        }
    }

    /// The next command; None once closed and drained. Cancel-safe.
    async fn recv(&self) -> Option<Cmd> {
        loop {
            {
                let mut q = lock(&self.queue);
                if let Some(cmd) = q.pop_front() {
                    if q.is_empty() {
                        // Commands are rare: keep no buffer while idle.
                        *q = VecDeque::new();
                    }
                    return Some(cmd);
                }
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            self.notify.notified().await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
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
    /// A participant for `cfg` (already validated by [`ZkConfig`]'s builder) on a session
    /// of its own. No I/O happens until [`join`](Election::join) or a read.
    pub fn new(cfg: ZkConfig) -> Result<ZkElection> {
        let session = ZkSession::new(cfg.session_config())?;
        Ok(ZkElection::on_session(session, cfg, true))
    }

    /// A participant for `cfg` on `session` (registered with it).
    pub(crate) fn on_session(session: ZkSession, cfg: ZkConfig, private: bool) -> ZkElection {
        let cell = StatusCell::with_metrics(ElectionMetrics::new("zk", cfg.path.clone()));
        let inner = Arc::new(Inner {
            key: session.core().new_key(),
            cfg,
            cell,
            driver: Mutex::new(None),
            cmds: Commands::default(),
            closed: AtomicBool::new(false),
            fatal: Mutex::new(None),
            joining: Default::default(),
            node: Mutex::new(None),
            deleted: Mutex::new(None),
            phase: Default::default(),
        });
        session.core().register(inner.clone());
        ZkElection {
            inner,
            session,
            private,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ZkConfig {
        &self.inner.cfg
    }

    /// The session this participant takes part through.
    pub fn session(&self) -> &ZkSession {
        &self.session
    }

    /// The id of the ZooKeeper session currently used to take part (None when not
    /// connected). Useful to match this participant in the server's `cons` output.
    pub fn session_id(&self) -> Option<i64> {
        self.session.session_id()
    }

    fn core(&self) -> &Arc<Core> {
        self.session.core()
    }

    /// Make sure the driver runs (and the session task).
    fn sender(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(self.inner.closed_error());
        }
        let core = self.core();
        core.start();
        let mut d = lock(&self.inner.driver);
        if let Some(d) = d.as_ref() {
            if !d.task.is_finished() {
                return Ok(());
            }
        }
        let state = Box::new(DriverState::new(core.clone(), self.inner.clone()));
        let span = tracing::info_span!(parent: core.span(), "zk_latch", id = %self.inner.cfg.id, path = %self.inner.cfg.path);
        let task = tokio::spawn(state.run().instrument(span));
        *d = Some(Driver { task });
        Ok(())
    }

    async fn read_participants(&self) -> Result<Vec<Participant>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(self.inner.closed_error());
        }
        let client = self.core().read_client().await?;
        let bound = self.inner.cfg.session_timeout;
        let path = self.inner.cfg.path.clone();
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

/// Ask the driver to close (delete our node) and wait for it, bounded by 2 x the session
/// timeout.
async fn stop_driver(inner: &Inner, driver: Option<Driver>) -> Result<()> {
    let mut result = Ok(());
    if let Some(Driver { task }) = driver {
        let (ack, done) = oneshot::channel();
        // A driver that has ended (its session closed) would never answer.
        let sent = !task.is_finished() && inner.cmds.send(Cmd::Close(ack)).is_ok();
        // Closed: the driver ends as soon as it has handled what it received.
        inner.cmds.close();
        // Deleting our node is retried for at most 1.5 x the session timeout; never wait
        // much longer than that, whatever the driver is doing.
        let bound = inner.cfg.session_timeout * 2;
        let mut acked = false;
        if sent {
            result = match timeout(bound, done).await {
                Ok(Ok(r)) => {
                    acked = true;
                    r
                }
                Ok(Err(_)) => Ok(()),
                Err(_) => {
                    let phase = phase_name(inner.phase.load(Ordering::SeqCst));
                    warn!(%phase, "the driver did not acknowledge the close in time");
                    Err(Error::timeout(format!(
                        "closing took longer than {}; ZooKeeper removes our node when the session ends",
                        Human(bound)
                    )))
                }
            };
        }
        if !acked {
            let abort = task.abort_handle();
            if timeout(bound, task).await.is_err() {
                abort.abort();
            }
        }
    }
    result
}

/// Close one election: not leader from here on (`Closed` published first), its node
/// deleted, its driver ended, and it leaves the session's registry.
pub(crate) async fn close(core: &Arc<Core>, inner: &Arc<Inner>) -> Result<()> {
    inner.closed.store(true, Ordering::SeqCst);
    let driver = lock(&inner.driver).take();
    // Not leader from here on, for good (a closed cell publishes nothing more): our node
    // goes at once, before the driver winds down, so that the successor's claim does not
    // queue behind more of our writes on the server.
    inner.cell.close("closed");
    let early = core
        .client()
        .filter(|c| c.state() == zk::SessionState::SyncConnected)
        .zip(inner.node())
        .filter(|(_, node)| lock(&inner.deleted).as_ref() != Some(node));
    if let Some((client, node)) = early {
        // Connected: this takes a round trip. Bounded so that close stays within about
        // 2.5 x the session timeout however the connection fares meanwhile.
        match timeout(
            inner.cfg.session_timeout / 2,
            client.write(|c| c.delete(&node, None)),
        )
        .await
        {
            Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {
                *lock(&inner.deleted) = Some(node);
            }
            Ok(Err(e)) => debug!(%e, %node, "early delete failed; the driver retries"),
            Err(_) => debug!(%node, "early delete timed out; the driver retries"),
        }
    }
    let result = stop_driver(inner, driver).await;
    inner.cell.close("closed");
    core.deregister(inner.key);
    result
}

/// Nodes deleted by one multi-operation when a whole session closes.
const DELETE_BATCH: usize = 128;

/// Close many elections of one session: each publishes `Closed` first (none leads from
/// here on), then their nodes are deleted in batches (one multi-operation per
/// [`DELETE_BATCH`] nodes, so that closing thousands of elections does not queue thousands
/// of writes; the nodes of the elections that led first), then every election closes as
/// [`close`] does (deleting one by one the nodes of a batch that failed).
pub(crate) async fn close_all(core: &Arc<Core>, all: &[Arc<Inner>]) -> Result<()> {
    // Whether each led, read before `Closed` is published.
    let led: Vec<bool> = all.iter().map(|i| i.cell.get().role.is_leader()).collect();
    for inner in all {
        inner.closed.store(true, Ordering::SeqCst);
        inner.cell.close("closed");
    }
    let client = core
        .client()
        .filter(|c| c.state() == zk::SessionState::SyncConnected);
    if let Some(client) = client {
        // The nodes of the elections we led go first: ZooKeeper handles one session's
        // requests in order, so their successors are woken before the server spends time
        // on our other nodes (whose deletion only moves followers up the queue).
        let mut nodes: Vec<(&Arc<Inner>, Arc<str>)> = Vec::with_capacity(all.len());
        for first in [true, false] {
            nodes.extend(
                all.iter()
                    .zip(&led)
                    .filter(|(_, l)| **l == first)
                    .filter_map(|(i, _)| i.node().map(|n| (i, n))),
            );
        }
        let bound = core.cfg.session_timeout / 2;
        let batches = nodes.chunks(DELETE_BATCH).map(|chunk| {
            let client = client.clone();
            async move {
                let mut w = client.new_multi_writer();
                for (_, node) in chunk {
                    if w.add_delete(node, None).is_err() {
                        return;
                    }
                }
                match timeout(bound, client.write(|_| w.commit())).await {
                    Ok(Ok(_)) => {
                        for (inner, node) in chunk {
                            *lock(&inner.deleted) = Some(node.clone());
                        }
                    }
                    Ok(Err(e)) => debug!(%e, "batch delete failed; deleting one by one"),
                    Err(_) => debug!("batch delete timed out; deleting one by one"),
                }
            }
        });
        futures::future::join_all(batches).await;
    }
    let results = futures::future::join_all(all.iter().map(|inner| close(core, inner))).await;
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

#[async_trait]
impl Election for ZkElection {
    fn id(&self) -> &str {
        &self.inner.cfg.id
    }

    async fn join(&self) -> Result<()> {
        self.sender()?;
        let fatal = {
            let mut slot = lock(&self.inner.fatal);
            self.inner.joining.fetch_add(1, Ordering::SeqCst);
            slot.get_or_insert_with(Fatal::new).clone()
        };
        // The slot is emptied when the last join in progress ends (cancelled too).
        struct Joining<'a>(&'a Inner);
        impl Drop for Joining<'_> {
            fn drop(&mut self) {
                let mut slot = lock(&self.0.fatal);
                if self.0.joining.fetch_sub(1, Ordering::SeqCst) == 1 {
                    *slot = None;
                }
            }
        }
        let _joining = Joining(&self.inner);
        fatal.clear();
        let rx = self.inner.cell.subscribe();
        if rx.borrow().role == Role::Idle {
            self.inner
                .cell
                .set_role(Role::Candidate, reason!("joining"));
        }
        self.inner
            .cmds
            .send(Cmd::Join)
            .map_err(|_| self.inner.closed_error())?;
        let what = format!("ZooKeeper latch participant {}", self.inner.cfg.id);
        participant::wait_joined(rx, Some(&fatal), &self.inner.cfg.id, &what, || None).await
    }

    async fn resign(&self) -> Result<()> {
        {
            let d = lock(&self.inner.driver);
            match d.as_ref() {
                Some(d) if !d.task.is_finished() => {}
                _ => return Ok(()),
            }
        }
        let (ack, done) = oneshot::channel();
        if self.inner.cmds.send(Cmd::Resign(ack)).is_err() {
            return Ok(());
        }
        done.await.unwrap_or(Ok(()))
    }

    async fn close(&self) -> Result<()> {
        let result = close(self.core(), &self.inner).await;
        if self.private {
            // Our node is gone; the session closes a moment later, so that its teardown (a
            // closeSession write on the server) does not compete with our successor's
            // claim. Awaited: when close() returns, ZooKeeper has closed the session (a
            // process that exits right after close() leaves no session to expire).
            sleep(CLOSE_LINGER).await;
            if let Some(end) = self.session.core().shutdown() {
                end.await;
            }
        }
        result
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.inner.cell.subscribe()
    }

    async fn leader(&self) -> Result<Option<Participant>> {
        Ok(self.read_participants().await?.into_iter().next())
    }

    async fn participants(&self) -> Result<Vec<Participant>> {
        self.read_participants().await
    }

    /// Last contact: the send instant of the latest request the server answered on our
    /// session (its probe every T/6 while connected, or any election's claim; the server
    /// heard it no sooner); safe for half the negotiated session timeout.
    fn contact(&self) -> Contact {
        self.session.core().contact()
    }
}

impl Drop for ZkElection {
    fn drop(&mut self) {
        if let Some(d) = lock(&self.inner.driver).take() {
            d.task.abort();
        }
        self.inner.cell.close("handle dropped");
        let core = self.core();
        core.deregister(self.inner.key);
        if self.private || self.inner.closed.load(Ordering::SeqCst) {
            // A session of its own ends with this handle: ZooKeeper deletes our node.
            return;
        }
        // On a shared session: delete our node in the background while the session is up.
        let node = self.inner.node();
        let client = core
            .client()
            .filter(|c| c.state() == zk::SessionState::SyncConnected);
        if let (Some(node), Some(client), Ok(rt)) =
            (node, client, tokio::runtime::Handle::try_current())
        {
            let bound = self.inner.cfg.session_timeout / 2;
            rt.spawn(async move {
                let _ = timeout(bound, client.write(|c| c.delete(&node, None))).await;
            });
        }
    }
}

fn new_uuid() -> uuid::Uuid {
    uuid::Uuid::new_v4()
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

/// Connect a new session for `cfg` (fails fast when no server answers).
pub(crate) async fn connect(cfg: &ZkConfig) -> Result<zk::Client> {
    session::connect(&cfg.session_config()).await
}

/// A pending one-shot watch (on our own node, or on our predecessor), boxed: it waits as
/// long as the election is idle.
type OwnWatch = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send + Sync>>;

/// Our node in the latch.
#[derive(Debug, Clone)]
struct OwnNode {
    /// The node's full path (shared with [`Inner`]'s copy).
    path: Arc<str>,
    /// Where its name starts in `path`.
    name_at: usize,
}

impl OwnNode {
    fn new(path: String, name_len: usize) -> OwnNode {
        OwnNode {
            name_at: path.len() - name_len,
            path: path.into(),
        }
    }

    /// The node's name (its last path segment).
    fn name(&self) -> &str {
        &self.path[self.name_at..]
    }
}

/// What the driver does next.
enum Next {
    /// Run another round (re-verify our node, re-evaluate the queue).
    Again,
    /// The round is done: wait for the next event (with the predecessor's watch, and
    /// whether its deletion makes us claim at once).
    Wait(Option<(OwnWatch, bool)>),
    /// Stop the driver (closed or handle gone).
    Exit,
}

/// One election's driver: lean (no timers while idle, no session work); the session task
/// does the connection, the contact probe and loss detection for all elections.
struct DriverState {
    core: Arc<Core>,
    inner: Arc<Inner>,
    /// The session's view (generation, client, state).
    view: watch::Receiver<View>,
    /// The session generation our node and uuid belong to.
    generation: u64,
    /// The session's client our watches were registered with (see [`View::epoch`]).
    epoch: u64,
    /// The negotiated session timeout.
    session_timeout: Duration,
    /// The protected-name uuid of the current session's node.
    uuid: uuid::Uuid,
    /// uuids of nodes earlier sessions of ours may have left behind.
    stale: Vec<uuid::Uuid>,
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
    /// A round was abandoned (a command or a session change cut it short): a create it had
    /// sent may have made a node of ours that we do not know of. The next round adopts it
    /// (protected names make it findable); closing or resigning looks for it and deletes it.
    unsure: bool,
    failures: u32,
    failing_since: Option<Instant>,
}

/// Longest backoff between repair attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl DriverState {
    /// A driver for `inner` on the session `core`, not yet participating.
    fn new(core: Arc<Core>, inner: Arc<Inner>) -> DriverState {
        let view = core.subscribe();
        let session_timeout = inner.cfg.session_timeout;
        DriverState {
            core,
            inner,
            view,
            generation: 0,
            epoch: 0,
            session_timeout,
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
            unsure: false,
            failures: 0,
            failing_since: None,
        }
    }

    /// Boxed: an async fn's future holds its argument and the moved state apart.
    async fn run(mut self: Box<Self>) {
        loop {
            let next = if let Some(cmd) = self.pending.take() {
                Box::pin(self.command(cmd)).await
            } else if !self.want {
                self.phase(PHASE_IDLE);
                match self.inner.cmds.recv().await {
                    Some(cmd) => Box::pin(self.command(cmd)).await,
                    None => Next::Exit,
                }
            } else {
                Box::pin(self.step()).await
            };
            if let Next::Exit = next {
                self.forget_node();
                return;
            }
        }
    }

    /// Record what the driver is doing (see [`Inner::phase`]).
    fn phase(&self, phase: u8) {
        self.inner.phase.store(phase, Ordering::Relaxed);
    }

    /// Follow the session's generation `generation` (a new session, or none). `ours_gone`:
    /// the server has certainly forgotten the session we took part in, and its nodes.
    fn new_session(&mut self, generation: u64, client: Option<SessionClient>, ours_gone: bool) {
        if let Some(n) = self.forget_node() {
            debug!(node = %n.name(), "forgetting the node of the session we left");
        }
        if self.generation != 0 || self.been_in_latch {
            // Name the next session's node with a fresh uuid; the session we left may have
            // left nodes under the old one: remember it for cleanup, unless it is gone.
            let old = std::mem::replace(&mut self.uuid, new_uuid());
            if !ours_gone {
                self.stale.push(old);
                if self.stale.len() > 16 {
                    self.stale.remove(0);
                }
            }
        }
        // No create of ours can be pending on the new session.
        self.unsure = false;
        if let Some(c) = &client {
            self.session_timeout = c.session_timeout();
        }
        self.generation = generation;
    }

    /// The client of the session our node and uuid belong to (None once it was replaced).
    fn client(&self) -> Option<SessionClient> {
        let v = self.view.borrow();
        if v.generation == self.generation {
            v.client.clone()
        } else {
            None
        }
    }

    /// Forget our node and everything known about it.
    fn forget_node(&mut self) -> Option<OwnNode> {
        self.own_watch = None;
        self.vacated = None;
        *lock(&self.inner.node) = None;
        self.node.take()
    }

    /// A read found our node gone (or another session's): forget it and stop leading or
    /// following before the repair (a leader whose node was deleted between the exists
    /// check and the queue read must not carry its grant over to the node the next round
    /// creates; the next round claims afresh).
    fn node_lost(&mut self) {
        self.forget_node();
        self.step_down(reason!("our latch node vanished; repairing"));
    }

    /// A leader or follower becomes a candidate (degraded, for `reason`); anyone else keeps
    /// their role.
    fn step_down(&self, reason: Arc<str>) {
        let role = self.inner.cell.get().role;
        if role.is_leader() || role.is_joined() {
            self.inner
                .cell
                .set(Role::Candidate, HealthLevel::Degraded, reason);
        }
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

    /// One step while participating. Only what an idle election waits on stays allocated
    /// between events: the round's future (large: every store call of a round) is boxed
    /// and freed before the wait for the next event.
    async fn step(&mut self) -> Next {
        if self.inner.closed.load(Ordering::SeqCst) {
            // close() is under way: it deletes our node itself and then sends Close. Never
            // repair (re-create the node) meanwhile; just wait for that command.
            self.phase(PHASE_IDLE);
            return match self.inner.cmds.recv().await {
                Some(cmd) => Box::pin(self.command(cmd)).await,
                None => Next::Exit,
            };
        }
        let state = {
            let view = self.view.borrow_and_update().clone();
            if view.generation != self.generation {
                // The session we took part in is certainly gone (with its nodes) only if it
                // is the one that ended right before this generation.
                let ours_gone = view.prev_gone && view.generation == self.generation + 1;
                self.new_session(view.generation, view.client, ours_gone);
            } else if view.epoch != self.epoch {
                // The same session on a new client: our node stands, but the watches
                // registered with the old client will never fire; read afresh.
                self.own_watch = None;
            }
            self.epoch = view.epoch;
            view.state
        };
        match state {
            Conn::Connected if self.client().is_some() => {}
            Conn::Fatal(kind, msg) => return Box::pin(self.fatal(kind, &msg)).await,
            Conn::Closed => {
                self.inner.cell.close("the ZooKeeper session was closed");
                return Next::Exit;
            }
            // The session task demoted us (per policy) and works on it: wait for news.
            _ => return Box::pin(self.until_view_changes()).await,
        }
        let outcome = Box::pin(self.round_or_lost()).await;
        match outcome {
            Ok(next) => {
                self.failures = 0;
                self.failing_since = None;
                match next {
                    Next::Wait(pred) => self.wait(pred).await,
                    next => next,
                }
            }
            Err(e) => Box::pin(self.failed(e)).await,
        }
    }

    /// A round, abandoned as soon as the session reports a change or a resign or close
    /// arrives: a round's calls wait through a lost connection (up to 1.4 x the session
    /// timeout, longer when the connection moves between servers), while suspension and
    /// those commands (bounded by their caller) are to be handled at once.
    async fn round_or_lost(&mut self) -> std::result::Result<Next, zk::Error> {
        let Some(client) = self.client() else {
            return Ok(Next::Again);
        };
        let mut view = self.view.clone();
        let (generation, epoch) = (self.generation, self.epoch);
        let lost = async move {
            loop {
                if view.changed().await.is_err() {
                    return;
                }
                let v = view.borrow();
                if v.generation != generation || v.epoch != epoch || v.state != Conn::Connected {
                    return;
                }
            }
        };
        let core = self.core.clone();
        let inner = self.inner.clone();
        self.phase(PHASE_ROUND);
        let abandoned = tokio::select! {
            r = async {
                // The semaphore is never closed, so this waits for a permit, never fails.
                let _permit = core.rounds.acquire().await;
                self.round(&client).await
            } => return r,
            _ = lost => None,
            cmd = inner.cmds.recv_stop() => Some(cmd),
        };
        self.unsure = true;
        match abandoned {
            None => Ok(Next::Again),
            Some(Some(cmd)) => {
                debug!("a command cut a round short");
                self.pending = Some(cmd);
                Ok(Next::Again)
            }
            Some(None) => Ok(Next::Exit),
        }
    }

    /// Wait for the session's view to change, obeying commands meanwhile.
    async fn until_view_changes(&mut self) -> Next {
        loop {
            self.phase(PHASE_SESSION);
            tokio::select! {
                r = self.view.changed() => {
                    if r.is_err() {
                        return Next::Exit;
                    }
                    return Next::Again;
                }
                cmd = self.inner.cmds.recv() => match cmd {
                    Some(cmd) => {
                        let next = Box::pin(self.command(cmd)).await;
                        if let Next::Exit = next { return Next::Exit; }
                        if !self.want { return Next::Again; }
                    }
                    None => return Next::Exit,
                },
            }
        }
    }

    /// A round failed with a ZooKeeper error: classify, report, back off.
    async fn failed(&mut self, e: zk::Error) -> Next {
        if permanent(&e) {
            let err = map(e, &format!("take part in latch {}", self.inner.cfg.path));
            return self.fatal(err.kind(), err.message()).await;
        }
        if session_gone(&e) {
            // The session task notices it too (the client's state is final) and replaces
            // the session; not leader meanwhile.
            self.step_down(reason!(
                "ZooKeeper session expired; rejoining with a new session"
            ));
            return self.until_view_changes().await;
        }
        // A lost connection is the session task's to handle (it demotes everyone when the
        // session is in doubt); the next round runs on whatever connection it restores.
        // While the client is still disconnected (its writes are refused), pause briefly
        // rather than spin until the session task has suspended us.
        let disconnected = self
            .client()
            .is_none_or(|c| c.state() == zk::SessionState::Disconnected);
        if disconnected {
            return self.pause(0).await.unwrap_or(Next::Again);
        }
        if matches!(e, zk::Error::ConnectionLoss) {
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
        let role = self.inner.cell.get().role;
        let role = if role.is_leader() {
            Role::Candidate
        } else {
            role
        };
        self.inner.cell.set(role, level, reason);
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
            self.phase(PHASE_PAUSE);
            tokio::select! {
                _ = sleep_until(until) => return None,
                cmd = self.inner.cmds.recv() => match cmd {
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
        self.phase(PHASE_FATAL);
        warn!(%msg, "permanent failure; leaving the election");
        // Health first (a `join` returning the failure finds it published), then the
        // failure, then `Idle` (a `join` woken by `Idle` must find the failure).
        self.inner
            .cell
            .set_health(HealthLevel::Unhealthy, msg.to_owned());
        if let Some(f) = lock(&self.inner.fatal).as_ref() {
            f.report(kind, msg);
        }
        self.want = false;
        self.inner.cell.set_role(Role::Idle, msg.to_owned());
        if let Some(n) = self.forget_node() {
            // The delete may fail (refused, like what made us leave): a rejoin on this
            // session looks for the node and adopts it, else it would stand first in the
            // queue with nobody acting for it (found by the simulation).
            self.unsure = true;
            if let Some(c) = self.client() {
                let _ = timeout(self.session_timeout, c.write(|z| z.delete(&n.path, None))).await;
            }
        }
        Next::Again
    }

    /// Make sure our node exists and belongs to our session; repair parents and node.
    async fn ensure_node(
        &mut self,
        client: &SessionClient,
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
                    warn!(node = %n.name(), "our node is owned by another session; re-creating");
                    self.node_lost();
                }
                (None, _) => {
                    info!(node = %n.name(), "our latch node vanished; re-creating it");
                    self.inner
                        .cell
                        .metrics()
                        .count(metrics::REPAIRS, &[("cause", "node_missing")]);
                    self.node_lost();
                }
            }
        }
        let path = self.inner.cfg.path.clone();
        let prefix = protected_prefix(&self.uuid.to_string());
        // Look for a node of ours whose create reply was lost, and for leftovers of our
        // earlier sessions; with neither possible (a first join, a session whose
        // predecessor the server forgot), there is nothing to read.
        let children = if self.unsure || !self.stale.is_empty() {
            match client.list_children(&path).await {
                Ok(c) => c,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        // Adopt the first of ours; delete any other (two abandoned creates in a row): a
        // second node of ours would stand in the queue with nobody acting for it.
        let mut adopted: Option<OwnNode> = None;
        for name in &children {
            let full = format!("{path}/{name}");
            if name.starts_with(&prefix) {
                if let Some(st) = client.check_stat(&full).await? {
                    if st.ephemeral_owner == session && adopted.is_none() {
                        info!(node = %name, "adopting our node created before a connection loss");
                        adopted = Some(OwnNode::new(full, name.len()));
                    } else if st.ephemeral_owner == session {
                        info!(node = %name, "deleting a second node of ours");
                        match client.write(|c| c.delete(&full, None)).await {
                            Ok(()) | Err(zk::Error::NoNode) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            } else if self
                .stale
                .iter()
                .any(|u| name.starts_with(&protected_prefix(&u.to_string())))
            {
                info!(node = %name, "deleting a node left by an earlier session of ours");
                match client.write(|c| c.delete(&full, None)).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => debug!(node = %name, %e, "could not delete stale node"),
                }
            }
        }
        // Every node of ours is known now, and leftovers of earlier sessions are deleted
        // (none can appear later: nobody creates under their uuids any more; a node an old
        // session still holds goes when the server ends that session).
        self.unsure = false;
        self.stale.clear();
        if let Some(n) = adopted {
            self.set_node(n.clone());
            return Ok(n);
        }
        let data = self.inner.cfg.id.as_bytes().to_vec();
        let acl = acls(&self.inner.cfg);
        let node_opts = zk::CreateMode::EphemeralSequential.with_acls(acl);
        let dir_opts = zk::CreateMode::Container.with_acls(acl);
        let base = format!("{path}/{prefix}{}", names::LOCK_NAME);
        let mut tries = 0;
        loop {
            tries += 1;
            // Until its answer, a node of ours may exist that we do not know of (a create
            // that fails without a definite answer, or whose round is abandoned, may have
            // been made): the next attempt looks for it first.
            self.unsure = true;
            match client.write(|c| c.create(&base, &data, &node_opts)).await {
                Ok((stat, seq)) => {
                    self.unsure = false;
                    let name = format!("{prefix}{}{seq}", names::LOCK_NAME);
                    if stat.ephemeral_owner != 0 && stat.ephemeral_owner != session {
                        warn!(node = %name, "created node reports another owner");
                    }
                    debug!(node = %name, "created our latch node");
                    let n = OwnNode::new(format!("{path}/{name}"), name.len());
                    self.set_node(n.clone());
                    return Ok(n);
                }
                Err(zk::Error::NoNode) if tries < 6 => {
                    self.unsure = false;
                    // Parents missing (never created, deleted, or a container reaped
                    // between mkdir and create): recreate them and retry.
                    info!(%path, "latch path missing; creating it");
                    if self.been_in_latch {
                        // Not the first creation: the path was there and is gone.
                        self.inner
                            .cell
                            .metrics()
                            .count(metrics::REPAIRS, &[("cause", "path_missing")]);
                    }
                    match client.write(|c| c.mkdir(&path, &dir_opts)).await {
                        Ok(()) | Err(zk::Error::NodeExists) => {}
                        Err(zk::Error::NoNode) if self.inner.cfg.chroot.is_some() => {
                            Box::pin(self.create_chroot()).await?;
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
        let chroot = self.inner.cfg.chroot.clone().unwrap_or_default();
        info!(%chroot, "chroot missing; creating it");
        let mut cfg = self.inner.cfg.clone();
        cfg.chroot = None;
        let outside = connect(&cfg).await.map_err(|_| zk::Error::ConnectionLoss)?;
        let opts = zk::CreateMode::Persistent.with_acls(acls(&self.inner.cfg));
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
    async fn round(&mut self, client: &SessionClient) -> std::result::Result<Next, zk::Error> {
        // Rarely-used large futures are boxed (allocated only while they run), so that the
        // round's future stays small while it waits: memory per election matters.
        let node = Box::pin(self.ensure_node(client)).await?;
        let path = self.inner.cfg.path.clone();
        let first_next = self.vacated.is_some() && self.own_watch.is_some();
        // Register the own-node watch (a node just created or adopted) and read the queue
        // in one round trip: both requests go out before either answer is awaited.
        let need_watch = self.own_watch.is_none();
        let (watched, listed) = Box::pin(async {
            tokio::join!(
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
            )
        })
        .await;
        if let Some(watched) = watched {
            match watched? {
                (Some(_), w) => self.own_watch = Some(Box::pin(w.changed())),
                (None, _) => {
                    debug!("our node vanished after its creation; repairing");
                    self.node_lost();
                    return Ok(Next::Again);
                }
            }
        }
        let leading = self.inner.cell.get().role.is_leader();
        let standing = match listed {
            // Our predecessor left and the nodes ahead may be asserted gone: first, unless
            // the claim's assertion fails.
            None if leading => Standing::StillLeading,
            None => Standing::Claim,
            Some(Ok(c)) => standing(&names::sorted(c), node.name(), leading, self.assert_ahead),
            Some(Err(zk::Error::NoNode)) => return Ok(Next::Again),
            Some(Err(e)) => return Err(e),
        };
        let (pred, leader, ahead, claim_next) = match standing {
            Standing::Lost => {
                debug!("our node is not among the children; repairing");
                self.node_lost();
                return Ok(Next::Again);
            }
            Standing::StillLeading => {
                // Still first and never suspended since the claim (a suspension demotes, or
                // under ConnectionPolicy::Session our node provably survived): the same
                // grant continues.
                self.inner
                    .cell
                    .set_health(HealthLevel::Healthy, reason!("first in the latch"));
                return Ok(Next::Wait(None));
            }
            Standing::Follow {
                pred,
                leader,
                ahead,
                claim_next,
            } => (pred, leader, ahead, claim_next),
            Standing::Claim => return Box::pin(self.claim(client, &node, first_next)).await,
        };
        self.vacated = None;
        self.ahead = ahead;
        let pred_path = format!("{path}/{pred}");
        let leader_path = leader.map(|l| format!("{path}/{l}"));
        // Watch the predecessor and read the leader's id in one round trip.
        let (pred_read, leader_read) = Box::pin(async {
            tokio::join!(client.get_and_watch_data(&pred_path), async {
                match &leader_path {
                    None => None,
                    Some(p) => Some(client.get_data(p).await),
                }
            })
        })
        .await;
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
        let reason = if self.inner.cell.get().role.is_leader() {
            reason!("lost first place in the latch")
        } else {
            reason!("waiting for predecessor")
        };
        self.inner
            .cell
            .set(Role::Follower { leader }, HealthLevel::Healthy, reason);
        Ok(Next::Wait(Some((
            Box::pin(pred_watch.changed()),
            claim_next,
        ))))
    }

    /// Claim: atomically check that our node `node` still exists and write the latch path,
    /// whose new mzxid is the term's sequence; its data names the claiming node, so a reader
    /// can tell a first node that has claimed from one that has not yet. `first_next`: we
    /// claim on our predecessor's deletion without reading the queue, asserting that the
    /// nodes ahead of it are gone.
    async fn claim(
        &mut self,
        client: &SessionClient,
        node: &OwnNode,
        first_next: bool,
    ) -> std::result::Result<Next, zk::Error> {
        let path = self.inner.cfg.path.clone();
        let mut w = client.new_multi_writer();
        w.add_check_version(&node.path, -1)?;
        // Cloned, not taken: a claim that fails (a lost connection, an error) is made again
        // with the same assertion until a claim succeeds or the queue is read again; an
        // empty assertion would claim while a node ahead still stands (found by the
        // simulation: two leaders).
        let ahead = if first_next {
            self.ahead.clone()
        } else {
            Vec::new()
        };
        if !ahead.is_empty() {
            let gone = zk::CreateMode::Persistent.with_acls(acls(&self.inner.cfg));
            for name in &ahead {
                let p = format!("{path}/{name}");
                w.add_create(&p, &[], &gone)?;
                w.add_delete(&p, None)?;
            }
        }
        w.add_set_data(&path, node.name().as_bytes(), None)?;
        // The claim is an answered request: contact as of its send instant, so a grant is
        // published with a fresh takeover bound (not one left from before a reconnect).
        let sent = std::time::Instant::now();
        let stat = match Box::pin(client.write(|_| w.commit())).await {
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
        self.core.touch(sent);
        self.ahead.clear();
        let term = Term::new(stat.ctime.max(0) as u64, stat.mzxid.max(0) as u64);
        if !self.inner.cell.get().role.is_leader() {
            info!(%term, "elected");
        }
        let reason = if first_next {
            reason!("the leader before us left")
        } else {
            reason!("first in the latch")
        };
        // Recorded before publishing, so whoever sees `Leader` also sees the sample.
        if let Some(vacated) = self.vacated.take() {
            self.inner.cell.metrics().handover(vacated.into_std());
        }
        // Published only while the session we claimed on is current and connected,
        // atomically with the session task's demotions (see `Core::publish_leader`).
        let cell = &self.inner.cell;
        let published = self.core.publish_leader(self.generation, || {
            cell.set(Role::Leader { term }, HealthLevel::Healthy, reason);
        });
        if !published {
            debug!("the session changed during our claim; not publishing it");
            return Ok(Next::Again);
        }
        Ok(Next::Wait(None))
    }

    /// Wait for whatever can change our position: the predecessor or our own node changing,
    /// the session's view changing, or a command. `pred` is the predecessor's watch and
    /// whether its deletion makes us claim at once (see [`round`](Self::round)). No timer:
    /// the session task probes for contact and reports losses.
    async fn wait(&mut self, pred: Option<(OwnWatch, bool)>) -> Next {
        let claim_next = pred.as_ref().is_some_and(|(_, claim)| *claim);
        let pred_changed = async move {
            match pred {
                Some((w, _)) => w.await,
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
        let (generation, epoch) = (self.generation, self.epoch);
        self.phase(PHASE_WAIT);
        let next = loop {
            break tokio::select! {
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
                    self.inner.cell.set(Role::Candidate, HealthLevel::Degraded, "our latch node was deleted; repairing");
                    self.inner.cell.metrics().count(metrics::REPAIRS, &[("cause", "node_deleted")]);
                    self.forget_node();
                }
                Next::Again
            }
            r = self.view.changed() => {
                if r.is_err() {
                    Next::Exit
                } else {
                    let v = self.view.borrow();
                    if v.generation == generation && v.epoch == epoch && v.state == Conn::Connected {
                        continue;
                    }
                    debug!(state = ?v.state, "session changed");
                    Next::Again
                }
            }
            cmd = self.inner.cmds.recv() => match cmd {
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

    async fn command(&mut self, cmd: Cmd) -> Next {
        self.phase(PHASE_COMMAND);
        match cmd {
            Cmd::Join => {
                self.want = true;
                Next::Again
            }
            Cmd::Resign(ack) => {
                self.want = false;
                if self.inner.cell.get().role.is_leader() {
                    info!("resigning leadership");
                }
                // Stop leading BEFORE deleting the node.
                self.inner
                    .cell
                    .set(Role::Idle, HealthLevel::Healthy, "resigned");
                let r = self.delete_node().await;
                let _ = ack.send(r);
                Next::Again
            }
            Cmd::Close(ack) => {
                self.want = false;
                self.inner.cell.close("closed");
                let r = self.delete_node().await;
                let _ = ack.send(r);
                Next::Exit
            }
        }
    }

    /// Delete our node (and, after an abandoned round, any node of ours we may not know
    /// of): retried until done or the session that owns it is gone.
    async fn delete_node(&mut self) -> Result<()> {
        let unsure = std::mem::take(&mut self.unsure);
        let Some(mut client) = self.client() else {
            self.forget_node();
            return Ok(());
        };
        let known = self
            .forget_node()
            .filter(|n| lock(&self.inner.deleted).as_deref() != Some(&*n.path));
        if known.is_none() && !unsure {
            return Ok(());
        }
        let what = known
            .as_ref()
            .map_or_else(|| "nodes".to_owned(), |n| n.path.to_string());
        let prefix = unsure.then(|| protected_prefix(&self.uuid.to_string()));
        let path = self.inner.cfg.path.clone();
        let deadline = Instant::now() + self.session_timeout.mul_f64(1.5);
        let mut pause = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = delete_ours(&client, known.as_ref(), &path, prefix.as_deref());
            match timeout(left, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if session_gone(&e) => return Ok(()),
                Ok(Err(e)) if permanent(&e) => {
                    // Our node may still stand: a later join on this session adopts it.
                    self.unsure = true;
                    return Err(map(e, &format!("delete our latch node {what}")));
                }
                Ok(Err(e)) => {
                    debug!(%e, "delete failed; retrying");
                }
                Err(_) => {
                    self.unsure = true;
                    return Err(Error::timeout(format!(
                        "could not delete our latch node {what} within 1.5 x the session timeout; ZooKeeper will remove it when the session expires"
                    )));
                }
            }
            if Instant::now() >= deadline {
                self.unsure = true;
                return Err(Error::timeout(format!(
                    "could not delete our latch node {what}; ZooKeeper will remove it when the session expires"
                )));
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            // The session's client may have changed meanwhile (resumed by a new one).
            match self.client() {
                Some(c) => client = c,
                None => return Ok(()),
            }
        }
    }
}

/// Delete `known` (our node, if any) and, with `prefix` (our protected-name prefix), every
/// node of `path` whose name starts with it: nodes of ours whose create answer we never
/// saw. Idempotent, so a failed attempt is simply made again.
async fn delete_ours(
    client: &SessionClient,
    known: Option<&OwnNode>,
    path: &str,
    prefix: Option<&str>,
) -> std::result::Result<(), zk::Error> {
    let mut targets: Vec<String> = known.iter().map(|n| n.path.to_string()).collect();
    if let Some(prefix) = prefix {
        let children = match client.list_children(path).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e),
        };
        for name in children.iter().filter(|n| n.starts_with(prefix)) {
            let full = format!("{path}/{name}");
            if !targets.contains(&full) {
                debug!(node = %name, "deleting a node of ours created by an abandoned round");
                targets.push(full);
            }
        }
    }
    for t in &targets {
        match client.write(|c| c.delete(t, None)).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision half is `standing` (unit-tested in `standing.rs`: a node missing from
    /// the queue is `Lost` even for a leader); this is the other half: `Lost` steps a leader
    /// down and forgets the node BEFORE the repair, so the next round's new node, if first,
    /// claims afresh instead of carrying the old grant over.
    #[tokio::test]
    async fn a_leader_whose_node_left_the_queue_steps_down_before_the_repair() {
        let cfg = ZkConfig::builder("127.0.0.1:1", "/t/latch", "p")
            .build()
            .expect("valid config");
        let e = ZkElection::new(cfg).expect("no I/O yet");
        let mut d = DriverState::new(e.core().clone(), e.inner.clone());
        let name = "_c_u-latch-0000000003";
        d.set_node(OwnNode::new(format!("/t/latch/{name}"), name.len()));
        e.inner.cell.set(
            Role::Leader {
                term: Term::new(1, 5),
            },
            HealthLevel::Healthy,
            "claimed",
        );
        let queue = names::sorted(vec!["_c_v-latch-0000000004".to_string()]);
        assert_eq!(standing(&queue, name, true, true), Standing::Lost);
        d.node_lost();
        assert_eq!(e.inner.cell.get().role, Role::Candidate);
        assert!(d.node.is_none() && !e.inner.has_node());
    }

    #[tokio::test]
    async fn a_round_is_cut_by_resign_or_close_but_never_by_a_repeated_join() {
        let cmds = Commands::default();
        for _ in 0..3 {
            assert!(cmds.send(Cmd::Join).is_ok());
        }
        let (ack, _done) = oneshot::channel();
        assert!(cmds.send(Cmd::Resign(ack)).is_ok());
        assert!(matches!(cmds.recv_stop().await, Some(Cmd::Resign(_))));
        // Joins alone never end the wait; closing the queue does.
        assert!(cmds.send(Cmd::Join).is_ok());
        assert!(
            cmds.recv_stop().now_or_never().is_none(),
            "a join does not cut a round short"
        );
        let (ack, _done) = oneshot::channel();
        assert!(cmds.send(Cmd::Close(ack)).is_ok());
        cmds.close();
        assert!(matches!(cmds.recv_stop().await, Some(Cmd::Close(_))));
        assert!(cmds.recv_stop().await.is_none());
    }
}
