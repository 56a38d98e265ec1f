//! The supervisor's executor: the thin tokio side of the [`SupervisorMachine`].
//!
//! It owns the record store, the layers' status streams, the timers and the event sinks.
//! Watcher tasks read the records and report what they saw; the heartbeat task writes what
//! the machine asks for; compare-and-swaps run in tasks spawned when the machine asks for
//! them. Every decision is the machine's: [`step`] feeds it one input and carries out its
//! effects in the order it emitted them (a status publication always precedes the write
//! that depends on it), and [`drive`] calls it whenever something changes and at the
//! machine's deadline.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::event::SupervisorEvent;
use super::machine::{self, Change, Effect, Input, SupervisorMachine};
use super::mode::{Heartbeat, Layer, LayerRef};
use super::policy::Timings;
use crate::election::Election;
use crate::error::Error;
use crate::metrics::ElectionMetrics;
use crate::participant::Machine;
use crate::record::{CasOutcome, CasRecord};
use crate::status::{Status, StatusCell};

/// Everything a supervisor handle shares with its executor task.
pub(crate) struct Inner {
    pub(crate) id: String,
    pub(crate) layers: [Arc<dyn Election>; 2],
    pub(crate) names: [Arc<str>; 2],
    pub(crate) mode_record: Arc<dyn CasRecord>,
    pub(crate) timings: Timings,
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
}

pub(crate) struct Sinks {
    /// The event stream, made by the first [`Supervisor::events`](super::Supervisor::events)
    /// call (None before it and after close).
    pub(crate) events: Option<broadcast::Sender<SupervisorEvent>>,
    /// Its capacity.
    pub(crate) event_capacity: usize,
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

/// One participant's executor state: the machine and what carries out its effects.
pub(crate) struct State {
    pub(crate) m: SupervisorMachine,
    pub(crate) closed: bool,
    rx: [watch::Receiver<Status>; 2],
    pub(crate) join_tasks: Vec<JoinHandle<()>>,
    pub(crate) beat: watch::Sender<Option<Heartbeat>>,
    pub(crate) sinks: Sinks,
    pub(crate) tasks: Vec<AbortHandle>,
}

impl State {
    pub(crate) fn new(
        m: SupervisorMachine,
        rx: [watch::Receiver<Status>; 2],
        sinks: Sinks,
        beat: watch::Sender<Option<Heartbeat>>,
    ) -> State {
        State {
            m,
            closed: false,
            rx,
            join_tasks: Vec::new(),
            beat,
            sinks,
            tasks: Vec::new(),
        }
    }
}

/// The Unix time in ms now (the machine's epoch for fresh generations).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Feed the machine one input (with the layers' latest statuses) and carry out its effects
/// in order, through the one runner ([`crate::participant::feed`]). Returns the machine's
/// next deadline.
pub(crate) fn step(inner: &Inner, st: &mut State, input: Input) -> Instant {
    let now = Instant::now();
    if st.closed {
        return now + inner.timings.check_interval;
    }
    crate::participant::feed(&mut Exec { inner, st, now }, input);
    st.m.next_deadline()
        .map_or(now + inner.timings.check_interval, Instant::from_std)
}

/// One step's executor: the machine's state and what carries out its effects.
struct Exec<'a> {
    inner: &'a Inner,
    st: &'a mut State,
    now: Instant,
}

impl crate::participant::Executor for Exec<'_> {
    type M = SupervisorMachine;

    fn machine(&mut self) -> &mut SupervisorMachine {
        &mut self.st.m
    }

    fn now(&self) -> std::time::Instant {
        self.now.into_std()
    }

    /// The machine decides on the layers' latest statuses.
    fn prepare(&mut self) {
        for layer in [Layer::Primary, Layer::Fallback] {
            let s = self.st.rx[layer.index()].borrow_and_update().clone();
            self.st.m.set_layer(layer, s);
        }
    }

    fn execute(&mut self, effect: Effect) -> Option<Input> {
        execute(self.inner, self.st, effect);
        None
    }
}

fn execute(inner: &Inner, st: &mut State, effect: Effect) {
    match effect {
        Effect::Event(e) => st.sinks.emit(e),
        Effect::Publish {
            role,
            reason,
            level,
            health_reason,
            new_grant,
        } => {
            if new_grant {
                // Time the takeover before publishing it, so whoever sees `Leader` also
                // sees the sample.
                if let Some(at) = st.sinks.vacated.take() {
                    st.sinks.metrics.handover(at.into_std());
                }
            }
            let cell = &inner.cell;
            if role.is_leader() {
                cell.set_health(level, health_reason);
                cell.set_role(role, reason);
            } else {
                cell.set_role(role, reason);
                cell.set_health(level, health_reason);
            }
        }
        Effect::Beat(beat) => {
            st.beat.send_replace(beat);
        }
        Effect::Cas(change) => spawn_cas(inner, change),
        Effect::ReadMode => inner.poke.notify_one(),
    }
}

/// The executor task: feeds the machine every input, every layer status change, and its
/// timer at the deadline it asked for.
pub(crate) async fn drive(inner: Arc<Inner>, mut inputs: mpsc::UnboundedReceiver<Input>) {
    let mut rx = [inner.layers[0].status(), inner.layers[1].status()];
    let mut open = [true, true];
    let mut input = Input::Tick;
    loop {
        let wake = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            step(&inner, &mut st, std::mem::replace(&mut input, Input::Tick))
        };
        let [rx0, rx1] = &mut rx;
        tokio::select! {
            r = rx0.changed(), if open[0] => if r.is_err() { open[0] = false },
            r = rx1.changed(), if open[1] => if r.is_err() { open[1] = false },
            msg = inputs.recv() => match msg {
                Some(m) => input = m,
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
        let seen = result.as_ref().ok().map(|v| v.as_ref().map(|v| v.version));
        let input = if heartbeat {
            Input::Heartbeat { result }
        } else {
            Input::Mode {
                result,
                sent: sent.into_std(),
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
                let _ = tx.send(Input::JoinFailed {
                    layer,
                    kind: error.kind(),
                    message: error.message().to_owned(),
                });
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
            Err(_) => Err(machine::timed_out("writing", timeout, true)),
        };
        let _ = tx.send(Input::Cas {
            change,
            result,
            sent: sent.into_std(),
        });
    };
    tokio::spawn(tracing::Instrument::instrument(task, inner.span.clone()));
}
