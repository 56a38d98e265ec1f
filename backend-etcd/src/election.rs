//! [`EtcdElection`]: the Go-compatible campaign on KV txn + Watch, driven by one background
//! task per joined handle, on the lease of its [`EtcdSession`](crate::EtcdSession).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::participant::{self, Fatal};
use succession_core::text::Human;
use succession_core::{
    Contact, Election, Error, ErrorKind, HealthLevel, Participant, Result, Role, Status,
    StatusCell, Term,
};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::EtcdConfig;
use crate::conn::{now_ms, parse_epoch, Backoff, Connection, Layout};
use crate::error;
use crate::lease::{Lease, LeaseState};
use crate::record::EtcdRecord;
use crate::session::{Core, LeaseView, Shared};
use crate::watch_hub::{Route, WatchHub, WatchMsg};

/// A snapshot of the lease an [`EtcdElection`] currently holds (see [`EtcdElection::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The lease id (the candidate key is `<prefix>/<id in lowercase hex>`).
    pub id: i64,
    /// The TTL the server granted.
    pub ttl: Duration,
    /// When the newest renewal (or the grant) that the server answered was SENT.
    pub last_renewal: std::time::Instant,
    /// `last_renewal + ttl`: the server cannot expire the lease before this instant.
    pub expires_no_earlier_than: std::time::Instant,
    /// `expires_no_earlier_than - max(ttl/6, 300 ms)`: without a newer answered renewal,
    /// this participant stops leading at this instant at the latest (comparable with
    /// [`Status::since`]).
    pub drop_leadership_at: std::time::Instant,
}

/// A stop request for one participation run, with why we stop (published as the Idle
/// reason). One per joined election, so smaller than a watch channel.
#[derive(Default)]
pub(crate) struct Stop {
    reason: StdMutex<Option<&'static str>>,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn request(&self, reason: &'static str) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.notify.notify_waiters();
    }

    fn reason(&self) -> Option<&'static str> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until a stop is requested.
    async fn requested(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reason().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// One election of a session: what its handle, its task and the session share.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    config: EtcdConfig,
    layout: Layout,
    /// This election's id in the session's registry.
    reg_id: u64,
    /// Its key slot among the session's participants on the same prefix.
    slot: u32,
    pub(crate) cell: StatusCell,
    closed: AtomicBool,
    /// The current lease, for [`EtcdElection::lease`].
    lease: StdMutex<Option<(i64, Duration, watch::Receiver<LeaseState>)>>,
    /// A permanent refusal met by the background task (e.g. permission denied), for `join`.
    refusal: Fatal,
    run: Mutex<Option<Run>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl Inner {
    pub(crate) fn unregister(&self) {
        self.shared
            .unregister(self.reg_id, &self.config.prefix, self.slot);
    }

    fn core(&self) -> &Core {
        &self.shared.core
    }

    fn conn(&self) -> &Arc<Connection> {
        &self.shared.core.conn
    }

    /// The session's watch stream this election's watchers go on.
    fn hub(&self) -> WatchHub {
        let core = &self.shared.core;
        core.hubs
            .for_election(&core.conn, self.reg_id, core.registry.len())
    }

    /// Close for good: publish `Closed` first, then ask the task to stop (returned, to be
    /// awaited with [`finish_stop`](Self::finish_stop)).
    pub(crate) async fn begin_close(&self, reason: &'static str) -> Option<Run> {
        let mut run = self.run.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        self.cell.close(reason);
        let r = run.take();
        if let Some(r) = &r {
            r.stop.request(reason);
        }
        r
    }

    /// Stop `run` (if any) and wait for its task, bounded.
    pub(crate) async fn finish_stop(&self, run: Option<Run>, reason: &'static str) -> Result<()> {
        let Some(r) = run else {
            return Ok(());
        };
        r.stop.request(reason);
        // The task obeys `stop` at every wait; its longest uninterruptible step is one
        // request. Never wait much longer than that.
        let bound = self.config.request_timeout() * 3 + self.config.ttl();
        let abort = r.task.abort_handle();
        let joined = match tokio::time::timeout(bound, r.task).await {
            Ok(j) => j,
            Err(_) => {
                abort.abort();
                self.cell.set(
                    Role::Idle,
                    HealthLevel::Degraded,
                    "stopping took too long; the key is left to its lease",
                );
                return Err(Error::timeout(format!(
                    "stopping the etcd participation of {} took longer than {}; its key goes with its lease",
                    self.config.id,
                    Human(bound)
                )));
            }
        };
        match joined {
            Ok(res) => res,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => {
                // The task panicked: a bug. Say not-leader anyway.
                self.cell.set(
                    Role::Idle,
                    HealthLevel::Unhealthy,
                    "participation task failed",
                );
                Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "the etcd participation task of {} failed: {e}",
                        self.config.id
                    ),
                ))
            }
        }
    }

    /// The candidate key under lease `lease`.
    fn key(&self, lease: i64) -> String {
        self.layout.slot_key(lease, self.slot)
    }
}

pub(crate) struct Run {
    stop: Arc<Stop>,
    task: JoinHandle<Result<()>>,
}

/// One participant of an etcd election, laid out like Go's `concurrency.Election` so that
/// `etcdctl elect` participants share the election with it. See the crate docs.
///
/// [`EtcdElection::new`] makes a private [`EtcdSession`](crate::EtcdSession) for this one
/// election; [`EtcdSession::election`](crate::EtcdSession::election) puts many on one lease.
/// Neither does I/O; [`join`](Election::join) starts a background task that campaigns on the
/// session's lease and publishes the [`Status`]. [`resign`](Election::resign) and
/// [`close`](Election::close) publish that we no longer lead BEFORE removing our key (a
/// private session revokes its lease, which deletes the key). Dropping the handle aborts the
/// task; a private session's lease is left to expire, like a crash, while on a shared
/// session the key is deleted in the background.
pub struct EtcdElection {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdElection")
            .field("prefix", &self.inner.config.prefix)
            .field("id", &self.inner.config.id)
            .field("role", &self.inner.cell.get().role)
            .finish()
    }
}

impl EtcdElection {
    /// A participant for `config`, on a private session (its own connection and lease). No
    /// I/O happens until [`join`](Election::join), [`leader`](Election::leader) or
    /// [`participants`](Election::participants).
    pub fn new(config: EtcdConfig) -> Result<EtcdElection> {
        let shared = Shared::new(config.session(), true);
        Ok(Self::on_session(shared, config))
    }

    pub(crate) fn on_session(shared: Arc<Shared>, config: EtcdConfig) -> EtcdElection {
        let layout = Layout::new(&config.prefix);
        let cell = StatusCell::with_metrics(ElectionMetrics::new("etcd", config.prefix.clone()));
        cell.set_contact_bound(config.ttl());
        let (reg_id, slot) = shared.reserve(&config.prefix);
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            config,
            layout,
            reg_id,
            slot,
            cell,
            closed: AtomicBool::new(false),
            lease: StdMutex::new(None),
            refusal: Fatal::new(),
            run: Mutex::new(None),
        });
        shared.register(reg_id, &inner);
        EtcdElection { inner }
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The lease currently held (None when not joined or between leases): its id and the
    /// deadlines the leadership decisions are based on. For diagnostics and tests.
    pub fn lease(&self) -> Option<LeaseInfo> {
        let guard = self.inner.lease.lock().unwrap_or_else(|p| p.into_inner());
        let (id, ttl, rx) = guard.as_ref()?;
        let s = rx.borrow();
        if s.lost.is_some() {
            return None;
        }
        Some(LeaseInfo {
            id: *id,
            ttl: *ttl,
            last_renewal: s.last_renewal.into_std(),
            expires_no_earlier_than: s.expires.into_std(),
            drop_leadership_at: s.drop_at.into_std(),
        })
    }

    /// A compare-and-swap record at `key` (an absolute key, e.g.
    /// `/services/my-app/mode`) sharing this election's (session's) connection.
    pub fn record(&self, key: &str) -> Result<EtcdRecord> {
        let reads = self.inner.core().reads.clone();
        EtcdRecord::on_session(
            self.inner.conn().clone(),
            Some((self.inner.hub(), reads)),
            key,
        )
    }
}

impl Drop for EtcdElection {
    fn drop(&mut self) {
        // Like a process exit: stop at once.
        self.inner.cell.close("handle dropped");
        if let Ok(mut run) = self.inner.run.try_lock() {
            if let Some(r) = run.take() {
                r.task.abort();
            }
        }
        self.inner.unregister();
        let shared = &self.inner.shared;
        if shared.private || shared.closing.load(Ordering::SeqCst) {
            // A private session's lease expires on its own (or is revoked by close).
            return;
        }
        // The session lives on: our key would stay with its lease, so delete it.
        let Some(id) = self.lease().map(|l| l.id) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.inner.key(id);
        let conn = self.inner.conn().clone();
        rt.spawn(async move {
            let res = delete_key(&conn, &key, id).await;
            tracing::debug!(%key, ok = res.is_ok(), "election dropped: key deleted in the background");
        });
    }
}

/// Delete `key` if it is still held by lease `lease`.
async fn delete_key(conn: &Connection, key: &str, lease: i64) -> Result<()> {
    let txn = Txn::new()
        .when(vec![Compare::lease(key, CompareOp::Equal, lease)])
        .and_then(vec![TxnOp::delete(key, None)]);
    conn.txn("delete our candidate key", txn).await.map(|_| ())
}

#[async_trait]
impl Election for EtcdElection {
    fn id(&self) -> &str {
        &self.inner.config.id
    }

    async fn join(&self) -> Result<()> {
        let rx = self.inner.cell.subscribe();
        {
            let mut run = self.inner.run.lock().await;
            if self.inner.closed.load(Ordering::SeqCst) || self.inner.shared.is_closed() {
                return Err(Error::closed(&format!("etcd election of {}", self.id())));
            }
            let running = run.as_ref().is_some_and(|r| !r.task.is_finished());
            if !running {
                self.inner.refusal.clear();
                self.inner
                    .cell
                    .set(Role::Candidate, HealthLevel::Healthy, "joining");
                self.inner.shared.ensure_driver();
                let stop = Arc::new(Stop::default());
                let span = tracing::info_span!(
                    "etcd_election",
                    prefix = %self.inner.config.prefix,
                    id = %self.inner.config.id
                );
                let task = Task::new(self.inner.clone(), stop.clone());
                let task = tokio::spawn(task.run().instrument(span));
                *run = Some(Run { stop, task });
            }
        }
        let what = format!("etcd election of {}", self.id());
        participant::wait_joined(rx, Some(&self.inner.refusal), self.id(), &what, || None).await
    }

    async fn resign(&self) -> Result<()> {
        let mut run = self.inner.run.lock().await;
        let r = run.take();
        let stopped = self.inner.finish_stop(r, "resigned").await;
        if self.inner.shared.private {
            // A private session holds no lease while its election is not joined.
            let revoked = self.inner.shared.shutdown().await;
            return stopped.and(revoked);
        }
        stopped
    }

    async fn close(&self) -> Result<()> {
        let mut run = self.inner.run.lock().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        // Not leader from here on, for good: a closed cell publishes nothing more, so the
        // lease (and our key with it) can be revoked right away, while the participation
        // task winds down.
        self.inner.cell.close("closed");
        let r = run.take();
        let res = if self.inner.shared.private {
            // One LeaseRevoke (which deletes our key), concurrently with the task's end.
            let (revoked, stopped) = tokio::join!(
                self.inner.shared.shutdown(),
                self.inner.finish_stop(r, "closed")
            );
            stopped.and(revoked)
        } else {
            // The task deletes our key; the session's lease lives on.
            self.inner.finish_stop(r, "closed").await
        };
        self.inner.unregister();
        res
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.inner.cell.subscribe()
    }

    async fn leader(&self) -> Result<Option<Participant>> {
        Ok(read_queue(&self.inner, Some(1)).await?.into_iter().next())
    }

    /// Last contact: the send instant of the latest lease renewal etcd answered; safe until
    /// the lease keeper's step-down point (TTL minus its margin) after it.
    fn contact(&self) -> Contact {
        let guard = self.inner.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, rx)) = guard.as_ref() {
            let s = rx.borrow();
            if s.lost.is_none() {
                let last = s.last_renewal.into_std();
                self.inner.cell.touch(last);
                self.inner
                    .cell
                    .set_contact_bound(s.drop_at.into_std().saturating_duration_since(last));
            } else {
                // etcd said the lease is gone (revoked, expired, or the cluster was wiped):
                // a key under it may be someone else's leadership now; no grace. (Renewals
                // of a later lease are sent after this one's last: they count again.)
                self.inner.cell.forget_contact(s.last_renewal.into_std());
            }
        }
        self.inner.cell.contact()
    }

    async fn participants(&self) -> Result<Vec<Participant>> {
        read_queue(&self.inner, None).await
    }
}

/// Read the queue (every key of the election range by create revision) and the epoch
/// record in one consistent txn.
async fn read_queue(inner: &Inner, limit: Option<i64>) -> Result<Vec<Participant>> {
    let mut opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    if let Some(l) = limit {
        opts = opts.with_limit(l);
    }
    let txn = Txn::new().and_then(vec![
        TxnOp::get(inner.layout.range.clone(), Some(opts)),
        TxnOp::get(inner.layout.epoch_key.clone(), None),
    ]);
    let resp = inner.conn().txn("read the election", txn).await?;
    let gets = gets(&resp);
    let epoch = match first_kv(&gets, 1) {
        Some(kv) => Some(parse_epoch(kv.value())?),
        None => None,
    };
    let kvs = gets.first().map(|g| g.kvs()).unwrap_or_default();
    Ok(kvs
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let p = Participant::new(String::from_utf8_lossy(kv.value()), i == 0);
            match epoch {
                Some(e) => p.with_term(Term::new(e, kv.create_revision() as u64)),
                None => p,
            }
        })
        .collect())
}

fn gets(resp: &TxnResponse) -> Vec<etcd_client::GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

fn first_kv(gets: &[etcd_client::GetResponse], i: usize) -> Option<&KeyValue> {
    gets.get(i).and_then(|g| g.kvs().first())
}

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or(0)
}

/// Why the participation loop left its current step.
enum Flow {
    /// Stop requested (resign/close).
    Stop,
    /// A transient problem: report it, back off, go on with the same lease.
    Fail(Error),
    /// The lease is in doubt (renewals overdue or the keep-alive stream broke).
    Doubt,
    /// The server says our lease is gone: start over with a new one.
    LeaseLost(String),
}

impl From<Error> for Flow {
    fn from(e: Error) -> Self {
        if error::lease_gone(&e) {
            Flow::LeaseLost(e.to_string())
        } else {
            Flow::Fail(e)
        }
    }
}

type Step<T> = std::result::Result<T, Flow>;

/// What ended a wait in the queue.
enum QueueExit {
    /// Our key is gone while the lease lives: campaign again with the same lease.
    KeyGone,
    /// The epoch record is gone: recreate it, then campaign again.
    EpochGone,
}

/// The background participation task of one joined handle.
struct Task {
    inner: Arc<Inner>,
    stop: Arc<Stop>,
    backoff: Backoff,
    /// The session's lease this task campaigns with.
    lease: Option<Arc<Lease>>,
    /// Whether our key on the current lease has led: such a key never leads again after the
    /// lease was in doubt (a new key must carry a new, higher term), so it is deleted.
    led_with_lease: bool,
    /// Our key led before the lease fell into doubt: delete it before campaigning again.
    drop_key: bool,
    /// The newest lease grant failure of the session this task reported.
    seen_failure: u64,
    /// Our slot among the session's rounds in flight, from the start of a round until we
    /// lead or wait in the queue (see `ROUNDS_IN_FLIGHT`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Task {
    fn new(inner: Arc<Inner>, stop: Arc<Stop>) -> Self {
        let backoff = Backoff::for_ttl(inner.config.ttl);
        Task {
            inner,
            stop,
            backoff,
            lease: None,
            led_with_lease: false,
            drop_key: false,
            seen_failure: 0,
            slot: None,
        }
    }

    /// Take a slot among the session's rounds in flight (kept if we hold one).
    async fn pace(&mut self) -> Step<()> {
        if self.slot.is_none() {
            let rounds = self.core().rounds.clone();
            // The semaphore is never closed: this waits for a slot, never fails.
            self.slot = self.wait(rounds.acquire_owned()).await?.ok();
        }
        Ok(())
    }

    fn cell(&self) -> &StatusCell {
        &self.inner.cell
    }

    fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    fn core(&self) -> &Core {
        self.inner.core()
    }

    async fn run(mut self) -> Result<()> {
        self.participate().await;
        // Stopped: publish that we no longer lead FIRST, then remove our place.
        let reason = self.stop.reason().unwrap_or("stopped");
        self.cell().set(Role::Idle, HealthLevel::Healthy, reason);
        let res = self.release().await;
        if let Err(e) = &res {
            self.cell().set_health(HealthLevel::Degraded, e.to_string());
        }
        res
    }

    /// Take part until stopped. Never gives up on its own.
    async fn participate(&mut self) {
        loop {
            let flow = match self.session().await {
                Ok(never) => match never {},
                Err(f) => f,
            };
            // No slot is held while backing off or in doubt.
            self.slot = None;
            match flow {
                Flow::Stop => return,
                Flow::Fail(e) => {
                    if self.on_failure(e).await.is_err() {
                        return;
                    }
                }
                Flow::Doubt => match self.in_doubt().await {
                    Ok(()) => {}
                    Err(Flow::Stop) => return,
                    Err(Flow::LeaseLost(why)) => self.lease_lost(why),
                    Err(_) => {}
                },
                Flow::LeaseLost(why) => self.lease_lost(why),
            }
        }
    }

    /// Report a transient failure and back off (the role is kept: a leader stays leader
    /// only while its lease is safe, which the wait enforces).
    async fn on_failure(&mut self, e: Error) -> std::result::Result<(), ()> {
        let delay = self.backoff.next_delay();
        let refused = e.kind() == ErrorKind::PermissionDenied;
        let level = if refused {
            HealthLevel::Unhealthy
        } else {
            HealthLevel::Degraded
        };
        tracing::debug!(error = %e, ?delay, "etcd election step failed; retrying");
        self.cell()
            .set_health(level, format!("{e}; retrying in {}", Human(delay)));
        if refused {
            // Health first, so that `join` returning this error finds it published.
            self.inner.refusal.report(e.kind(), e.message());
        }
        let flow = match self.wait(tokio::time::sleep(delay)).await {
            Ok(()) => return Ok(()),
            Err(Flow::Doubt) => match self.in_doubt().await {
                Ok(()) => return Ok(()),
                Err(f) => f,
            },
            Err(f) => f,
        };
        match flow {
            Flow::Stop => Err(()),
            Flow::LeaseLost(why) => {
                self.lease_lost(why);
                Ok(())
            }
            Flow::Fail(_) | Flow::Doubt => Ok(()),
        }
    }

    fn lease_lost(&mut self, why: String) {
        tracing::info!(%why, "etcd lease lost; campaigning again with a new lease");
        self.cell().metrics().count(metrics::LEASE_LOSSES, &[]);
        if let Some(l) = &self.lease {
            l.declare_lost(why.clone());
        }
        self.set_lease(None);
        // We are not leader: the lease was in doubt before it could be lost, or it was
        // revoked/wiped under us. Our key is gone with the lease.
        self.cell().set(
            Role::Candidate,
            HealthLevel::Unhealthy,
            format!("{why}; campaigning again with a new lease"),
        );
    }

    fn set_lease(&mut self, lease: Option<Arc<Lease>>) {
        let view = lease.as_ref().map(|l| (l.id, l.ttl, l.state.clone()));
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = view;
        self.lease = lease;
        self.led_with_lease = false;
        self.drop_key = false;
    }

    /// Await `fut` unless stop is requested or the lease falls into doubt or is lost.
    async fn wait<F: Future>(&mut self, fut: F) -> Step<F::Output> {
        tokio::pin!(fut);
        let mut lease_rx = self.lease.as_ref().map(|l| l.state.clone());
        loop {
            if self.stop.reason().is_some() {
                return Err(Flow::Stop);
            }
            // No timer of our own: the keeper publishes a change when `drop_at` passes.
            if let Some(rx) = lease_rx.as_mut() {
                let s = rx.borrow_and_update();
                if let Some(l) = &s.lost {
                    return Err(Flow::LeaseLost(l.to_string()));
                }
                if !s.safe_at(Instant::now()) {
                    return Err(Flow::Doubt);
                }
            }
            tokio::select! {
                biased;
                _ = self.stop.requested() => return Err(Flow::Stop),
                r = async { lease_rx.as_mut().expect("guarded").changed().await }, if lease_rx.is_some() => {
                    if r.is_err() {
                        return Err(Flow::LeaseLost("the lease keeper stopped".into()));
                    }
                }
                out = &mut fut => return Ok(out),
            }
        }
    }

    /// Like [`wait`](Self::wait) for a fallible etcd call. `fut` is boxed before anything
    /// else, so that the caller's future holds a pointer, not the step itself (each
    /// election's task stays small while it waits).
    fn call<'a, T: 'a, F>(&'a mut self, fut: F) -> impl Future<Output = Step<T>> + 'a
    where
        F: Future<Output = Result<T>> + 'a,
    {
        let fut = Box::pin(fut);
        async move { Ok(self.wait(fut).await??) }
    }

    /// One round: connect, take the session's lease, campaign, wait in the queue. Returns
    /// only by leaving with a [`Flow`].
    async fn session(&mut self) -> Step<std::convert::Infallible> {
        let usable = self.lease.as_ref().is_some_and(|l| !l.is_lost());
        if !usable {
            self.acquire_lease().await?;
        }
        if self.drop_key {
            self.pace().await?;
            self.delete_own_key().await?;
        }
        loop {
            self.pace().await?;
            self.ensure_epoch().await?;
            if let Some(my_rev) = self.campaign().await? {
                match self.queue(my_rev).await? {
                    QueueExit::KeyGone | QueueExit::EpochGone => {}
                }
            }
            // Our key or the epoch record was deleted under us: campaign again, paced (the
            // backoff restarts from its base after every successful read of the queue).
            self.slot = None;
            let delay = self.backoff.next_delay();
            self.wait(tokio::time::sleep(delay)).await?;
        }
    }

    /// Wait for the session's current lease (the session grants it); a grant failure not
    /// reported yet is returned as this task's failure.
    async fn acquire_lease(&mut self) -> Step<()> {
        self.inner.shared.ensure_driver();
        let mut rx = self.core().view.subscribe();
        loop {
            if self.stop.reason().is_some() {
                return Err(Flow::Stop);
            }
            let view = rx.borrow_and_update().clone();
            match view {
                LeaseView::Granted(l) if !l.is_lost() => {
                    self.set_lease(Some(l));
                    return Ok(());
                }
                LeaseView::Failed(n, kind, msg) if n > self.seen_failure => {
                    self.seen_failure = n;
                    return Err(Flow::Fail(Error::new(kind, msg.to_string())));
                }
                _ => {}
            }
            tokio::select! {
                biased;
                _ = self.stop.requested() => return Err(Flow::Stop),
                r = rx.changed() => if r.is_err() { return Err(Flow::Stop) },
            }
        }
    }

    /// Delete our key (it led before the lease fell into doubt), so that we campaign again
    /// with a new key and a new, higher term.
    async fn delete_own_key(&mut self) -> Step<()> {
        let (lease, key) = self.our_key()?;
        let conn = self.inner.conn().clone();
        self.call(delete_key(&conn, &key, lease)).await?;
        self.drop_key = false;
        Ok(())
    }

    /// Read the epoch record, creating it if absent with
    /// `max(now_ms, highest epoch seen + 1)`.
    async fn ensure_epoch(&mut self) -> Step<()> {
        let key = self.inner.layout.epoch_key.clone();
        let value = now_ms().max(self.core().epoch_seen.load(Ordering::Relaxed) + 1);
        let txn = Txn::new()
            .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key.clone(), value.to_string(), None)])
            .or_else(vec![TxnOp::get(key, None)]);
        let conn = self.inner.conn().clone();
        let resp = self.call(conn.txn("create the epoch record", txn)).await?;
        let epoch = if resp.succeeded() {
            tracing::info!(epoch = value, "created the epoch record");
            value
        } else {
            match first_kv(&gets(&resp), 0) {
                Some(kv) => parse_epoch(kv.value()).map_err(Flow::Fail)?,
                None => {
                    return Err(Flow::Fail(
                        Error::new(
                            ErrorKind::Backend,
                            "the epoch record vanished while being read; retrying",
                        )
                        .with_retryable(true),
                    ))
                }
            }
        };
        self.core().saw_epoch(epoch);
        Ok(())
    }

    /// Our lease and the candidate key it names (`<prefix>/<lease hex>`).
    fn our_key(&self) -> Step<(i64, String)> {
        let lease = self
            .lease
            .as_ref()
            .map(|l| l.id)
            .ok_or_else(|| Flow::LeaseLost("no lease".into()))?;
        Ok((lease, self.inner.key(lease)))
    }

    /// Put our key if absent (Go's campaign txn), requiring the epoch record to exist.
    /// Returns our key's create revision, or None when the epoch record is gone (recreate
    /// it first).
    async fn campaign(&mut self) -> Step<Option<i64>> {
        let (lease, key) = self.our_key()?;
        let ekey = self.inner.layout.epoch_key.clone();
        let id = self.config().id.clone();
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::version(ekey.clone(), CompareOp::Greater, 0),
            ])
            .and_then(vec![
                TxnOp::put(key.clone(), id, Some(PutOptions::new().with_lease(lease))),
                TxnOp::get(ekey.clone(), None),
            ])
            .or_else(vec![TxnOp::get(key, None), TxnOp::get(ekey, None)]);
        let conn = self.inner.conn().clone();
        let resp = self.call(conn.txn("campaign", txn)).await?;
        let gets = gets(&resp);
        if resp.succeeded() {
            tracing::debug!(rev = header_revision(&resp), "campaign: key created");
            return Ok(Some(header_revision(&resp)));
        }
        if first_kv(&gets, 1).is_none() {
            return Ok(None);
        }
        match first_kv(&gets, 0) {
            Some(kv) => Ok(Some(kv.create_revision())),
            // Neither branch condition explains this (e.g. a concurrent delete): try again.
            None => Ok(None),
        }
    }

    /// Wait in the queue: lead while first, else watch the predecessor's deletion.
    ///
    /// Each round opens one watch stream on our key and the epoch record BEFORE reading the
    /// queue, then reads it (one txn), then adds the predecessor to the same stream. When the
    /// predecessor was the leader at that read and its deletion arrives with nothing before it
    /// on our key or the epoch record, we lead at once, without reading again: see
    /// [`QueueWatch`] for why that is the same fact a fresh read would give.
    async fn queue(&mut self, my_rev: i64) -> Step<QueueExit> {
        let (lease, key) = self.our_key()?;
        let range = self.inner.layout.range.clone();
        let epoch_key = self.inner.layout.epoch_key.clone();
        // When we saw the leader before us leave (for the handover metric).
        let mut vacated: Option<std::time::Instant> = None;
        loop {
            self.pace().await?;
            let conn = self.inner.conn().clone();
            let hub = self.inner.hub();
            let mut watch = self
                .call(QueueWatch::open(&conn, hub, &key, &epoch_key))
                .await?;
            let txn = Txn::new().and_then(vec![
                // The leader: the first key by create revision.
                TxnOp::get(
                    range.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                ),
                // Who is ahead of us: the keys with the greatest create revisions below ours
                // (our predecessor first), and whether there are more.
                TxnOp::get(
                    range.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_max_create_revision(my_rev - 1)
                            .with_limit(AHEAD_WATCHED as i64),
                    ),
                ),
                TxnOp::get(key.clone(), None),
                TxnOp::get(epoch_key.clone(), None),
            ]);
            let conn = self.inner.conn().clone();
            let resp = self.call(conn.txn("read the queue", txn)).await?;
            // Take what the round needs out of the response and drop it before waiting: an
            // idle participant must not keep a txn response alive.
            let (rev, mine, epoch, keys, count, leader) = {
                let rev = header_revision(&resp);
                let gets = gets(&resp);
                // Our key: created at our campaign's revision AND under our lease (a revision
                // alone could be reused after a wipe, which restarts revisions).
                let mine = first_kv(&gets, 2)
                    .filter(|kv| kv.lease() == lease)
                    .map(|kv| kv.create_revision());
                let epoch = first_kv(&gets, 3).map(|kv| parse_epoch(kv.value()));
                let ahead = gets.get(1).map(|g| g.kvs()).unwrap_or_default();
                let first = first_kv(&gets, 0);
                let leader = first.map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                // How many keys were created before ours, at this read: exact when etcd says
                // there are no more than it returned (its `count` ignores the create-revision
                // filter), else "more than we watch". No key can be created before ours any
                // more (revisions only grow; a wipe ends the watch stream).
                let more = gets.get(1).is_some_and(|g| g.more());
                let count = ahead.len() as i64 + i64::from(more);
                let keys: Vec<(Vec<u8>, bool)> = ahead
                    .iter()
                    .map(|kv| {
                        let leads = first.is_some_and(|f| f.key() == kv.key());
                        (kv.key().to_vec(), leads)
                    })
                    .collect();
                (rev, mine, epoch, keys, count, leader)
            };
            drop(resp);
            // The round's requests are done: waiting (or leading) holds no slot.
            self.slot = None;
            if mine != Some(my_rev) {
                let was_leader = self.cell().get().role.is_leader();
                self.cell().set(
                    Role::Candidate,
                    HealthLevel::Degraded,
                    "our candidate key was deleted; campaigning again",
                );
                tracing::info!(was_leader, "candidate key deleted under us");
                return Ok(QueueExit::KeyGone);
            }
            let epoch = match epoch {
                Some(e) => e.map_err(Flow::Fail)?,
                None => return Ok(QueueExit::EpochGone),
            };
            self.core().saw_epoch(epoch);
            self.backoff.reset();
            // Progress: an earlier refusal (e.g. permission denied) no longer holds.
            self.inner.refusal.clear();
            let term = Term::new(epoch, my_rev as u64);
            if keys.is_empty() {
                drop(leader);
                self.lead(term, vacated.take(), "first in the queue")?;
            } else {
                watch.add_ahead(keys, rev + 1);
                self.cell().set(
                    Role::Follower { leader },
                    HealthLevel::Healthy,
                    "waiting for the predecessor's key to be deleted",
                );
                match self.call(watch.ahead_gone(count)).await? {
                    Vacated::Confirmed => {
                        // Every key that was ahead of us is deleted, and our key and the epoch
                        // record are as read (a change of either would have come first on
                        // this stream): what a re-read would say.
                        let at = std::time::Instant::now();
                        self.lead(
                            term,
                            Some(at),
                            "first in the queue (the keys ahead of ours were deleted)",
                        )?;
                    }
                    Vacated::Reread { leader_left } => {
                        vacated = leader_left.then(std::time::Instant::now);
                        continue;
                    }
                }
            }
            // Lead until our key is deleted (or the lease falls into doubt).
            self.call(watch.own_key_deleted()).await?;
        }
    }

    /// Publish `Leader` with `term` (after checking the lease), recording a handover that
    /// started at `vacated` (when we saw the leader before us leave).
    fn lead(
        &mut self,
        term: Term,
        vacated: Option<std::time::Instant>,
        reason: &'static str,
    ) -> Step<()> {
        let Some(lease) = self.lease.clone() else {
            return Err(Flow::Doubt);
        };
        let cell = &self.inner.cell;
        // Under the registry lock: the keeper demotes every leader of the session under the
        // same lock before it publishes a lease in doubt, so we either see the doubt here or
        // are demoted by the keeper after publishing.
        let published = self.core().registry.locked(|| {
            if !lease.state.borrow().safe_at(Instant::now()) {
                return None;
            }
            // Recorded before publishing, so whoever sees `Leader` also sees it.
            if let Some(at) = vacated {
                cell.metrics().handover(at);
            }
            Some(cell.set(Role::Leader { term }, HealthLevel::Healthy, reason))
        });
        match published {
            None => Err(Flow::Doubt),
            Some(changed) => {
                self.led_with_lease = true;
                if changed {
                    tracing::info!(%term, "leading");
                }
                Ok(())
            }
        }
    }

    /// The lease is in doubt: step down (Suspended) and wait until renewals are answered
    /// again (Ok) or the lease is lost / stop is requested (Err).
    async fn in_doubt(&mut self) -> Step<()> {
        let Some(lease) = self.lease.as_ref() else {
            return Ok(());
        };
        let mut rx = lease.state.clone();
        let joined = {
            let role = self.cell().get().role;
            role.is_joined() || role == Role::Suspended
        };
        loop {
            if self.stop.reason().is_some() {
                return Err(Flow::Stop);
            }
            let s = rx.borrow_and_update().clone();
            let now = Instant::now();
            if let Some(l) = &s.lost {
                return Err(Flow::LeaseLost(l.to_string()));
            }
            if s.safe_at(now) {
                break;
            }
            let (level, reason) = if now >= s.expires {
                (
                    HealthLevel::Unhealthy,
                    format!(
                        "{}; the lease may have expired on the server",
                        s.doubt_reason(now)
                    ),
                )
            } else {
                (HealthLevel::Degraded, s.doubt_reason(now))
            };
            let role = if joined {
                Role::Suspended
            } else {
                Role::Candidate
            };
            // Reasons carry a growing duration: only publish when the level or role changes.
            let cur = self.cell().get();
            if cur.role != role || cur.health.level != level {
                if cur.role.is_leader() {
                    tracing::warn!(%reason, "stepping down: lease in doubt");
                }
                self.cell().set(role.clone(), level, reason);
            }
            tokio::select! {
                biased;
                _ = self.stop.requested() => return Err(Flow::Stop),
                r = rx.changed() => if r.is_err() {
                    return Err(Flow::LeaseLost("the lease keeper stopped".into()));
                },
                _ = tokio::time::sleep_until(s.expires), if now < s.expires => {}
            }
        }
        // Renewals are answered again: the lease lives and our key (if any) with it.
        if self.led_with_lease {
            // Our key led and lost leadership: it must not lead again with the same term.
            // Delete it and campaign with a new key (the lease, shared, stays).
            tracing::info!("lease recovered after stepping down; replacing our key");
            self.led_with_lease = false;
            self.drop_key = true;
            self.cell().set(
                Role::Candidate,
                HealthLevel::Degraded,
                "our key led before the lease fell into doubt; campaigning again with a new key",
            );
        }
        Ok(())
    }

    /// After stop: remove our key, bounded in time. A private or closing session revokes
    /// its lease instead (one request for every key); otherwise the key is deleted, retried
    /// until the lease could have expired by itself, and a failure is reported.
    async fn release(&mut self) -> Result<()> {
        let lease = self.lease.take();
        self.set_lease(None);
        let shared = self.inner.shared.clone();
        if shared.private || shared.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(lease) = lease else {
            return Ok(());
        };
        if lease.is_lost() {
            return Ok(());
        }
        let id = lease.id;
        let key = self.inner.key(id);
        let deadline =
            (Instant::now() + self.config().request_timeout).max(lease.state.borrow().expires);
        drop(lease);
        let conn = self.inner.conn().clone();
        let delete = || delete_key(&conn, &key, id);
        match crate::conn::retry_until(deadline, self.config().ttl, "deleting our key", delete)
            .await
        {
            Ok(()) => {
                tracing::debug!(%key, "candidate key deleted");
                Ok(())
            }
            Err(e) => Err(Error::new(
                e.kind(),
                format!("could not delete our key {key} ({e}); it goes with the session's lease"),
            )),
        }
    }
}

/// How many of the keys ahead of ours (nearest first) a participant watches. Each key is
/// then watched by at most this many participants, so a deletion wakes at most this many;
/// with two, the participant second in line already knows, when the leader leaves, that only
/// its predecessor is left, and leads without a read when that one leaves too.
const AHEAD_WATCHED: usize = 2;

/// Which key a watcher of a [`QueueWatch`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Own,
    Epoch,
    /// A key ahead of ours; `leads`: it was the first key at the read; `gone`: deleted.
    Ahead {
        leads: bool,
        gone: bool,
    },
}

/// How a wait for the keys ahead of ours ended.
enum Vacated {
    /// Every key that was ahead of ours at the read is deleted, each deletion delivered
    /// live, with no change of our key or the epoch record before it.
    Confirmed,
    /// Something else happened (our key or the epoch record changed, a watcher was
    /// cancelled, a deletion came in a catch-up batch, or keys we do not watch may still be
    /// ahead): read the queue again. `leader_left`: the key that led at the read was deleted.
    Reread { leader_left: bool },
}

/// The watchers of one round in the queue, on the session's shared watch stream (see
/// `watch_hub.rs`; their responses reach us in stream order): watchers on our key and the
/// epoch record, created from "now" BEFORE the queue is read, and on the (up to
/// [`AHEAD_WATCHED`]) keys
/// nearest ahead of ours, added after the read from the read's revision + 1.
///
/// The read also says how many keys are ahead of ours (exactly, when there are no more than
/// we watch). That set can only shrink (a key created later has a higher create revision),
/// so once that many distinct watched keys were deleted, none is left: Go's
/// `concurrency.Election` condition for leading. Why those deletions, seen here with nothing
/// before them on the other two watchers, say what a read at the last deletion's revision
/// would say about our key and the epoch record:
/// - etcd (3.4 `v3rpc/watch.go`, `mvcc/watchable_store.go`) starts a watcher created without
///   a start revision at the store's revision + 1, which registers it as *synced*, and sends
///   the events of the synced watchers of one stream through one FIFO channel, revision by
///   revision, as each write is applied. A change of our key or the epoch record at a
///   revision below a deletion is therefore queued before it.
/// - The queue read is linearizable and issued after etcd acknowledged both watchers, so
///   every change after the read's revision is delivered here, and every change up to it is
///   in the read.
/// - A deletion is used only when delivered live (its response's header revision is the
///   deletion's own revision and it carries that single event); catch-up deliveries, which
///   can reorder watchers, re-read instead.
///
/// What this relies on beyond etcd's documented watch guarantees: that our key's and the
/// epoch record's watchers are synced while we wait. etcd leaves or moves a watcher out of
/// the synced group when a write is applied between its reading the store revision and
/// registering the watcher (microseconds; etcd's sync loop catches it up within 100 ms),
/// when the stream's channel is full (1024 responses in 3.4; a stream carries the watchers of
/// at most 256 elections of one session, a few responses each per handover),
/// or when the member restores a snapshot from the raft leader (a member that fell far
/// behind). Only if that coincides with someone else deleting our key or the epoch record
/// during the handover could we lead on a stale view; the watcher then reports the change
/// and we step down (our key) at its message.
///
/// A broken stream (etcd restarted or wiped) is an error: the caller backs off and re-reads.
struct QueueWatch {
    /// The session's shared watch stream this election's watchers are on.
    hub: WatchHub,
    /// Responses of our watchers, in stream order.
    inbox: Route,
    /// Watchers etcd acknowledged, with their ids.
    ids: Vec<(i64, Watched)>,
    /// The generation of the shared stream our watchers are on (for cancelling them).
    generation: u32,
    /// Watched keys ahead of ours not deleted yet.
    ahead_alive: i64,
    /// Watchers requested but not yet acknowledged, in request order (etcd acknowledges
    /// creates of one stream in order).
    pending: std::collections::VecDeque<Watched>,
    /// Our key or the epoch record changed since the stream opened.
    changed: bool,
    /// Our key was deleted since the stream opened.
    own_deleted: bool,
}

impl Drop for QueueWatch {
    fn drop(&mut self) {
        // Watchers not acknowledged yet are cancelled by the hub when their acknowledgement
        // finds this inbox closed.
        self.inbox.close();
        for (id, _) in &self.ids {
            self.hub.cancel(self.generation, *id);
        }
    }
}

/// What one watch response said.
enum Note {
    /// A watcher was acknowledged, or a change that needs no action.
    Nothing,
    /// Our key or the epoch record changed.
    Changed,
    /// A watched key ahead of ours was deleted (counted once per key); `live` as described
    /// on [`QueueWatch`]; `leads`: it was the first key at the read.
    AheadDeleted { live: bool, leads: bool },
    /// A watcher was cancelled by etcd (e.g. its start revision was compacted).
    Cancelled,
}

impl QueueWatch {
    /// Add watchers on `own` and `epoch` to the session's stream and wait until etcd
    /// acknowledged both.
    async fn open(conn: &Connection, hub: WatchHub, own: &str, epoch: &str) -> Result<QueueWatch> {
        let inbox = Route::default();
        hub.create(own, None, &inbox);
        hub.create(epoch, None, &inbox);
        let mut w = QueueWatch {
            hub,
            inbox,
            ids: Vec::with_capacity(3),
            generation: 0,
            pending: [Watched::Own, Watched::Epoch].into(),
            ahead_alive: 0,
            changed: false,
            own_deleted: false,
        };
        while !w.pending.is_empty() {
            let note = tokio::time::timeout(conn.config.request_timeout, w.next())
                .await
                .map_err(|_| {
                    Error::timeout(format!(
                        "etcd did not acknowledge a watch of our key within {}",
                        Human(conn.config.request_timeout)
                    ))
                })??;
            if matches!(note, Note::Cancelled) {
                return Err(Error::new(
                    ErrorKind::Backend,
                    "etcd cancelled a new watch of our key or the epoch record",
                )
                .with_retryable(true));
            }
        }
        Ok(w)
    }

    /// Add watchers on `keys` (each with whether it leads) from revision `from`.
    fn add_ahead(&mut self, keys: Vec<(Vec<u8>, bool)>, from: i64) {
        for (key, leads) in keys {
            self.pending
                .push_back(Watched::Ahead { leads, gone: false });
            self.ahead_alive += 1;
            self.hub.create(
                key,
                Some(WatchOptions::new().with_start_revision(from)),
                &self.inbox,
            );
        }
    }

    /// Wait until the `count` keys that were ahead of ours are all deleted (or for a reason
    /// to read the queue again).
    async fn ahead_gone(&mut self, mut count: i64) -> Result<Vacated> {
        let mut leader_left = false;
        loop {
            match self.next().await? {
                Note::Nothing => {}
                Note::AheadDeleted { live, leads } => {
                    leader_left |= leads;
                    count -= 1;
                    self.ahead_alive -= 1;
                    if !live || self.changed {
                        return Ok(Vacated::Reread { leader_left });
                    }
                    if count <= 0 {
                        return Ok(Vacated::Confirmed);
                    }
                    if count > self.ahead_alive {
                        // Keys we do not watch may be ahead: learn the new nearest ones.
                        return Ok(Vacated::Reread { leader_left });
                    }
                }
                Note::Changed | Note::Cancelled => return Ok(Vacated::Reread { leader_left }),
            }
        }
    }

    /// Wait until our key is deleted (Ok: the caller re-reads), ignoring other changes.
    async fn own_key_deleted(&mut self) -> Result<()> {
        while !self.own_deleted {
            if let Note::Cancelled = self.next().await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Read one response from the stream.
    async fn next(&mut self) -> Result<Note> {
        let resp = match self.inbox.recv().await {
            WatchMsg::Resp(resp, generation) => {
                self.generation = generation;
                *resp
            }
            WatchMsg::Ended(e) => return Err(*e),
        };
        if resp.created() {
            if let Some(w) = self.pending.pop_front() {
                self.ids.push((resp.watch_id(), w));
            }
        }
        if resp.canceled() {
            if resp.compact_revision() == 0 && !resp.cancel_reason().is_empty() {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                )
                .with_retryable(true));
            }
            return Ok(Note::Cancelled);
        }
        let events = resp.events();
        if events.is_empty() {
            return Ok(Note::Nothing);
        }
        let watched = self.ids.iter_mut().find(|(id, _)| *id == resp.watch_id());
        let deleted = events.iter().any(|e| e.event_type() == EventType::Delete);
        match watched.map(|(_, w)| w) {
            Some(Watched::Own) => {
                self.changed = true;
                self.own_deleted |= deleted;
                Ok(Note::Changed)
            }
            Some(Watched::Epoch) | None => {
                self.changed = true;
                Ok(Note::Changed)
            }
            Some(Watched::Ahead { leads, gone }) if deleted && !*gone => {
                *gone = true;
                let revision = resp.header().map(|h| h.revision());
                let live =
                    events.len() == 1 && events[0].kv().map(|kv| kv.mod_revision()) == revision;
                Ok(Note::AheadDeleted {
                    live,
                    leads: *leads,
                })
            }
            // A value changed (e.g. a Go leader's Proclaim), or a key deleted before was
            // created again (it is no longer ahead of ours): keep waiting.
            Some(Watched::Ahead { .. }) => Ok(Note::Nothing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EtcdSessionConfig;

    /// Each joined election keeps one campaign task: its future must stay small (requests
    /// and steps are boxed, and requests own their client clone, so neither a `Client` nor
    /// an etcd-client future sits in it while it waits). About 1.1 KiB in a debug build.
    #[test]
    fn campaign_task_future_stays_small() {
        let cfg = EtcdSessionConfig::builder()
            .endpoint("127.0.0.1:2379")
            .build()
            .unwrap();
        let shared = Shared::new(cfg.clone(), false);
        let e = EtcdElection::on_session(shared, cfg.election_config("/a", "x").unwrap());
        let fut = Task::new(e.inner.clone(), Arc::default()).run();
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "campaign task future is {size} bytes");
    }
}
