//! [`EtcdSession`]: one etcd connection and ONE lease (one keeper) backing any number of
//! elections, like Go's `concurrency.Session`.
//!
//! # Architecture
//!
//! - The session's **driver** task (started when the first election joins) grants the lease,
//!   publishes it to the elections (a `watch` of [`LeaseView`]), waits until the keeper says
//!   it is lost, and grants a new one. Grant failures are published too, so that every
//!   election reports them.
//! - The lease's **keeper** (see `lease.rs`) is the only timer of the session: it renews
//!   every TTL/3 and, when the lease falls into doubt or is lost, demotes every leading
//!   election of the session (through the [`Registry`]) BEFORE it publishes the new lease
//!   state. An election publishes `Leader` only under the registry lock, after checking the
//!   lease state: no election leads on a lease the keeper gave up on.
//! - Each election runs its own campaign task on the session's lease and connection; its key
//!   is `<prefix>/<lease hex>` (`<prefix>/<lease hex>_<n>` for the n-th further participant
//!   of the same session on the same prefix).
//! - [`EtcdSession::close`] closes every election (each publishes `Closed`), then revokes the
//!   lease once (which deletes every key). [`EtcdElection::new`] is a private session with
//!   one election, which revokes its lease when that election resigns or closes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, Weak};

use succession_core::metrics::{self, ElectionMetrics};
use succession_core::text::Human;
use succession_core::{Error, ErrorKind, HealthLevel, Result, Role};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::EtcdSessionConfig;
use crate::conn::{random_lease_id, Backoff, Connection};
use crate::election::{EtcdElection, Inner};
use crate::lease::{self, Lease};
use crate::read_batch::ReadBatcher;
use crate::watch_hub::Hubs;

/// The elections of one session, for the keeper's demotion and the leaders' check; also
/// the session's metrics (labels `backend="etcd"`, `election="session-<n>"`).
pub(crate) struct Registry {
    elections: StdMutex<HashMap<u64, Weak<Inner>>>,
    metrics: ElectionMetrics,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("elections", &self.len())
            .finish()
    }
}

/// Numbers the sessions of this process (for their metric label).
static SESSIONS: AtomicU64 = AtomicU64::new(0);

/// Values of [`metrics::SESSION_LEASE`].
pub(crate) const LEASE_VALID: f64 = 2.0;
/// How many elections of one session run a round (epoch record, campaign, watches, queue
/// read) at once. The others wait for a slot; waiting in the queue holds none. Thousands of
/// elections starting (or campaigning again after a lost lease) at once would otherwise
/// put thousands of requests in flight and as many runnable tasks in front of the lease
/// keeper's timer: on a loaded machine its renewals were answered too late, the lease fell
/// into doubt, every election stepped down and campaigned again, and the burst repeated.
/// One election alone never waits.
pub(crate) const ROUNDS_IN_FLIGHT: usize = 64;
pub(crate) const LEASE_IN_DOUBT: f64 = 1.0;
pub(crate) const LEASE_NONE: f64 = 0.0;

impl Registry {
    fn new() -> Registry {
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        Registry {
            elections: StdMutex::new(HashMap::new()),
            metrics: ElectionMetrics::new("etcd", format!("session-{n}")),
        }
    }

    /// Publish the session's lease state ([`LEASE_VALID`], [`LEASE_IN_DOUBT`], [`LEASE_NONE`]).
    pub(crate) fn lease_state(&self, value: f64) {
        self.metrics.gauge(metrics::SESSION_LEASE, &[], value);
    }

    fn count_elections(&self, n: usize) {
        self.metrics
            .gauge(metrics::SESSION_ELECTIONS, &[], n as f64);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<Inner>>> {
        self.elections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Under the registry lock: demote every leading election (role `role`, `level`,
    /// `reason`), then run `publish` (which publishes the lease state that explains it).
    pub(crate) fn demote_then<R>(
        &self,
        role: Role,
        level: HealthLevel,
        reason: &str,
        publish: impl FnOnce() -> R,
    ) -> R {
        let guard = self.lock();
        // Upgraded handles are dropped after the lock is released (dropping the last one
        // unregisters, which takes the lock).
        let live: Vec<Arc<Inner>> = guard.values().filter_map(Weak::upgrade).collect();
        let reason: Arc<str> = reason.into();
        let mut demoted = 0usize;
        for e in &live {
            if e.cell.subscribe().borrow().is_leader() {
                e.cell.set(role.clone(), level, reason.clone());
                demoted += 1;
            }
        }
        if demoted > 0 {
            tracing::warn!(demoted, %reason, "lease in doubt: every leader of the session stepped down");
        }
        let out = publish();
        self.lease_state(if role == Role::Candidate {
            LEASE_NONE
        } else {
            LEASE_IN_DOUBT
        });
        drop(guard);
        drop(live);
        out
    }

    /// Run `f` under the registry lock (an election's check of the lease and `Leader`
    /// publication, atomic with respect to the keeper's demotion).
    pub(crate) fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.lock();
        f()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn snapshot(&self) -> Vec<Arc<Inner>> {
        self.lock().values().filter_map(Weak::upgrade).collect()
    }
}

/// What the driver publishes about the session's lease.
#[derive(Clone)]
pub(crate) enum LeaseView {
    /// No lease (not started, between leases, or shut down).
    None,
    /// The current lease (its state says whether it is lost).
    Granted(Arc<Lease>),
    /// The latest grant attempt failed (a counter, the error kind and message).
    Failed(u64, ErrorKind, Arc<str>),
}

/// What the session's tasks share (no handle: the driver and keepers hold this, never the
/// [`Shared`] whose drop ends the session).
pub(crate) struct Core {
    pub(crate) conn: Arc<Connection>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) view: watch::Sender<LeaseView>,
    /// The highest epoch this session has seen in any epoch record: a recreated record gets
    /// at least this plus one, so terms keep growing even if the wall clock lags.
    pub(crate) epoch_seen: AtomicU64,
    /// Leases that may exist on the server and must be revoked (grant outcome unknown).
    orphans: StdMutex<Vec<(i64, Instant)>>,
    /// Grant failures so far (numbers the published failures).
    pub(crate) failures: AtomicU64,
    /// The session's shared watch streams.
    pub(crate) hubs: Hubs,
    /// Election rounds in flight at once (see [`ROUNDS_IN_FLIGHT`]).
    pub(crate) rounds: Arc<tokio::sync::Semaphore>,
    /// The session's record reads, batched (see `read_batch.rs`).
    pub(crate) reads: Arc<ReadBatcher>,
}

impl Core {
    pub(crate) fn saw_epoch(&self, epoch: u64) {
        self.epoch_seen.fetch_max(epoch, Ordering::Relaxed);
    }
}

struct Driver {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The session itself, shared by its handles and its elections.
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) config: EtcdSessionConfig,
    /// A private session of one [`EtcdElection::new`]: no lease while its election is not
    /// joined; dropping it leaves the lease to expire (like a crash).
    pub(crate) private: bool,
    /// No new elections (set by close).
    closed: AtomicBool,
    /// The session is revoking its lease: elections leave their keys to it.
    pub(crate) closing: AtomicBool,
    driver: StdMutex<Option<Driver>>,
    next_id: AtomicU64,
    /// Key slots in use per prefix (participants of this session on the same prefix).
    slots: StdMutex<HashMap<String, Vec<u32>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let driver = self
            .driver
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(d) = driver {
            d.task.abort();
        }
        let view = self.core.view.send_replace(LeaseView::None);
        if self.private {
            // Like a process exit: the lease expires on the server.
            return;
        }
        if let (LeaseView::Granted(lease), Ok(rt)) = (view, tokio::runtime::Handle::try_current()) {
            let conn = self.core.conn.clone();
            let id = lease.id;
            drop(lease);
            rt.spawn(async move {
                let res = match conn.client().await {
                    Ok(c) => lease::revoke(&conn, &c, id).await,
                    Err(e) => Err(e),
                };
                tracing::debug!(lease = %format_args!("{id:x}"), ok = res.is_ok(), "session dropped: lease revoked in the background");
            });
        }
    }
}

impl Shared {
    pub(crate) fn new(config: EtcdSessionConfig, private: bool) -> Arc<Shared> {
        let (view, _) = watch::channel(LeaseView::None);
        Arc::new(Shared {
            core: Arc::new(Core {
                conn: Arc::new(Connection::new(config.clone())),
                registry: Arc::new(Registry::new()),
                view,
                epoch_seen: AtomicU64::new(0),
                orphans: StdMutex::new(Vec::new()),
                failures: AtomicU64::new(0),
                hubs: Hubs::default(),
                rounds: Arc::new(tokio::sync::Semaphore::new(ROUNDS_IN_FLIGHT)),
                reads: Arc::default(),
            }),
            config,
            private,
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            driver: StdMutex::new(None),
            next_id: AtomicU64::new(0),
            slots: StdMutex::new(HashMap::new()),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A registration id and the key slot for a new election on `prefix`.
    pub(crate) fn reserve(&self, prefix: &str) -> (u64, u32) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let used = slots.entry(prefix.to_owned()).or_default();
        let slot = (0..).find(|n| !used.contains(n)).expect("a free slot");
        used.push(slot);
        (id, slot)
    }

    pub(crate) fn register(&self, id: u64, inner: &Arc<Inner>) {
        let registry = &self.core.registry;
        let n = {
            let mut r = registry.lock();
            r.insert(id, Arc::downgrade(inner));
            r.len()
        };
        registry.count_elections(n);
    }

    /// Forget election `id` (idempotent) and free its key slot.
    pub(crate) fn unregister(&self, id: u64, prefix: &str, slot: u32) {
        let n = {
            let mut r = self.core.registry.lock();
            if r.remove(&id).is_none() {
                return;
            }
            r.len()
        };
        self.core.registry.count_elections(n);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(used) = slots.get_mut(prefix) {
            used.retain(|s| *s != slot);
            if used.is_empty() {
                slots.remove(prefix);
            }
        }
    }

    /// Start the driver if it is not running (an election joins).
    pub(crate) fn ensure_driver(&self) {
        let mut d = self.driver.lock().unwrap_or_else(|p| p.into_inner());
        if d.as_ref().is_some_and(|d| !d.task.is_finished()) {
            return;
        }
        let (stop, stop_rx) = watch::channel(false);
        let span = tracing::info_span!(
            "etcd_session",
            endpoints = ?self.config.endpoints,
            lease = tracing::field::Empty
        );
        let task = tokio::spawn(drive(self.core.clone(), stop_rx).instrument(span));
        *d = Some(Driver { stop, task });
    }

    /// The current lease id, if one is granted and not known lost.
    pub(crate) fn lease_id(&self) -> Option<i64> {
        match &*self.core.view.borrow() {
            LeaseView::Granted(l) if !l.is_lost() => Some(l.id),
            _ => None,
        }
    }

    /// Stop the driver and revoke the lease (once) and any orphan. The session can start
    /// again afterwards (a private session's next join) unless it is closed.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = driver {
            let _ = d.stop.send(true);
            let abort = d.task.abort_handle();
            if tokio::time::timeout(self.config.request_timeout * 2, d.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let view = self.core.view.send_replace(LeaseView::None);
        self.core.registry.lease_state(LEASE_NONE);
        let conn = self.core.conn.clone();
        let orphans =
            std::mem::take(&mut *self.core.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, _) in orphans {
            let attempt = async {
                let client = conn.client().await?;
                lease::revoke(&conn, &client, id).await
            };
            if let Err(e) = attempt.await {
                tracing::debug!(lease = %format_args!("{id:x}"), error = %e, "could not revoke a lease of unknown outcome");
            }
        }
        let LeaseView::Granted(lease) = view else {
            return Ok(());
        };
        if lease.is_lost() {
            return Ok(());
        }
        let id = lease.id;
        // Until the lease could expire by itself, keep trying.
        let deadline =
            (Instant::now() + self.config.request_timeout).max(lease.state.borrow().expires);
        drop(lease);
        let revoke = || async {
            let client = conn.client().await?;
            lease::revoke(&conn, &client, id).await
        };
        match crate::conn::retry_until(deadline, self.config.ttl, "revoke", revoke).await {
            Ok(()) => {
                tracing::debug!(lease = %format_args!("{id:x}"), "session lease revoked");
                Ok(())
            }
            Err(e) => Err(Error::new(
                e.kind(),
                format!(
                    "could not revoke lease {id:x} ({e}); it expires on its own within {}",
                    Human(self.config.ttl)
                ),
            )),
        }
    }
}

/// The session's driver: grant the lease, publish it, wait for its loss, grant again.
async fn drive(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let cfg = &core.conn.config;
    let mut backoff = Backoff::for_ttl(cfg.ttl);
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let id = random_lease_id();
        let attempt = async {
            let client = core.conn.client().await?;
            revoke_orphans(&core, &client).await;
            Lease::grant(&core.conn, &client, id, core.registry.clone()).await
        };
        let outcome = tokio::select! {
            r = attempt => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let lease = match outcome {
            None => {
                // Stopped mid-grant: the grant may have been applied.
                core.orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, Instant::now()));
                return;
            }
            Some(Ok(lease)) => lease,
            Some(Err(e)) => {
                if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection) {
                    core.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((id, Instant::now()));
                }
                let failures = core.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = backoff.next_delay(rand::random());
                tracing::debug!(error = %e, ?delay, "session lease grant failed; retrying");
                core.view
                    .send_replace(LeaseView::Failed(failures, e.kind(), e.message().into()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        backoff.reset();
        let lease = Arc::new(lease);
        tracing::Span::current().record("lease", format_args!("{:x}", lease.id));
        tracing::info!(lease = %format_args!("{:x}", lease.id), elections = core.registry.len(), "session lease granted");
        let mut state = lease.state.clone();
        core.view.send_replace(LeaseView::Granted(lease));
        core.registry.lease_state(LEASE_VALID);
        tokio::select! {
            _ = state.wait_for(|s| s.lost.is_some()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        core.registry.lease_state(LEASE_NONE);
        tracing::info!("session lease lost; granting a new one");
    }
}

/// One attempt at each lease of unknown outcome; forgotten once it could have expired.
async fn revoke_orphans(core: &Core, client: &etcd_client::Client) {
    let cfg = &core.conn.config;
    let forget_after = cfg.ttl + cfg.request_timeout * 2;
    let now = Instant::now();
    let pending: Vec<(i64, Instant)> = {
        let mut o = core.orphans.lock().unwrap_or_else(|p| p.into_inner());
        o.retain(|(_, since)| now.saturating_duration_since(*since) < forget_after);
        o.clone()
    };
    for (id, _) in pending {
        if lease::revoke(&core.conn, client, id).await.is_ok() {
            core.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(o, _)| *o != id);
        }
    }
}

/// One etcd connection and one lease (with one keeper) backing any number of elections,
/// like Go's `concurrency.Session`. See the crate docs.
///
/// Cloning is cheap (a handle). [`EtcdSession::new`] does no I/O; the lease is granted when
/// the first election joins. When the lease is in doubt or lost, every election on it stops
/// leading at once (its status published before anything else), then campaigns again under
/// the new lease. Dropping the last handle (sessions and elections) ends the session and
/// revokes its lease in the background.
#[derive(Clone)]
pub struct EtcdSession {
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSession")
            .field("endpoints", &self.shared.config.endpoints)
            .field("lease", &self.lease_id().map(|l| format!("{l:x}")))
            .field("elections", &self.elections())
            .finish()
    }
}

impl EtcdSession {
    /// A session for `cfg`. No I/O until the first election joins (or reads).
    pub fn new(cfg: EtcdSessionConfig) -> Result<EtcdSession> {
        Ok(EtcdSession {
            shared: Shared::new(cfg, false),
        })
    }

    /// A participant `id` of the election at `prefix` on this session (checked like
    /// [`EtcdConfig`](crate::EtcdConfig)'s prefix and id). Refused once the session is closed.
    pub fn election(&self, prefix: &str, id: &str) -> Result<EtcdElection> {
        if self.shared.is_closed() {
            return Err(Error::closed("etcd session"));
        }
        let config = self.shared.config.election_config(prefix, id)?;
        Ok(EtcdElection::on_session(self.shared.clone(), config))
    }

    /// How many elections are on this session (made and not closed or dropped).
    pub fn elections(&self) -> usize {
        self.shared.core.registry.len()
    }

    /// The session's current lease, if one is granted and not known to be lost.
    pub fn lease_id(&self) -> Option<i64> {
        self.shared.lease_id()
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdSessionConfig {
        &self.shared.config
    }

    /// Close every election (each publishes `Closed`), then revoke the lease once (which
    /// deletes every key of the session). Later [`election`](Self::election) calls are
    /// refused.
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.closing.store(true, Ordering::SeqCst);
        let elections = self.shared.core.registry.snapshot();
        let mut stopping = Vec::with_capacity(elections.len());
        for e in &elections {
            stopping.push(e.begin_close("session closed").await);
        }
        let mut first_err = None;
        for (e, run) in elections.iter().zip(stopping) {
            if let Err(err) = e.finish_stop(run, "session closed").await {
                first_err.get_or_insert(err);
            }
            e.unregister();
        }
        let res = self.shared.shutdown().await;
        match first_err {
            Some(e) => Err(e),
            None => res,
        }
    }
}
