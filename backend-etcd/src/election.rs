//! [`EtcdElection`]: the Go-compatible campaign on KV txn + Watch, driven by one background
//! task per joined handle, on the lease of its [`EtcdSession`](crate::EtcdSession).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::stream::{FuturesUnordered, StreamExt};
use succession_core::metrics::{self, ElectionMetrics};
use succession_core::participant::{self, Fatal, Machine};
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
use crate::conn::{now_ms, parse_epoch, Connection, Layout};
use crate::error;
use crate::lease::{Lease, LeaseState};
use crate::machine::ops::{Answer, EtcdErr, KeyInfo, Op, ReqId, WatchEv, WatchNote};
use crate::machine::{CampaignMachine, Command, Effect, Input, LeaseInput};
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

/// A request in flight and what it answers.
type Pending = Pin<Box<dyn Future<Output = (ReqId, std::result::Result<Answer, EtcdErr>)> + Send>>;

/// What the executor last told the machine about its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Safe,
    Doubt,
    Lost,
}

/// The watchers of the machine's current round: one inbox on one of the session's shared
/// watch streams (see `watch_hub.rs`); their responses reach us in stream order.
struct Watching {
    hub: WatchHub,
    inbox: Route,
    /// Requested, not yet acknowledged, in request order (etcd acknowledges the creates of
    /// one stream in order); `None` once the machine cancelled it.
    pending: VecDeque<Option<ReqId>>,
    /// Acknowledged: etcd's watch id and the machine's.
    ids: Vec<(i64, ReqId)>,
    /// The generation of the stream the watchers are on (for cancelling them).
    generation: u32,
}

impl Drop for Watching {
    fn drop(&mut self) {
        // Watchers not acknowledged yet are cancelled by the hub when their acknowledgement
        // finds this inbox closed.
        self.inbox.close();
        for (id, _) in &self.ids {
            self.hub.cancel(self.generation, *id);
        }
    }
}

impl Watching {
    /// Whether the machine still waits on any of these watchers.
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.pending.iter().all(Option::is_none)
    }

    /// The machine's notes for one message of the stream.
    fn notes(&mut self, msg: WatchMsg) -> Vec<WatchNote> {
        let resp = match msg {
            WatchMsg::Resp(resp, generation) => {
                self.generation = generation;
                resp
            }
            WatchMsg::Ended(e) => return vec![WatchNote::Ended(e.to_string())],
        };
        let mut notes = Vec::new();
        let id = resp.watch_id();
        if resp.created() {
            match self.pending.pop_front() {
                Some(Some(req)) => {
                    if !resp.canceled() {
                        self.ids.push((id, req));
                    }
                    notes.push(WatchNote::Created(req));
                }
                Some(None) => {
                    // Cancelled by the machine before etcd acknowledged it.
                    if !resp.canceled() {
                        self.hub.cancel(self.generation, id);
                    }
                    return notes;
                }
                None => return notes,
            }
        }
        let Some(req) = self.ids.iter().find(|(w, _)| *w == id).map(|(_, r)| *r) else {
            if resp.canceled() {
                // Cancelled at its creation: the machine's id is the one just acknowledged.
                if let Some(WatchNote::Created(req)) = notes.last().cloned() {
                    notes.push(cancelled(req, &resp));
                }
            }
            return notes;
        };
        if resp.canceled() {
            self.ids.retain(|(w, _)| *w != id);
            notes.push(cancelled(req, &resp));
            return notes;
        }
        let events: Vec<WatchEv> = resp
            .events()
            .iter()
            .map(|e| WatchEv {
                deleted: e.event_type() == EventType::Delete,
                mod_rev: e.kv().map(|kv| kv.mod_revision()).unwrap_or(0),
            })
            .collect();
        if !events.is_empty() {
            notes.push(WatchNote::Events {
                id: req,
                header_rev: resp.header().map(|h| h.revision()).unwrap_or(0),
                events,
            });
        }
        notes
    }

    /// The machine no longer waits on watcher `req`.
    fn unwatch(&mut self, req: ReqId) {
        if let Some(p) = self.pending.iter_mut().find(|p| **p == Some(req)) {
            *p = None;
        }
        if let Some(i) = self.ids.iter().position(|(_, r)| *r == req) {
            let (id, _) = self.ids.remove(i);
            self.hub.cancel(self.generation, id);
        }
    }
}

fn cancelled(req: ReqId, resp: &etcd_client::WatchResponse) -> WatchNote {
    let reason = resp.cancel_reason().to_owned();
    WatchNote::Cancelled {
        id: req,
        // etcd says why when it refuses a watcher; a compacted start revision has none.
        compacted: resp.compact_revision() != 0 || reason.is_empty(),
        reason,
    }
}

/// One joined election's executor: the [`CampaignMachine`] decides, this carries out its
/// effects on the session's connection and watch streams and feeds it what happens
/// (answers, watch notes, the session's lease, the stop request, its timer).
struct Task {
    inner: Arc<Inner>,
    stop: Arc<Stop>,
    m: CampaignMachine,
    /// The session's lease view.
    view: watch::Receiver<LeaseView>,
    /// The lease the machine was told of, and what it was told about it.
    lease: Option<(Arc<Lease>, watch::Receiver<LeaseState>, Told)>,
    /// Report the lease's state even if unchanged (after a refused `Leader`).
    recheck: bool,
    /// The newest lease grant failure of the session this task reported.
    seen_failure: u64,
    /// The stop was fed to the machine.
    stopping: bool,
    inflight: Option<FuturesUnordered<Pending>>,
    watching: Option<Watching>,
    /// Our slot among the session's rounds in flight (see `ROUNDS_IN_FLIGHT`).
    slot: participant::RoundSlot,
    result: Result<()>,
    exit: bool,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.slot.release(&self.inner.core().rounds);
    }
}

impl Task {
    fn new(inner: Arc<Inner>, stop: Arc<Stop>) -> Box<Self> {
        let cfg = &inner.config;
        let m = CampaignMachine::new(
            &cfg.prefix,
            inner.slot,
            &cfg.id,
            cfg.ttl,
            cfg.request_timeout,
            rand::random(),
        );
        let view = inner.core().view.subscribe();
        Box::new(Task {
            inner,
            stop,
            m,
            view,
            lease: None,
            recheck: false,
            seen_failure: 0,
            stopping: false,
            inflight: None,
            watching: None,
            slot: participant::RoundSlot::default(),
            result: Ok(()),
            exit: false,
        })
    }

    fn cell(&self) -> &StatusCell {
        &self.inner.cell
    }

    /// Take part until stopped, then remove our place (the machine publishes that we no
    /// longer lead first). Boxed: the future holds a pointer, not the state.
    async fn run(mut self: Box<Self>) -> Result<()> {
        self.inner.shared.ensure_driver();
        self.feed(Input::Command(Command::Join));
        while !self.exit {
            let input = self.next_input().await;
            self.feed(input);
        }
        self.set_lease_view(None);
        std::mem::replace(&mut self.result, Ok(()))
    }

    /// The next input: the stop request first, then the lease, answers, watch notes, the
    /// machine's timer, a round slot.
    async fn next_input(&mut self) -> Input {
        loop {
            if let Some(i) = self.stop_input() {
                return i;
            }
            if let Some(i) = self.lease_input() {
                return i;
            }
            let deadline = self.m.next_deadline().map(Instant::from_std);
            let Task {
                stop,
                view,
                lease,
                inflight,
                watching,
                inner,
                slot,
                stopping,
                ..
            } = self;
            let answered = futures::future::poll_fn(|cx| match inflight.as_mut() {
                Some(f) if !f.is_empty() => match f.poll_next_unpin(cx) {
                    std::task::Poll::Ready(Some(a)) => std::task::Poll::Ready(a),
                    _ => std::task::Poll::Pending,
                },
                _ => std::task::Poll::Pending,
            });
            let note = async {
                match watching.as_ref() {
                    Some(w) => w.inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            let lease_changed = async {
                match lease.as_mut() {
                    Some((_, rx, _)) => rx.changed().await.is_err(),
                    None => std::future::pending().await,
                }
            };
            let rounds = &inner.core().rounds;
            let slot = futures::future::poll_fn(|cx| slot.poll_wait(rounds, cx));
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let stopping = *stopping;
            tokio::select! {
                biased;
                _ = stop.requested(), if !stopping => {}
                r = view.changed() => {
                    if r.is_err() {
                        // The session is gone: stop.
                        self.stop.request("the session ended");
                    }
                }
                gone = lease_changed => {
                    if gone {
                        let why = "the lease keeper stopped";
                        if let Some((_, _, told)) = self.lease.as_mut() {
                            *told = Told::Lost;
                        }
                        return Input::Lease(LeaseInput::Lost(why.into()));
                    }
                }
                (id, answer) = answered => {
                    if self.inflight.as_ref().is_some_and(|f| f.is_empty()) {
                        // Nothing in flight: keep no buffer while idle.
                        self.inflight = None;
                    }
                    return Input::Answer(id, answer);
                }
                msg = note => {
                    let notes = self.watching.as_mut().map(|w| w.notes(msg)).unwrap_or_default();
                    // A response acknowledging and cancelling at once gives two notes: all
                    // but the last are fed here, in order.
                    let mut notes = notes;
                    if let Some(last) = notes.pop() {
                        for n in notes {
                            self.feed(Input::Watch(n));
                        }
                        return Input::Watch(last);
                    }
                }
                () = timer => return Input::Timer,
                () = slot => return Input::Paced,
            }
        }
    }

    /// The stop request as the machine's input, once.
    fn stop_input(&mut self) -> Option<Input> {
        if self.stopping {
            return None;
        }
        let reason = self.stop.reason()?;
        self.stopping = true;
        if self.cell().get().role.is_leader() {
            tracing::info!(reason, "stepping down");
        }
        let shared = &self.inner.shared;
        // A private or closing session revokes its lease instead (one request for every
        // key); otherwise the key is deleted, retried until the lease could have expired
        // by itself.
        let delete_by = match &self.lease {
            Some((l, _, _))
                if !shared.private && !shared.closing.load(Ordering::SeqCst) && !l.is_lost() =>
            {
                let expires = l.state.borrow().expires;
                Some(
                    (Instant::now() + self.inner.config.request_timeout)
                        .max(expires)
                        .into_std(),
                )
            }
            _ => None,
        };
        Some(Input::Command(Command::Stop { reason, delete_by }))
    }

    /// What changed about the session's lease, for the machine.
    fn lease_input(&mut self) -> Option<Input> {
        if self.stopping {
            return None;
        }
        let now = Instant::now();
        if let Some((_, rx, told)) = self.lease.as_mut() {
            let recheck = std::mem::take(&mut self.recheck);
            // Read in place: this runs before every input.
            let s = rx.borrow_and_update();
            let state = match &s.lost {
                Some(_) => Told::Lost,
                None if s.safe_at(now) => Told::Safe,
                None => Told::Doubt,
            };
            if state != *told || recheck {
                *told = state;
                return Some(Input::Lease(match (state, &s.lost) {
                    (Told::Lost, Some(why)) => LeaseInput::Lost(why.clone()),
                    (Told::Safe, _) => LeaseInput::Safe,
                    _ => LeaseInput::Doubt {
                        reason: s.doubt_reason(now).into(),
                        expires: s.expires.into_std(),
                    },
                }));
            }
            if state != Told::Lost {
                return None;
            }
        }
        // No lease, or the told one is lost: the session's next one.
        let view = self.view.borrow_and_update().clone();
        match view {
            LeaseView::Granted(l) if !l.is_lost() => {
                if self.lease.as_ref().is_some_and(|(t, _, _)| t.id == l.id) {
                    return None;
                }
                let rx = l.state.clone();
                self.set_lease_view(Some(&l));
                let id = l.id;
                self.lease = Some((l, rx, Told::Safe));
                Some(Input::Lease(LeaseInput::Granted { id }))
            }
            LeaseView::Failed(n, kind, msg) if n > self.seen_failure => {
                self.seen_failure = n;
                Some(Input::Lease(LeaseInput::GrantFailed(kind, msg)))
            }
            _ => None,
        }
    }

    /// What [`EtcdElection::lease`] and [`Election::contact`] read.
    fn set_lease_view(&self, lease: Option<&Arc<Lease>>) {
        let view = lease.map(|l| (l.id, l.ttl, l.state.clone()));
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Feed one input and carry out the machine's effects, in order (through the one
    /// runner, [`participant::feed`]).
    fn feed(&mut self, input: Input) {
        participant::feed(self, input);
        // A round's slot is held while the machine is in a round.
        self.slot
            .settle(self.m.in_round(), &self.inner.core().rounds);
    }

    /// Publish `Leader` if lease `lease` is the one we hold and still safe. Under the
    /// registry lock: the keeper demotes every leader of the session under the same lock
    /// before it publishes a lease in doubt, so we either see the doubt here or are demoted
    /// by the keeper after publishing.
    fn publish_leader(
        &self,
        lease: i64,
        term: Term,
        handover: Option<std::time::Instant>,
        reason: Arc<str>,
    ) -> bool {
        let Some((l, _, _)) = self.lease.as_ref().filter(|(l, _, _)| l.id == lease) else {
            return false;
        };
        let cell = &self.inner.cell;
        let published = self.inner.core().registry.locked(|| {
            if !l.state.borrow().safe_at(Instant::now()) {
                return None;
            }
            // Recorded before publishing, so whoever sees `Leader` also sees it.
            if let Some(at) = handover {
                cell.metrics().handover(at);
            }
            Some(cell.set(Role::Leader { term }, HealthLevel::Healthy, reason))
        });
        match published {
            None => false,
            Some(changed) => {
                if changed {
                    tracing::info!(%term, "leading");
                }
                true
            }
        }
    }

    /// Add watcher `id` on `key` to the round's watch stream.
    fn watch(&mut self, id: ReqId, key: String, start: Option<i64>) {
        let inner = &self.inner;
        let w = self.watching.get_or_insert_with(|| Watching {
            hub: inner.hub(),
            inbox: Route::default(),
            pending: VecDeque::new(),
            ids: Vec::new(),
            generation: 0,
        });
        w.pending.push_back(Some(id));
        let opts = start.map(|s| WatchOptions::new().with_start_revision(s));
        w.hub.create(key, opts, &w.inbox);
    }

    /// Send request `id`.
    fn send(&mut self, id: ReqId, op: Op) {
        let inner = self.inner.clone();
        let fut: Pending = Box::pin(async move { (id, request(&inner, op).await) });
        self.inflight
            .get_or_insert_with(FuturesUnordered::new)
            .push(fut);
    }
}

impl participant::Executor for Task {
    type M = CampaignMachine;

    fn machine(&mut self) -> &mut CampaignMachine {
        &mut self.m
    }

    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    /// The lease keeper demotes leaders itself: the machine decides on the role published.
    fn prepare(&mut self) {
        self.m.set_role(self.cell().role());
    }

    fn execute(&mut self, e: Effect) -> Option<Input> {
        match e {
            Effect::Publish {
                role,
                health,
                reason,
            } => {
                let cell = &self.inner.cell;
                match role {
                    Some(role) => {
                        if cell.get().role.is_leader() && !role.is_leader() {
                            tracing::info!(%reason, "stepping down");
                        }
                        cell.set(role, health, reason);
                    }
                    None => {
                        cell.set_health(health, reason);
                    }
                }
            }
            Effect::PublishLeader {
                lease,
                term,
                handover,
                reason,
            } => {
                if !self.publish_leader(lease, term, handover, reason) {
                    self.recheck = true;
                    return Some(Input::LeaderRefused);
                }
            }
            Effect::Pace => {
                // Held now, or the next input is ours once one is free.
                if self.slot.ask(&self.inner.core().rounds) {
                    return Some(Input::Paced);
                }
            }
            Effect::Request { id, op } => self.send(id, op),
            Effect::Watch { id, key, start } => self.watch(id, key, start),
            Effect::Unwatch(id) => {
                if let Some(w) = self.watching.as_mut() {
                    w.unwatch(id);
                    if w.is_empty() {
                        self.watching = None;
                    }
                }
            }
            Effect::Refused(kind, msg) => self.inner.refusal.report(kind, msg),
            Effect::Progress => self.inner.refusal.clear(),
            Effect::SawEpoch(e) => self.inner.core().saw_epoch(e),
            Effect::LeaseLost { lease, why } => {
                tracing::info!(%why, "etcd lease lost; campaigning again with a new lease");
                self.cell().metrics().count(metrics::LEASE_LOSSES, &[]);
                if self.lease.as_ref().is_some_and(|(l, _, _)| l.id == lease) {
                    if let Some((l, _, _)) = self.lease.take() {
                        l.declare_lost(why.to_string());
                    }
                    self.set_lease_view(None);
                }
            }
            Effect::Done(res) => {
                if let Err((kind, msg)) = res {
                    self.cell().set_health(HealthLevel::Degraded, msg.clone());
                    self.result = Err(Error::new(kind, msg));
                }
            }
            Effect::Exit => self.exit = true,
        }
        None
    }
}

/// Carry out one request of the machine.
async fn request(inner: &Inner, op: Op) -> std::result::Result<Answer, EtcdErr> {
    let conn = inner.conn().clone();
    let res = match op {
        Op::EnsureEpoch { key, at_least } => {
            let value = now_ms()
                .max(at_least)
                .max(inner.core().epoch_seen.load(Ordering::Relaxed) + 1);
            let txn = Txn::new()
                .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key.clone(), value.to_string(), None)])
                .or_else(vec![TxnOp::get(key, None)]);
            conn.txn("create the epoch record", txn).await.map(|resp| {
                if resp.succeeded() {
                    tracing::info!(epoch = value, "created the epoch record");
                    Answer::Epoch {
                        created: true,
                        value: Some(value.to_string().into_bytes()),
                    }
                } else {
                    Answer::Epoch {
                        created: false,
                        value: first_kv(&gets(&resp), 0).map(|kv| kv.value().to_vec()),
                    }
                }
            })
        }
        Op::Campaign {
            key,
            lease,
            id,
            epoch_key,
        } => {
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    Compare::version(epoch_key.clone(), CompareOp::Greater, 0),
                ])
                .and_then(vec![
                    TxnOp::put(key.clone(), id, Some(PutOptions::new().with_lease(lease))),
                    TxnOp::get(epoch_key.clone(), None),
                ])
                .or_else(vec![TxnOp::get(key, None), TxnOp::get(epoch_key, None)]);
            conn.txn("campaign", txn).await.map(|resp| {
                let gets = gets(&resp);
                let succeeded = resp.succeeded();
                if succeeded {
                    tracing::debug!(rev = header_revision(&resp), "campaign: key created");
                }
                Answer::Campaign {
                    succeeded,
                    header_rev: header_revision(&resp),
                    own: (!succeeded)
                        .then(|| first_kv(&gets, 0).map(key_info))
                        .flatten(),
                    epoch_exists: succeeded || first_kv(&gets, 1).is_some(),
                }
            })
        }
        Op::ReadQueue {
            range,
            key,
            epoch_key,
            below,
            limit,
        } => {
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
                    range,
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_max_create_revision(below)
                            .with_limit(limit as i64),
                    ),
                ),
                TxnOp::get(key, None),
                TxnOp::get(epoch_key, None),
            ]);
            conn.txn("read the queue", txn).await.map(|resp| {
                let gets = gets(&resp);
                let ahead = gets.get(1).map(|g| g.kvs()).unwrap_or_default();
                Answer::Queue {
                    rev: header_revision(&resp),
                    first: first_kv(&gets, 0).map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            kv.value().to_vec(),
                        )
                    }),
                    ahead: ahead
                        .iter()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                        .collect(),
                    more: gets.get(1).is_some_and(|g| g.more()),
                    own: first_kv(&gets, 2).map(key_info),
                    epoch: first_kv(&gets, 3).map(|kv| kv.value().to_vec()),
                }
            })
        }
        Op::DeleteKey { key, lease } => delete_key(&conn, &key, lease).await.map(|()| Answer::Done),
    };
    res.map_err(|e| {
        if error::lease_gone(&e) {
            EtcdErr::LeaseGone(e.to_string())
        } else if e.kind() == ErrorKind::PermissionDenied {
            EtcdErr::Refused(e.kind(), e.message().to_owned())
        } else {
            EtcdErr::Transient(e.to_string())
        }
    })
}

fn key_info(kv: &KeyValue) -> KeyInfo {
    KeyInfo {
        create_rev: kv.create_revision(),
        lease: kv.lease(),
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
