//! The dual-layer [`Supervisor`]: an [`Election`] over a primary and a fallback
//! `Election`, failing over to the fallback when the primary stays unhealthy and back when
//! it recovers, without ever letting two participants lead at once under the conditions
//! stated below.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> succession_core::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use succession_core::{memory::MemoryStore, supervisor::Supervisor, Election, ElectionExt};
//!
//! let (zk, etcd) = (MemoryStore::new(), MemoryStore::new()); // stand-ins for the real stores
//! let a = Supervisor::builder()
//!     .primary(Arc::new(zk.election("a")?))
//!     .fallback(Arc::new(etcd.election("a")?))
//!     .mode_record(Arc::new(etcd.record("mode")))
//!     .heartbeat_record(Arc::new(etcd.record("mode.heartbeat")))
//!     .primary_session_timeout(zk.session_timeout())
//!     .failover_after(Duration::from_secs(2))
//!     .check_interval(Duration::from_millis(100))
//!     .layer_names("zookeeper", "etcd")
//!     .build()?;
//! a.join().await?;
//! let lead = a.wait_for_leadership(Duration::from_secs(2)).await?;
//! assert_eq!(lead.term().generation(), a.mode().unwrap().generation);
//! a.close().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Every participant runs both layer elections (hot standby: it joins the fallback too, so a
//! failover does not wait for a campaign) and follows a **mode record** `{layer, generation}`
//! ([`Mode`], stored as `primary/7`) kept in the fallback store and changed only by
//! compare-and-swap. A participant leads when (1) the mode names layer L, (2) it leads the
//! election of layer L, and (3) the gate below is open; its [`Term`](crate::Term) is L's term with the
//! mode generation ([`Term::with_generation`](crate::Term::with_generation)), so every term granted after a mode change
//! orders after every term before it.
//!
//! * **Failover** is decided by any joined participant in primary mode whose [`Policy`]
//!   says so; the default requires the primary to be unhealthy *here* for
//!   `failover_after − G` AND no heartbeat from a primary leader for as long (the primary
//!   leader writes one into a heartbeat record next to the mode record every
//!   `check_interval`), so one participant cut off from the primary alone cannot move the
//!   cluster. The new fallback leader waits the takeover delay G after seeing the change
//!   (see below), so it acts `failover_after` after the primary went bad.
//! * **Failback** is decided only by the participant holding the fallback layer's grant
//!   (its leader, or its grant holder while its mode lease lapsed): it publishes that it no
//!   longer leads, then swaps the record to `primary/g+1`; by default once the primary has
//!   been healthy here for the failback delay minus G, so that the primary leader acts at
//!   the failback delay.
//! * **Decisions at their deadline**: the policy names the instant its answer would change
//!   ([`Policy::wake_at`]) and the state machine is called exactly then, not at its next
//!   `check_interval`.
//! * **Stepping down**: every participant re-reads the record at least every
//!   `check_interval` (and on every change it is told about). The moment a read shows any
//!   other value than the mode it leads under — another layer, another generation, or no
//!   record at all — it publishes that it no longer leads, before anything else.
//!
//! # Never two leaders: the argument
//!
//! Let X = `check_interval`, T = `record_timeout` (≤ X), V = X + T + X/2 (the *mode lease*),
//! G = V + V/10 + 10 ms (the *takeover delay*); see [`Timings`].
//!
//! 1. *Same generation*: all leaders under one generation lead through the same layer, so
//!    that layer's own guarantee (one leader, "stop leading before leaving") applies. The
//!    supervisor publishes "not leading" before it resigns or closes a layer, and on drop.
//! 2. *Different generations g < h*, with h written at instant t_h. A participant leading
//!    under h first saw h in a response received after t_h, and leads only G after that
//!    (**takeover guard**; it applies to every participant, including the writer and a
//!    participant that just started), so not before t_h + G.
//!    A participant leading under g must stop before t_h + G. Two cases:
//!    * it can read the record: its next read is sent by t_h + X and answered by
//!      t_h + X + T < t_h + G; that read shows something other than g, and it steps down.
//!    * it cannot (reads fail or time out): fallback leaders lead only within the mode
//!      lease V of the send time s of their last confirming read, and s < t_h, so they stop
//!      by t_h + V < t_h + G. Primary leaders do the same with
//!      [`strict_mode_lease`](SupervisorBuilder::strict_mode_lease). **By default an
//!      established primary leader keeps leading when it cannot read the record** ("a node
//!      that cannot read the record keeps the last mode"), so that an outage of the
//!      fallback store never takes leadership away from a healthy primary. *Established*:
//!      a read sent after its leadership began confirmed the mode, so no failover preceded
//!      its leadership unnoticed.
//!    * a primary leader that is not established yet, or that does not lead yet: it may
//!      lead on the last mode it saw without a fresh read only while the primary has
//!      stayed healthy *here* since that mode was last confirmed (the others could then
//!      have failed over only through the asymmetric partition excluded below); otherwise
//!      it is held to the mode lease V, like a fallback leader.
//! 3. A compare-and-swap whose outcome is unknown (timeout) closes the gate until a read
//!    sent after it confirms the mode; stale reads (sent before the write that taught us
//!    the current mode) are ignored.
//!    *When* a new generation is written does not enter this argument: the guard counts
//!    from the instant a participant first sees it, whatever policy wrote it and however
//!    early. Writing the failover (and the failback) G ahead of `failover_after` (and of the
//!    failback delay) therefore changes only availability: the decision window
//!    `failover_after − G` is what a primary outage must outlast, and the builder keeps it
//!    at least the primary session timeout (shorter outages keep the primary's leader) and
//!    2 × X (a live primary leader's heartbeat is always seen within it).
//! 4. *Terms only grow*: a participant never publishes a supervisor term twice. When its
//!    layer hands back a grant it already held (leadership resumed after a short
//!    suspension, or the gate closed and reopened), it first renews the generation
//!    (compare-and-swap to `{same layer, g+1}`, with the takeover guard as for any new
//!    generation) and leads under the new one. Mode changes always bump the generation;
//!    a record that is gone or went back (a wipe of the fallback store) is re-created or
//!    renewed with a generation above every one the participant saw.
//!
//! 5. *Paused processes*: the supervisor is called at least at every deadline it asks for;
//!    a call later than that by more than G − (X + T) (the scheduling bound below) means
//!    the process was not running — paused or starved — so it stops leading at once and
//!    leads again only after `record_timeout` (one store round trip for its layers to
//!    report a session lost meanwhile) and once a read of the record sent after that call
//!    confirms the mode. It cannot know *that* it was paused before that first call, nor
//!    whether its layer has noticed a lost session: until then a paused leader may still
//!    publish `Leader` with a term lower than its successor's — the fencing case.
//!
//! 6. *A leader renewing the record for its own layer* (default mode only): a primary
//!    leader whose reads of the record failed since its last confirmation, and that then
//!    finds the record gone, regressed, or renewed to a newer *primary* generation h (the
//!    fallback store was wiped and restarted, and someone — it or another — re-creates the
//!    record), keeps leading under its published term (generation g) while the record is
//!    re-created, on the same layer grant. Nothing it could miss this way was not already
//!    missed by its failed reads: by 2. it would have led on through them, so any leader
//!    under a generation between g and h (a failover erased by the wipe) is the excluded
//!    case of a primary leader cut off from the fallback store while the others fail over.
//!    Leaders under h lead through the same layer (its own guarantee excludes them while
//!    this grant lasts) and their terms order after (g, ·); a later grant of the layer to
//!    anyone leads under h after the guard, or under g with a higher layer term. When the
//!    leader read the record successfully just before finding it gone, a failover it never
//!    saw may have been erased with it: it steps down, re-creates the record and waits the
//!    guard as for any new generation. With `strict_mode_lease` it always does.
//!
//! **Guaranteed** (one process, one clock; or several machines whose clock *rates* differ by
//! less than 10 % and whose scheduling delays stay below G − (X + T)):
//! at most one participant publishes `Leader` at any instant, and terms strictly increase,
//! whenever every layer keeps its own guarantee and, in the default (non-strict) mode, no
//! primary leader is cut off from the fallback store while others decide to fail over.
//!
//! **Not guaranteed in the default mode: asymmetric partitions.** A primary leader A that
//! can reach only the primary store, while the other participants can reach only the
//! fallback store for `failover_after`, keeps leading (it cannot read the flip, and cannot
//! write heartbeats) while the others fail over and elect a fallback leader: two leaders.
//! Terms still tell them apart: the fallback leader's term has a higher generation, so a
//! resource that fences on terms refuses A's writes. With
//! [`strict_mode_lease`](SupervisorBuilder::strict_mode_lease) A steps down within V of
//! losing the fallback store instead, closing the window at the price of making primary
//! leadership depend on the fallback store being readable.
//!
//! **Not guaranteed in the default mode either: terms after a handover on an unreadable
//! record.** When the primary hands over while the record cannot be read (see 2.), the new
//! leader leads under the last generation it saw; if that generation was renewed just
//! before (after a wipe of the fallback store, or a resumed grant) and this participant
//! never read the renewal, its term is lower than an earlier leader's. No two leaders (the
//! primary's own guarantee holds), but a resource fencing on terms refuses the new leader
//! until the record is readable again. Combined with a paused participant resuming on a
//! stale grant under the newer generation (5.), the two may overlap until that
//! participant's layer notices its lost session, and the fencing token then favours the
//! stale one. `strict_mode_lease` has neither window.
//!
//! These arguments are checked by the deterministic simulation (`succession_core::sim`,
//! feature `sim`): the decisions live in a sans-IO machine (`machine.rs`, driven by the
//! tokio executor in `driver.rs` and by the simulator alike), run through thousands of
//! seeded fault schedules per `cargo test`.
//!
//! Other limits: failback is decided from the fallback leader's own view of the primary;
//! a participant needs one successful read of the mode record to take part
//! (it cannot know which layer counts before); mode changes need the fallback store (it holds
//! the record), so while the fallback store is down the cluster stays in its mode; the
//! generation of a record created after a wipe of the fallback store starts at the Unix
//! time in ms (same clock assumption as [`Term`](crate::Term)'s epoch).
//!
//! # Health, callbacks, events
//!
//! The supervisor's [`Health`](crate::Health): `Unhealthy` when the active layer is
//! (or the mode cannot be known), `Degraded` when running on the fallback, when the active
//! layer is degraded, the standby layer is not healthy, or the mode record is unreadable (the
//! reason says which), `Healthy` otherwise. [`SupervisorEvent`]s report layer health changes,
//! failover, failback, mode renewals and leadership gained/lost, in the order the state
//! machine made them; callbacks run on a task of their own (see [`event`]'s notes), and
//! [`Supervisor::events`] offers a broadcast stream.
//!
//! `leader()` and `participants()` answer from the active layer (terms with the mode
//! generation); `join` joins both layers; `resign` and `close` publish "not leading" first,
//! then leave both layers. The mode and heartbeat records are cluster state: they are not
//! removed on close.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing::Instrument;

use crate::election::{Election, Participant};
use crate::error::{Error, Result};
use crate::metrics::ElectionMetrics;
use crate::record::CasRecord;
use crate::status::{Contact, Status, StatusCell};
use crate::validate;

mod driver;
pub mod event;
pub(crate) mod machine;
pub(crate) mod mode;
pub mod policy;

pub use event::SupervisorEvent;
pub use mode::{Layer, LayerRef, Mode};
pub use policy::{DampedPolicy, Decision, ModeChange, Policy, Timings, View};

use driver::{Inner, Sinks, State};
use event::{Callback, Filter};
use machine::{Config, Input, SupervisorMachine};

/// Default [`SupervisorBuilder::check_interval`].
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`SupervisorBuilder::event_capacity`].
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// The smallest `check_interval` the builder derives on its own: below it the takeover
/// delay hardly shrinks and the records would be read very often.
pub const MIN_DERIVED_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The default `check_interval`: [`DEFAULT_CHECK_INTERVAL`], or shorter (whole ms, at least
/// [`MIN_DERIVED_CHECK_INTERVAL`]) so that `failover_after` fits a decision window of at
/// least the session timeout and 2 × `check_interval`, plus the takeover delay.
fn fitting_check_interval(
    session_timeout: Duration,
    failover_after: Duration,
    record_timeout: Option<Duration>,
) -> Duration {
    let fits = |x: Duration| {
        let t = record_timeout.unwrap_or(x);
        t <= x && failover_window_ok(session_timeout, failover_after, x, t)
    };
    if fits(DEFAULT_CHECK_INTERVAL) {
        return DEFAULT_CHECK_INTERVAL;
    }
    // The window shrinks as check_interval grows: bisect on whole milliseconds.
    let (mut lo, mut hi) = (
        MIN_DERIVED_CHECK_INTERVAL.as_millis() as u64,
        DEFAULT_CHECK_INTERVAL.as_millis() as u64,
    );
    if !fits(Duration::from_millis(lo)) {
        return Duration::from_millis(lo); // refused below, with the minimum failover_after
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(Duration::from_millis(mid)) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Duration::from_millis(lo)
}

/// Whether `failover_after − G` is at least the session timeout and 2 × `check_interval`.
fn failover_window_ok(
    session_timeout: Duration,
    failover_after: Duration,
    x: Duration,
    t: Duration,
) -> bool {
    failover_after >= policy::takeover_delay(x, t) + session_timeout.max(x * 2)
}

/// Refuse a `failover_after` that does not leave a decision window of at least the session
/// timeout and 2 × `check_interval` before the takeover delay.
fn check_failover_after(
    session_timeout: Duration,
    failover_after: Duration,
    check_interval: Duration,
    record_timeout: Duration,
    derived: bool,
) -> Result<()> {
    if failover_window_ok(
        session_timeout,
        failover_after,
        check_interval,
        record_timeout,
    ) {
        return Ok(());
    }
    let g = policy::takeover_delay(check_interval, record_timeout);
    let (floor, why) = if session_timeout >= check_interval * 2 {
        (
            session_timeout,
            "the primary's session timeout (shorter primary losses keep the leader, so failing over sooner moves the cluster for nothing)",
        )
    } else {
        (
            check_interval * 2,
            "2 x check_interval (a live primary leader writes its heartbeat every check_interval)",
        )
    };
    let (x, tail) = if derived {
        ("the shortest derived check_interval", "")
    } else {
        ("check_interval", " or lower check_interval")
    };
    Err(Error::invalid_config(format!(
        "failover_after ({failover_after:?}) is too short: the failover is decided at failover_after minus the takeover delay \
         ({g:?} with {x} {check_interval:?}), and that decision window must be at least {why}, {floor:?}; \
         raise failover_after to at least {:?}{tail}",
        floor + g
    )))
}

/// A dual-layer election: itself an [`Election`], built from a primary and a fallback
/// `Election` and a mode record. See the [module documentation](self) for the mechanism,
/// the guarantees and what is not guaranteed.
///
/// The supervisor owns its layers: do not join, resign or close them yourself. Dropping it
/// publishes `Closed` at once and releases its references to the layers (like a process
/// exit); call [`close`](Election::close) for a clean exit.
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.mode();
        f.debug_struct("Supervisor")
            .field("id", &self.inner.id)
            .field("mode", &mode.map(|m| m.to_string()))
            .field("role", &self.inner.cell.get().role)
            .finish()
    }
}

impl Supervisor {
    /// A builder; see [`SupervisorBuilder`] for what is required.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// Subscribe to this supervisor's events (those sent after this call). Ends after close.
    pub fn events(&self) -> broadcast::Receiver<SupervisorEvent> {
        let mut st = self.inner.lock();
        if st.closed {
            return broadcast::channel(1).1;
        }
        // Made on first use: its `event_capacity` slots are allocated up front (about
        // 200 KiB at the default), which thousands of supervised elections in one process
        // that never read events should not pay.
        let capacity = st.sinks.event_capacity;
        st.sinks
            .events
            .get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// The mode this participant follows (the last one it could read), if it read one yet.
    pub fn mode(&self) -> Option<Mode> {
        self.inner.lock().m.mode
    }

    /// The validated and derived timings.
    pub fn timings(&self) -> Timings {
        self.inner.timings
    }

    /// One of the layer elections (to inspect; do not join, resign or close it).
    pub fn layer(&self, layer: Layer) -> &Arc<dyn Election> {
        &self.inner.layers[layer.index()]
    }

    /// A layer with its configured name.
    pub fn layer_ref(&self, layer: Layer) -> LayerRef {
        self.inner.layer_ref(layer)
    }

    /// The mode to answer `leader()`/`participants()` with: the one we follow, else a live read.
    async fn answering_mode(&self) -> Result<Option<Mode>> {
        if let Some(m) = self.mode() {
            return Ok(Some(m));
        }
        let t = self.inner.timings.record_timeout;
        match tokio::time::timeout(t, self.inner.mode_record.read()).await {
            Ok(Ok(Some(v))) => Mode::decode(&v.value).map(Some),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::timeout(format!(
                "reading the supervisor mode record took longer than {t:?}"
            ))),
        }
    }

    fn map_term(p: Participant, generation: u64) -> Participant {
        let term = p.term.map(|t| t.with_generation(generation));
        Participant { term, ..p }
    }

    fn stop_tasks(&self, st: &mut State) {
        for t in st.tasks.drain(..) {
            t.abort();
        }
        st.sinks.callbacks = None;
        st.sinks.events = None;
        st.beat.send_replace(None);
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl Election for Supervisor {
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// Joins both layers (hot standby) and resolves once our place is held in the active
    /// layer. Keeps waiting while the mode record cannot be read for the first time or the
    /// active layer's store is unreachable.
    async fn join(&self) -> Result<()> {
        let rx = self.inner.cell.subscribe();
        {
            let _op = self.inner.ops.lock().await;
            let mut st = self.inner.lock();
            if st.closed {
                return Err(Error::closed(&format!("supervisor of {}", self.inner.id)));
            }
            if !st.m.wants {
                for layer in [Layer::Primary, Layer::Fallback] {
                    let task = driver::join_layer(
                        self.inner.layers[layer.index()].clone(),
                        layer,
                        self.inner.inputs.clone(),
                        self.inner.timings.check_interval,
                    );
                    let span = tracing::info_span!(
                        parent: &self.inner.span,
                        "layer",
                        layer = %self.inner.layer_ref(layer)
                    );
                    st.join_tasks.push(tokio::spawn(task.instrument(span)));
                }
            }
            let _span = self.inner.span.enter();
            driver::step(&self.inner, &mut st, Input::Join);
            // Wake the executor: the machine's next deadline may be earlier now.
            let _ = self.inner.inputs.send(Input::Tick);
        }
        self.inner.poke.notify_one();
        let what = format!("supervisor of {}", self.inner.id);
        // The active layer refusing us (e.g. permission denied) fails the join; the
        // driver publishes a status change when it records such a refusal.
        crate::participant::wait_joined(rx, None, &self.inner.id, &what, || {
            let st = self.inner.lock();
            let mode = st.m.mode?;
            let (kind, msg) = st.m.join_errors[mode.layer.index()].as_ref()?;
            Some(Error::new(
                *kind,
                format!(
                    "joining the active layer {} failed: {msg}",
                    self.inner.layer_ref(mode.layer)
                ),
            ))
        })
        .await
    }

    /// Publishes `Idle` (not leading) first, then resigns both layers.
    async fn resign(&self) -> Result<()> {
        let _op = self.inner.ops.lock().await;
        let joins = {
            let mut st = self.inner.lock();
            if st.closed || !st.m.wants {
                return Ok(());
            }
            let _span = self.inner.span.enter();
            driver::step(&self.inner, &mut st, Input::Leave("resigned".into()));
            // Wake the executor: the machine's next deadline may be earlier now.
            let _ = self.inner.inputs.send(Input::Tick);
            std::mem::take(&mut st.join_tasks)
        };
        for j in joins {
            j.abort();
            let _ = j.await;
        }
        let p = self.inner.layers[0].resign().await;
        let f = self.inner.layers[1].resign().await;
        p.and(f)
    }

    /// Publishes `Idle` (not leading) first, closes both layers, then publishes `Closed` and
    /// stops the supervisor's tasks; the event stream ends after the last event.
    async fn close(&self) -> Result<()> {
        let _op = self.inner.ops.lock().await;
        let joins = {
            let mut st = self.inner.lock();
            if st.closed {
                return Ok(());
            }
            let _span = self.inner.span.enter();
            driver::step(&self.inner, &mut st, Input::Leave("closing".into()));
            std::mem::take(&mut st.join_tasks)
        };
        for j in joins {
            j.abort();
            let _ = j.await;
        }
        let p = self.inner.layers[0].close().await;
        let f = self.inner.layers[1].close().await;
        let _span = self.inner.span.enter();
        let mut st = self.inner.lock();
        st.closed = true;
        self.inner.cell.close("closed");
        self.stop_tasks(&mut st);
        p.and(f)
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.inner.cell.subscribe()
    }

    /// The leader of the active layer (its term with the mode generation); `Ok(None)` when
    /// nobody leads or no mode record exists yet. A layer's first participant that has not
    /// been granted its term yet (a ZooKeeper node at the head of the queue before its
    /// claim) is not the supervised leader yet: `Ok(None)` too, so a reader never sees the
    /// supervised leader without the term that leader itself reports.
    async fn leader(&self) -> Result<Option<Participant>> {
        let Some(mode) = self.answering_mode().await? else {
            return Ok(None);
        };
        let leader = self.inner.layers[mode.layer.index()].leader().await?;
        Ok(leader
            .filter(|p| p.term.is_some())
            .map(|p| Self::map_term(p, mode.generation)))
    }

    /// The participants of the active layer in queue order (terms with the mode generation);
    /// empty when no mode record exists yet.
    async fn participants(&self) -> Result<Vec<Participant>> {
        let Some(mode) = self.answering_mode().await? else {
            return Ok(Vec::new());
        };
        let ps = self.inner.layers[mode.layer.index()].participants().await?;
        Ok(ps
            .into_iter()
            .map(|p| Self::map_term(p, mode.generation))
            .collect())
    }

    /// The contact of the layer that counts (the primary before a mode is known).
    fn contact(&self) -> Contact {
        let layer = self.mode().map_or(Layer::Primary, |m| m.layer);
        self.inner.layers[layer.index()].contact()
    }

    /// The earlier of: the bound of the layer this participant last led through (its own
    /// successor there), and the mode lease after the latest read that confirmed our mode
    /// (a leader under a newer generation waits the takeover delay G > V after the write,
    /// and that write came after our confirming read was sent).
    fn takeover_bound(&self) -> Option<std::time::Instant> {
        let (layer, confirmed) = {
            let st = self.inner.lock();
            let layer =
                st.m.led_through
                    .or(st.m.mode.map(|m| m.layer))
                    .unwrap_or(Layer::Primary);
            (layer, st.m.confirmed_sent)
        };
        let by_layer = self.inner.layers[layer.index()].takeover_bound();
        let by_mode = confirmed.map(|s| s + self.inner.timings.mode_lease);
        match (by_layer, by_mode) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Like a process exit: stop leading at once (published), then let go of everything.
        self.inner.cell.close("handle dropped");
        let mut st = self.inner.lock();
        st.closed = true;
        st.m.wants = false;
        for j in st.join_tasks.drain(..) {
            j.abort();
        }
        self.stop_tasks(&mut st);
    }
}

/// Builds a [`Supervisor`]. Consuming; every setter documents its default.
///
/// Required: [`primary`](Self::primary), [`fallback`](Self::fallback),
/// [`mode_record`](Self::mode_record), [`heartbeat_record`](Self::heartbeat_record),
/// [`primary_session_timeout`](Self::primary_session_timeout). [`build`](Self::build)
/// must run inside a tokio runtime.
#[derive(Default)]
pub struct SupervisorBuilder {
    primary: Option<Arc<dyn Election>>,
    fallback: Option<Arc<dyn Election>>,
    mode_record: Option<Arc<dyn CasRecord>>,
    heartbeat_record: Option<Arc<dyn CasRecord>>,
    session_timeout: Option<Duration>,
    failover_after: Option<Duration>,
    failback_after: Option<Duration>,
    check_interval: Option<Duration>,
    record_timeout: Option<Duration>,
    name: Option<String>,
    strict: bool,
    policy: Option<Box<dyn Policy>>,
    names: Option<(String, String)>,
    event_capacity: Option<usize>,
    callbacks: Vec<(Filter, Callback)>,
}

impl fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("primary", &self.primary)
            .field("fallback", &self.fallback)
            .field("mode_record", &self.mode_record)
            .field("heartbeat_record", &self.heartbeat_record)
            .field("primary_session_timeout", &self.session_timeout)
            .field("failover_after", &self.failover_after)
            .field("failback_after", &self.failback_after)
            .field("check_interval", &self.check_interval)
            .field("record_timeout", &self.record_timeout)
            .field("strict_mode_lease", &self.strict)
            .field("policy", &self.policy)
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl SupervisorBuilder {
    /// The preferred election (required), e.g. a ZooKeeper latch participant.
    pub fn primary(mut self, election: Arc<dyn Election>) -> Self {
        self.primary = Some(election);
        self
    }

    /// The fallback election (required), e.g. an etcd participant. Must be a different
    /// election handle with the same participant id.
    pub fn fallback(mut self, election: Arc<dyn Election>) -> Self {
        self.fallback = Some(election);
        self
    }

    /// The mode record (required): a compare-and-swap cell in the FALLBACK store, the same
    /// one for every participant (memory: `MemoryStore::record("mode")`; etcd: an `EtcdRecord`).
    pub fn mode_record(mut self, record: Arc<dyn CasRecord>) -> Self {
        self.mode_record = Some(record);
        self
    }

    /// The heartbeat record (required): another record next to the mode record, the same one
    /// for every participant; the primary leader writes to it every `check_interval`.
    pub fn heartbeat_record(mut self, record: Arc<dyn CasRecord>) -> Self {
        self.heartbeat_record = Some(record);
        self
    }

    /// The primary election's session timeout (required): how long the primary keeps a lost
    /// participant's place (ZooKeeper: the negotiated session timeout; memory:
    /// `MemoryStore::session_timeout()`). `failover_after` may not be shorter.
    pub fn primary_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = Some(timeout);
        self
    }

    /// How long after the primary went bad (unhealthy here and no primary leader heard
    /// from) the fallback leader acts. The failover is written at `failover_after` minus the
    /// takeover delay ([`Timings::failover_decision`]), so that the fallback leader, waiting
    /// the takeover delay after it, acts at `failover_after`. Default: 2 × the primary
    /// session timeout. At least the session timeout plus the takeover delay, and at least
    /// 2 × `check_interval` plus the takeover delay (refused otherwise, naming the minimum).
    pub fn failover_after(mut self, d: Duration) -> Self {
        self.failover_after = Some(d);
        self
    }

    /// How long after the primary became healthy again (here, at the fallback leader) the
    /// primary leader acts (the default policy grows it after repeated failovers); the
    /// failback is written the takeover delay before. Default: 2 × `failover_after`; at least
    /// the takeover delay.
    pub fn failback_after(mut self, d: Duration) -> Self {
        self.failback_after = Some(d);
        self
    }

    /// How often each participant re-reads the mode and heartbeat records (changes are also
    /// watched) and the primary leader writes its heartbeat. Default:
    /// [`DEFAULT_CHECK_INTERVAL`] (1 s), or shorter when `failover_after` needs it: the
    /// longest whole-ms interval (at least [`MIN_DERIVED_CHECK_INTERVAL`]) whose takeover
    /// delay leaves a decision window of at least the session timeout. Shorter means a
    /// shorter takeover delay after a mode change (see [`Timings::takeover_delay`]) and more
    /// reads.
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.check_interval = Some(d);
        self
    }

    /// How long one read or write of a record may take. Default: `check_interval`; at most
    /// `check_interval`.
    pub fn record_timeout(mut self, d: Duration) -> Self {
        self.record_timeout = Some(d);
        self
    }

    /// Also hold primary leaders to the mode lease (default false): a primary leader that
    /// could not confirm the mode record within [`Timings::mode_lease`] stops leading until it
    /// can. Closes the asymmetric-partition window (see the module docs) at the price of
    /// losing leadership whenever the fallback store is unreadable.
    pub fn strict_mode_lease(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The failover/failback policy. Default: [`DampedPolicy::new()`].
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The election's name in metrics (label `election`) and in the tracing span. Default:
    /// `"supervisor"`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Names of the two layers in events, status reasons, logs and metrics. Default:
    /// `"primary"` and `"fallback"`.
    pub fn layer_names(mut self, primary: &str, fallback: &str) -> Self {
        self.names = Some((primary.to_owned(), fallback.to_owned()));
        self
    }

    /// Capacity of the broadcast event stream ([`Supervisor::events`]). Default:
    /// [`DEFAULT_EVENT_CAPACITY`].
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = Some(n);
        self
    }

    /// Call `f` with every event, in order (on the callback task; must not block).
    pub fn on_event(mut self, f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push((Filter::All, Arc::new(f)));
        self
    }

    /// Call `f` with every [`SupervisorEvent::LayerHealth`].
    pub fn on_layer_health(mut self, f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push((Filter::LayerHealth, Arc::new(f)));
        self
    }

    /// Call `f` with every [`SupervisorEvent::Failover`].
    pub fn on_failover(mut self, f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push((Filter::Failover, Arc::new(f)));
        self
    }

    /// Call `f` with every [`SupervisorEvent::Failback`].
    pub fn on_failback(mut self, f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push((Filter::Failback, Arc::new(f)));
        self
    }

    /// Call `f` with every leadership gained or lost.
    pub fn on_leadership(mut self, f: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push((Filter::Leadership, Arc::new(f)));
        self
    }

    /// Validate and start the supervisor (its tasks start at once; it takes part only after
    /// [`join`](Election::join)). Errors are [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) and say what to do.
    pub fn build(self) -> Result<Supervisor> {
        let missing = |what: &str, hint: &str| {
            Error::invalid_config(format!(
                "the supervisor needs {what}; set it with SupervisorBuilder::{hint}"
            ))
        };
        let primary = self
            .primary
            .ok_or_else(|| missing("a primary election", "primary(Arc<dyn Election>)"))?;
        let fallback = self
            .fallback
            .ok_or_else(|| missing("a fallback election", "fallback(Arc<dyn Election>)"))?;
        let mode_record = self.mode_record.ok_or_else(|| {
            missing(
                "a mode record in the fallback store",
                "mode_record(Arc<dyn CasRecord>)",
            )
        })?;
        let heartbeat_record = self.heartbeat_record.ok_or_else(|| {
            missing(
                "a heartbeat record next to the mode record",
                "heartbeat_record(Arc<dyn CasRecord>)",
            )
        })?;
        let session_timeout = self.session_timeout.ok_or_else(|| {
            missing(
                "the primary election's session timeout (to check failover_after against it)",
                "primary_session_timeout(Duration)",
            )
        })?;
        if std::ptr::addr_eq(Arc::as_ptr(&primary), Arc::as_ptr(&fallback)) {
            return Err(Error::invalid_config(
                "primary and fallback are the same election handle; give the supervisor two different elections, \
                 ideally in two different stores (e.g. ZooKeeper primary, etcd fallback)",
            ));
        }
        if std::ptr::addr_eq(Arc::as_ptr(&mode_record), Arc::as_ptr(&heartbeat_record)) {
            return Err(Error::invalid_config(
                "mode_record and heartbeat_record are the same record; use two records (e.g. \"mode\" and \"mode.heartbeat\")",
            ));
        }
        let id = primary.id().to_owned();
        validate::participant_id(&id)?;
        if fallback.id() != id {
            return Err(Error::invalid_config(format!(
                "the primary election's participant id is {id:?} but the fallback's is {:?}; \
                 create both with the same id so that leader() means the same participant in either layer",
                fallback.id()
            )));
        }
        validate::duration(session_timeout, "primary_session_timeout", None, None)?;
        let failover_after = self.failover_after.unwrap_or(session_timeout * 2);
        validate::duration(failover_after, "failover_after", None, None)?;
        if let Some(r) = self.record_timeout {
            validate::duration(r, "record_timeout", None, None)?;
        }
        let check_interval = match self.check_interval {
            Some(x) => x,
            None => fitting_check_interval(session_timeout, failover_after, self.record_timeout),
        };
        validate::duration(check_interval, "check_interval", None, None)?;
        let record_timeout = self.record_timeout.unwrap_or(check_interval);
        if record_timeout > check_interval {
            return Err(Error::invalid_config(format!(
                "record_timeout ({record_timeout:?}) is longer than check_interval ({check_interval:?}); \
                 a read must finish before the next one is due: lower record_timeout to at most {check_interval:?}"
            )));
        }
        check_failover_after(
            session_timeout,
            failover_after,
            check_interval,
            record_timeout,
            self.check_interval.is_none(),
        )?;
        let failback_after = self.failback_after.unwrap_or(failover_after * 2);
        validate::duration(failback_after, "failback_after", None, None)?;
        let g = policy::takeover_delay(check_interval, record_timeout);
        if failback_after < g {
            return Err(Error::invalid_config(format!(
                "failback_after ({failback_after:?}) is shorter than the takeover delay ({g:?}) that the primary leader waits \
                 after a failback is written; raise failback_after to at least {g:?}"
            )));
        }
        let names = self
            .names
            .unwrap_or_else(|| ("primary".to_owned(), "fallback".to_owned()));
        for (n, which) in [(&names.0, "primary"), (&names.1, "fallback")] {
            if n.trim().is_empty() || n.chars().any(char::is_control) {
                return Err(Error::invalid_config(format!(
                    "the {which} layer name {n:?} is empty or has control characters; use a short name such as \"zookeeper\" or \"etcd\""
                )));
            }
        }
        let capacity = self.event_capacity.unwrap_or(DEFAULT_EVENT_CAPACITY);
        if capacity == 0 {
            return Err(Error::invalid_config(
                "event_capacity is 0; give the event stream room for at least one event (default 1024)",
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid_config(
                "SupervisorBuilder::build must run inside a tokio runtime: the supervisor spawns its state machine there",
            ));
        }

        let timings = Timings::derive(
            session_timeout,
            failover_after,
            failback_after,
            check_interval,
            record_timeout,
        );
        let name = self.name.unwrap_or_else(|| "supervisor".to_owned());
        let metrics = ElectionMetrics::new("supervisor", name.clone());
        let span = tracing::info_span!("supervisor", participant = %id, election = %name);
        let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
        let callbacks = {
            let _enter = span.enter();
            event::spawn_callbacks(self.callbacks, id.clone())
        };
        let (beat_tx, beat_rx) = watch::channel(None);
        let poke = Arc::new(Notify::new());
        let policy = self.policy.unwrap_or_else(|| Box::new(DampedPolicy::new()));
        let names: [Arc<str>; 2] = [names.0.into(), names.1.into()];
        let now = tokio::time::Instant::now().into_std();
        let machine = SupervisorMachine::new(
            Config {
                id: id.clone(),
                names: names.clone(),
                timings,
                strict: self.strict,
                policy,
                epoch: (now, driver::unix_ms()),
                layers: [
                    primary.status().borrow().clone(),
                    fallback.status().borrow().clone(),
                ],
            },
            now,
        );
        let state = State::new(
            machine,
            [primary.status(), fallback.status()],
            Sinks {
                events: None,
                event_capacity: capacity,
                callbacks,
                metrics: metrics.clone(),
                vacated: None,
            },
            beat_tx,
        );
        let inner = Arc::new(Inner {
            id,
            layers: [primary, fallback],
            names,
            mode_record: mode_record.clone(),
            timings,
            cell: StatusCell::with_metrics(metrics),
            state: std::sync::Mutex::new(state),
            ops: tokio::sync::Mutex::new(()),
            inputs: inputs_tx.clone(),
            poke: poke.clone(),
            span: span.clone(),
        });
        let tasks = [
            tokio::spawn(driver::drive(inner.clone(), inputs_rx).instrument(span.clone())),
            tokio::spawn(
                driver::watch_record(mode_record, false, timings, Some(poke), inputs_tx.clone())
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                driver::watch_record(heartbeat_record.clone(), true, timings, None, inputs_tx)
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                driver::write_heartbeats(heartbeat_record, beat_rx, timings).instrument(span),
            ),
        ];
        inner.lock().tasks = tasks.iter().map(|t| t.abort_handle()).collect();
        Ok(Supervisor { inner })
    }
}
