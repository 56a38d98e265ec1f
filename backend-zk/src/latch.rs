//! [`ZkElection`]: the latch participant, and the lean per-election driver that keeps it in
//! the election whatever happens to its node or the latch path. The session (connection,
//! contact probe, loss detection, session replacement) is [`crate::session`]'s.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use futures::StreamExt;
use rand::Rng;
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::participant::{self, Fatal, Machine};
use succession_core::text::Human;
use succession_core::{
    Contact, Election, Error, HealthLevel, Participant, Result, Role, Status, StatusCell, Term,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn, Instrument};
use zookeeper_client as zk;

use crate::config::{NodeAcl, ZkConfig};
use crate::error::{map, permanent, session_gone};
use crate::machine::ops::{Answer, NodeStat, Op, ReqId, WatchEvent, ZkErr};
use crate::machine::{Activity, Command, Effect, Input, LatchMachine, SessionInput};
use crate::names;
use crate::session::{self, Conn, Core, SessionClient, View, ZkSession, CLOSE_LINGER};

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
    /// What the driver is doing (an [`Activity`] as `u8`), for the warning when it does
    /// not acknowledge a close in time.
    phase: std::sync::atomic::AtomicU8,
}

/// An [`Activity`] as stored in [`Inner::phase`].
fn phase_name(phase: u8) -> &'static str {
    [
        Activity::Idle,
        Activity::Pacing,
        Activity::Round,
        Activity::Waiting,
        Activity::Pausing,
        Activity::Session,
        Activity::Deleting,
        Activity::Exited,
    ]
    .into_iter()
    .find(|a| *a as u8 == phase)
    .map_or("unknown", Activity::describe)
}

impl Inner {
    /// Wake this election's driver (the session's view changed).
    pub(crate) fn wake_driver(&self) {
        self.cmds.wake();
    }

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
/// of 32 slots and cache-padded state per channel); memory per election matters. Its
/// waker is the driver's: a command, a change of the session's view (the session wakes
/// every registered election, see [`Commands::wake`]) and `close` wake the driver.
#[derive(Default)]
struct Commands {
    queue: Mutex<VecDeque<Cmd>>,
    waker: AtomicWaker,
    /// No more commands (closing): `recv` returns None once the queue is drained.
    closed: AtomicBool,
}

impl Commands {
    fn send(&self, cmd: Cmd) -> std::result::Result<(), Cmd> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(cmd);
        }
        lock(&self.queue).push_back(cmd);
        self.waker.wake();
        Ok(())
    }

    /// The next command; `Ready(None)` once closed and drained. The caller's waker is
    /// registered first, so a command sent after the check wakes it.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Cmd>> {
        self.waker.register(cx.waker());
        let mut q = lock(&self.queue);
        if let Some(cmd) = q.pop_front() {
            if q.is_empty() {
                // Commands are rare: keep no buffer while idle.
                *q = VecDeque::new();
            }
            return Poll::Ready(Some(cmd));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Wake the driver (the session's view changed).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waker.wake();
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

    /// Join without waiting, like Curator's `LeaderLatch.start()`: the participant starts
    /// taking part in the background and this returns at once. What
    /// [`join`](Election::join) would wait for shows on the [`status`](Election::status)
    /// stream instead: the role becomes `Candidate` now, then `Follower` or `Leader` once
    /// our node is in place; a permanent refusal (say `NoAuth` on the path) leaves it
    /// `Idle` and unhealthy, its reason naming the refusal, where `join` would have
    /// returned that error. Calling it again, or `join`, while taking part changes nothing.
    ///
    /// This is the form for many elections on one [`ZkSession`]: starting 10,000 of them
    /// holds no future per election while they join (the session paces their first
    /// rounds), which keeps the process's resident memory down to the elections' own.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`](succession_core::ErrorKind) once the participant (or its
    /// session) is closed.
    pub fn start(&self) -> Result<()> {
        self.sender()?;
        if self.inner.cell.role() == Role::Idle {
            self.inner
                .cell
                .set_role(Role::Candidate, reason!("joining"));
        }
        self.inner
            .cmds
            .send(Cmd::Join)
            .map_err(|_| self.inner.closed_error())
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
        let state = DriverState::new(core.clone(), self.inner.clone());
        let span = tracing::info_span!(parent: core.span(), "zk_latch", id = %self.inner.cfg.id, path = %self.inner.cfg.path);
        let task = tokio::spawn(state.instrument(span));
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
        self.start()?;
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

/// A request in flight: its id, its answer, and the watch it registered (if any).
type Pending = Pin<Box<dyn Future<Output = (ReqId, AnswerOf, Option<OwnWatch>)> + Send>>;

/// An answer as the machine takes it.
type AnswerOf = std::result::Result<Answer, ZkErr>;

/// What the executor last told the machine of the session.
#[derive(Clone, PartialEq, Eq)]
enum Told {
    Connected(u64, u64),
    Doubt,
    Lost,
    Fatal,
    Closed,
}

/// One election's executor: the [`LatchMachine`] decides, this carries out its effects on
/// the session's client and feeds it what happens (answers, watch events, the session's
/// view, commands, its timer). Lean while idle: no timer, no request state; the session
/// task does the connection, the contact probe and loss detection for all elections.
struct DriverState {
    core: Arc<Core>,
    inner: Arc<Inner>,
    /// The session's view (generation, client, state).
    view: watch::Receiver<View>,
    m: LatchMachine,
    told: Option<Told>,
    /// The client of the session generation the machine takes part in.
    client: Option<SessionClient>,
    /// Requests in flight (allocated only while there are some).
    inflight: Option<FuturesUnordered<Pending>>,
    /// One-shot watches the machine still waits on (own node, predecessor).
    watches: Vec<(ReqId, OwnWatch)>,
    /// Our slot among the session's rounds in flight (see `ROUNDS_IN_FLIGHT`).
    slot: participant::RoundSlot,
    /// Acknowledgements of resigns and closes, in the order they were sent.
    acks: Vec<(Command, oneshot::Sender<Result<()>>)>,
    /// The machine's timer, only while it has a deadline.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The input being fed is the session's doubt or loss (it demoted us already).
    demoted: bool,
    exit: bool,
}

/// The driver is its task's future itself (no async frames beside its state: memory per
/// election matters). It ends when the machine exits or the handle is gone.
impl Future for DriverState {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let r = this.step(cx);
        if r.is_ready() {
            *lock(&this.inner.node) = None;
        }
        r
    }
}

/// Inputs one poll of a driver feeds its machine at most before it yields to the
/// runtime's other tasks (thousands of elections share a session's runtime).
const INPUTS_PER_POLL: usize = 32;

impl Drop for DriverState {
    fn drop(&mut self) {
        self.slot.release(&self.core.rounds);
        // `inner.node` is left as it is: a handle dropped on a shared session aborts this
        // task and then deletes that node itself.
    }
}

impl DriverState {
    /// A driver for `inner` on the session `core`, not yet participating.
    fn new(core: Arc<Core>, inner: Arc<Inner>) -> DriverState {
        let view = core.subscribe();
        let m = LatchMachine::new(&inner.cfg.path, &inner.cfg.id, rand::thread_rng().gen());
        DriverState {
            core,
            inner,
            view,
            m,
            told: None,
            client: None,
            inflight: None,
            watches: Vec::new(),
            slot: participant::RoundSlot::default(),
            acks: Vec::new(),
            sleep: None,
            demoted: false,
            exit: false,
        }
    }

    /// One step of the driver: feed the machine whatever is ready, up to a budget (so that
    /// thousands of elections on a runtime take turns).
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // The first poll: the session's view as it is (`session_input` always records
        // what it told).
        if self.told.is_none() {
            if let Some(s) = self.session_input() {
                self.feed(Input::Session(s));
            }
        }
        for _ in 0..INPUTS_PER_POLL {
            if self.exit {
                return Poll::Ready(());
            }
            self.phase();
            match self.poll_input(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(()),
                // close() is under way (it deleted our node itself, and sends Close next):
                // what happens meanwhile, our node's deletion included, is no reason to
                // repair anything.
                Poll::Ready(Some(input))
                    if self.inner.closed.load(Ordering::SeqCst)
                        && !matches!(input, Input::Command(_)) => {}
                Poll::Ready(Some(input)) => self.feed(input),
            }
        }
        if self.exit {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Record what the machine is doing (see [`Inner::phase`]).
    fn phase(&self) {
        self.inner
            .phase
            .store(self.m.activity() as u8, Ordering::Relaxed);
    }

    /// What the session's view says, if it changed for the machine.
    fn session_input(&mut self) -> Option<SessionInput> {
        let v = self.view.borrow_and_update().clone();
        let (told, input) = match (v.state, &v.client) {
            (Conn::Connected, Some(c)) => {
                let input = SessionInput::Connected {
                    generation: v.generation,
                    epoch: v.epoch,
                    session_id: c.session_id().0,
                    timeout: c.session_timeout(),
                    prev_gone: v.prev_gone,
                };
                (Told::Connected(v.generation, v.epoch), input)
            }
            (Conn::Connected | Conn::Connecting, _) => (Told::Lost, SessionInput::Lost),
            (Conn::Suspended, _) => (Told::Doubt, SessionInput::Doubt { leaders_too: true }),
            (Conn::Fatal(kind, msg), _) => {
                (Told::Fatal, SessionInput::Fatal(kind, msg.to_string()))
            }
            (Conn::Closed, _) => (Told::Closed, SessionInput::Closed),
        };
        // Requests go to the session's current client (a resumed session has a new one);
        // `send` checks that it is still of the machine's session.
        if v.client.is_some() || v.generation != self.m.generation() {
            self.client = v.client;
        }
        if self.told.as_ref() == Some(&told) {
            return None;
        }
        self.told = Some(told);
        Some(input)
    }

    /// The next input, if one is ready: a command first, then the session, answers,
    /// watches, the machine's timer, a round slot. `Ready(None)`: the handle is gone.
    /// Every source wakes the driver's task: commands and the session's view through
    /// [`Commands`]' waker (registered first), the rest through their own futures.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<Input>> {
        // Commands, then the view: both wake the waker `poll_recv` registers.
        match self.inner.cmds.poll_recv(cx) {
            Poll::Ready(cmd) => return Poll::Ready(cmd.map(|c| self.command(c))),
            // close() is under way: it deletes our node itself and then sends Close.
            // Never repair (re-create the node) meanwhile; just wait for that command.
            Poll::Pending if self.inner.closed.load(Ordering::SeqCst) => return Poll::Pending,
            Poll::Pending => {}
        }
        match self.view.has_changed() {
            Err(_) => return Poll::Ready(None),
            Ok(true) => {
                if let Some(s) = self.session_input() {
                    return Poll::Ready(Some(Input::Session(s)));
                }
            }
            Ok(false) => {}
        }
        if let Some(f) = self.inflight.as_mut().filter(|f| !f.is_empty()) {
            if let Poll::Ready(Some((id, answer, watch))) = f.poll_next_unpin(cx) {
                if let Some(w) = watch {
                    self.watches.push((id, w));
                }
                if self.inflight.as_ref().is_some_and(|f| f.is_empty()) {
                    // Nothing in flight: keep no buffer while idle.
                    self.inflight = None;
                }
                return Poll::Ready(Some(Input::Answer(id, answer)));
            }
        }
        for i in 0..self.watches.len() {
            if let Poll::Ready(ev) = self.watches[i].1.as_mut().poll(cx) {
                let (id, _) = self.watches.remove(i);
                let ev = if ev.event_type == zk::EventType::NodeDeleted {
                    WatchEvent::Deleted
                } else {
                    WatchEvent::Changed
                };
                return Poll::Ready(Some(Input::Watch(id, ev)));
            }
        }
        // The machine's timer: a sleep exists only while the machine has a deadline.
        match self.m.next_deadline().map(Instant::from_std) {
            None => self.sleep = None,
            Some(d) => {
                let sleep = match &mut self.sleep {
                    Some(s) => {
                        if s.deadline() != d {
                            s.as_mut().reset(d);
                        }
                        s
                    }
                    none => none.insert(Box::pin(sleep_until(d))),
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    self.sleep = None;
                    return Poll::Ready(Some(Input::Timer));
                }
            }
        }
        if self.slot.poll_wait(&self.core.rounds, cx).is_ready() {
            return Poll::Ready(Some(Input::Paced));
        }
        Poll::Pending
    }

    /// A command as the machine's input (resigns and closes are acknowledged on
    /// [`Effect::Done`]).
    fn command(&mut self, cmd: Cmd) -> Input {
        let cmd = match cmd {
            Cmd::Join => Command::Join,
            Cmd::Resign(ack) => {
                if self.inner.cell.get().role.is_leader() {
                    info!("resigning leadership");
                }
                self.acks.push((Command::Resign, ack));
                Command::Resign
            }
            Cmd::Close(ack) => {
                self.acks.push((Command::Close, ack));
                Command::Close
            }
        };
        Input::Command(cmd)
    }

    /// Feed one input and carry out the machine's effects, in order (through the one
    /// runner, [`participant::feed`]).
    fn feed(&mut self, input: Input) {
        // The session demotes every election itself (at once, under its registry lock,
        // before it publishes the doubt): the machine's own account of that demotion is
        // already published.
        self.demoted = matches!(
            input,
            Input::Session(SessionInput::Doubt { .. } | SessionInput::Lost)
        );
        participant::feed(self, input);
        self.demoted = false;
        // A round's slot is held while the machine is in a round.
        self.slot.settle(self.m.in_round(), &self.core.rounds);
        let m = &self.m;
        self.watches.retain(|(id, _)| m.wants_watch(*id));
        let mut known = lock(&self.inner.node);
        if known.as_deref() != self.m.node() {
            *known = self.m.node_path();
        }
    }

    /// Send request `id` on the client of the machine's session.
    fn send(&mut self, id: ReqId, op: Op) {
        let client = self.client.clone().filter(|_| {
            let v = self.view.borrow();
            v.generation == self.m.generation()
        });
        let deleted = lock(&self.inner.deleted).clone();
        let fut: Pending = match (client, op) {
            (None, _) => Box::pin(async move { (id, Err(ZkErr::SessionExpired), None) }),
            // close() already deleted it.
            (Some(_), Op::Delete(p)) if deleted.as_deref() == Some(&*p) => {
                Box::pin(async move { (id, Ok(Answer::Done), None) })
            }
            (Some(c), op) => {
                let inner = self.inner.clone();
                let core = self.core.clone();
                Box::pin(async move {
                    let (answer, watch) = request(&c, &inner.cfg, &core, op).await;
                    (id, answer, watch)
                })
            }
        };
        self.inflight
            .get_or_insert_with(FuturesUnordered::new)
            .push(fut);
    }
}

impl participant::Executor for DriverState {
    type M = LatchMachine;

    fn machine(&mut self) -> &mut LatchMachine {
        &mut self.m
    }

    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    /// The session demotes elections itself: the machine decides on the role published.
    fn prepare(&mut self) {
        self.m.set_role(self.inner.cell.role());
    }

    fn execute(&mut self, e: Effect) -> Option<Input> {
        match e {
            Effect::Publish { .. } if self.demoted => {}
            Effect::Publish {
                role,
                health,
                reason,
            } => {
                let cell = &self.inner.cell;
                match role {
                    Some(Role::Closed) => cell.close(reason),
                    Some(role) => {
                        if role == Role::Idle && health == HealthLevel::Unhealthy {
                            warn!(%reason, "permanent failure; leaving the election");
                        }
                        cell.set(role, health, reason);
                    }
                    None => {
                        cell.set_health(health, reason);
                    }
                }
            }
            Effect::PublishLeader {
                generation,
                term,
                reason,
            } => {
                let cell = &self.inner.cell;
                let was = cell.get().role;
                // Published only while the session we claimed on is current and
                // connected, atomically with the session task's demotions.
                let published = self.core.publish_leader(generation, || {
                    cell.set(Role::Leader { term }, HealthLevel::Healthy, reason);
                });
                if !published {
                    debug!("the session changed during our claim; not publishing it");
                    return Some(Input::LeaderRefused);
                } else if !was.is_leader() {
                    info!(%term, "elected");
                }
            }
            Effect::Pace => {
                // Held now, or the next input is ours once one is free.
                if self.slot.ask(&self.core.rounds) {
                    return Some(Input::Paced);
                }
            }
            Effect::Request { id, op } => self.send(id, op),
            Effect::Fatal(kind, msg) => {
                if let Some(f) = lock(&self.inner.fatal).as_ref() {
                    f.report(kind, msg);
                }
            }
            Effect::Done(cmd, r) => {
                let i = self.acks.iter().position(|(c, _)| *c == cmd);
                if let Some((_, ack)) = i.map(|i| self.acks.remove(i)) {
                    let _ = ack.send(r.map_err(|(kind, msg)| Error::new(kind, msg)));
                }
            }
            Effect::Repair(cause) => {
                info!(%cause, "repairing our place in the latch");
                self.inner
                    .cell
                    .metrics()
                    .count(metrics::REPAIRS, &[("cause", cause)]);
            }
            Effect::Handover(at) => self.inner.cell.metrics().handover(at),
            Effect::Exit => self.exit = true,
        }
        None
    }
}

/// Carry out one request of the machine on `c`.
async fn request(
    c: &SessionClient,
    cfg: &ZkConfig,
    core: &Core,
    op: Op,
) -> (AnswerOf, Option<OwnWatch>) {
    let acl = acls(cfg);
    match op {
        Op::WatchNode(p) => match c.check_and_watch_stat(&p).await {
            Ok((stat, w)) => {
                let watch: Option<OwnWatch> =
                    stat.is_some().then(|| Box::pin(w.changed()) as OwnWatch);
                (Ok(Answer::Stat(stat.map(|s| node_stat(&s)))), watch)
            }
            Err(e) => (Err(zk_err(e)), None),
        },
        Op::Stat(p) => (
            c.check_stat(&p)
                .await
                .map(|s| Answer::Stat(s.map(|s| node_stat(&s))))
                .map_err(zk_err),
            None,
        ),
        Op::Children(p) => (
            c.list_children(&p)
                .await
                .map(Answer::Children)
                .map_err(zk_err),
            None,
        ),
        Op::CreateSeq { base, data } => {
            let opts = zk::CreateMode::EphemeralSequential.with_acls(acl);
            let r = c.write(|z| z.create(&base, &data, &opts)).await;
            (
                r.map(|(stat, seq)| Answer::Created {
                    seq: seq.to_string(),
                    stat: node_stat(&stat),
                })
                .map_err(zk_err),
                None,
            )
        }
        Op::Mkdir(p) => {
            let opts = zk::CreateMode::Container.with_acls(acl);
            let mut r = c.write(|z| z.mkdir(&p, &opts)).await;
            if matches!(r, Err(zk::Error::NoNode)) && cfg.chroot.is_some() {
                r = match create_chroot(cfg).await {
                    Ok(()) => c.write(|z| z.mkdir(&p, &opts)).await,
                    Err(e) => Err(e),
                };
            }
            (r.map(|()| Answer::Done).map_err(zk_err), None)
        }
        Op::WatchData(p) => match c.get_and_watch_data(&p).await {
            Ok((data, _, w)) => (Ok(Answer::Data(data)), Some(Box::pin(w.changed()))),
            Err(e) => (Err(zk_err(e)), None),
        },
        Op::GetData(p) => (
            c.get_data(&p)
                .await
                .map(|(d, _)| Answer::Data(d))
                .map_err(zk_err),
            None,
        ),
        Op::Claim {
            node,
            ahead,
            path,
            data,
        } => (claim(c, cfg, core, &node, &ahead, &path, &data).await, None),
        Op::Delete(p) => (
            c.write(|z| z.delete(&p, None))
                .await
                .map(|()| Answer::Done)
                .map_err(zk_err),
            None,
        ),
    }
}

/// The claim (see [`Op::Claim`]): one multi; its answer is the latch path's new stat.
async fn claim(
    c: &SessionClient,
    cfg: &ZkConfig,
    core: &Core,
    node: &str,
    ahead: &[String],
    path: &str,
    data: &[u8],
) -> AnswerOf {
    let mut w = c.new_multi_writer();
    let gone = zk::CreateMode::Persistent.with_acls(acls(cfg));
    let built = (|| {
        w.add_check_version(node, -1)?;
        for name in ahead {
            let p = format!("{path}/{name}");
            w.add_create(&p, &[], &gone)?;
            w.add_delete(&p, None)?;
        }
        w.add_set_data(path, data, None)
    })();
    if let Err(e) = built {
        return Err(zk_err(e));
    }
    // The claim is an answered request: contact as of its send instant, so a grant is
    // published with a fresh takeover bound (not one left from before a reconnect).
    let sent = std::time::Instant::now();
    match c.write(|_| w.commit()).await {
        Ok(mut results) => match results.pop() {
            Some(zk::MultiWriteResult::SetData { stat }) => {
                core.touch(sent);
                Ok(Answer::Claimed(node_stat(&stat)))
            }
            _ => Err(ZkErr::Other("claim returned no stat".into())),
        },
        Err(zk::MultiWriteError::OperationFailed { index, source }) => Err(ZkErr::Multi {
            index,
            error: Box::new(zk_err(source)),
        }),
        Err(zk::MultiWriteError::RequestFailed { source }) => Err(zk_err(source)),
    }
}

/// Create the chroot node (persistent) with a client outside the chroot.
async fn create_chroot(cfg: &ZkConfig) -> std::result::Result<(), zk::Error> {
    let chroot = cfg.chroot.clone().unwrap_or_default();
    info!(%chroot, "chroot missing; creating it");
    let mut outside = cfg.clone();
    outside.chroot = None;
    let client = connect(&outside)
        .await
        .map_err(|_| zk::Error::ConnectionLoss)?;
    let opts = zk::CreateMode::Persistent.with_acls(acls(cfg));
    match client.mkdir(&chroot, &opts).await {
        Ok(()) | Err(zk::Error::NodeExists) => Ok(()),
        Err(e) => Err(e),
    }
}

fn node_stat(s: &zk::Stat) -> NodeStat {
    NodeStat {
        ephemeral_owner: s.ephemeral_owner,
        ctime: s.ctime,
        mzxid: s.mzxid,
    }
}

/// A client error as the machine takes it.
fn zk_err(e: zk::Error) -> ZkErr {
    match e {
        zk::Error::NoNode => ZkErr::NoNode,
        zk::Error::NodeExists => ZkErr::NodeExists,
        zk::Error::ConnectionLoss => ZkErr::ConnectionLoss,
        e if session_gone(&e) => ZkErr::SessionExpired,
        e if permanent(&e) => {
            let err = map(e, "");
            let msg = err.message().trim_start_matches(": ").to_owned();
            ZkErr::Permanent(err.kind(), msg)
        }
        e => ZkErr::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_come_in_order_and_none_once_closed_and_drained() {
        let cmds = Commands::default();
        assert!(cmds.send(Cmd::Join).is_ok());
        let (ack, _done) = oneshot::channel();
        assert!(cmds.send(Cmd::Resign(ack)).is_ok());
        cmds.close();
        assert!(cmds.send(Cmd::Join).is_err(), "refused once closed");
        let recv = || futures::future::poll_fn(|cx| cmds.poll_recv(cx));
        assert!(matches!(recv().await, Some(Cmd::Join)));
        assert!(matches!(recv().await, Some(Cmd::Resign(_))));
        assert!(recv().await.is_none());
    }

    #[tokio::test]
    async fn a_command_sent_while_the_driver_waits_wakes_it() {
        let cmds = Arc::new(Commands::default());
        let waiting = tokio::spawn({
            let cmds = cmds.clone();
            async move { futures::future::poll_fn(|cx| cmds.poll_recv(cx)).await }
        });
        // Until it is sent, the receiver has nothing and stays pending.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(cmds.send(Cmd::Join).is_ok());
        let got = timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the command")
            .expect("task");
        assert!(matches!(got, Some(Cmd::Join)));
    }
}
