//! [`EtcdElection`]: the Go-compatible campaign on KV txn + Watch, driven by one background
//! task per joined handle.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
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
use crate::conn::{now_ms, parse_epoch, random_lease_id, Backoff, Connection, Layout};
use crate::error;
use crate::lease::{self, Lease, LeaseState};
use crate::record::EtcdRecord;

/// The highest epoch this process has seen in any epoch record: a recreated record gets at
/// least this plus one, so terms keep growing even if the wall clock lags.
static EPOCH_SEEN: AtomicU64 = AtomicU64::new(0);

fn saw_epoch(epoch: u64) {
    EPOCH_SEEN.fetch_max(epoch, Ordering::Relaxed);
}

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

/// What a stop request says: why we stop (published as the Idle reason).
type StopSignal = Option<&'static str>;

struct Inner {
    conn: Arc<Connection>,
    layout: Layout,
    cell: StatusCell,
    closed: AtomicBool,
    /// The current lease, for [`EtcdElection::lease`].
    lease: StdMutex<Option<(i64, Duration, watch::Receiver<LeaseState>)>>,
    /// A permanent refusal met by the background task (e.g. permission denied), for `join`.
    refusal: Fatal,
    /// The lease [`close`](Election::close) is revoking itself, with the outcome (None while
    /// the request is in flight, then whether etcd confirmed it): the participation task
    /// waits for that outcome instead of sending a second LeaseRevoke of the same lease.
    closing_revoke: StdMutex<Option<(i64, watch::Receiver<Option<bool>>)>>,
}

struct Run {
    stop: watch::Sender<StopSignal>,
    task: JoinHandle<Result<()>>,
}

/// One participant of an etcd election, laid out like Go's `concurrency.Election` so that
/// `etcdctl elect` participants share the election with it. See the crate docs.
///
/// [`EtcdElection::new`] does no I/O; [`join`](Election::join) starts a background task that
/// grants a lease, campaigns, keeps the lease alive and publishes the [`Status`].
/// [`resign`](Election::resign) and [`close`](Election::close) publish that we no longer
/// lead BEFORE revoking the lease (which deletes our key). Dropping the handle aborts the
/// task and leaves the lease to expire, like a crash.
pub struct EtcdElection {
    inner: Arc<Inner>,
    run: Mutex<Option<Run>>,
}

impl fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdElection")
            .field("prefix", &self.inner.conn.config.prefix)
            .field("id", &self.inner.conn.config.id)
            .field("role", &self.inner.cell.get().role)
            .finish()
    }
}

impl EtcdElection {
    /// A participant for `config`. No I/O happens until [`join`](Election::join),
    /// [`leader`](Election::leader) or [`participants`](Election::participants).
    pub fn new(config: EtcdConfig) -> Result<EtcdElection> {
        let layout = Layout::new(&config.prefix);
        let cell = StatusCell::with_metrics(ElectionMetrics::new("etcd", config.prefix.clone()));
        cell.set_contact_bound(config.ttl());
        Ok(EtcdElection {
            inner: Arc::new(Inner {
                conn: Arc::new(Connection::new(config)),
                layout,
                cell,
                closed: AtomicBool::new(false),
                lease: StdMutex::new(None),
                refusal: Fatal::new(),
                closing_revoke: StdMutex::new(None),
            }),
            run: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.conn.config
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
    /// `/services/my-app/mode`) sharing this election's connection.
    pub fn record(&self, key: &str) -> Result<EtcdRecord> {
        EtcdRecord::with_connection(self.inner.conn.clone(), key)
    }

    async fn stop(&self, run: &mut Option<Run>, reason: &'static str) -> Result<()> {
        let Some(r) = run.take() else {
            return Ok(());
        };
        let _ = r.stop.send(Some(reason));
        // The task obeys `stop` at every wait; its longest uninterruptible step is one
        // request. Never wait much longer than that.
        let bound = self.config().request_timeout() * 3 + self.config().ttl();
        let abort = r.task.abort_handle();
        let joined = match tokio::time::timeout(bound, r.task).await {
            Ok(j) => j,
            Err(_) => {
                abort.abort();
                self.inner.cell.set(
                    Role::Idle,
                    HealthLevel::Degraded,
                    "stopping took too long; the lease is left to expire",
                );
                return Err(Error::timeout(format!(
                    "stopping the etcd participation of {} took longer than {}; its lease expires on its own",
                    self.id(),
                    Human(bound)
                )));
            }
        };
        match joined {
            Ok(res) => res,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => {
                // The task panicked: a bug. Say not-leader anyway.
                self.inner.cell.set(
                    Role::Idle,
                    HealthLevel::Unhealthy,
                    "participation task failed",
                );
                Err(Error::new(
                    ErrorKind::Backend,
                    format!("the etcd participation task of {} failed: {e}", self.id()),
                ))
            }
        }
    }
}

impl Drop for EtcdElection {
    fn drop(&mut self) {
        // Like a process exit: stop at once, leave the lease to expire on the server.
        self.inner.cell.close("handle dropped");
        if let Some(r) = self.run.get_mut().take() {
            r.task.abort();
        }
    }
}

#[async_trait]
impl Election for EtcdElection {
    fn id(&self) -> &str {
        &self.inner.conn.config.id
    }

    async fn join(&self) -> Result<()> {
        let rx = self.inner.cell.subscribe();
        {
            let mut run = self.run.lock().await;
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(Error::closed(&format!("etcd election of {}", self.id())));
            }
            let running = run.as_ref().is_some_and(|r| !r.task.is_finished());
            if !running {
                self.inner.refusal.clear();
                self.inner
                    .cell
                    .set(Role::Candidate, HealthLevel::Healthy, "joining");
                let (stop_tx, stop_rx) = watch::channel(None);
                let span = tracing::info_span!(
                    "etcd_election",
                    prefix = %self.inner.conn.config.prefix,
                    id = %self.inner.conn.config.id
                );
                let task = Task::new(self.inner.clone(), stop_rx);
                let task = tokio::spawn(task.run().instrument(span));
                *run = Some(Run {
                    stop: stop_tx,
                    task,
                });
            }
        }
        let what = format!("etcd election of {}", self.id());
        participant::wait_joined(rx, Some(&self.inner.refusal), self.id(), &what, || None).await
    }

    async fn resign(&self) -> Result<()> {
        let mut run = self.run.lock().await;
        self.stop(&mut run, "resigned").await
    }

    async fn close(&self) -> Result<()> {
        let mut run = self.run.lock().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        // Not leader from here on, for good: a closed cell publishes nothing more, so the
        // lease (and our key with it) can be revoked right away, while the participation
        // task winds down (it revokes again; a revoked lease counts as released).
        self.inner.cell.close("closed");
        let lease = self.lease().map(|l| l.id);
        let conn = self.inner.conn.clone();
        // One LeaseRevoke, not two: the task waits for this one's outcome (a second revoke
        // of the same lease is another raft write that close() would wait for).
        let (outcome, outcome_rx) = watch::channel(None);
        if let Some(id) = lease {
            *self
                .inner
                .closing_revoke
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((id, outcome_rx));
        }
        let revoke_now = async move {
            let Some(id) = lease else { return };
            let revoked = match conn.client().await {
                Ok(client) => lease::revoke(&conn, &client, id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &revoked {
                tracing::debug!(error = %e, "early revoke failed; the task retries");
            }
            let _ = outcome.send(Some(revoked.is_ok()));
        };
        let ((), res) = tokio::join!(revoke_now, self.stop(&mut run, "closed"));
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
    let client = inner.conn.client().await?;
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
    let mut c = client.clone();
    let resp = inner.conn.request("read the election", c.txn(txn)).await?;
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
    stop: watch::Receiver<StopSignal>,
    backoff: Backoff,
    lease: Option<Lease>,
    /// Whether the current lease's key has led: such a key never leads again after a
    /// loss (a new grant must carry a new, higher term), so its lease is given up.
    led_with_lease: bool,
    /// Leases that may exist on the server and must be revoked (grant outcome unknown,
    /// or given up while the server was unreachable).
    /// Each is revoked best effort; a failure is not fatal: such a lease has no renewals,
    /// so it expires on its own within its TTL (and is forgotten after that).
    orphans: Vec<(i64, Instant)>,
}

impl Task {
    fn new(inner: Arc<Inner>, stop: watch::Receiver<StopSignal>) -> Self {
        let backoff = Backoff::for_config(&inner.conn.config);
        Task {
            inner,
            stop,
            backoff,
            lease: None,
            led_with_lease: false,
            orphans: Vec::new(),
        }
    }

    fn cell(&self) -> &StatusCell {
        &self.inner.cell
    }

    fn config(&self) -> &EtcdConfig {
        &self.inner.conn.config
    }

    async fn run(mut self) -> Result<()> {
        self.participate().await;
        // Stopped: publish that we no longer lead FIRST, then remove our place.
        let reason = self.stop.borrow().unwrap_or("stopped");
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
        self.set_lease(None);
        // We are not leader: the lease was in doubt before it could be lost, or it was
        // revoked/wiped under us. Our key is gone with the lease.
        self.cell().set(
            Role::Candidate,
            HealthLevel::Unhealthy,
            format!("{why}; campaigning again with a new lease"),
        );
    }

    fn set_lease(&mut self, lease: Option<Lease>) {
        let view = lease.as_ref().map(|l| (l.id, l.ttl, l.state.clone()));
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = view;
        self.lease = lease;
        self.led_with_lease = false;
    }

    fn lease_safe(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.state.borrow().safe_at(Instant::now()))
    }

    /// Await `fut` unless stop is requested or the lease falls into doubt or is lost.
    async fn wait<F: Future>(&mut self, fut: F) -> Step<F::Output> {
        tokio::pin!(fut);
        let mut lease_rx = self.lease.as_ref().map(|l| l.state.clone());
        loop {
            if self.stop.borrow_and_update().is_some() {
                return Err(Flow::Stop);
            }
            let drop_at = match lease_rx.as_mut() {
                Some(rx) => {
                    let s = rx.borrow_and_update();
                    if let Some(l) = &s.lost {
                        return Err(Flow::LeaseLost(l.to_string()));
                    }
                    if !s.safe_at(Instant::now()) {
                        return Err(Flow::Doubt);
                    }
                    Some(s.drop_at)
                }
                None => None,
            };
            tokio::select! {
                biased;
                r = self.stop.changed() => {
                    if r.is_err() {
                        return Err(Flow::Stop);
                    }
                }
                r = async { lease_rx.as_mut().expect("guarded").changed().await }, if lease_rx.is_some() => {
                    if r.is_err() {
                        return Err(Flow::LeaseLost("the lease keeper stopped".into()));
                    }
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or_else(Instant::now)), if drop_at.is_some() => {}
                out = &mut fut => return Ok(out),
            }
        }
    }

    /// Like [`wait`](Self::wait) for a fallible etcd call.
    async fn call<T, F: Future<Output = Result<T>>>(&mut self, fut: F) -> Step<T> {
        Ok(self.wait(fut).await??)
    }

    /// One session: connect, hold a lease, campaign, wait in the queue. Returns only by
    /// leaving with a [`Flow`].
    async fn session(&mut self) -> Step<std::convert::Infallible> {
        let client = self.call(self.inner.conn.clone().client_owned()).await?;
        self.revoke_orphans(&client).await?;
        let usable = self.lease.as_ref().is_some_and(|l| !l.is_lost());
        if !usable {
            self.grant(&client).await?;
        }
        loop {
            self.ensure_epoch(&client).await?;
            if let Some(my_rev) = self.campaign(&client).await? {
                match self.queue(&client, my_rev).await? {
                    QueueExit::KeyGone | QueueExit::EpochGone => {}
                }
            }
            // Our key or the epoch record was deleted under us: campaign again, paced (the
            // backoff restarts from its base after every successful read of the queue).
            let delay = self.backoff.next_delay();
            self.wait(tokio::time::sleep(delay)).await?;
        }
    }

    /// Grant a new lease. Not interruptible by stop (bounded by the request timeout), so
    /// that we always know which leases may exist.
    async fn grant(&mut self, client: &Client) -> Step<()> {
        if self.stop.borrow().is_some() {
            return Err(Flow::Stop);
        }
        let id = random_lease_id();
        match Lease::grant(&self.inner.conn, client, id).await {
            Ok(lease) => {
                self.set_lease(Some(lease));
                Ok(())
            }
            Err(e) => {
                if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection) {
                    // The grant may have been applied without us hearing of it.
                    self.orphans.push((id, Instant::now()));
                }
                Err(Flow::Fail(e))
            }
        }
    }

    async fn revoke_orphans(&mut self, client: &Client) -> Step<()> {
        let cfg = self.config();
        let forget_after = cfg.ttl + cfg.request_timeout * 2;
        let now = Instant::now();
        self.orphans
            .retain(|(_, since)| now.saturating_duration_since(*since) < forget_after);
        let mut kept = Vec::new();
        for (id, since) in std::mem::take(&mut self.orphans) {
            let conn = self.inner.conn.clone();
            match self.wait(lease::revoke(&conn, client, id)).await {
                Ok(Ok(())) => {
                    tracing::debug!(lease = %format_args!("{id:x}"), "revoked a given-up lease")
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = %format_args!("{id:x}"), error = %e, "could not revoke a given-up lease");
                    kept.push((id, since));
                }
                Err(flow) => {
                    kept.push((id, since));
                    self.orphans.extend(kept);
                    return Err(flow);
                }
            }
        }
        self.orphans.extend(kept);
        Ok(())
    }

    /// Read the epoch record, creating it if absent with
    /// `max(now_ms, highest epoch seen + 1)`.
    async fn ensure_epoch(&mut self, client: &Client) -> Step<()> {
        let key = self.inner.layout.epoch_key.clone();
        let value = now_ms().max(EPOCH_SEEN.load(Ordering::Relaxed) + 1);
        let txn = Txn::new()
            .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key.clone(), value.to_string(), None)])
            .or_else(vec![TxnOp::get(key, None)]);
        let mut c = client.clone();
        let conn = self.inner.conn.clone();
        let resp = self
            .call(conn.request("create the epoch record", c.txn(txn)))
            .await?;
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
        saw_epoch(epoch);
        Ok(())
    }

    /// Our lease and the candidate key it names (`<prefix>/<lease hex>`).
    fn our_key(&self) -> Step<(i64, String)> {
        let lease = self
            .lease
            .as_ref()
            .map(|l| l.id)
            .ok_or_else(|| Flow::LeaseLost("no lease".into()))?;
        Ok((lease, self.inner.layout.candidate_key(lease)))
    }

    /// Put our key if absent (Go's campaign txn), requiring the epoch record to exist.
    /// Returns our key's create revision, or None when the epoch record is gone (recreate
    /// it first).
    async fn campaign(&mut self, client: &Client) -> Step<Option<i64>> {
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
        let mut c = client.clone();
        let conn = self.inner.conn.clone();
        let resp = self.call(conn.request("campaign", c.txn(txn))).await?;
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
    async fn queue(&mut self, client: &Client, my_rev: i64) -> Step<QueueExit> {
        let (_, key) = self.our_key()?;
        let range = self.inner.layout.range.clone();
        // When we saw the leader before us leave (for the handover metric).
        let mut vacated: Option<std::time::Instant> = None;
        loop {
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
                // Our predecessor: the key with the greatest create revision below ours.
                TxnOp::get(
                    range.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_max_create_revision(my_rev - 1)
                            .with_limit(1),
                    ),
                ),
                TxnOp::get(key.clone(), None),
                TxnOp::get(self.inner.layout.epoch_key.clone(), None),
            ]);
            let mut c = client.clone();
            let conn = self.inner.conn.clone();
            let resp = self
                .call(conn.request("read the queue", c.txn(txn)))
                .await?;
            let rev = header_revision(&resp);
            let gets = gets(&resp);
            let mine = first_kv(&gets, 2).map(|kv| kv.create_revision());
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
            let epoch = match first_kv(&gets, 3) {
                Some(kv) => parse_epoch(kv.value()).map_err(Flow::Fail)?,
                None => return Ok(QueueExit::EpochGone),
            };
            saw_epoch(epoch);
            self.backoff.reset();
            // Progress: an earlier refusal (e.g. permission denied) no longer holds.
            self.inner.refusal.clear();
            match first_kv(&gets, 1) {
                None => {
                    if !self.lease_safe() {
                        return Err(Flow::Doubt);
                    }
                    let term = Term::new(epoch, my_rev as u64);
                    self.led_with_lease = true;
                    // Recorded before publishing, so whoever sees `Leader` also sees it.
                    if let Some(at) = vacated.take() {
                        self.cell().metrics().handover(at);
                    }
                    if self.cell().set(
                        Role::Leader { term },
                        HealthLevel::Healthy,
                        "first in the queue",
                    ) {
                        tracing::info!(%term, "leading");
                    }
                    // Lead until our key is deleted (or the lease falls into doubt).
                    let w = watch_delete(
                        self.inner.conn.clone(),
                        client.clone(),
                        key.clone(),
                        rev + 1,
                    );
                    self.call(w).await?;
                }
                Some(pred) => {
                    let leader = first_kv(&gets, 0)
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    let pred_key = pred.key().to_vec();
                    let pred_leads = first_kv(&gets, 0).is_some_and(|kv| kv.key() == pred.key());
                    self.cell().set(
                        Role::Follower { leader },
                        HealthLevel::Healthy,
                        "waiting for the predecessor's key to be deleted",
                    );
                    let w =
                        watch_delete(self.inner.conn.clone(), client.clone(), pred_key, rev + 1);
                    self.call(w).await?;
                    vacated = pred_leads.then(std::time::Instant::now);
                }
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
            if self.stop.borrow_and_update().is_some() {
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
                r = self.stop.changed() => if r.is_err() { return Err(Flow::Stop) },
                r = rx.changed() => if r.is_err() {
                    return Err(Flow::LeaseLost("the lease keeper stopped".into()));
                },
                _ = tokio::time::sleep_until(s.expires), if now < s.expires => {}
            }
        }
        // Renewals are answered again: the lease lives and our key (if any) with it.
        if self.led_with_lease {
            // Our key led and lost leadership: it must not lead again with the same term.
            // Give the lease up (deleting the key) and campaign with a new one.
            tracing::info!("lease recovered after stepping down; re-joining with a new lease");
            self.abandon_lease().await?;
        }
        Ok(())
    }

    /// Revoke the current lease (bounded) and forget it; on failure it becomes an orphan.
    async fn abandon_lease(&mut self) -> Step<()> {
        let Some(l) = self.lease.take() else {
            return Ok(());
        };
        let id = l.id;
        self.set_lease(None);
        drop(l);
        self.cell().set(
            Role::Candidate,
            HealthLevel::Degraded,
            "gave up the lease our key led with; campaigning again with a new lease",
        );
        self.orphans.push((id, Instant::now()));
        Ok(())
    }

    /// Whether `close()` revoked lease `id` itself (waiting for its answer, bounded by the
    /// request timeout). False when it did not try, failed, or did not answer in time: the
    /// caller then revokes on its own.
    async fn closing_revoked(&self, id: i64) -> bool {
        let pending = self
            .inner
            .closing_revoke
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((lease, mut rx)) = pending.filter(|(lease, _)| *lease == id) else {
            return false;
        };
        debug_assert_eq!(lease, id);
        let wait = async { rx.wait_for(Option::is_some).await.map(|o| *o == Some(true)) };
        matches!(
            tokio::time::timeout(self.config().request_timeout, wait).await,
            Ok(Ok(true))
        )
    }

    /// After stop: revoke every lease that may exist, bounded in time. Orphans get one
    /// attempt each (they expire on their own); the current lease, which holds our key, is
    /// retried until it could have expired by itself, and a failure is reported.
    async fn release(&mut self) -> Result<()> {
        let conn = self.inner.conn.clone();
        for (id, _) in std::mem::take(&mut self.orphans) {
            let attempt = async {
                let client = conn.client().await?;
                lease::revoke(&conn, &client, id).await
            };
            if let Err(e) = attempt.await {
                tracing::debug!(lease = %format_args!("{id:x}"), error = %e, "could not revoke a given-up lease");
            }
        }
        let Some(l) = self.lease.as_ref() else {
            return Ok(());
        };
        let id = l.id;
        // Until the lease could expire by itself, keep trying.
        let deadline =
            (Instant::now() + self.config().request_timeout).max(l.state.borrow().expires);
        self.set_lease(None);
        if self.closing_revoked(id).await {
            tracing::debug!(lease = %format_args!("{id:x}"), "lease revoked by close()");
            return Ok(());
        }
        let mut backoff = Backoff::for_config(self.config());
        loop {
            let attempt = async {
                let client = conn.client().await?;
                lease::revoke(&conn, &client, id).await
            };
            match attempt.await {
                Ok(()) => {
                    tracing::debug!(lease = %format_args!("{id:x}"), "lease revoked");
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "revoke failed; retrying");
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.next_delay().min(left)).await;
                }
                Err(e) => {
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "could not revoke lease {id:x} ({e}); it expires on its own within {}",
                            Human(self.config().ttl)
                        ),
                    ))
                }
            }
        }
    }
}

/// Watch `key` from revision `from` until it is deleted (Ok), or until etcd cancels the
/// watch (Ok: the caller re-reads; e.g. the revision was compacted). A broken stream is an
/// error (the caller backs off and re-reads).
async fn watch_delete(
    conn: Arc<Connection>,
    client: Client,
    key: impl Into<Vec<u8>>,
    from: i64,
) -> Result<()> {
    let mut c = client;
    let mut stream = conn
        .request(
            "watch a key",
            c.watch(key, Some(WatchOptions::new().with_start_revision(from))),
        )
        .await?;
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled() {
                    if resp.compact_revision() == 0 && !resp.cancel_reason().is_empty() {
                        return Err(Error::new(
                            ErrorKind::Backend,
                            format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                        )
                        .with_retryable(true));
                    }
                    return Ok(());
                }
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return Ok(());
                }
            }
            Ok(None) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    "the watch stream ended (etcd restarted or the member went away); re-reading",
                ))
            }
            Err(e) => return Err(error::map("watch a key", e)),
        }
    }
}
