//! The supervisor's mechanism: one state machine per participant, evaluated under a lock
//! whenever something changes (a layer's status, a read of a record, the outcome of a
//! compare-and-swap, an API call) and at least once per check interval.
//!
//! Record I/O never runs inside the state machine: watcher tasks read the records and send
//! what they saw; compare-and-swaps run in tasks spawned AFTER the state machine published
//! its new status (so "stop leading" is always published before the write that lets
//! someone else lead). The state machine itself only reads status channels, publishes its
//! own status and sends events, all without blocking.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::event::SupervisorEvent;
use super::mode::{Heartbeat, Layer, LayerRef, Mode};
use super::policy::{Decision, ModeChange, Policy, Timings, View};
use crate::election::Election;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::ElectionMetrics;
use crate::record::{CasOutcome, CasRecord, Versioned};
use crate::status::{HealthLevel, Role, Status, StatusCell};
use crate::term::Term;

const HISTORY: usize = 32;

/// Everything a supervisor handle shares with its state-machine task.
pub(crate) struct Inner {
    pub(crate) id: String,
    pub(crate) layers: [Arc<dyn Election>; 2],
    pub(crate) names: [Arc<str>; 2],
    pub(crate) mode_record: Arc<dyn CasRecord>,
    pub(crate) timings: Timings,
    pub(crate) strict: bool,
    pub(crate) cell: StatusCell,
    pub(crate) state: Mutex<State>,
    /// Serializes join / resign / close.
    pub(crate) ops: tokio::sync::Mutex<()>,
    pub(crate) inputs: mpsc::UnboundedSender<Input>,
    /// Asks the mode watcher to read the record now.
    pub(crate) poke: Arc<Notify>,
    /// The supervisor's tracing span, carried by every task it spawns.
    pub(crate) span: tracing::Span,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn layer_ref(&self, layer: Layer) -> LayerRef {
        LayerRef {
            layer,
            name: self.names[layer.index()].clone(),
        }
    }

    fn name(&self, layer: Layer) -> &str {
        &self.names[layer.index()]
    }
}

/// What the watcher and worker tasks report to the state machine.
pub(crate) enum Input {
    /// A read of the mode record, sent at `sent`, answered at `received`.
    Mode {
        result: Result<Option<Versioned>>,
        sent: Instant,
        received: Instant,
    },
    /// A read of the heartbeat record.
    Heartbeat {
        result: Result<Option<Versioned>>,
        received: Instant,
    },
    /// The outcome of a compare-and-swap on the mode record.
    Cas {
        change: Change,
        result: Result<CasOutcome>,
        sent: Instant,
        received: Instant,
    },
    /// A layer refused to let us join (permanent error).
    JoinFailed { layer: Layer, error: Error },
    /// Re-evaluate now (an API call changed the state).
    Nudge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// The record was absent: create it.
    Create,
    /// The record went back to an older generation (or the same generation with another
    /// layer), e.g. re-created by a participant that lost its memory: renew it.
    Repair,
    Failover,
    Failback,
    /// Same layer, next generation: this participant's layer still holds a grant whose
    /// supervisor term it already published and lost (leadership resumed after a doubt);
    /// a new generation keeps its terms strictly increasing.
    Renew,
}

/// A compare-and-swap on the mode record that this participant started.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    kind: ChangeKind,
    to: Mode,
    expected: Option<u64>,
    reason: Arc<str>,
}

/// What the latest read of the mode record showed, relative to the mode we follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadState {
    NotYet,
    /// It holds exactly the mode we follow.
    Matches,
    /// It does not exist (never created, or the fallback store was wiped).
    Absent,
    /// It holds a generation below the highest we saw (or ours with another layer).
    Regressed {
        found: Mode,
        version: u64,
    },
    /// It holds something that is not a mode; we keep ours.
    Garbage(Arc<str>),
    /// It could not be read; we keep ours.
    Failed(Arc<str>),
}

#[derive(Debug, Default, Clone, Copy)]
struct Track {
    level: Option<HealthLevel>,
    healthy_since: Option<Instant>,
    unhealthy_since: Option<Instant>,
}

pub(crate) struct Sinks {
    pub(crate) events: Option<broadcast::Sender<SupervisorEvent>>,
    pub(crate) callbacks: Option<mpsc::UnboundedSender<SupervisorEvent>>,
    pub(crate) metrics: ElectionMetrics,
    /// When this participant adopted a mode change (for the handover metric).
    pub(crate) vacated: Option<Instant>,
}

impl Sinks {
    /// Log, count and deliver one event.
    fn emit(&mut self, event: SupervisorEvent) {
        tracing::info!(event = event.name(), "{event}");
        self.record(&event);
        if let Some(tx) = &self.callbacks {
            let _ = tx.send(event.clone());
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

impl Sinks {
    /// The metrics an event moves (see [`crate::metrics`]).
    fn record(&mut self, event: &SupervisorEvent) {
        use crate::metrics::{health_value, FAILBACKS, FAILOVERS, LAYER_ACTIVE, LAYER_HEALTH};
        let m = &self.metrics;
        let initiated = |here: bool| [("initiated", if here { "here" } else { "elsewhere" })];
        let active = |to: &LayerRef, from: Option<&LayerRef>| {
            m.gauge_with(LAYER_ACTIVE, "layer", &to.name, 1.0);
            if let Some(f) = from {
                m.gauge_with(LAYER_ACTIVE, "layer", &f.name, 0.0);
            }
        };
        match event {
            SupervisorEvent::Failover {
                from,
                to,
                initiated_here,
                ..
            } => {
                m.count(FAILOVERS, &initiated(*initiated_here));
                active(to, Some(from));
                self.vacated = Some(Instant::now());
            }
            SupervisorEvent::Failback {
                from,
                to,
                initiated_here,
                ..
            } => {
                m.count(FAILBACKS, &initiated(*initiated_here));
                active(to, Some(from));
                self.vacated = Some(Instant::now());
            }
            SupervisorEvent::Mode { layer, .. } => active(layer, None),
            SupervisorEvent::LayerHealth { layer, level, .. } => {
                m.gauge_with(LAYER_HEALTH, "layer", &layer.name, health_value(*level));
            }
            SupervisorEvent::LeadershipGained { .. }
            | SupervisorEvent::LeadershipLost { .. }
            | SupervisorEvent::Health { .. } => {}
        }
    }
}

/// One participant's supervisor state.
pub(crate) struct State {
    pub(crate) wants: bool,
    pub(crate) closed: bool,
    pub(crate) idle_reason: Arc<str>,
    pub(crate) mode: Option<Mode>,
    mode_version: Option<u64>,
    /// When we first saw the generation we follow (start of its takeover guard).
    mode_since: Instant,
    /// When we learned it (reads sent before this cannot overrule it).
    mode_learned: Instant,
    highest_generation: Option<u64>,
    read: ReadState,
    /// Send instant of the latest read or write that showed exactly our mode.
    pub(crate) confirmed_sent: Option<Instant>,
    /// A write to the mode record whose outcome is unknown; no leading until a read sent
    /// after this instant confirms the mode.
    cas_unknown_since: Option<Instant>,
    change: Option<Change>,
    changes: Vec<ModeChange>,
    track: [Track; 2],
    rx: [watch::Receiver<Status>; 2],
    pub(crate) join_tasks: Vec<JoinHandle<()>>,
    pub(crate) join_errors: [Option<(ErrorKind, String)>; 2],
    hb_version: Option<Option<u64>>,
    hb_heard: Option<Instant>,
    started: Instant,
    pub(crate) beat: watch::Sender<Option<Heartbeat>>,
    published_term: Option<(Term, Layer)>,
    /// The layer of the latest grant this participant published (kept after the loss).
    pub(crate) led_through: Option<Layer>,
    /// The highest supervisor term this participant ever published.
    highest_published: Option<Term>,
    published_level: Option<HealthLevel>,
    policy: Box<dyn Policy>,
    pub(crate) sinks: Sinks,
    pub(crate) tasks: Vec<AbortHandle>,
}

impl State {
    pub(crate) fn new(
        rx: [watch::Receiver<Status>; 2],
        policy: Box<dyn Policy>,
        sinks: Sinks,
        beat: watch::Sender<Option<Heartbeat>>,
    ) -> State {
        let now = Instant::now();
        State {
            wants: false,
            closed: false,
            idle_reason: "created".into(),
            mode: None,
            mode_version: None,
            mode_since: now,
            mode_learned: now,
            highest_generation: None,
            read: ReadState::NotYet,
            confirmed_sent: None,
            cas_unknown_since: None,
            change: None,
            changes: Vec::new(),
            track: [Track::default(); 2],
            rx,
            join_tasks: Vec::new(),
            join_errors: [None, None],
            hb_version: None,
            hb_heard: None,
            started: now,
            beat,
            published_term: None,
            led_through: None,
            highest_published: None,
            published_level: None,
            policy,
            sinks,
            tasks: Vec::new(),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A generation for a newly created or repaired record: above everything we saw, and at
/// least the Unix time in ms (so a record re-created by participants that lost their memory
/// still orders after the old one, under the same clock assumption as `Term`'s epoch).
fn fresh_generation(highest: Option<u64>) -> u64 {
    highest.map_or(0, |h| h.saturating_add(1)).max(unix_ms())
}

/// The state-machine task.
pub(crate) async fn drive(inner: Arc<Inner>, mut inputs: mpsc::UnboundedReceiver<Input>) {
    let mut rx = [inner.layers[0].status(), inner.layers[1].status()];
    let mut open = [true, true];
    let mut wake;
    let mut input: Option<Input> = None;
    loop {
        {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            if let Some(i) = input.take() {
                apply(&inner, &mut st, i);
            }
            wake = evaluate(&inner, &mut st);
        }
        let [rx0, rx1] = &mut rx;
        tokio::select! {
            r = rx0.changed(), if open[0] => if r.is_err() { open[0] = false },
            r = rx1.changed(), if open[1] => if r.is_err() { open[1] = false },
            msg = inputs.recv() => match msg {
                Some(m) => input = Some(m),
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Reads `record` every `interval` (and as soon as it changes, or when poked), reporting
/// every outcome.
pub(crate) async fn watch_record(
    record: Arc<dyn CasRecord>,
    heartbeat: bool,
    timings: Timings,
    poke: Option<Arc<Notify>>,
    tx: mpsc::UnboundedSender<Input>,
) {
    let what = if heartbeat { "heartbeat" } else { "mode" };
    loop {
        let sent = Instant::now();
        let result = match tokio::time::timeout(timings.record_timeout, record.read()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "reading the supervisor {what} record took longer than record_timeout ({:?})",
                timings.record_timeout
            ))),
        };
        let received = Instant::now();
        let seen = result.as_ref().ok().map(|v| v.as_ref().map(|v| v.version));
        let input = if heartbeat {
            Input::Heartbeat { result, received }
        } else {
            Input::Mode {
                result,
                sent,
                received,
            }
        };
        if tx.send(input).is_err() {
            return;
        }
        let changed = async {
            match seen {
                Some(seen) => {
                    if record.changed(seen).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let poked = async {
            match &poke {
                Some(p) => p.notified().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(sent + timings.check_interval) => {}
            _ = changed => {}
            _ = poked => {}
        }
    }
}

/// Writes the primary leader's heartbeat every check interval while `beat` holds one.
pub(crate) async fn write_heartbeats(
    record: Arc<dyn CasRecord>,
    mut beat: watch::Receiver<Option<Heartbeat>>,
    timings: Timings,
) {
    let t = timings.record_timeout;
    let mut version: Option<Option<u64>> = None;
    loop {
        let current = beat.borrow_and_update().clone();
        let Some(hb) = current else {
            if beat.changed().await.is_err() {
                return;
            }
            continue;
        };
        let sent = Instant::now();
        for _attempt in 0..2 {
            if version.is_none() {
                if let Ok(Ok(v)) = tokio::time::timeout(t, record.read()).await {
                    version = Some(v.map(|v| v.version));
                }
            }
            let Some(expected) = version else { break };
            match tokio::time::timeout(t, record.compare_and_swap(expected, hb.encode())).await {
                Ok(Ok(CasOutcome::Swapped(v))) => {
                    version = Some(Some(v));
                    break;
                }
                Ok(Ok(CasOutcome::Conflict(cur))) => version = Some(cur.map(|c| c.version)),
                _ => {
                    version = None;
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sent + timings.check_interval) => {}
            r = beat.changed() => if r.is_err() { return },
        }
    }
}

/// Joins one layer, retrying retryable errors with a bounded backoff until it holds a
/// place (the layer itself then keeps it) or refuses for good.
pub(crate) async fn join_layer(
    election: Arc<dyn Election>,
    layer: Layer,
    tx: mpsc::UnboundedSender<Input>,
    max_backoff: Duration,
) {
    let mut delay = Duration::from_millis(50).min(max_backoff);
    loop {
        match election.join().await {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                tracing::debug!(%layer, error = %e, "joining the layer failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max_backoff);
            }
            Err(error) => {
                let _ = tx.send(Input::JoinFailed { layer, error });
                return;
            }
        }
    }
}

fn spawn_cas(inner: &Inner, change: Change) {
    let record = inner.mode_record.clone();
    let tx = inner.inputs.clone();
    let timeout = inner.timings.record_timeout;
    let task = async move {
        let sent = Instant::now();
        let result = match tokio::time::timeout(
            timeout,
            record.compare_and_swap(change.expected, change.to.encode()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "writing the supervisor mode record took longer than record_timeout ({timeout:?}); outcome unknown"
            ))),
        };
        let _ = tx.send(Input::Cas {
            change,
            result,
            sent,
            received: Instant::now(),
        });
    };
    tokio::spawn(tracing::Instrument::instrument(task, inner.span.clone()));
}

pub(crate) fn apply(inner: &Inner, st: &mut State, input: Input) {
    match input {
        Input::Mode {
            result,
            sent,
            received,
        } => observe(inner, st, result, sent, received),
        Input::Heartbeat { result, received } => observe_heartbeat(st, result, received),
        Input::Cas {
            change,
            result,
            sent,
            received,
        } => cas_done(inner, st, change, result, sent, received),
        Input::JoinFailed { layer, error } => {
            tracing::warn!(%layer, %error, "a layer refused to let this participant join");
            st.join_errors[layer.index()] = Some((error.kind(), error.message().to_owned()));
        }
        Input::Nudge => {}
    }
}

fn observe(
    inner: &Inner,
    st: &mut State,
    result: Result<Option<Versioned>>,
    sent: Instant,
    received: Instant,
) {
    let v = match result {
        Err(e) => {
            if !matches!(st.read, ReadState::Failed(_)) {
                tracing::warn!(error = %e, mode = ?st.mode, "cannot read the mode record; keeping the last mode seen");
            }
            st.read = ReadState::Failed(e.to_string().into());
            return;
        }
        Ok(v) => v,
    };
    let found = match v.as_ref().map(|v| Mode::decode(&v.value)) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            if !matches!(st.read, ReadState::Garbage(_)) {
                tracing::error!(error = %e, "the mode record holds garbage; keeping the last mode seen");
            }
            st.read = ReadState::Garbage(e.message().into());
            return;
        }
    };
    // A read sent before we learned our mode cannot overrule it (it may have been served
    // before the write that taught us).
    if sent < st.mode_learned && found != st.mode {
        return;
    }
    // Our own write, seen by the watcher before its outcome arrived: the outcome decides
    // (Swapped: we made the change; Conflict: someone else wrote the same value first).
    if found.is_some() && st.change.as_ref().map(|c| c.to) == found {
        return;
    }
    let Some(found) = found else {
        st.read = ReadState::Absent;
        st.mode_version = None;
        return;
    };
    let version = v.as_ref().map(|v| v.version).unwrap_or_default();
    let regressed = st.highest_generation.is_some_and(|h| found.generation < h)
        || st
            .mode
            .is_some_and(|m| m.generation == found.generation && m.layer != found.layer);
    if regressed {
        if st.read != (ReadState::Regressed { found, version }) {
            tracing::warn!(%found, highest = ?st.highest_generation, "the mode record went back to an older generation; renewing it");
        }
        st.read = ReadState::Regressed { found, version };
        return;
    }
    st.read = ReadState::Matches;
    st.mode_version = Some(version);
    if st.mode != Some(found) {
        adopt(inner, st, found, received, None);
        st.confirmed_sent = Some(sent);
    } else {
        st.confirmed_sent = Some(st.confirmed_sent.map_or(sent, |c| c.max(sent)));
    }
    if st.cas_unknown_since.is_some_and(|t| sent >= t) {
        st.cas_unknown_since = None;
    }
}

fn observe_heartbeat(st: &mut State, result: Result<Option<Versioned>>, received: Instant) {
    let Ok(v) = result else { return };
    let version = v.as_ref().map(|v| v.version);
    let first = st.hb_version.is_none();
    let changed = st.hb_version != Some(version);
    st.hb_version = Some(version);
    if first || !changed {
        return;
    }
    let Some(v) = v else { return };
    match Heartbeat::decode(&v.value) {
        Ok(hb) => {
            if st
                .mode
                .is_some_and(|m| m.layer == Layer::Primary && m.generation == hb.generation)
            {
                st.hb_heard = Some(received);
            }
        }
        Err(e) => tracing::debug!(error = %e, "ignoring a heartbeat"),
    }
}

fn cas_done(
    inner: &Inner,
    st: &mut State,
    change: Change,
    result: Result<CasOutcome>,
    sent: Instant,
    received: Instant,
) {
    st.change = None;
    match result {
        Ok(CasOutcome::Swapped(version)) => {
            st.read = ReadState::Matches;
            st.mode_version = Some(version);
            if st.mode != Some(change.to) {
                adopt(inner, st, change.to, received, Some(&change));
            }
            st.confirmed_sent = Some(sent);
        }
        Ok(CasOutcome::Conflict(current)) => {
            tracing::debug!(to = %change.to, "mode record changed under us; following what it holds");
            observe(inner, st, Ok(current), sent, received);
        }
        Err(e) => {
            tracing::warn!(error = %e, to = %change.to, "writing the mode record failed; outcome unknown");
            st.cas_unknown_since = Some(received);
            inner.poke.notify_one();
        }
    }
}

/// Follow `mode` from now on, publishing the corresponding event.
fn adopt(inner: &Inner, st: &mut State, mode: Mode, at: Instant, initiated: Option<&Change>) {
    let from = st.mode;
    st.mode = Some(mode);
    st.mode_since = at;
    st.mode_learned = at;
    st.highest_generation = Some(
        st.highest_generation
            .map_or(mode.generation, |h| h.max(mode.generation)),
    );
    st.hb_heard = None;
    st.changes.push(ModeChange { from, to: mode, at });
    if st.changes.len() > HISTORY {
        st.changes.remove(0);
    }
    let initiated_here = initiated.is_some();
    let reason: Arc<str> = match initiated {
        Some(c) => c.reason.clone(),
        None => match from {
            None => "read from the mode record".into(),
            Some(f) => format!("the mode record changed from {f} to {mode}").into(),
        },
    };
    let event = match from {
        Some(f) if f.layer == Layer::Primary && mode.layer == Layer::Fallback => {
            SupervisorEvent::Failover {
                from: inner.layer_ref(f.layer),
                to: inner.layer_ref(mode.layer),
                generation: mode.generation,
                reason,
                initiated_here,
            }
        }
        Some(f) if f.layer == Layer::Fallback && mode.layer == Layer::Primary => {
            SupervisorEvent::Failback {
                from: inner.layer_ref(f.layer),
                to: inner.layer_ref(mode.layer),
                generation: mode.generation,
                reason,
                initiated_here,
            }
        }
        _ => SupervisorEvent::Mode {
            layer: inner.layer_ref(mode.layer),
            generation: mode.generation,
            reason,
            initiated_here,
        },
    };
    st.sinks.emit(event);
}

/// Recompute everything from the current facts, publish, start any write. Returns when to
/// evaluate again at the latest.
pub(crate) fn evaluate(inner: &Inner, st: &mut State) -> Instant {
    let now = Instant::now();
    let t = inner.timings;
    if st.closed {
        return now + t.check_interval;
    }
    let statuses = [st.rx[0].borrow().clone(), st.rx[1].borrow().clone()];
    for layer in [Layer::Primary, Layer::Fallback] {
        track_health(inner, st, layer, &statuses[layer.index()], now);
    }

    // Decide on a write to the mode record (only participants that take part write).
    let mut start: Option<Change> = None;
    if st.wants && st.change.is_none() {
        match st.read.clone() {
            ReadState::Absent => {
                let to = Mode::new(
                    st.mode.map_or(Layer::Primary, |m| m.layer),
                    fresh_generation(st.highest_generation),
                );
                start = Some(Change {
                    kind: ChangeKind::Create,
                    to,
                    expected: None,
                    reason: match st.mode {
                        None => "created the mode record".into(),
                        Some(m) => {
                            format!("re-created the mode record (it was gone; last seen {m})")
                                .into()
                        }
                    },
                });
            }
            ReadState::Regressed { found, version } => {
                let to = Mode::new(found.layer, fresh_generation(st.highest_generation));
                start = Some(Change {
                    kind: ChangeKind::Repair,
                    to,
                    expected: Some(version),
                    reason: format!(
                        "renewed the mode record: it had gone back to {found} (highest generation seen {})",
                        st.highest_generation.unwrap_or_default()
                    )
                    .into(),
                });
            }
            ReadState::Matches if st.cas_unknown_since.is_none() => {
                start = ask_policy(inner, st, &statuses, now);
            }
            _ => {}
        }
    }
    if let Some(c) = &start {
        tracing::debug!(kind = ?c.kind, to = %c.to, reason = %c.reason, "changing the mode record");
        st.change = Some(c.clone());
    }

    let (mut role, mut reason, mut role_wake) = role_of(inner, st, &statuses, now);
    if let Role::Leader { term } = role {
        let resumed = st.published_term.map(|(t, _)| t) != Some(term)
            && st.highest_published.is_some_and(|h| term <= h);
        if resumed && st.change.is_none() {
            let mode = st.mode.expect("leading implies a mode");
            let c = Change {
                kind: ChangeKind::Renew,
                to: Mode::new(mode.layer, mode.generation.saturating_add(1)),
                expected: st.mode_version,
                reason: format!(
                    "renewed the generation: term {term} was already granted here once; leading again needs a newer term"
                )
                .into(),
            };
            tracing::debug!(to = %c.to, reason = %c.reason, "changing the mode record");
            st.change = Some(c.clone());
            start = Some(c);
            (role, reason, role_wake) = role_of(inner, st, &statuses, now);
        }
    }
    let (level, health_reason) = health_of(inner, st, &statuses);
    publish(inner, st, role, reason, level, health_reason);

    let beat = match (st.published_term, st.mode) {
        (Some((term, Layer::Primary)), Some(m)) => Some(Heartbeat {
            generation: m.generation,
            term,
            id: inner.id.clone(),
        }),
        _ => None,
    };
    st.beat.send_if_modified(|b| {
        if *b != beat {
            *b = beat;
            true
        } else {
            false
        }
    });

    // Only now, after "not leading" is published, write.
    if let Some(c) = start {
        spawn_cas(inner, c);
    }
    let fallback_wake = now + t.check_interval;
    role_wake.map_or(fallback_wake, |w| w.min(fallback_wake))
}

fn ask_policy(
    inner: &Inner,
    st: &mut State,
    statuses: &[Status; 2],
    now: Instant,
) -> Option<Change> {
    let mode = st.mode?;
    let version = st.mode_version?;
    let heard = st
        .hb_heard
        .unwrap_or(st.started)
        .max(st.mode_since + inner.timings.takeover_delay)
        .max(st.started)
        .min(now);
    let leading = st.published_term.is_some_and(|(_, l)| l == mode.layer);
    let State {
        policy,
        changes,
        track,
        ..
    } = st;
    let view = View {
        now,
        mode,
        timings: &inner.timings,
        primary: &statuses[0],
        fallback: &statuses[1],
        primary_healthy_since: track[0].healthy_since,
        primary_unhealthy_since: track[0].unhealthy_since,
        fallback_healthy_since: track[1].healthy_since,
        primary_leader_heard: heard,
        leading,
        changes,
        names: [inner.name(Layer::Primary), inner.name(Layer::Fallback)],
    };
    match policy.decide(&view) {
        Decision::FailOver { reason } if mode.layer == Layer::Primary => Some(Change {
            kind: ChangeKind::Failover,
            to: Mode::new(Layer::Fallback, mode.generation.saturating_add(1)),
            expected: Some(version),
            reason: reason.into(),
        }),
        Decision::FailBack { reason } if mode.layer == Layer::Fallback && leading => Some(Change {
            kind: ChangeKind::Failback,
            to: Mode::new(Layer::Primary, mode.generation.saturating_add(1)),
            expected: Some(version),
            reason: reason.into(),
        }),
        Decision::Stay => None,
        other => {
            tracing::trace!(decision = ?other, %mode, leading, "policy decision not applicable here; ignored");
            None
        }
    }
}

fn track_health(inner: &Inner, st: &mut State, layer: Layer, s: &Status, now: Instant) {
    let t = &mut st.track[layer.index()];
    let level = s.health.level;
    if t.level != Some(level) {
        let first = t.level.is_none();
        t.level = Some(level);
        if !first || level != HealthLevel::Healthy {
            st.sinks.emit(SupervisorEvent::LayerHealth {
                layer: inner.layer_ref(layer),
                level,
                reason: s.health.reason.clone(),
            });
        }
    }
    let t = &mut st.track[layer.index()];
    if level == HealthLevel::Healthy {
        t.unhealthy_since = None;
        t.healthy_since.get_or_insert(now);
    } else {
        t.healthy_since = None;
        t.unhealthy_since.get_or_insert(now);
    }
}

/// Whether we may lead under `mode` now: Ok(lease end, if a lease applies) or
/// Err(why not, until when at least).
fn gate(
    inner: &Inner,
    st: &State,
    mode: Mode,
    now: Instant,
) -> Result<Option<Instant>, (String, Option<Instant>)> {
    let t = inner.timings;
    if let Some(c) = &st.change {
        return Err((format!("changing the mode record to {}", c.to), None));
    }
    match &st.read {
        ReadState::Absent => return Err(("the mode record is gone; re-creating it".into(), None)),
        ReadState::Regressed { found, .. } => {
            return Err((
                format!("the mode record went back to {found}; renewing it"),
                None,
            ))
        }
        _ => {}
    }
    if st.cas_unknown_since.is_some() {
        return Err((
            "a write to the mode record has an unknown outcome; waiting for a read to confirm the mode".into(),
            None,
        ));
    }
    let ready = st.mode_since + t.takeover_delay;
    if now < ready {
        return Err((
            format!(
                "takeover guard: waiting {:?} after first seeing {mode} so that leaders under older generations have stepped down",
                t.takeover_delay
            ),
            Some(ready),
        ));
    }
    if mode.layer == Layer::Fallback || inner.strict {
        return match st.confirmed_sent {
            Some(s) if now < s + t.mode_lease => Ok(Some(s + t.mode_lease)),
            _ => Err((
                format!(
                    "mode {mode} not confirmed within the mode lease ({:?}); not leading until the mode record can be read",
                    t.mode_lease
                ),
                None,
            )),
        };
    }
    Ok(None)
}

fn role_of(
    inner: &Inner,
    st: &State,
    statuses: &[Status; 2],
    now: Instant,
) -> (Role, String, Option<Instant>) {
    if !st.wants {
        return (Role::Idle, st.idle_reason.to_string(), None);
    }
    let Some(mode) = st.mode else {
        let why = match &st.read {
            ReadState::Failed(e) | ReadState::Garbage(e) => {
                format!("cannot tell which layer counts: {e}")
            }
            ReadState::Absent => "creating the mode record".to_owned(),
            _ => "reading the mode record".to_owned(),
        };
        return (Role::Candidate, why, None);
    };
    let layer = mode.layer;
    let s = &statuses[layer.index()];
    let name = inner.name(layer);
    match &s.role {
        Role::Leader { term } => match gate(inner, st, mode, now) {
            Ok(lease_end) => (
                Role::Leader {
                    term: term.with_generation(mode.generation),
                },
                format!("leading through {name} under {mode}"),
                lease_end,
            ),
            Err((why, until)) => (Role::Follower { leader: None }, why, until),
        },
        Role::Follower { leader } => (
            Role::Follower {
                leader: leader.clone(),
            },
            format!("following in {name} under {mode}"),
            None,
        ),
        Role::Suspended => (Role::Suspended, format!("{name}: {}", s.reason), None),
        Role::Closed => (
            Role::Candidate,
            format!("the {name} election handle is closed"),
            None,
        ),
        _ => (
            Role::Candidate,
            format!("joining {name} ({})", s.reason),
            None,
        ),
    }
}

fn health_of(inner: &Inner, st: &State, statuses: &[Status; 2]) -> (HealthLevel, String) {
    let Some(mode) = st.mode else {
        return match &st.read {
            ReadState::Failed(e) | ReadState::Garbage(e) => (
                HealthLevel::Unhealthy,
                format!("cannot tell which layer counts: {e}"),
            ),
            _ => (HealthLevel::Degraded, "mode not known yet".to_owned()),
        };
    };
    let active = mode.layer;
    let standby = active.other();
    let (an, sn) = (inner.name(active), inner.name(standby));
    if let Some((_, msg)) = &st.join_errors[active.index()] {
        return (
            HealthLevel::Unhealthy,
            format!("joining the active layer {an} failed: {msg}"),
        );
    }
    let ah = &statuses[active.index()].health;
    if ah.level == HealthLevel::Unhealthy {
        return (
            HealthLevel::Unhealthy,
            format!("active layer {an} unhealthy: {}", ah.reason),
        );
    }
    let mut notes = Vec::new();
    if ah.level == HealthLevel::Degraded {
        notes.push(format!("active layer {an} degraded: {}", ah.reason));
    }
    if active == Layer::Fallback {
        notes.push(format!("running on the fallback layer {an} ({mode})"));
    }
    let sh = &statuses[standby.index()].health;
    if sh.level != HealthLevel::Healthy {
        notes.push(format!("standby layer {sn} {}: {}", sh.level, sh.reason));
    }
    if let Some((_, msg)) = &st.join_errors[standby.index()] {
        notes.push(format!("joining the standby layer {sn} failed: {msg}"));
    }
    match &st.read {
        ReadState::Failed(e) | ReadState::Garbage(e) => {
            notes.push(format!("mode record unreadable, keeping {mode}: {e}"))
        }
        ReadState::Absent | ReadState::Regressed { .. } => {
            notes.push("mode record being repaired".to_owned())
        }
        _ => {}
    }
    if notes.is_empty() {
        (
            HealthLevel::Healthy,
            format!("{an} active and healthy, {sn} standing by ({mode})"),
        )
    } else {
        (HealthLevel::Degraded, notes.join("; "))
    }
}

fn publish(
    inner: &Inner,
    st: &mut State,
    role: Role,
    reason: String,
    level: HealthLevel,
    health_reason: String,
) {
    let cell = &inner.cell;
    if role.is_leader() && st.published_term.map(|(t, _)| t) != role.term() {
        // A new grant: time the takeover before publishing it, so whoever sees `Leader`
        // also sees the sample.
        if let Some(at) = st.sinks.vacated.take() {
            st.sinks.metrics.handover(at.into_std());
        }
    }
    if role.is_leader() {
        cell.set_health(level, health_reason);
        cell.set_role(role, reason);
    } else {
        cell.set_role(role, reason);
        cell.set_health(level, health_reason);
    }
    let now = cell.get();
    let layer = st.mode.map_or(Layer::Primary, |m| m.layer);
    let term = now.role.term().map(|t| (t, layer));
    if let Some((t, _)) = term {
        st.highest_published = Some(st.highest_published.map_or(t, |h| h.max(t)));
    }
    if term != st.published_term {
        if let Some((t, l)) = st.published_term {
            st.sinks.emit(SupervisorEvent::LeadershipLost {
                layer: inner.layer_ref(l),
                term: t,
                reason: now.reason.clone(),
            });
        }
        if let Some((t, l)) = term {
            st.led_through = Some(l);
            st.sinks.emit(SupervisorEvent::LeadershipGained {
                layer: inner.layer_ref(l),
                term: t,
            });
        }
        st.published_term = term;
    }
    if st.published_level != Some(now.health.level) {
        if st.published_level.is_some() || now.health.level != HealthLevel::Healthy {
            st.sinks.emit(SupervisorEvent::Health {
                level: now.health.level,
                reason: now.health.reason.clone(),
            });
        }
        st.published_level = Some(now.health.level);
    }
}
