//! Metrics, emitted through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! succession records into whatever recorder the application installed (Prometheus,
//! StatsD, OpenTelemetry, ...); without one, recording costs next to nothing. Call
//! [`describe`] once after installing a recorder to give exporters the help texts below.
//!
//! Every series carries the labels `backend` (`memory`, `zk`, `etcd`, `supervisor`) and
//! `election` (the ZooKeeper latch path, the etcd prefix, the memory election's name, the
//! supervisor's [`name`](crate::SupervisorBuilder::name)); some add one more, listed below.
//! A supervisor's layers are elections of their own, so one process running a supervisor
//! reports three `backend`s.
//!
//! | name | type | extra labels | meaning |
//! |---|---|---|---|
//! | `succession_leadership_changes_total` | counter | `change` = `gained` / `lost` | leaderships this participant started / ended |
//! | `succession_is_leader` | gauge | | 1 while this participant leads, else 0 |
//! | `succession_term_generation` | gauge | | generation of the term this participant holds or last held |
//! | `succession_term_epoch` | gauge | | epoch of that term |
//! | `succession_term_sequence` | gauge | | sequence of that term |
//! | `succession_health` | gauge | | link to the store: 2 healthy, 1 degraded, 0 unhealthy |
//! | `succession_handover_seconds` | histogram | | at a new leader: from learning that the previous leader left to leading |
//! | `succession_repairs_total` | counter | `cause` | ZooKeeper: times the latch path or our node was re-created (`node_deleted`, `node_missing`, `path_missing`, `session_replaced`) |
//! | `succession_session_expirations_total` | counter | | ZooKeeper: sessions found expired or lost (wipe) |
//! | `succession_lease_losses_total` | counter | | etcd: leases lost (expired, revoked or wiped under us) |
//! | `succession_failovers_total` | counter | `initiated` = `here` / `elsewhere` | supervisor: mode moved to the fallback layer |
//! | `succession_failbacks_total` | counter | `initiated` = `here` / `elsewhere` | supervisor: mode moved back to the primary layer |
//! | `succession_layer_active` | gauge | `layer` | supervisor: 1 for the layer that counts, 0 for the other |
//! | `succession_layer_health` | gauge | `layer` | supervisor: each layer's health as the supervisor sees it (2/1/0) |
//!
//! Gauges are per process: a process running several participants of one election (tests,
//! benchmarks) shares their series.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Label, Unit};

use crate::status::{HealthLevel, Status};

/// `succession_leadership_changes_total`
pub const LEADERSHIP_CHANGES: &str = "succession_leadership_changes_total";
/// `succession_is_leader`
pub const IS_LEADER: &str = "succession_is_leader";
/// `succession_term_generation`
pub const TERM_GENERATION: &str = "succession_term_generation";
/// `succession_term_epoch`
pub const TERM_EPOCH: &str = "succession_term_epoch";
/// `succession_term_sequence`
pub const TERM_SEQUENCE: &str = "succession_term_sequence";
/// `succession_health`
pub const HEALTH: &str = "succession_health";
/// `succession_handover_seconds`
pub const HANDOVER_SECONDS: &str = "succession_handover_seconds";
/// `succession_repairs_total`
pub const REPAIRS: &str = "succession_repairs_total";
/// `succession_session_expirations_total`
pub const SESSION_EXPIRATIONS: &str = "succession_session_expirations_total";
/// `succession_lease_losses_total`
pub const LEASE_LOSSES: &str = "succession_lease_losses_total";
/// `succession_session_elections`
pub const SESSION_ELECTIONS: &str = "succession_session_elections";
/// `succession_session_lease`
pub const SESSION_LEASE: &str = "succession_session_lease";
/// `succession_failovers_total`
pub const FAILOVERS: &str = "succession_failovers_total";
/// `succession_failbacks_total`
pub const FAILBACKS: &str = "succession_failbacks_total";
/// `succession_layer_active`
pub const LAYER_ACTIVE: &str = "succession_layer_active";
/// `succession_layer_health`
pub const LAYER_HEALTH: &str = "succession_layer_health";
/// `succession_session_connected`
pub const SESSION_CONNECTED: &str = "succession_session_connected";

/// Register the help text and unit of every metric above with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        LEADERSHIP_CHANGES,
        "Leaderships this participant started (change=gained) or ended (change=lost)"
    );
    describe_gauge!(IS_LEADER, "1 while this participant leads, else 0");
    describe_gauge!(
        TERM_GENERATION,
        "Generation of the term this participant holds or last held"
    );
    describe_gauge!(
        TERM_EPOCH,
        "Epoch of the term this participant holds or last held"
    );
    describe_gauge!(
        TERM_SEQUENCE,
        "Sequence of the term this participant holds or last held"
    );
    describe_gauge!(
        HEALTH,
        "Health of the link to the store: 2 healthy, 1 degraded, 0 unhealthy"
    );
    describe_histogram!(
        HANDOVER_SECONDS,
        Unit::Seconds,
        "At a new leader: from learning that the previous leader left to leading"
    );
    describe_counter!(
        REPAIRS,
        "ZooKeeper: times the latch path or this participant's node was re-created"
    );
    describe_counter!(
        SESSION_EXPIRATIONS,
        "ZooKeeper: sessions found expired or lost (e.g. a wiped ensemble)"
    );
    describe_counter!(LEASE_LOSSES, "etcd: leases lost");
    describe_gauge!(
        SESSION_ELECTIONS,
        "Elections on a shared session (one ZooKeeper session or one etcd lease backing them all)"
    );
    describe_gauge!(
        SESSION_LEASE,
        "etcd: a session's lease: 2 valid, 1 in doubt (its leaders stepped down), 0 none or lost"
    );
    describe_counter!(FAILOVERS, "Supervisor: mode moved to the fallback layer");
    describe_counter!(
        FAILBACKS,
        "Supervisor: mode moved back to the primary layer"
    );
    describe_gauge!(
        LAYER_ACTIVE,
        "Supervisor: 1 for the layer that counts, 0 for the other"
    );
    describe_gauge!(
        LAYER_HEALTH,
        "Supervisor: each layer's health as the supervisor sees it (2/1/0)"
    );
    describe_gauge!(
        SESSION_CONNECTED,
        "ZooKeeper: a shared session's state: 1 connected, 0.5 suspended, 0 otherwise"
    );
}

/// The numeric value of a health level in `succession_health` and
/// `succession_layer_health`: 2 healthy, 1 degraded, 0 unhealthy.
pub fn health_value(level: HealthLevel) -> f64 {
    match level {
        HealthLevel::Healthy => 2.0,
        HealthLevel::Degraded => 1.0,
        HealthLevel::Unhealthy => 0.0,
    }
}

/// The labels of one election's series, and the recording calls backends share.
///
/// A [`StatusCell`](crate::StatusCell) made [`with_metrics`](crate::StatusCell::with_metrics)
/// records leadership, term and health changes itself; backends add their own counters
/// ([`count`](ElectionMetrics::count)) and the handover latency
/// ([`handover`](ElectionMetrics::handover)).
#[derive(Debug, Clone, Default)]
pub struct ElectionMetrics {
    labels: Option<Arc<[Label]>>,
}

impl ElectionMetrics {
    /// Series labelled `backend` and `election`.
    pub fn new(backend: &'static str, election: impl Into<String>) -> Self {
        let labels: Arc<[Label]> = Arc::from(vec![
            Label::from_static_parts("backend", backend),
            Label::new("election", election.into()),
        ]);
        ElectionMetrics {
            labels: Some(labels),
        }
    }

    /// The `backend` label ("" when disabled).
    pub fn backend(&self) -> &str {
        self.label(0)
    }

    /// The `election` label ("" when disabled).
    pub fn election(&self) -> &str {
        self.label(1)
    }

    fn label(&self, i: usize) -> &str {
        self.labels
            .as_ref()
            .and_then(|l| l.get(i))
            .map_or("", |l| l.value())
    }

    /// Records nothing (a cell made with [`StatusCell::new`](crate::StatusCell::new)).
    pub fn disabled() -> Self {
        ElectionMetrics { labels: None }
    }

    fn labels(&self, extra: &[(&'static str, &'static str)]) -> Option<Vec<Label>> {
        let base = self.labels.as_ref()?;
        let mut v = Vec::with_capacity(base.len() + extra.len());
        v.extend(base.iter().cloned());
        v.extend(
            extra
                .iter()
                .map(|(k, val)| Label::from_static_parts(k, val)),
        );
        Some(v)
    }

    /// Increment counter `name` by one, with the extra labels.
    pub fn count(&self, name: &'static str, extra: &[(&'static str, &'static str)]) {
        if let Some(l) = self.labels(extra) {
            metrics::counter!(name, l).increment(1);
        }
    }

    /// Set gauge `name`, with the extra labels.
    pub fn gauge(&self, name: &'static str, extra: &[(&'static str, &'static str)], value: f64) {
        if let Some(l) = self.labels(extra) {
            metrics::gauge!(name, l).set(value);
        }
    }

    /// Set gauge `name` with one extra label whose value is not static (a layer name).
    pub fn gauge_with(&self, name: &'static str, key: &'static str, value: &str, v: f64) {
        if let Some(mut l) = self.labels(&[]) {
            l.push(Label::new(key, value.to_owned()));
            metrics::gauge!(name, l).set(v);
        }
    }

    /// Record a handover: this participant leads now; it learned at `vacated` that the
    /// previous leader left.
    pub fn handover(&self, vacated: Instant) {
        if let Some(l) = self.labels(&[]) {
            metrics::histogram!(HANDOVER_SECONDS, l).record(vacated.elapsed().as_secs_f64());
        }
    }

    /// Initial values of the gauges (not leading, healthy).
    pub(crate) fn start(&self) {
        self.gauge(IS_LEADER, &[], 0.0);
        self.gauge(HEALTH, &[], health_value(HealthLevel::Healthy));
    }

    /// Record what changed between two published statuses.
    pub(crate) fn status_changed(&self, before: &Status, after: &Status) {
        if self.labels.is_none() {
            return;
        }
        let (was, is) = (before.role.term(), after.role.term());
        if was != is {
            if was.is_some() {
                self.count(LEADERSHIP_CHANGES, &[("change", "lost")]);
            }
            if let Some(t) = is {
                self.count(LEADERSHIP_CHANGES, &[("change", "gained")]);
                self.gauge(TERM_GENERATION, &[], t.generation() as f64);
                self.gauge(TERM_EPOCH, &[], t.epoch() as f64);
                self.gauge(TERM_SEQUENCE, &[], t.sequence() as f64);
            }
            self.gauge(IS_LEADER, &[], if is.is_some() { 1.0 } else { 0.0 });
        }
        if before.health.level != after.health.level {
            self.gauge(HEALTH, &[], health_value(after.health.level));
        }
    }
}
