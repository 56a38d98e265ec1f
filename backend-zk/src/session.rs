//! [`ZkSession`]: one ZooKeeper session carrying any number of latch elections (like one
//! CuratorFramework carrying many LeaderLatches).
//!
//! One session task owns the `zk::Client`: it connects (hedged attempts), runs the contact
//! probe (`check_stat("/")` every T/6, one stream whatever the number of elections), detects
//! a lost connection, probes for a wiped or expired session, resumes a session ZooKeeper
//! still holds in a new client (not waiting for the old client's backoff) or replaces a lost
//! one, and turns AuthFailed into a fatal error of every election. It publishes what it knows as a [`View`]
//! (generation, client, state) on a watch channel the elections follow.
//!
//! Loss is signalled once per session: the session task demotes every registered election's
//! [`StatusCell`] itself, under the registry lock, BEFORE it publishes the view that reports
//! the loss (or the new session). An election publishes `Leader` only under the same lock
//! and only while the view it claimed under is still current and connected
//! ([`Core::publish_leader`]), so no election can lead on a session known to be in doubt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::text::Human;
use succession_core::{Error, ErrorKind, HealthLevel, Result, Role, StatusCell};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn, Instrument};
use zookeeper_client as zk;

use crate::config::{ConnectionPolicy, ZkSessionConfig};
use crate::error::map;
use crate::latch::{self, Inner, ZkElection};

/// Sessions created in this process (their metrics label, `session-<n>`).
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long to wait after a lost connection before the first probe session (zookeeper-client
/// retries at once and again after 100-200 ms: a short blip is left to it).
const FIRST_PROBE_AFTER: Duration = Duration::from_millis(250);
/// While no server answers: the gap between two probe sessions of a suspended session,
/// and the longest pause between two connection attempts of one without a session. Fixed,
/// not growing with the outage, so that a server that comes back (empty or with its data)
/// is found within this gap whatever the outage length. What it costs a down server: one
/// connection attempt per session per gap (10 per second; a refused TCP connect), plus
/// zookeeper-client's own reconnect attempts of the old session (100 ms, doubling).
const RETRY_WHILE_DOWN: Duration = Duration::from_millis(100);
/// Election rounds (each a few requests, no waits) in flight at once on one session. When
/// thousands of elections on a session act together (joining, rejoining after a wipe or an
/// expiry, a mass handover), the rest queue for a permit instead of each holding a round's
/// futures and buffers at once: the burst's memory high-water mark (which the allocator
/// keeps as RSS) stays that of this many rounds, and the server sees a steady pipeline
/// rather than every request of every election at once. One election alone never waits.
pub(crate) const ROUNDS_IN_FLIGHT: usize = 64;
/// How long after closing an election's node a private session is closed.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_millis(20);
/// How long [`end_session`] lets a dropped client's task wind down before it takes the
/// session over to close it.
const END_WAIT: Duration = Duration::from_millis(200);
/// How many times [`end_session`] takes a session to close it (each after the first also
/// checks that the previous close held).
const END_ATTEMPTS: u32 = 4;
/// After a resume (see [`suspended`]), the retired client's task still reconnects when its
/// backoff ends (it cannot be woken or stopped; it gives up at its own deadline, 1.4 x the
/// session timeout after its last receipt), which makes ZooKeeper drop the current
/// client's connection in favour of it; the retired client exits once connected (no handle
/// left), and the current one reconnects at once (taking the connection back, sometimes
/// before the retired one's answer, which then tries again after its next backoff). While
/// a retired client may do that, a disconnect of the current client that heals within
/// this window, with the same session, is such a handover and demotes nobody: the session
/// was never in doubt (every connect renewed its expiry). Any other disconnect is handled
/// as usual, at most this much later. 250 ms covers a reconnect that lost one handshake
/// to the other client (zookeeper-client then waits 100-200 ms); sessions shorter than
/// 2 s get 1/8 of their timeout (well inside the takeover bound, half of it after the
/// last contact, which the contact probe keeps at most 1/6 of it old).
const STEAL_WINDOW: Duration = Duration::from_millis(250);

/// [`STEAL_WINDOW`] for a session of `timeout`.
fn steal_window(timeout: Duration) -> Duration {
    STEAL_WINDOW.min(timeout / 8)
}
/// How long a contact probe may go unanswered, while the client claims a connection,
/// before the session is in doubt: the client's own silence detection (its connection
/// timeout, or 2/5 of the session timeout when that is unset or longer than 3/5 of it) plus
/// one probe interval, at most half the session timeout.
///
/// Normally the client notices first and reports `Disconnected`. It does not when a
/// reconnect dies between the connect response and the rest of the handshake:
/// zookeeper-client has already reported `SyncConnected`, and while every later connect is
/// refused it keeps reporting that, answering nothing, until its own deadline (1.4 x the
/// session timeout), long after the server expired the session and elected someone else.
fn probe_bound(connection_timeout: Duration, session_timeout: Duration) -> Duration {
    let silence = if connection_timeout.is_zero() || connection_timeout > session_timeout * 3 / 5 {
        session_timeout * 2 / 5
    } else {
        connection_timeout
    };
    (silence + probe_interval(session_timeout)).min(session_timeout / 2)
}

/// How often the contact probe runs on a connected session of `session_timeout`.
fn probe_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 6).max(Duration::from_millis(100))
}

/// Why and since when a session is suspended (see [`suspended`]).
#[derive(Clone, Copy, Debug)]
struct Doubt {
    /// From when the session counts as in doubt (the grace of
    /// [`ConnectionPolicy::Session`] and the unhealthy mark run from here).
    since: Instant,
    /// The client still claims a connection, but the contact probe went unanswered
    /// (see [`probe_bound`]): believe its state only once it changes.
    phantom: bool,
}

/// Connection attempts (or probe sessions) in flight at once, once a connection succeeded.
const MAX_ATTEMPTS: usize = 5;
/// The least time an attempt gets before it is abandoned (see [`hedging`]).
const MIN_ATTEMPT_BOUND: Duration = Duration::from_millis(250);

/// Many latch elections on one ZooKeeper session.
///
/// Create with [`ZkSession::new`] (no I/O), then [`election`](ZkSession::election) for each
/// latch path and participant id; the session connects when the first election joins. One
/// background task owns the session: one connection, one contact probe stream, one
/// wipe/expiry detection for all its elections. When the session is in doubt
/// (disconnected), expired or wiped, every election on it stops leading at once (per the
/// [`ConnectionPolicy`]); each rejoins when the session is back or replaced.
///
/// When many elections act at once (joining together, rejoining after a wipe or an expiry,
/// a mass handover), at most 64 of their rounds (a few requests each) are in flight on the
/// session; the others queue for their turn. That bounds the burst's memory and keeps the
/// server's pipeline steady; an election acting alone never waits.
///
/// Several participants on the same path from one session work (each has its own node).
/// Closing one election leaves the others untouched; [`close`](ZkSession::close) closes all
/// of them and then the session. Dropping the last handle (the `ZkSession` clones and every
/// election made from it) ends the session.
#[derive(Clone)]
pub struct ZkSession {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkSession")
            .field("connect", &self.core().cfg.connect)
            .field("session_id", &self.session_id())
            .field("elections", &self.elections())
            .finish()
    }
}

/// Owned by every `ZkSession` clone and every election: the last one gone ends the task.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let (Some(end), Ok(rt)) = (self.core.shutdown(), tokio::runtime::Handle::try_current()) {
            rt.spawn(end);
        }
    }
}

/// What elections know of their session.
#[derive(Clone)]
pub(crate) struct View {
    /// Increments with every new session (a replaced one too).
    pub(crate) generation: u64,
    /// Increments with every new client, including a client that resumed the same session
    /// (same generation, same nodes; watches registered on the previous client are gone).
    pub(crate) epoch: u64,
    pub(crate) client: Option<SessionClient>,
    pub(crate) state: Conn,
    /// Whether the session before this generation's is certainly gone from the server
    /// (expired, or forgotten by a wipe), and with it every node it held: an election that
    /// took part in it has no leftovers to look for. False when it was left alive (it is
    /// closed in the background) or is not known to be gone.
    pub(crate) prev_gone: bool,
}

/// The writes issued on one client and not answered yet.
///
/// A zookeeper-client `Client` queues requests made while it is disconnected and sends them
/// when it reconnects, even after every handle was dropped. A client that may still hold an
/// unsent write must therefore never be retired in favour of a second client of the same
/// session: its later reconnect would replay the write (a node created twice, a claim sent
/// late). Every write goes through [`SessionClient::write`], which counts it here.
#[derive(Default, Debug)]
pub(crate) struct Writes {
    open: std::sync::atomic::AtomicUsize,
    /// A write whose caller stopped waiting before the answer (a timeout, an abandoned
    /// round): it may still be queued in the client.
    abandoned: AtomicBool,
}

impl Writes {
    /// Whether a write issued on this client may still be sent by it later.
    pub(crate) fn pending(&self) -> bool {
        self.open.load(Ordering::SeqCst) > 0 || self.abandoned.load(Ordering::SeqCst)
    }
}

/// One write in flight (see [`Writes`]).
struct Issued {
    writes: Arc<Writes>,
    answered: bool,
}

impl Drop for Issued {
    fn drop(&mut self) {
        if self.answered {
            self.writes.open.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.writes.abandoned.store(true, Ordering::SeqCst);
        }
    }
}

/// The session's current client and the count of its unanswered writes. Reads go through
/// `Deref`; writes through [`write`](SessionClient::write).
#[derive(Clone)]
pub(crate) struct SessionClient {
    /// Shared: every election's driver holds a clone of its session's client (a
    /// zookeeper-client `Client` is over 100 bytes).
    zk: Arc<zk::Client>,
    writes: Arc<Writes>,
}

impl std::ops::Deref for SessionClient {
    type Target = zk::Client;
    fn deref(&self) -> &zk::Client {
        &self.zk
    }
}

impl SessionClient {
    fn new(zk: zk::Client) -> SessionClient {
        SessionClient {
            zk: Arc::new(zk),
            writes: Arc::default(),
        }
    }

    /// Make the write `op` on this client and await it, counting it while it is unanswered
    /// (zookeeper-client queues a request when the call is made, so it is counted from
    /// there). A disconnected client gets no write at all (ConnectionLoss at once): a write
    /// queued in it could only be sent by it later, which would keep it from being retired.
    pub(crate) fn write<'c, T, E, Fut>(
        &'c self,
        op: impl FnOnce(&'c zk::Client) -> Fut,
    ) -> impl Future<Output = std::result::Result<T, E>> + 'c
    where
        Fut: Future<Output = std::result::Result<T, E>> + 'c,
        E: From<zk::Error>,
    {
        let made = if self.zk.state() == zk::SessionState::Disconnected {
            None
        } else {
            self.writes.open.fetch_add(1, Ordering::SeqCst);
            let issued = Issued {
                writes: self.writes.clone(),
                answered: false,
            };
            Some((issued, op(&self.zk)))
        };
        async move {
            let Some((mut issued, fut)) = made else {
                return Err(E::from(zk::Error::ConnectionLoss));
            };
            let r = fut.await;
            issued.answered = true;
            r
        }
    }
}

/// The session's state as elections see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Conn {
    /// Not connected (not started, connecting, or the session was lost): wait.
    Connecting,
    /// Connected: take part.
    Connected,
    /// The connection is in doubt: wait (the session task demoted everyone per policy).
    Suspended,
    /// A permanent failure (credentials refused): every election leaves with it.
    Fatal(ErrorKind, Arc<str>),
    /// Closed for good.
    Closed,
}

/// A counter and its extra labels.
type Counter = (&'static str, &'static [(&'static str, &'static str)]);

const EXPIRED: Counter = (metrics::SESSION_EXPIRATIONS, &[]);
const REPLACED: Counter = (metrics::REPAIRS, &[("cause", "session_replaced")]);

/// The shared state of one session.
pub(crate) struct Core {
    pub(crate) cfg: ZkSessionConfig,
    view: watch::Sender<View>,
    registry: Mutex<HashMap<u64, Arc<Inner>>>,
    next_key: std::sync::atomic::AtomicU64,
    /// The session's contact (its probe stream and every answered claim); also given to
    /// every election's cell.
    contact: StatusCell,
    /// Whether any election was granted leadership under the current session.
    led: AtomicBool,
    closed: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Wakes a session that stopped on a fatal error (a new `join`).
    kick: Notify,
    /// A client for reads when the session has none.
    reader: Mutex<Option<zk::Client>>,
    /// Election rounds in flight at once on this session (see [`ROUNDS_IN_FLIGHT`]).
    pub(crate) rounds: Arc<tokio::sync::Semaphore>,
    metrics: ElectionMetrics,
    span: tracing::Span,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ZkSession {
    /// A session for `cfg` (already validated by [`ZkSessionConfig`]'s builder). No I/O
    /// happens until an election joins (or reads).
    pub fn new(cfg: ZkSessionConfig) -> Result<ZkSession> {
        let (view, _) = watch::channel(View {
            generation: 0,
            epoch: 0,
            client: None,
            state: Conn::Connecting,
            prev_gone: false,
        });
        // Numbered per process, like the etcd backend's sessions (two sessions to one
        // ensemble must not share a series).
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let metrics = ElectionMetrics::new("zk", format!("session-{n}"));
        let contact = StatusCell::new();
        contact.set_contact_bound(cfg.session_timeout / 2);
        let span = tracing::info_span!("zk_session", connect = %cfg.connect_string(), session = tracing::field::Empty);
        let core = Arc::new(Core {
            cfg,
            view,
            registry: Mutex::new(HashMap::new()),
            next_key: Default::default(),
            contact,
            led: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
            kick: Notify::new(),
            reader: Mutex::new(None),
            rounds: Arc::new(tokio::sync::Semaphore::new(ROUNDS_IN_FLIGHT)),
            metrics,
            span,
        });
        core.gauges();
        Ok(ZkSession {
            handle: Arc::new(Handle { core }),
        })
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }

    /// A participant in the latch at `path` with id `id` on this session (validated like
    /// [`ZkConfig`](crate::ZkConfig)). No I/O until it joins.
    pub fn election(&self, path: &str, id: &str) -> Result<ZkElection> {
        if self.core().closed.load(Ordering::SeqCst) {
            return Err(Error::closed("ZooKeeper session"));
        }
        let cfg = self.core().cfg.participant(path, id)?;
        Ok(ZkElection::on_session(self.clone(), cfg, false))
    }

    /// The number of open elections on this session.
    pub fn elections(&self) -> usize {
        lock(&self.core().registry).len()
    }

    /// The id of the current ZooKeeper session (None when not connected).
    pub fn session_id(&self) -> Option<i64> {
        self.core().client().map(|c| c.session_id().0)
    }

    /// The configuration.
    pub fn config(&self) -> &ZkSessionConfig {
        &self.core().cfg
    }

    /// Close every election on this session (each publishes `Closed` and deletes its node),
    /// then the ZooKeeper session. Later [`election`](Self::election) calls are refused.
    pub async fn close(&self) -> Result<()> {
        let core = self.core();
        core.closed.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Inner>> = lock(&core.registry).values().cloned().collect();
        let result = latch::close_all(core, &all).await;
        // The last node deletions must not compete with the session's teardown.
        sleep(CLOSE_LINGER).await;
        if let Some(end) = core.shutdown() {
            end.await;
        }
        result
    }
}

impl Core {
    /// Register an election (its cell is demoted with the others on loss).
    pub(crate) fn register(&self, inner: Arc<Inner>) {
        lock(&self.registry).insert(inner.key, inner);
        self.gauges();
    }

    pub(crate) fn new_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn deregister(&self, key: u64) {
        lock(&self.registry).remove(&key);
        self.gauges();
    }

    fn gauges(&self) {
        let n = lock(&self.registry).len();
        self.metrics
            .gauge(metrics::SESSION_ELECTIONS, &[], n as f64);
    }

    fn state_gauge(&self, state: &Conn) {
        let v = match state {
            Conn::Connected => 1.0,
            Conn::Suspended => 0.5,
            _ => 0.0,
        };
        self.metrics.gauge(metrics::SESSION_CONNECTED, &[], v);
    }

    /// Follow the session's view.
    pub(crate) fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// The current client, when it is not terminated.
    pub(crate) fn client(&self) -> Option<SessionClient> {
        self.view
            .borrow()
            .client
            .clone()
            .filter(|c| !c.state().is_terminated())
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Start the session task (a join needs it); wake it after a fatal error.
    pub(crate) fn start(self: &Arc<Self>) {
        let mut task = lock(&self.task);
        let running = task.as_ref().is_some_and(|t| !t.is_finished());
        if running {
            self.set_view_if(|v| {
                if matches!(v.state, Conn::Fatal(..)) {
                    v.state = Conn::Connecting;
                    true
                } else {
                    false
                }
            });
            self.kick.notify_one();
            return;
        }
        if self.closed.load(Ordering::SeqCst) && self.view.borrow().state == Conn::Closed {
            return;
        }
        self.set_view(|v| {
            if matches!(v.state, Conn::Fatal(..)) {
                v.state = Conn::Connecting;
            }
        });
        let core = Arc::downgrade(self);
        let span = self.span.clone();
        *task = Some(tokio::spawn(run(core).instrument(span)));
    }

    /// End the session: no client, no task. Our clients are detached (see [`connect_main`]):
    /// dropping them does not end the ZooKeeper session, so the returned future ends it
    /// (None when there was no client). [`Handle`]'s drop spawns it.
    pub(crate) fn shutdown(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let mut last = None;
        self.set_view(|v| {
            last = v.client.take();
            v.state = Conn::Closed;
        });
        *lock(&self.reader) = None;
        self.state_gauge(&Conn::Closed);
        last.map(|c| end_session(self.cfg.clone(), (*c.zk).clone()))
    }

    /// Record contact at `at` (the send instant of an answered request). Once per
    /// session, whatever the number of its elections: they all report the session's contact
    /// (see [`contact`](Self::contact)). Touching each election's own record instead made
    /// every answered claim cost O(elections): 71 % of a process's CPU while 10,000
    /// elections started.
    pub(crate) fn touch(&self, at: std::time::Instant) {
        self.contact.touch(at);
    }

    /// The session's contact: the send instant of the latest request the server answered
    /// on it, and how long a leader may go without more (half the session timeout). Every
    /// election of the session reports this one (their claims stand or fall with it).
    pub(crate) fn contact(&self) -> succession_core::Contact {
        self.contact.contact()
    }

    /// Publish `Leader` (through `publish`) only if the session view `generation` is still
    /// current and connected; atomically with the session task's demotions.
    pub(crate) fn publish_leader(&self, generation: u64, publish: impl FnOnce()) -> bool {
        let _registry = lock(&self.registry);
        let ok = {
            let v = self.view.borrow();
            v.generation == generation && v.state == Conn::Connected
        };
        if ok {
            self.led.store(true, Ordering::SeqCst);
            publish();
        }
        ok
    }

    /// A client for reads: the session's, or a lazily connected reader.
    pub(crate) async fn read_client(&self) -> Result<zk::Client> {
        if let Some(c) = self.client() {
            return Ok((*c.zk).clone());
        }
        if let Some(c) = lock(&self.reader).clone() {
            if !c.state().is_terminated() {
                return Ok(c);
            }
        }
        let c = connect(&self.cfg).await?;
        *lock(&self.reader) = Some(c.clone());
        Ok(c)
    }

    /// Change the session's view and wake every election's driver (a driver polls the view
    /// when woken, see `latch::DriverState`).
    pub(crate) fn set_view(&self, update: impl FnOnce(&mut View)) {
        self.set_view_if(|v| {
            update(v);
            true
        });
    }

    /// [`set_view`](Self::set_view) when `update` says it changed something.
    fn set_view_if(&self, update: impl FnOnce(&mut View) -> bool) {
        if self.view.send_if_modified(update) {
            Core::wake_elections(&lock(&self.registry));
        }
    }

    fn wake_elections(registry: &HashMap<u64, Arc<Inner>>) {
        for inner in registry.values() {
            inner.wake_driver();
        }
    }

    /// Demote every participating election (under the registry lock), then publish `view`.
    /// `leaders_too`: demote leaders as well (false only during the grace of
    /// [`ConnectionPolicy::Session`]). `suspended`: an election with a node becomes
    /// `Suspended` (its node may survive), otherwise `Candidate` (session gone).
    fn demote_then(
        &self,
        leaders_too: bool,
        suspended: bool,
        reason: &str,
        forget: bool,
        counters: &[Counter],
        update: impl FnOnce(&mut View),
    ) {
        let registry = lock(&self.registry);
        // One allocation for every election's status.
        let reason: Arc<str> = reason.into();
        let now = std::time::Instant::now();
        if forget {
            self.contact.forget_contact(now);
        }
        for (name, labels) in counters {
            self.metrics.count(name, labels);
        }
        for inner in registry.values() {
            let role = inner.cell.get().role;
            if matches!(role, Role::Idle | Role::Closed) {
                continue;
            }
            // Every participating election counts what happened to its session.
            for (name, labels) in counters {
                inner.cell.metrics().count(name, labels);
            }
            if role.is_leader() && !leaders_too {
                inner.cell.set_health(
                    HealthLevel::Degraded,
                    "connection to ZooKeeper lost; keeping leadership for the grace period",
                );
                continue;
            }
            if role.is_leader() {
                info!(id = %inner.cfg.id, path = %inner.cfg.path, "dropping leadership: {reason}");
            }
            let role = if suspended && inner.has_node() {
                Role::Suspended
            } else {
                Role::Candidate
            };
            inner.cell.set(role, HealthLevel::Degraded, reason.clone());
        }
        self.view.send_modify(update);
        Core::wake_elections(&registry);
        let state = self.view.borrow().state.clone();
        self.state_gauge(&state);
        drop(registry);
    }

    /// Set the health (and demote non-idle roles to Candidate when `demote`) of every
    /// participating election.
    fn health_all(&self, level: HealthLevel, reason: &str, demote: bool) {
        let reason: Arc<str> = reason.into();
        for inner in lock(&self.registry).values() {
            let role = inner.cell.get().role;
            if matches!(role, Role::Idle | Role::Closed) {
                continue;
            }
            if demote && (role.is_joined() || role.is_leader()) {
                inner.cell.set(Role::Candidate, level, reason.clone());
            } else {
                inner.cell.set_health(level, reason.clone());
            }
        }
    }

    /// A node of one of our elections (for the probe: does ZooKeeper still hold our session?).
    fn any_node(&self) -> Option<String> {
        lock(&self.registry)
            .values()
            .find_map(|i| i.node())
            .map(|n| n.to_string())
    }

    fn set_bound(&self, session_timeout: Duration) {
        let safe = session_timeout / 2;
        self.contact.set_contact_bound(safe);
    }
}

/// A connector with `cfg`'s settings (fails fast when no server answers).
fn connector(cfg: &ZkSessionConfig) -> zk::Connector {
    let mut c = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_connection_timeout(cfg.connection_timeout)
        .with_fail_eagerly();
    if let Some((scheme, cred)) = cfg.auth.as_deref() {
        c = c.with_auth(scheme, cred);
    }
    #[cfg(feature = "sasl")]
    if let Some((user, password)) = cfg.sasl.as_deref() {
        c = c.with_sasl(zk::SaslOptions::digest_md5(user.clone(), password.clone()));
    }
    c
}

/// Connect a new session that ends when its last handle is dropped (probes, readers).
pub(crate) async fn connect(cfg: &ZkSessionConfig) -> Result<zk::Client> {
    connect_with(cfg, connector(cfg)).await
}

/// Connect the session's own client: a new session, or `resume` (an existing session,
/// taken over by this new client). Detached: dropping it leaves the ZooKeeper session
/// alive. That is what lets a client that is still reconnecting be retired in favour of a
/// resumed one (a dropped attached client would close the session the moment it
/// reconnects); the session is ended explicitly by [`end_session`].
async fn connect_main(
    cfg: &ZkSessionConfig,
    resume: Option<zk::SessionInfo>,
) -> Result<zk::Client> {
    let c = connector(cfg).with_detached();
    let c = match resume {
        Some(info) => c.with_session(info),
        None => c,
    };
    connect_with(cfg, c).await
}

/// End the ZooKeeper session of `client` (detached, see [`connect_main`]), so that
/// ZooKeeper deletes its ephemeral nodes now rather than at expiry: let the client's task
/// wind down (it exits once its last handle is gone), then take the session in an attached
/// client and drop it, which sends closeSession. Best effort and bounded: when no server
/// answers, the session expires on its own.
async fn end_session(cfg: ZkSessionConfig, client: zk::Client) {
    let info = client.session().clone();
    let mut states = client.state_watcher();
    drop(client);
    let _ = timeout(END_WAIT, ended(&mut states)).await;
    if matches!(
        states.peek_state(),
        zk::SessionState::Expired | zk::SessionState::AuthFailed
    ) {
        return;
    }
    // Close it, then make sure it is closed: a retired client of this session (see
    // `suspended`) that reconnects while our closer's closeSession is under way takes the
    // connection from it, so closeSession never reaches ZooKeeper and the session lives on
    // (until it expires) with nobody using it. Taking the session again answers "expired"
    // once it is closed; otherwise close it again (a retired client exits once it has
    // connected, so this ends).
    for attempt in 0..END_ATTEMPTS {
        let closer = connector(&cfg).with_session(info.clone());
        match timeout(cfg.connection_timeout, connect_with(&cfg, closer)).await {
            Ok(Ok(c)) => {
                if attempt > 0 {
                    debug!(session = %c.session_id(), "the session outlived our close; closing it again");
                } else {
                    debug!(session = %c.session_id(), "closing the session");
                }
                // Dropping it sends closeSession; its task ends once ZooKeeper answered.
                let mut states = c.state_watcher();
                drop(c);
                let _ = timeout(cfg.connection_timeout, ended(&mut states)).await;
            }
            Ok(Err(e)) if e.kind() == ErrorKind::SessionExpired => return,
            Ok(Err(e)) => {
                debug!(%e, "could not close the session; it expires on its own");
                return;
            }
            Err(_) => {
                debug!("could not close the session in time; it expires on its own");
                return;
            }
        }
    }
    debug!("the session outlived {END_ATTEMPTS} closes; it expires on its own");
}

/// Until the client behind `states` has ended (its task gone: closed, expired, ...).
async fn ended(states: &mut zk::StateWatcher) {
    while !states.peek_state().is_terminated() {
        states.changed().await;
    }
}

async fn connect_with(cfg: &ZkSessionConfig, c: zk::Connector) -> Result<zk::Client> {
    let hosts = cfg.connect.split(',').count() as u32;
    let bound = cfg.connection_timeout * (hosts + 1);
    // In a span of its own: zookeeper-client records the session id it gets into the
    // current span, which would otherwise be the session's (and every probe would add one).
    let connect = cfg.connect_string();
    let connecting = c.connect(&connect).instrument(tracing::info_span!(
        "zk_connect",
        session = tracing::field::Empty
    ));
    match timeout(bound, connecting).await {
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

/// What a probe session found while our connection is down.
enum Probe {
    /// No server answered it (or ours reconnected meanwhile).
    Unanswered,
    /// ZooKeeper answers, and no longer knows our session (wiped, or expired it).
    SessionLost,
    /// ZooKeeper answers, and still holds our node under our session.
    SessionAlive,
}

/// While our connection is down: can a fresh session reach ZooKeeper, and does ZooKeeper
/// still know our session (a `node` of ours, owned by it)? The probe's own session ends
/// when it returns.
async fn probe(
    cfg: ZkSessionConfig,
    client: zk::Client,
    node: Option<String>,
    phantom: bool,
) -> Probe {
    let Ok(fresh) = connect(&cfg).await else {
        return Probe::Unanswered;
    };
    // Reconnected meanwhile: nothing to decide. A client that claims a connection while
    // answering nothing (`phantom`, see `probe_bound`) claims it all along: its state says
    // nothing, and waiting for it to change would wait out its own deadline.
    if !phantom && client.state() != zk::SessionState::Disconnected {
        return Probe::Unanswered;
    }
    let ours = client.session_id().0;
    match node {
        Some(n) => match timeout(cfg.connection_timeout, fresh.check_stat(&n)).await {
            Ok(Ok(Some(st))) if st.ephemeral_owner == ours => {
                debug!("probe: ZooKeeper still holds our node and session");
                Probe::SessionAlive
            }
            Ok(Ok(_)) => Probe::SessionLost,
            _ => Probe::Unanswered,
        },
        // Nothing of ours to keep: a working session beats waiting.
        None => Probe::SessionLost,
    }
}

/// What ends one client's watch over the session.
enum Turn {
    /// The session ended.
    End(Ended),
    /// The same session, taken over by a new client (see [`suspended`]).
    Resume(zk::Client),
}

/// How one connected session ended.
enum Ended {
    /// Left for a new session; `why` for the statuses; whether ZooKeeper no longer knew our
    /// session (expired or wiped: nothing of it to close).
    Replaced(&'static str, bool),
    /// Expired or closed: connect anew.
    Lost,
    /// Permanent failure.
    Fatal(ErrorKind, String),
}

/// How long one connection attempt (or probe) may take before it is abandoned, and how
/// many may be in flight at once. A server that is starting up can accept a connection
/// and never answer it; overlapping attempts, each abandoned after a few times what our
/// last connection took, find it the moment it serves. Before any connection succeeded
/// (nothing known about the link): one at a time, each with the configured bound.
fn hedging(cfg: &ZkSessionConfig, connect_took: Option<Duration>) -> (Option<Duration>, usize) {
    match connect_took {
        Some(t) => {
            let configured = cfg.connection_timeout * 2;
            (
                Some((t * 4).max(MIN_ATTEMPT_BOUND).min(configured)),
                MAX_ATTEMPTS,
            )
        }
        None => (None, 1),
    }
}

/// The session task. Holds the core weakly between steps so that dropping every handle
/// ends it (the handle's drop aborts it too).
async fn run(weak: std::sync::Weak<Core>) {
    let mut connect_took: Option<Duration> = None;
    let mut generation = 0u64;
    let mut epoch = 0u64;
    // How the previous generation's session ended (see `View::prev_gone`).
    let mut prev_gone = false;
    loop {
        let Some(core) = weak.upgrade() else { return };
        let mut client = match connect_hedged(&core, &mut connect_took).await {
            Ok(c) => c,
            Err((kind, msg)) => {
                warn!(%msg, "permanent failure of the session");
                core.set_view(|v| {
                    v.client = None;
                    v.state = Conn::Fatal(kind, msg.clone().into());
                });
                // Held meanwhile: the last handle's drop aborts this task anyway.
                core.kick.notified().await;
                continue;
            }
        };
        generation += 1;
        epoch += 1;
        let session_timeout = client.session_timeout();
        core.span.record("session", client.session_id().0);
        info!(session = %client.session_id(), timeout = ?session_timeout, generation, "session ready");
        core.set_bound(session_timeout);
        core.led.store(false, Ordering::SeqCst);
        core.set_view(|v| {
            v.generation = generation;
            v.epoch = epoch;
            v.client = Some(SessionClient::new(client.clone()));
            v.state = Conn::Connected;
            v.prev_gone = prev_gone;
        });
        core.state_gauge(&Conn::Connected);
        drop(core);
        prev_gone = false;
        // Every client retired by a resume of this session whose task may still reconnect
        // (a second outage can retire another before the first has reconnected).
        let mut retired: Vec<Retired> = Vec::new();
        let ended = loop {
            match connected(&weak, &client, connect_took, &mut retired).await {
                None => return,
                Some(Turn::Resume(fresh)) => {
                    let Some(core) = weak.upgrade() else { return };
                    epoch += 1;
                    info!(session = %fresh.session_id(), epoch, "the session is back, resumed by a new client; the old client is retired");
                    core.metrics
                        .count(metrics::REPAIRS, &[("cause", "session_resumed")]);
                    let old = std::mem::replace(&mut client, fresh);
                    retired.push(Retired {
                        states: old.state_watcher(),
                        ended_at: None,
                        window: steal_window(client.session_timeout()),
                    });
                    // Same session, same nodes: no demotion beyond the suspension's. The
                    // elections re-read what they watched (their watches were the old
                    // client's) and claim again.
                    core.set_view(|v| {
                        v.epoch = epoch;
                        v.client = Some(SessionClient::new(client.clone()));
                        v.state = Conn::Connected;
                    });
                    core.state_gauge(&Conn::Connected);
                }
                Some(Turn::End(ended)) => break ended,
            }
        };
        match ended {
            Ended::Replaced(why, expired) => {
                // `expired`: a probe session found the server no longer knows ours.
                prev_gone = expired;
                let Some(core) = weak.upgrade() else { return };
                let counters: &[Counter] = if expired {
                    &[EXPIRED, REPLACED]
                } else {
                    &[REPLACED]
                };
                // Whatever we held may be someone else's by now: no grace for work under
                // our grants. Everyone is demoted BEFORE the new session is published.
                core.demote_then(true, false, why, true, counters, |v| {
                    v.client = None;
                    v.state = Conn::Connecting;
                });
                if !expired {
                    // ZooKeeper still holds the session we leave: end it (its nodes go now).
                    tokio::spawn(end_session(core.cfg.clone(), client));
                    continue;
                }
            }
            Ended::Lost => {
                // Not known to be gone: the client also says Expired after its own deadline,
                // and a server restarted with its data gives old sessions a new timeout.
                prev_gone = false;
                let Some(core) = weak.upgrade() else { return };
                info!(session = %client.session_id(), "session ended; building a new session");
                core.demote_then(
                    true,
                    false,
                    "ZooKeeper session expired; rejoining with a new session",
                    true,
                    &[EXPIRED],
                    |v| {
                        v.client = None;
                        v.state = Conn::Connecting;
                    },
                );
            }
            Ended::Fatal(kind, msg) => {
                let Some(core) = weak.upgrade() else { return };
                warn!(%msg, "permanent failure of the session");
                core.demote_then(true, false, &msg, true, &[], |v| {
                    v.client = None;
                    v.state = Conn::Fatal(kind, msg.clone().into());
                });
                core.kick.notified().await;
            }
        }
        drop(client);
    }
}

/// Connect, retrying with hedged attempts; every election's health follows meanwhile.
async fn connect_hedged(
    core: &Arc<Core>,
    connect_took: &mut Option<Duration>,
) -> std::result::Result<zk::Client, (ErrorKind, String)> {
    let started = Instant::now();
    let mut failures: u32 = 0;
    let (bound, most) = hedging(&core.cfg, *connect_took);
    let mut attempts = futures::stream::FuturesUnordered::new();
    let mut next_start = Instant::now();
    loop {
        tokio::select! {
            _ = sleep_until(next_start), if attempts.len() < most => {
                let cfg = core.cfg.clone();
                attempts.push(async move {
                    let t = Instant::now();
                    let r = timed(bound, connect_main(&cfg, None)).await;
                    (r, t.elapsed())
                });
                // No growing backoff: a server that comes back is found within one gap.
                next_start = Instant::now()
                    + RETRY_WHILE_DOWN.mul_f64(rand::thread_rng().gen_range(0.8..1.0));
            }
            Some((result, took)) = attempts.next(), if !attempts.is_empty() => match result {
                Ok(client) => {
                    info!(session = %client.session_id(), timeout = ?client.session_timeout(), "connected to ZooKeeper");
                    *connect_took = Some(took);
                    return Ok(client);
                }
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    return Err((e.kind(), e.message().to_owned()));
                }
                Err(e) => {
                    failures += 1;
                    let level = if started.elapsed() > core.cfg.session_timeout {
                        HealthLevel::Unhealthy
                    } else {
                        HealthLevel::Degraded
                    };
                    let reason = format!(
                        "no connection to ZooKeeper for {:.1}s (attempt {failures}): {}",
                        started.elapsed().as_secs_f64(),
                        e.message()
                    );
                    core.health_all(level, &reason, true);
                }
            },
        }
    }
}

/// A client retired by a resume, whose task may still reconnect (see [`STEAL_WINDOW`]).
struct Retired {
    states: zk::StateWatcher,
    /// When we first saw its task ended.
    ended_at: Option<Instant>,
    /// [`steal_window`] of the session.
    window: Duration,
}

impl Retired {
    /// False once its task has ended more than [`STEAL_WINDOW`] ago: it can take no
    /// connection any more, and the last one it took is handled.
    fn update(&mut self) -> bool {
        if self.states.peek_state().is_terminated() {
            self.ended_at.get_or_insert_with(Instant::now);
        }
        self.ended_at.is_none_or(|t| t.elapsed() < self.window)
    }
}

/// Our client just lost its connection while a retired client of the same session may
/// still take it (see [`STEAL_WINDOW`]): true when ours is connected again, with the same
/// session, within the window (the session was never in doubt: ZooKeeper took it on the
/// other connection and then on ours again, each renewing its expiry); false otherwise,
/// and the caller suspends as usual. (The retired client's attempt does not always get to
/// report itself connected: ours may take the connection back before its answer.)
async fn steal_blip(client: &zk::Client, states: &mut zk::StateWatcher) -> bool {
    let deadline = Instant::now() + steal_window(client.session_timeout());
    loop {
        match client.state() {
            zk::SessionState::SyncConnected => {
                debug!("a retired client took the connection for a moment; ours is back");
                return true;
            }
            st if st.is_terminated() => return false,
            _ => {}
        }
        tokio::select! {
            _ = states.changed() => {}
            _ = sleep_until(deadline) => {
                return client.state() == zk::SessionState::SyncConnected;
            }
        }
    }
}

/// The next state change of any retired client (never, without one).
async fn retired_changed(retired: &mut [Retired]) {
    if retired.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(retired.iter_mut().map(|r| Box::pin(r.states.changed()))).await;
}

/// While the session lives: the contact probe, and suspension when the connection is lost.
/// None when every handle is gone.
async fn connected(
    weak: &std::sync::Weak<Core>,
    client: &zk::Client,
    connect_took: Option<Duration>,
    retired: &mut Vec<Retired>,
) -> Option<Turn> {
    let mut states = client.state_watcher();
    let timeout_agreed = client.session_timeout();
    // Contact is the SEND instant of the latest probe the server answered: the server
    // heard that request at or after that instant, so it cannot expire our session before
    // `sent + session timeout`. ("The driver says connected" is not contact: the driver
    // notices silence only 2/5 of the timeout after its last receipt.)
    let tick = probe_interval(timeout_agreed);
    let unanswered_after = probe_bound(weak.upgrade()?.cfg.connection_timeout, timeout_agreed);
    let mut last_probe: Option<Instant> = None;
    loop {
        retired.retain_mut(|r| {
            let live = r.update();
            if !live {
                debug!("a retired client has ended");
            }
            live
        });
        match client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {}
            zk::SessionState::Disconnected => {
                if !retired.is_empty() && steal_blip(client, &mut states).await {
                    continue;
                }
                let core = weak.upgrade()?;
                let doubt = Doubt { since: Instant::now(), phantom: false };
                if let Some(turn) = suspended(&core, client, &mut states, connect_took, doubt).await {
                    return Some(turn);
                }
                core.set_view(|v| v.state = Conn::Connected);
                core.state_gauge(&Conn::Connected);
                continue;
            }
            zk::SessionState::AuthFailed => {
                return Some(Turn::End(Ended::Fatal(
                    ErrorKind::PermissionDenied,
                    "ZooKeeper rejected the credentials (auth failed); fix digest_auth or sasl_digest_md5".into(),
                )))
            }
            st => {
                debug!(?st, "session terminated");
                return Some(Turn::End(Ended::Lost));
            }
        }
        let wait = last_probe.map_or(Duration::ZERO, |t| tick.saturating_sub(t.elapsed()));
        tokio::select! {
            st = states.changed() => {
                debug!(?st, "session state changed");
            }
            _ = retired_changed(retired) => {}
            _ = sleep(wait) => {
                last_probe = Some(Instant::now());
                let sent = std::time::Instant::now();
                let probe = client.check_stat("/");
                let answered = tokio::select! {
                    r = probe => Some(r.is_ok()),
                    st = states.changed() => {
                        debug!(?st, "session state changed during the contact probe");
                        Some(false)
                    }
                    _ = sleep(unanswered_after) => None,
                };
                match answered {
                    Some(true) => weak.upgrade()?.touch(sent),
                    Some(false) => {}
                    // Unanswered while the client still claims a connection (see
                    // `probe_bound`): the session is in doubt from our last contact on.
                    None if matches!(client.state(), zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly) => {
                        let core = weak.upgrade()?;
                        let since = core.contact.contact().last.map_or(Instant::now(), Instant::from_std);
                        warn!(session = %client.session_id(), unanswered = ?unanswered_after,
                              "ZooKeeper has not answered the contact probe although the client reports a connection: suspending every election on the session");
                        let doubt = Doubt { since, phantom: true };
                        if let Some(turn) = suspended(&core, client, &mut states, connect_took, doubt).await {
                            return Some(turn);
                        }
                        core.set_view(|v| v.state = Conn::Connected);
                        core.state_gauge(&Conn::Connected);
                    }
                    None => {}
                }
            }
        }
    }
}

/// Whether the session's current client may be retired for a resumed one: none of its
/// writes can still be sent by it later (see [`Writes`]).
fn resumable(core: &Core) -> bool {
    core.view
        .borrow()
        .client
        .as_ref()
        .is_some_and(|c| !c.writes.pending())
}

/// Take over the session of `old` (disconnected) in a new client.
async fn resume(
    cfg: &ZkSessionConfig,
    old: &zk::Client,
    bound: Option<Duration>,
) -> Option<zk::Client> {
    let id = old.session_id();
    match timed(bound, connect_main(cfg, Some(old.session().clone()))).await {
        Ok(c) if c.session_id() == id => Some(c),
        Ok(c) => {
            // Not expected from zookeeper-client; never keep a stranger session.
            warn!(old = %id, new = %c.session_id(), "resuming gave another session; ending it");
            tokio::spawn(end_session(cfg.clone(), c));
            None
        }
        Err(e) => {
            debug!(session = %id, %e, "could not resume the session in a new client");
            None
        }
    }
}

/// The connection is in doubt: demote (per policy), probe for a wiped or expired session,
/// report health, until reconnected (None), resumed by a new client, or replaced.
async fn suspended(
    core: &Arc<Core>,
    client: &zk::Client,
    states: &mut zk::StateWatcher,
    connect_took: Option<Duration>,
    doubt: Doubt,
) -> Option<Turn> {
    let t0 = doubt.since;
    let mut phantom = doubt.phantom;
    let session_timeout = client.session_timeout();
    let grace = match core.cfg.connection_policy {
        ConnectionPolicy::Standard => Duration::ZERO,
        ConnectionPolicy::Session => session_timeout / 4,
    };
    let lost = if phantom {
        "ZooKeeper does not answer although the client reports a connection; reconnecting"
    } else {
        "connection to ZooKeeper lost; reconnecting"
    };
    if !phantom {
        info!(session = %client.session_id(), "connection lost: suspending every election on the session");
    }
    let demote_at = t0 + grace;
    let mut demoted = demote_at <= Instant::now();
    core.demote_then(demoted, true, lost, false, &[], |v| {
        v.state = Conn::Suspended;
    });
    // A client that claims a connection (`phantom`) is asked once more: an answer means the
    // connection works after all (only slow), and the suspension ends.
    let mut alive = phantom.then(|| Box::pin(client.check_stat("/")));
    let mut next_probe = Instant::now() + FIRST_PROBE_AFTER;
    // Probes overlap (see `hedging`): one starts every RETRY_WHILE_DOWN while fewer than
    // `most` are in flight, so a connection the starting server accepted but never answers
    // cannot hide the moment it serves.
    let (bound, most) = hedging(&core.cfg, connect_took);
    let mut probes = futures::stream::FuturesUnordered::new();
    // A grant's promise (`takeover_bound`): nobody else is elected before half the session
    // timeout after our last contact, because the server holds our session at least that
    // long. Leaving a session the server still holds deletes our nodes, which can elect a
    // successor at once: a session on which any election led keeps the old session
    // (resumed, or waiting for the client to reconnect) until that bound has passed.
    let keep_until = if core.led.load(Ordering::SeqCst) {
        let c = core.contact.contact();
        c.last.map(|last| Instant::from_std(last + c.safe_for))
    } else {
        None
    };
    let unhealthy_at = t0 + session_timeout;
    let mut marked_unhealthy = false;
    loop {
        let st = client.state();
        if st.is_terminated() || (!phantom && st != zk::SessionState::Disconnected) {
            return None;
        }
        tokio::select! {
            st = states.changed() => {
                debug!(?st, "session state changed while suspended");
                if st != zk::SessionState::Disconnected {
                    return None;
                }
                // The client noticed: from here on, its state is to be believed.
                phantom = false;
                alive = None;
            }
            r = async { alive.as_mut().expect("some").await }, if alive.is_some() => {
                if r.is_ok() {
                    info!("ZooKeeper answered after all: the connection was slow, not lost");
                    return None;
                }
                alive = None;
            }
            _ = sleep_until(demote_at), if !demoted => {
                demoted = true;
                info!("connection lost for the grace period: dropping leadership");
                core.demote_then(true, true, lost, false, &[], |_| {});
            }
            _ = sleep_until(unhealthy_at), if !marked_unhealthy => {
                marked_unhealthy = true;
                if !demoted {
                    demoted = true;
                    core.demote_then(true, true, lost, false, &[], |_| {});
                }
                let reason = format!("no connection to ZooKeeper for {} (the session timeout)", Human(session_timeout));
                core.health_all(HealthLevel::Unhealthy, &reason, false);
            }
            _ = sleep_until(next_probe) => {
                if probes.len() < most {
                    let probe = probe(core.cfg.clone(), client.clone(), core.any_node(), phantom);
                    probes.push(async move {
                        match bound {
                            Some(b) => timeout(b, probe).await.unwrap_or(Probe::Unanswered),
                            None => probe.await,
                        }
                    });
                }
                next_probe = Instant::now() + RETRY_WHILE_DOWN;
            }
            Some(found) = probes.next(), if !probes.is_empty() => match found {
                // The client changed state since this probe began (it reconnected, or
                // showed itself disconnected): the top of the loop decides afresh.
                _ if !phantom && client.state() != zk::SessionState::Disconnected => continue,
                Probe::Unanswered => {}
                Probe::SessionLost => {
                    info!(old = %client.session_id(),
                          "ZooKeeper answers a new session but no longer knows ours (ensemble wiped or session expired): switching to a new session");
                    return Some(Turn::End(Ended::Replaced("ZooKeeper lost our session (wiped or expired); rejoining", true)));
                }
                // ZooKeeper serves, still with our session, but our client has not
                // reconnected: it waits out its own backoff (100 ms doubling, up to seconds
                // after a long outage) and offers no way to retry now. A new client takes
                // the session over instead: same session, same nodes, no successor elected,
                // so no promise is broken and no grace needs to run out. Only a client
                // that may still send a write of ours later is never retired this way (its
                // reconnect would replay the write).
                Probe::SessionAlive if resumable(core) => {
                    if let Some(taken) = resume(&core.cfg, client, bound).await {
                        // A write may have been issued meanwhile (a close, a resign): then
                        // the old client stays (the new one, detached, just ends).
                        if resumable(core) {
                            info!(session = %taken.session_id(), "ZooKeeper answers again with our session; resumed it in a new client");
                            return Some(Turn::Resume(taken));
                        }
                        debug!("a write was issued on the old client during the resume; keeping it");
                    }
                }
                // Not resumable: under the grace of ConnectionPolicy::Session, or before
                // the takeover bound of a grant held on this session, we keep waiting for
                // the client; otherwise nobody leads on it anyway, and a new session rejoins
                // now (the old one is closed; each election's first round also deletes its
                // old node, named by the old session's uuid).
                Probe::SessionAlive
                    if demoted && keep_until.is_none_or(|k| Instant::now() >= k) =>
                {
                    info!(old = %client.session_id(),
                          "ZooKeeper answers again but our client has not reconnected yet: switching to a new session");
                    return Some(Turn::End(Ended::Replaced("ZooKeeper answers again; rejoining with a new session", false)));
                }
                Probe::SessionAlive => {
                    // Next look when the grace ends and the takeover bound has passed.
                    next_probe = next_probe.max(t0 + grace).max(keep_until.unwrap_or(t0));
                }
            },
        }
    }
}
