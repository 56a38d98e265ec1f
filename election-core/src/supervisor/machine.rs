//! The supervisor's decisions as a pure [`Machine`]: what the mode record reads and
//! compare-and-swap outcomes mean, the takeover guard, the mode lease, the failover and
//! failback policy calls, stepping down, generation renewal, and "publish before act".
//!
//! No tokio, no clock reads, no spawning: `now` is passed in, and every write, read request,
//! heartbeat and status publication is an [`Effect`] for the executor
//! ([`driver`](super::driver) in production, the deterministic simulator in tests). The
//! effects of one call are ordered: events, then the status publication, then the heartbeat,
//! then a compare-and-swap — so "not leading" is always published before the write that lets
//! someone else lead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::SupervisorEvent;
use super::mode::{Heartbeat, Layer, LayerRef, Mode};
use super::policy::{Decision, ModeChange, Policy, Timings, View};
use crate::error::{Error, ErrorKind, Result};
use crate::participant::Machine;
use crate::record::{CasOutcome, Versioned};
use crate::status::{HealthLevel, Role, Status};
use crate::term::Term;

const HISTORY: usize = 32;

/// Test-only faults planted in the machine to prove the simulation catches them. All
/// `false` by default; only the simulator (feature `sim`) can set them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Lead as soon as a new generation is seen (no takeover guard).
    pub skip_takeover_wait: bool,
    /// Keep reporting `Leader` while the active layer is `Suspended`.
    pub suspended_leader_kept: bool,
    /// Lead again under an already published term (no generation renewal).
    pub no_generation_renewal: bool,
    /// Lead through the primary layer before the first read of the mode record.
    pub lead_before_mode_read: bool,
    /// Ask for a mode write before publishing the status decided with it.
    pub write_before_publish: bool,
    /// Trust what was known before a pause (the behaviour before pause detection).
    pub ignore_pauses: bool,
    /// Start a new primary leadership on the last mode seen even after the primary was
    /// unhealthy here since its last confirmation (the behaviour before the simulation
    /// found seed 203).
    pub primary_grant_unconfirmed: bool,
    /// Never keep leading across a renewal of the record for the own layer (the behaviour
    /// before it: step down, renew, wait the takeover delay).
    pub no_carry: bool,
}

/// What the executor reports to the supervisor machine.
#[derive(Debug)]
pub(crate) enum Input {
    /// A layer's status changed (the machine keeps the latest of each). The tokio executor
    /// uses [`SupervisorMachine::set_layer`] before every input instead.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Layer(Layer, Status),
    /// A read of the mode record sent at `sent` (answered now).
    Mode {
        result: Result<Option<Versioned>>,
        sent: Instant,
    },
    /// A read of the heartbeat record (answered now).
    Heartbeat { result: Result<Option<Versioned>> },
    /// The outcome of a compare-and-swap this machine asked for, sent at `sent`.
    Cas {
        change: Change,
        result: Result<CasOutcome>,
        sent: Instant,
    },
    /// A layer refused to let us join (permanent error).
    JoinFailed {
        layer: Layer,
        kind: ErrorKind,
        message: String,
    },
    /// The application joined: take part.
    Join,
    /// The application resigned or is closing: stop taking part, with this reason.
    Leave(Arc<str>),
    /// The deadline from [`Machine::next_deadline`] passed (or re-evaluate now).
    Tick,
}

/// What the supervisor machine asks its executor to do, in order.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// Deliver an event (log, count, callbacks, stream).
    Event(SupervisorEvent),
    /// Publish this role and health (a leader's health first, anything else's role first).
    /// `new_grant`: a leadership not published before (for the handover metric).
    Publish {
        role: Role,
        reason: String,
        level: HealthLevel,
        health_reason: String,
        new_grant: bool,
    },
    /// The heartbeat the primary leader writes every check interval (None: stop writing).
    Beat(Option<Heartbeat>),
    /// Compare-and-swap the mode record; answer with [`Input::Cas`].
    Cas(Change),
    /// Read the mode record now (after a write with an unknown outcome).
    ReadMode,
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
    pub(crate) kind: ChangeKind,
    pub(crate) to: Mode,
    pub(crate) expected: Option<u64>,
    pub(crate) reason: Arc<str>,
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

/// The fixed facts a supervisor machine is built with.
pub(crate) struct Config {
    pub(crate) id: String,
    pub(crate) names: [Arc<str>; 2],
    pub(crate) timings: Timings,
    pub(crate) strict: bool,
    pub(crate) policy: Box<dyn Policy>,
    /// An instant of the executor's clock and the Unix time in ms at that instant (fresh
    /// generations are derived from it; the machine never reads a clock).
    pub(crate) epoch: (Instant, u64),
    /// The layers' statuses at creation.
    pub(crate) layers: [Status; 2],
}

/// One participant's supervisor state and decisions.
pub(crate) struct SupervisorMachine {
    id: String,
    names: [Arc<str>; 2],
    timings: Timings,
    strict: bool,
    epoch: (Instant, u64),
    pub(crate) bugs: Bugs,
    pub(crate) wants: bool,
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
    layers: [Status; 2],
    pub(crate) join_errors: [Option<(ErrorKind, String)>; 2],
    hb_version: Option<Option<u64>>,
    hb_heard: Option<Instant>,
    started: Instant,
    beat: Option<Heartbeat>,
    /// The role we published last (the machine's copy of its status cell).
    role: Role,
    published_term: Option<(Term, Layer)>,
    /// The layer of the latest grant this participant published (kept after the loss).
    pub(crate) led_through: Option<Layer>,
    /// The highest supervisor term this participant ever published.
    highest_published: Option<Term>,
    published_level: Option<HealthLevel>,
    policy: Box<dyn Policy>,
    deadline: Option<Instant>,
    /// When the leadership we publish began (its first publication).
    lead_started: Option<Instant>,
    /// Set when this machine was called later than its deadline by more than the
    /// documented scheduling margin (the process was paused, or starved): everything it
    /// knew is in doubt, so it does not lead until a read of the mode record sent after
    /// this instant confirms the mode.
    resumed_at: Option<Instant>,
    /// Send instant of the latest read of the mode record that failed.
    read_failed_sent: Option<Instant>,
    /// The supervisor term (with its older generation) this participant keeps leading
    /// under while the record is re-created or renewed for its own layer (see
    /// [`SupervisorMachine::may_carry`]).
    carried: Option<Term>,
    /// When the policy's answer changes if nothing else does (a deadline).
    policy_wake: Option<Instant>,
}

impl std::fmt::Debug for SupervisorMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorMachine")
            .field("id", &self.id)
            .field("mode", &self.mode)
            .field("read", &self.read)
            .field("role", &self.role)
            .finish()
    }
}

impl crate::participant::EffectKind for Effect {
    fn is_publication(&self) -> bool {
        matches!(self, Effect::Publish { .. })
    }

    fn is_store(&self) -> bool {
        matches!(self, Effect::Cas(_) | Effect::ReadMode)
    }
}

impl Machine for SupervisorMachine {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Instant, input: Input, fx: &mut Vec<Effect>) {
        self.detect_pause(now);
        self.apply(now, input, fx);
        self.evaluate(now, fx);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl SupervisorMachine {
    pub(crate) fn new(cfg: Config, now: Instant) -> Self {
        SupervisorMachine {
            id: cfg.id,
            names: cfg.names,
            timings: cfg.timings,
            strict: cfg.strict,
            epoch: cfg.epoch,
            bugs: Bugs::default(),
            wants: false,
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
            layers: cfg.layers,
            join_errors: [None, None],
            hb_version: None,
            hb_heard: None,
            started: now,
            beat: None,
            role: Role::Idle,
            published_term: None,
            led_through: None,
            highest_published: None,
            published_level: None,
            policy: cfg.policy,
            deadline: None,
            lead_started: None,
            resumed_at: None,
            read_failed_sent: None,
            carried: None,
            policy_wake: None,
        }
    }

    /// Whether this machine leads through the primary on the last mode it saw without a
    /// confirmation within the mode lease, under the documented default-mode exception
    /// (the primary stayed healthy here since the last confirmation). For the simulation's
    /// checker.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn leads_on_last_mode_seen(&self, now: Instant) -> bool {
        let stale = self
            .confirmed_sent
            .is_none_or(|c| now.saturating_duration_since(c) >= self.timings.mode_lease);
        let steady = self.track[0]
            .healthy_since
            .is_some_and(|h| self.confirmed_sent.is_some_and(|c| h <= c));
        !self.strict
            && stale
            && steady
            && self.mode.is_some_and(|m| m.layer == Layer::Primary)
            && self.published_term.is_some_and(|(t, l)| {
                l == Layer::Primary && Some(t.generation()) == self.mode.map(|m| m.generation)
            })
    }

    /// Whether a pause was detected and no read sent since has confirmed the mode.
    fn in_doubt(&self) -> bool {
        !self.bugs.ignore_pauses
            && self
                .resumed_at
                .is_some_and(|r| self.confirmed_sent.is_none_or(|c| c < r))
    }

    /// The documented bound on scheduling delay is G - (X + T): a machine called later than
    /// its deadline by more than that was not running (paused, or starved) and cannot trust
    /// what it knew: a leader of an older generation may have been replaced meanwhile.
    fn detect_pause(&mut self, now: Instant) {
        let t = self.timings;
        let margin = t
            .takeover_delay
            .saturating_sub(t.check_interval + t.record_timeout);
        if self.deadline.is_some_and(|d| now > d + margin) {
            let late = now.saturating_duration_since(self.deadline.unwrap_or(now));
            tracing::warn!(?late, "the supervisor ran late (process paused?); in doubt until the mode record is read again");
            self.resumed_at = Some(now);
        }
    }

    /// Replace a layer's latest status without deciding (the executor then calls `handle`).
    pub(crate) fn set_layer(&mut self, layer: Layer, status: Status) {
        self.layers[layer.index()] = status;
    }

    fn layer_ref(&self, layer: Layer) -> LayerRef {
        LayerRef {
            layer,
            name: self.names[layer.index()].clone(),
        }
    }

    fn name(&self, layer: Layer) -> &str {
        &self.names[layer.index()]
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.epoch;
        ms + now.saturating_duration_since(at).as_millis() as u64
    }

    /// A generation for a newly created or repaired record: above everything we saw, and at
    /// least the Unix time in ms (so a record re-created by participants that lost their
    /// memory still orders after the old one, under the same clock assumption as `Term`'s
    /// epoch).
    fn fresh_generation(&self, now: Instant) -> u64 {
        self.highest_generation
            .map_or(0, |h| h.saturating_add(1))
            .max(self.unix_ms(now))
    }

    fn apply(&mut self, now: Instant, input: Input, fx: &mut Vec<Effect>) {
        match input {
            Input::Layer(layer, status) => self.layers[layer.index()] = status,
            Input::Mode { result, sent } => self.observe(result, sent, now, fx),
            Input::Heartbeat { result } => self.observe_heartbeat(result, now),
            Input::Cas {
                change,
                result,
                sent,
            } => self.cas_done(change, result, sent, now, fx),
            Input::JoinFailed {
                layer,
                kind,
                message,
            } => {
                tracing::warn!(%layer, error = %message, "a layer refused to let this participant join");
                self.join_errors[layer.index()] = Some((kind, message));
            }
            Input::Join => {
                if !self.wants {
                    self.wants = true;
                    self.join_errors = [None, None];
                }
            }
            Input::Leave(reason) => {
                self.wants = false;
                self.idle_reason = reason;
            }
            Input::Tick => {}
        }
    }

    /// Recompute everything from the current facts; publish; ask for any write. Sets the
    /// next deadline.
    fn evaluate(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let t = self.timings;
        for layer in [Layer::Primary, Layer::Fallback] {
            self.track_health(layer, now, fx);
        }

        // Decide on a write to the mode record (only participants that take part write).
        let mut start: Option<Change> = None;
        self.policy_wake = None;
        if self.wants && self.change.is_none() {
            match self.read.clone() {
                ReadState::Absent => {
                    let to = Mode::new(
                        self.mode.map_or(Layer::Primary, |m| m.layer),
                        self.fresh_generation(now),
                    );
                    start = Some(Change {
                        kind: ChangeKind::Create,
                        to,
                        expected: None,
                        reason: match self.mode {
                            None => "created the mode record".into(),
                            Some(m) => {
                                format!("re-created the mode record (it was gone; last seen {m})")
                                    .into()
                            }
                        },
                    });
                }
                ReadState::Regressed { found, version } => {
                    let to = Mode::new(found.layer, self.fresh_generation(now));
                    start = Some(Change {
                        kind: ChangeKind::Repair,
                        to,
                        expected: Some(version),
                        reason: format!(
                            "renewed the mode record: it had gone back to {found} (highest generation seen {})",
                            self.highest_generation.unwrap_or_default()
                        )
                        .into(),
                    });
                }
                // No failover or failback decided on what we knew before a pause: the
                // record's version may have been reused meanwhile (a wiped store restarts
                // its revisions), so a stale compare-and-swap could succeed (found by the
                // simulation's soak, seed 1215778 with strict_mode_lease).
                ReadState::Matches if self.cas_unknown_since.is_none() && !self.in_doubt() => {
                    start = self.ask_policy(now);
                }
                _ => {}
            }
        }
        if let Some(c) = &start {
            tracing::debug!(kind = ?c.kind, to = %c.to, reason = %c.reason, "changing the mode record");
            self.change = Some(c.clone());
        }

        let (mut role, mut reason, mut role_wake) = self.role_of(now);
        if let Role::Leader { term } = role {
            let resumed = self.published_term.map(|(t, _)| t) != Some(term)
                && self.highest_published.is_some_and(|h| term <= h);
            let renew = resumed && self.change.is_none() && !self.bugs.no_generation_renewal;
            if let Some(mode) = self.mode.filter(|_| renew) {
                let c = Change {
                    kind: ChangeKind::Renew,
                    to: Mode::new(mode.layer, mode.generation.saturating_add(1)),
                    expected: self.mode_version,
                    reason: format!(
                        "renewed the generation: term {term} was already granted here once; leading again needs a newer term"
                    )
                    .into(),
                };
                tracing::debug!(to = %c.to, reason = %c.reason, "changing the mode record");
                self.change = Some(c.clone());
                start = Some(c);
                (role, reason, role_wake) = self.role_of(now);
            }
        }
        let (level, health_reason) = self.health_of();
        if self.bugs.write_before_publish {
            if let Some(c) = start.take() {
                fx.push(Effect::Cas(c));
            }
        }
        self.publish(now, role, reason, level, health_reason, fx);

        let beat = match (self.published_term, self.mode) {
            (Some((term, Layer::Primary)), Some(m)) => Some(Heartbeat {
                generation: m.generation,
                term,
                id: self.id.clone(),
            }),
            _ => None,
        };
        if self.beat != beat {
            self.beat = beat.clone();
            fx.push(Effect::Beat(beat));
        }

        // Only now, after "not leading" is published, write.
        if let Some(c) = start {
            fx.push(Effect::Cas(c));
        }
        // Decisions are taken at their deadline (the policy names it), not at the next
        // check interval.
        let fallback_wake = now + t.check_interval;
        let wake = [role_wake, self.policy_wake]
            .into_iter()
            .flatten()
            .fold(fallback_wake, Instant::min);
        self.deadline = Some(wake);
    }

    fn ask_policy(&mut self, now: Instant) -> Option<Change> {
        let mode = self.mode?;
        let version = self.mode_version?;
        let heard = self
            .hb_heard
            .unwrap_or(self.started)
            .max(self.mode_since + self.timings.takeover_delay)
            .max(self.started)
            .min(now);
        let leading = self.published_term.is_some_and(|(_, l)| l == mode.layer);
        let view = View {
            now,
            mode,
            timings: &self.timings,
            primary: &self.layers[0],
            fallback: &self.layers[1],
            primary_healthy_since: self.track[0].healthy_since,
            primary_unhealthy_since: self.track[0].unhealthy_since,
            fallback_healthy_since: self.track[1].healthy_since,
            primary_leader_heard: heard,
            leading,
            changes: &self.changes,
            names: [&self.names[0], &self.names[1]],
        };
        let decision = self.policy.decide(&view);
        let wake = match decision {
            Decision::Stay => self.policy.wake_at(&view).filter(|&w| w > now),
            _ => None,
        };
        self.policy_wake = wake;
        match decision {
            Decision::FailOver { reason } if mode.layer == Layer::Primary => Some(Change {
                kind: ChangeKind::Failover,
                to: Mode::new(Layer::Fallback, mode.generation.saturating_add(1)),
                expected: Some(version),
                reason: reason.into(),
            }),
            // The fallback leader decides failback; so may the holder of the fallback
            // layer's grant that does not publish it right now (its mode lease lapsed on a
            // slow read, or it waits out a renewal): nobody else leads through that layer
            // while it holds the grant, and it publishes nothing before the write.
            Decision::FailBack { reason }
                if mode.layer == Layer::Fallback
                    && (leading || self.layers[1].role.is_leader()) =>
            {
                Some(Change {
                    kind: ChangeKind::Failback,
                    to: Mode::new(Layer::Primary, mode.generation.saturating_add(1)),
                    expected: Some(version),
                    reason: reason.into(),
                })
            }
            Decision::Stay => None,
            other => {
                tracing::trace!(decision = ?other, %mode, leading, "policy decision not applicable here; ignored");
                None
            }
        }
    }

    fn track_health(&mut self, layer: Layer, now: Instant, fx: &mut Vec<Effect>) {
        let s = &self.layers[layer.index()];
        let level = s.health.level;
        let t = &mut self.track[layer.index()];
        if t.level != Some(level) {
            let first = t.level.is_none();
            t.level = Some(level);
            if !first || level != HealthLevel::Healthy {
                let reason = s.health.reason.clone();
                fx.push(Effect::Event(SupervisorEvent::LayerHealth {
                    layer: self.layer_ref(layer),
                    level,
                    reason,
                }));
            }
        }
        let t = &mut self.track[layer.index()];
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
        &self,
        mode: Mode,
        term: Term,
        now: Instant,
    ) -> Result<Option<Instant>, (String, Option<Instant>)> {
        let t = self.timings;
        if let Some(c) = &self.change {
            return Err((format!("changing the mode record to {}", c.to), None));
        }
        match &self.read {
            ReadState::Absent => {
                return Err(("the mode record is gone; re-creating it".into(), None))
            }
            ReadState::Regressed { found, .. } => {
                return Err((
                    format!("the mode record went back to {found}; renewing it"),
                    None,
                ))
            }
            _ => {}
        }
        if self.cas_unknown_since.is_some() {
            return Err((
                "a write to the mode record has an unknown outcome; waiting for a read to confirm the mode".into(),
                None,
            ));
        }
        self.pause_gate(now)?;
        let ready = self.mode_since + t.takeover_delay;
        if now < ready && !self.bugs.skip_takeover_wait {
            return Err((
                format!(
                    "takeover guard: waiting {:?} after first seeing {mode} so that leaders under older generations have stepped down",
                    t.takeover_delay
                ),
                Some(ready),
            ));
        }
        // Without the strict lease, an *established* primary leader keeps leading while the
        // record cannot be read (the documented trade-off): established means a read sent
        // after its leadership began confirmed the mode, so no failover preceded it
        // unnoticed. A primary leadership may also start, and go on, on the last mode seen
        // while the primary has stayed healthy here since that mode was last confirmed (a
        // failover since would need the documented asymmetric partition). Otherwise a
        // primary leader is held to the mode lease like a fallback leader (found by the
        // simulation: a participant cut off from the record while the cluster failed over
        // later led under the old generation; one that began leading just after a failover
        // it had not read yet, with the fallback store going down, led on indefinitely).
        let continuing =
            self.published_term == Some((term.with_generation(mode.generation), mode.layer));
        let established = continuing
            && self
                .lead_started
                .is_some_and(|s| self.confirmed_sent.is_some_and(|c| c >= s));
        let primary_steady = self.track[0]
            .healthy_since
            .is_some_and(|h| self.confirmed_sent.is_some_and(|c| h <= c));
        let unconfirmed_ok = established || primary_steady || self.bugs.primary_grant_unconfirmed;
        if mode.layer == Layer::Fallback || self.strict || !unconfirmed_ok {
            return match self.confirmed_sent {
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

    /// After a detected pause: not leading until the layers had a round trip to report and
    /// a read sent since the resume confirms the mode.
    fn pause_gate(&self, now: Instant) -> Result<(), (String, Option<Instant>)> {
        if let Some(r) = self.resumed_at.filter(|_| !self.bugs.ignore_pauses) {
            // Our layers' statuses are as stale as our mode: give them one store round trip
            // (record_timeout) to report a session lost during the pause, and re-read.
            let settled = r + self.timings.record_timeout;
            if now < settled || self.confirmed_sent.is_none_or(|c| c < r) {
                return Err((
                    "this participant ran late (paused?); not leading until its layers had a round trip to report and a read of the mode record sent since confirms the mode".into(),
                    (now < settled).then_some(settled),
                ));
            }
        }
        Ok(())
    }

    /// Whether this participant, leading through the primary, may keep leading under its
    /// term while the record, which it could not read since its last confirmation, now
    /// shows `found` (absent, or the primary layer under another generation) and is
    /// re-created or renewed. Default mode only; the argument is in the module docs
    /// (point 6): whatever this read hides, the failed reads before it would have hidden
    /// too, and the default mode keeps such a leader leading on an unreadable record;
    /// leaders under the renewed generation lead through the same layer (its guarantee
    /// excludes them while this grant lasts) with higher terms.
    fn may_carry(&self, found: Option<Mode>, now: Instant) -> bool {
        if self.strict || self.bugs.no_carry || self.in_doubt() || self.pause_gate(now).is_err() {
            return false;
        }
        if found.is_some_and(|m| m.layer != Layer::Primary) {
            return false;
        }
        let (Some(mode), Some((pt, Layer::Primary))) = (self.mode, self.published_term) else {
            return false;
        };
        let Role::Leader { term } = &self.layers[0].role else {
            return false;
        };
        let unreadable = self
            .read_failed_sent
            .is_some_and(|f| self.confirmed_sent.is_none_or(|c| f > c));
        let established = self
            .lead_started
            .is_some_and(|s| self.confirmed_sent.is_some_and(|c| c >= s));
        let steady = self.track[0]
            .healthy_since
            .is_some_and(|h| self.confirmed_sent.is_some_and(|c| h <= c));
        mode.layer == Layer::Primary
            && pt.generation() == mode.generation
            && term.with_generation(mode.generation) == pt
            && unreadable
            && (established || steady)
    }

    fn role_of(&self, now: Instant) -> (Role, String, Option<Instant>) {
        if !self.wants {
            return (Role::Idle, self.idle_reason.to_string(), None);
        }
        let Some(mode) = self.mode else {
            if self.bugs.lead_before_mode_read {
                if let Role::Leader { term } = &self.layers[0].role {
                    return (Role::Leader { term: *term }, "planted bug".into(), None);
                }
            }
            let why = match &self.read {
                ReadState::Failed(e) | ReadState::Garbage(e) => {
                    format!("cannot tell which layer counts: {e}")
                }
                ReadState::Absent => "creating the mode record".to_owned(),
                _ => "reading the mode record".to_owned(),
            };
            return (Role::Candidate, why, None);
        };
        let layer = mode.layer;
        let s = &self.layers[layer.index()];
        let name = self.name(layer);
        if let (Some(c), Role::Leader { term }) = (self.carried, &s.role) {
            if layer == Layer::Primary
                && term.with_generation(c.generation()) == c
                && self.pause_gate(now).is_ok()
            {
                return (
                    Role::Leader { term: c },
                    format!(
                        "leading through {name} under generation {} while the mode record is renewed for {name} ({mode})",
                        c.generation()
                    ),
                    None,
                );
            }
        }
        match &s.role {
            Role::Leader { term } => match self.gate(mode, *term, now) {
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
            Role::Suspended => match self.published_term {
                Some((t, l)) if self.bugs.suspended_leader_kept && l == layer => {
                    (Role::Leader { term: t }, "planted bug".into(), None)
                }
                _ => (Role::Suspended, format!("{name}: {}", s.reason), None),
            },
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

    fn health_of(&self) -> (HealthLevel, String) {
        let Some(mode) = self.mode else {
            return match &self.read {
                ReadState::Failed(e) | ReadState::Garbage(e) => (
                    HealthLevel::Unhealthy,
                    format!("cannot tell which layer counts: {e}"),
                ),
                _ => (HealthLevel::Degraded, "mode not known yet".to_owned()),
            };
        };
        let active = mode.layer;
        let standby = active.other();
        let (an, sn) = (self.name(active), self.name(standby));
        if let Some((_, msg)) = &self.join_errors[active.index()] {
            return (
                HealthLevel::Unhealthy,
                format!("joining the active layer {an} failed: {msg}"),
            );
        }
        let ah = &self.layers[active.index()].health;
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
        let sh = &self.layers[standby.index()].health;
        if sh.level != HealthLevel::Healthy {
            notes.push(format!("standby layer {sn} {}: {}", sh.level, sh.reason));
        }
        if let Some((_, msg)) = &self.join_errors[standby.index()] {
            notes.push(format!("joining the standby layer {sn} failed: {msg}"));
        }
        match &self.read {
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

    /// Publish (as an effect) and keep the machine's copy. Mirrors the status cell's rules:
    /// no change once published equal; a leader whose health is Unhealthy is Suspended.
    fn publish(
        &mut self,
        now: Instant,
        role: Role,
        reason: String,
        level: HealthLevel,
        health_reason: String,
        fx: &mut Vec<Effect>,
    ) {
        let role = if role.is_leader()
            && level == HealthLevel::Unhealthy
            && !self.bugs.suspended_leader_kept
        {
            Role::Suspended
        } else {
            role
        };
        let term = role
            .term()
            .map(|t| (t, self.mode.map_or(Layer::Primary, |m| m.layer)));
        let new_grant = role.is_leader() && self.published_term.map(|(t, _)| t) != role.term();
        if new_grant {
            self.lead_started = Some(now);
        }
        self.role = role.clone();
        fx.push(Effect::Publish {
            role,
            reason: reason.clone(),
            level,
            health_reason: health_reason.clone(),
            new_grant,
        });
        if let Some((t, _)) = term {
            self.highest_published = Some(self.highest_published.map_or(t, |h| h.max(t)));
        }
        if term != self.published_term {
            if self.carried.is_some() && term.map(|(t, _)| t) != self.carried {
                self.carried = None;
            }
            if let Some((t, l)) = self.published_term {
                fx.push(Effect::Event(SupervisorEvent::LeadershipLost {
                    layer: self.layer_ref(l),
                    term: t,
                    reason: reason.into(),
                }));
            }
            if let Some((t, l)) = term {
                self.led_through = Some(l);
                fx.push(Effect::Event(SupervisorEvent::LeadershipGained {
                    layer: self.layer_ref(l),
                    term: t,
                }));
            }
            self.published_term = term;
        }
        if self.published_level != Some(level) {
            if self.published_level.is_some() || level != HealthLevel::Healthy {
                fx.push(Effect::Event(SupervisorEvent::Health {
                    level,
                    reason: health_reason.into(),
                }));
            }
            self.published_level = Some(level);
        }
    }

    fn observe(
        &mut self,
        result: Result<Option<Versioned>>,
        sent: Instant,
        received: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let v = match result {
            Err(e) => {
                if !matches!(self.read, ReadState::Failed(_)) {
                    tracing::warn!(error = %e, mode = ?self.mode, "cannot read the mode record; keeping the last mode seen");
                }
                self.read = ReadState::Failed(e.to_string().into());
                self.read_failed_sent = Some(self.read_failed_sent.map_or(sent, |f| f.max(sent)));
                return;
            }
            Ok(v) => v,
        };
        let found = match v.as_ref().map(|v| Mode::decode(&v.value)) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                if !matches!(self.read, ReadState::Garbage(_)) {
                    tracing::error!(error = %e, "the mode record holds garbage; keeping the last mode seen");
                }
                self.read = ReadState::Garbage(e.message().into());
                return;
            }
        };
        // A read sent before we learned our mode cannot overrule it (it may have been served
        // before the write that taught us).
        if sent < self.mode_learned && found != self.mode {
            return;
        }
        // Our own write, seen by the watcher before its outcome arrived: the outcome decides
        // (Swapped: we made the change; Conflict: someone else wrote the same value first).
        if found.is_some() && self.change.as_ref().map(|c| c.to) == found {
            return;
        }
        if found != self.mode && self.carried.is_none() && self.may_carry(found, received) {
            self.carried = self.published_term.map(|(t, _)| t);
            tracing::info!(?found, term = ?self.carried, "the mode record was lost or renewed for this leader's own layer while it could not read it; leading on under its term while it is renewed");
        }
        let Some(found) = found else {
            self.read = ReadState::Absent;
            self.mode_version = None;
            return;
        };
        let version = v.as_ref().map(|v| v.version).unwrap_or_default();
        let regressed = self
            .highest_generation
            .is_some_and(|h| found.generation < h)
            || self
                .mode
                .is_some_and(|m| m.generation == found.generation && m.layer != found.layer);
        if regressed {
            if self.read != (ReadState::Regressed { found, version }) {
                tracing::warn!(%found, highest = ?self.highest_generation, "the mode record went back to an older generation; renewing it");
            }
            self.read = ReadState::Regressed { found, version };
            return;
        }
        self.read = ReadState::Matches;
        self.mode_version = Some(version);
        if self.mode != Some(found) {
            self.adopt(found, received, None, fx);
            self.confirmed_sent = Some(sent);
        } else {
            self.confirmed_sent = Some(self.confirmed_sent.map_or(sent, |c| c.max(sent)));
        }
        if self.cas_unknown_since.is_some_and(|t| sent >= t) {
            self.cas_unknown_since = None;
        }
    }

    fn observe_heartbeat(&mut self, result: Result<Option<Versioned>>, received: Instant) {
        let Ok(v) = result else { return };
        let version = v.as_ref().map(|v| v.version);
        let first = self.hb_version.is_none();
        let changed = self.hb_version != Some(version);
        self.hb_version = Some(version);
        if first || !changed {
            return;
        }
        let Some(v) = v else { return };
        match Heartbeat::decode(&v.value) {
            Ok(hb) => {
                if self
                    .mode
                    .is_some_and(|m| m.layer == Layer::Primary && m.generation == hb.generation)
                {
                    self.hb_heard = Some(received);
                }
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a heartbeat"),
        }
    }

    fn cas_done(
        &mut self,
        change: Change,
        result: Result<CasOutcome>,
        sent: Instant,
        received: Instant,
        fx: &mut Vec<Effect>,
    ) {
        self.change = None;
        match result {
            Ok(CasOutcome::Swapped(version)) => {
                self.read = ReadState::Matches;
                self.mode_version = Some(version);
                if self.mode != Some(change.to) {
                    self.adopt(change.to, received, Some(&change), fx);
                }
                self.confirmed_sent = Some(sent);
            }
            Ok(CasOutcome::Conflict(current)) => {
                tracing::debug!(to = %change.to, "mode record changed under us; following what it holds");
                self.observe(Ok(current), sent, received, fx);
            }
            Err(e) => {
                tracing::warn!(error = %e, to = %change.to, "writing the mode record failed; outcome unknown");
                self.cas_unknown_since = Some(received);
                fx.push(Effect::ReadMode);
            }
        }
    }

    /// Follow `mode` from now on, emitting the corresponding event.
    fn adopt(&mut self, mode: Mode, at: Instant, initiated: Option<&Change>, fx: &mut Vec<Effect>) {
        let from = self.mode;
        if mode.layer != Layer::Primary {
            self.carried = None;
        }
        self.mode = Some(mode);
        self.mode_since = at;
        self.mode_learned = at;
        self.highest_generation = Some(
            self.highest_generation
                .map_or(mode.generation, |h| h.max(mode.generation)),
        );
        self.hb_heard = None;
        self.changes.push(ModeChange { from, to: mode, at });
        if self.changes.len() > HISTORY {
            self.changes.remove(0);
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
                    from: self.layer_ref(f.layer),
                    to: self.layer_ref(mode.layer),
                    generation: mode.generation,
                    reason,
                    initiated_here,
                }
            }
            Some(f) if f.layer == Layer::Fallback && mode.layer == Layer::Primary => {
                SupervisorEvent::Failback {
                    from: self.layer_ref(f.layer),
                    to: self.layer_ref(mode.layer),
                    generation: mode.generation,
                    reason,
                    initiated_here,
                }
            }
            _ => SupervisorEvent::Mode {
                layer: self.layer_ref(mode.layer),
                generation: mode.generation,
                reason,
                initiated_here,
            },
        };
        fx.push(Effect::Event(event));
    }
}

/// An error for a read or write of a record that took longer than `timeout`.
pub(crate) fn timed_out(what: &str, timeout: Duration, unknown: bool) -> Error {
    let tail = if unknown { "; outcome unknown" } else { "" };
    Error::timeout(format!(
        "{what} the supervisor mode record took longer than record_timeout ({timeout:?}){tail}"
    ))
}

#[cfg(test)]
mod tests {
    //! The machine alone, in virtual time: every instant is `t0 + offset`.
    use super::*;
    use crate::status::Health;
    use crate::supervisor::DampedPolicy;

    struct Fixture {
        m: SupervisorMachine,
        t0: Instant,
        fx: Vec<Effect>,
    }

    fn status(role: Role, level: HealthLevel, at: Instant) -> Status {
        Status {
            role,
            health: Health {
                level,
                reason: "test".into(),
                since: at,
            },
            reason: "test".into(),
            since: at,
            leaderships: Default::default(),
        }
    }

    fn mode_value(mode: Mode, version: u64) -> Result<Option<Versioned>> {
        Ok(Some(Versioned {
            value: mode.encode(),
            version,
        }))
    }

    impl Fixture {
        fn new(strict: bool) -> Fixture {
            let t0 = crate::participant::virtual_origin();
            let timings = Timings::derive(
                Duration::from_millis(300),
                Duration::from_millis(600),
                Duration::from_millis(1200),
                Duration::from_millis(100),
                Duration::from_millis(50),
            );
            let idle = status(Role::Idle, HealthLevel::Healthy, t0);
            let m = SupervisorMachine::new(
                Config {
                    id: "a".into(),
                    names: ["zk".into(), "etcd".into()],
                    timings,
                    strict,
                    policy: Box::new(DampedPolicy::new()),
                    epoch: (t0, 1_700_000_000_000),
                    layers: [idle.clone(), idle],
                },
                t0,
            );
            Fixture {
                m,
                t0,
                fx: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Fire every deadline up to `now` as the executor does (a machine called late
        /// would rightly think it was paused).
        fn run_until(&mut self, now: Instant) {
            while let Some(d) = self.m.next_deadline().filter(|&d| d < now) {
                self.fx.clear();
                self.m.handle(d, Input::Tick, &mut self.fx);
            }
        }

        fn handle(&mut self, ms: u64, input: Input) -> Vec<Effect> {
            let now = self.at(ms);
            self.run_until(now);
            self.fx.clear();
            self.m.handle(now, input, &mut self.fx);
            self.fx.clone()
        }

        fn layer(&mut self, ms: u64, layer: Layer, role: Role) -> Vec<Effect> {
            let level = if role == Role::Suspended {
                HealthLevel::Unhealthy
            } else {
                HealthLevel::Healthy
            };
            let s = status(role, level, self.at(ms));
            self.handle(ms, Input::Layer(layer, s))
        }

        fn read(
            &mut self,
            sent_ms: u64,
            ms: u64,
            result: Result<Option<Versioned>>,
        ) -> Vec<Effect> {
            let sent = self.at(sent_ms);
            self.handle(ms, Input::Mode { result, sent })
        }

        /// A read of the mode record showing primary/5, sent 5 ms before `ms`.
        fn confirm(&mut self, ms: u64) -> Vec<Effect> {
            self.confirm_mode(ms, Mode::new(Layer::Primary, 5))
        }

        /// A read of the mode record showing `mode`, sent 5 ms before `ms`.
        fn confirm_mode(&mut self, ms: u64, mode: Mode) -> Vec<Effect> {
            self.read(ms - 5, ms, mode_value(mode, 1))
        }

        fn leading(&self) -> bool {
            self.m.published_term.is_some()
        }

        /// Joined, following primary/5 (first seen at 0 ms), primary layer as given.
        fn joined(strict: bool, primary: Role) -> Fixture {
            let mut f = Fixture::new(strict);
            f.handle(0, Input::Join);
            f.layer(0, Layer::Fallback, Role::Follower { leader: None });
            f.layer(0, Layer::Primary, primary);
            f.read(0, 1, mode_value(Mode::new(Layer::Primary, 5), 1));
            f
        }
    }

    fn leader(seq: u64) -> Role {
        Role::Leader {
            term: Term::new(1, seq),
        }
    }

    fn published_leader(fx: &[Effect]) -> Option<bool> {
        fx.iter().rev().find_map(|e| match e {
            Effect::Publish { role, .. } => Some(role.is_leader()),
            _ => None,
        })
    }

    #[test]
    fn the_takeover_guard_is_a_deadline_and_leading_starts_exactly_there() {
        let mut f = Fixture::joined(false, leader(1));
        assert!(!f.leading(), "no leading during the takeover guard");
        f.confirm(200);
        let ready = f.at(1) + f.m.timings.takeover_delay;
        let mut started = None;
        while started.is_none() {
            let d = f.m.next_deadline().expect("a deadline");
            assert!(
                d <= ready,
                "a deadline at the end of the guard at the latest"
            );
            f.fx.clear();
            f.m.handle(d, Input::Tick, &mut f.fx);
            if f.leading() {
                started = Some(d);
            }
        }
        assert_eq!(started, Some(ready));
        assert_eq!(
            f.m.published_term.map(|(t, _)| t),
            Some(Term::new(1, 1).with_generation(5))
        );
    }

    #[test]
    fn a_primary_leader_keeps_leading_when_the_record_cannot_be_read_by_default() {
        let mut f = Fixture::joined(false, leader(1));
        f.confirm(200);
        f.handle(300, Input::Tick);
        assert!(f.leading());
        for ms in (400..2000).step_by(100) {
            f.read(ms - 50, ms, Err(Error::timeout("read timed out")));
        }
        assert!(
            f.leading(),
            "the documented default: no lease for primary leaders"
        );
    }

    #[test]
    fn a_new_primary_leadership_after_primary_trouble_needs_a_fresh_confirmation() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        // The primary is in trouble here while the record cannot be read: the others may
        // have failed over meanwhile.
        f.layer(100, Layer::Primary, Role::Suspended);
        for ms in (150..1500).step_by(100) {
            f.read(ms - 50, ms, Err(Error::timeout("read timed out")));
        }
        let fx = f.layer(1500, Layer::Primary, leader(2));
        assert_eq!(published_leader(&fx), Some(false));
        assert!(!f.leading());
        // A read sent now confirms primary/5: we lead.
        f.confirm(1520);
        assert!(f.leading());
    }

    #[test]
    fn a_primary_leader_not_yet_established_is_held_to_the_mode_lease() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        // The primary is in trouble here; we read the mode at 250 ms; the primary is back.
        f.layer(100, Layer::Primary, Role::Suspended);
        f.confirm(250);
        f.layer(300, Layer::Primary, Role::Follower { leader: None });
        // Granted within the lease of that read: we lead...
        f.layer(320, Layer::Primary, leader(2));
        assert!(f.leading());
        // ...but no read sent since we began has confirmed the mode (the cluster may have
        // failed over just before, and the record is now unreadable): the lease holds us.
        for ms in (350..=440).step_by(10) {
            f.read(ms - 5, ms, Err(Error::timeout("read timed out")));
        }
        let lease_end = f.at(245) + f.m.timings.mode_lease;
        assert_eq!(f.m.next_deadline(), Some(lease_end));
        f.fx.clear();
        f.m.handle(lease_end, Input::Tick, &mut f.fx);
        assert!(!f.leading(), "held to the mode lease until established");
    }

    #[test]
    fn an_established_primary_leader_keeps_leading_when_the_record_becomes_unreadable() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        f.layer(100, Layer::Primary, Role::Suspended);
        f.layer(300, Layer::Primary, Role::Follower { leader: None });
        f.confirm(400);
        f.layer(450, Layer::Primary, leader(2));
        f.confirm(500); // sent at 495, after the leadership began: established
                        // The primary turns Degraded here (not steady any more): established still counts.
        let degraded = status(leader(2), HealthLevel::Degraded, f.at(550));
        f.handle(550, Input::Layer(Layer::Primary, degraded));
        for ms in (600..2000).step_by(100) {
            f.read(ms - 50, ms, Err(Error::timeout("read timed out")));
        }
        assert!(
            f.leading(),
            "the documented default for established primary leaders"
        );
    }

    #[test]
    fn a_primary_handover_works_while_the_record_cannot_be_read_if_the_primary_stayed_healthy() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        for ms in (100..1500).step_by(100) {
            f.read(ms - 50, ms, Err(Error::timeout("read timed out")));
        }
        f.layer(1500, Layer::Primary, leader(2));
        assert!(
            f.leading(),
            "the documented default: the last mode seen counts"
        );
    }

    #[test]
    fn a_machine_called_late_is_in_doubt_until_a_read_sent_after_confirms() {
        let mut f = Fixture::joined(false, leader(1));
        f.confirm(200);
        f.handle(300, Input::Tick);
        assert!(f.leading());
        // Paused: the next call comes 2 s after the deadline.
        f.fx.clear();
        let late = f.m.next_deadline().unwrap() + Duration::from_secs(2);
        f.m.handle(late, Input::Tick, &mut f.fx);
        let fx = f.fx.clone();
        assert_eq!(published_leader(&fx), Some(false));
        let resumed = late.duration_since(f.t0).as_millis() as u64;
        // A read sent before the resume does not confirm.
        f.read(
            350,
            resumed + 1,
            mode_value(Mode::new(Layer::Primary, 5), 1),
        );
        assert!(!f.leading());
        // One sent after does, once the layers had a round trip (T) to report; the grant
        // was published once already, so the machine first renews the generation
        // (publishing "not leading" before that write).
        let fx = f.read(
            resumed + 10,
            resumed + 20,
            mode_value(Mode::new(Layer::Primary, 5), 1),
        );
        assert!(!f.leading() && !fx.iter().any(|e| matches!(e, Effect::Cas(_))));
        let settled = late + f.m.timings.record_timeout;
        assert_eq!(
            f.m.next_deadline(),
            Some(settled),
            "the end of the doubt is a deadline"
        );
        f.fx.clear();
        f.m.handle(settled, Input::Tick, &mut f.fx);
        let fx = f.fx.clone();
        let cas = fx
            .iter()
            .position(|e| matches!(e, Effect::Cas(c) if c.kind == ChangeKind::Renew));
        let publish = fx
            .iter()
            .position(|e| matches!(e, Effect::Publish { role, .. } if !role.is_leader()));
        assert!(
            publish.is_some() && cas.is_some() && publish < cas,
            "{fx:?}"
        );
        assert!(!f.leading());
    }

    #[test]
    fn no_failover_is_written_on_what_was_known_before_a_pause() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        f.layer(50, Layer::Primary, Role::Suspended);
        for ms in (100..=500).step_by(100) {
            let fx = f.confirm(ms);
            assert!(!fx.iter().any(|e| matches!(e, Effect::Cas(_))));
        }
        // Paused for 2 s: the primary has now been unhealthy for longer than failover_after,
        // but the record may have changed (even been wiped and its versions reused).
        f.fx.clear();
        let late = f.m.next_deadline().unwrap() + Duration::from_secs(2);
        f.m.handle(late, Input::Tick, &mut f.fx);
        assert!(
            !f.fx.iter().any(|e| matches!(e, Effect::Cas(_))),
            "{:?}",
            f.fx
        );
        // A read sent after the resume confirms the mode: now the policy may act.
        let resumed = late.duration_since(f.t0).as_millis() as u64;
        let fx = f.confirm(resumed + 10);
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Cas(c) if c.kind == ChangeKind::Failover)),
            "{fx:?}"
        );
    }

    #[test]
    fn a_step_down_is_published_before_the_write_that_lets_another_lead() {
        let mut f = Fixture::joined(false, leader(1));
        f.confirm(200);
        f.handle(300, Input::Tick);
        assert!(f.leading());
        // The layer suspends and resumes with the same grant: a renewal write follows, and
        // "not leading" is published before it in the same batch of effects.
        f.layer(400, Layer::Primary, Role::Suspended);
        assert!(!f.leading());
        f.confirm(440);
        let fx = f.layer(450, Layer::Primary, leader(1));
        let kinds: Vec<&str> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { role, .. } if !role.is_leader() => Some("publish-not-leader"),
                Effect::Publish { .. } => Some("publish-leader"),
                Effect::Cas(_) => Some("cas"),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["publish-not-leader", "cas"]);
    }

    fn cas_kinds(fx: &[Effect]) -> Vec<ChangeKind> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Cas(c) => Some(c.kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_primary_leader_that_finds_the_record_gone_after_failed_reads_leads_on_while_it_recreates_it(
    ) {
        let mut f = Fixture::joined(false, leader(1));
        f.confirm(300);
        f.handle(400, Input::Tick);
        let term = f.m.published_term.map(|(t, _)| t).expect("leading");
        // The fallback store is down, then comes back wiped.
        f.read(450, 500, Err(Error::timeout("read timed out")));
        let fx = f.read(600, 605, Ok(None));
        assert_eq!(cas_kinds(&fx), [ChangeKind::Create]);
        assert_eq!(published_leader(&fx), Some(true), "{fx:?}");
        let Some(Effect::Cas(change)) = fx.iter().find(|e| matches!(e, Effect::Cas(_))).cloned()
        else {
            unreachable!()
        };
        let to = change.to;
        assert!(to.generation > 5 && to.layer == Layer::Primary);
        let fx = f.handle(
            610,
            Input::Cas {
                change,
                result: Ok(CasOutcome::Swapped(1)),
                sent: f.at(605),
            },
        );
        assert_eq!(f.m.mode, Some(to));
        assert_eq!(f.m.published_term.map(|(t, _)| t), Some(term), "same term");
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Beat(Some(b)) if b.generation == to.generation)),
            "heartbeats under the new generation: {fx:?}"
        );
        // Reads of the renewed record, the takeover delay and beyond: still the same term.
        for ms in (700..1500).step_by(100) {
            f.read(ms - 5, ms, mode_value(to, 1));
            assert_eq!(f.m.published_term.map(|(t, _)| t), Some(term));
        }
        // A new grant of the layer leads under the new generation.
        f.layer(1500, Layer::Primary, Role::Suspended);
        assert!(!f.leading());
        f.layer(1600, Layer::Primary, leader(2));
        f.confirm_mode(1650, to);
        assert_eq!(
            f.m.published_term.map(|(t, _)| t),
            Some(Term::new(1, 2).with_generation(to.generation))
        );
    }

    #[test]
    fn a_primary_leader_that_finds_the_record_gone_right_after_reading_it_steps_down_and_waits() {
        let mut f = Fixture::joined(false, leader(1));
        f.confirm(300);
        f.handle(400, Input::Tick);
        assert!(f.leading());
        // Its previous read succeeded: the wipe may have erased a failover it never saw.
        let fx = f.read(495, 500, Ok(None));
        assert_eq!(published_leader(&fx), Some(false));
        assert_eq!(cas_kinds(&fx), [ChangeKind::Create]);
    }

    #[test]
    fn a_strict_primary_leader_does_not_lead_on_across_a_wipe() {
        let mut f = Fixture::joined(true, leader(1));
        f.confirm(300);
        f.handle(400, Input::Tick);
        assert!(f.leading());
        f.read(400, 450, Err(Error::timeout("read timed out")));
        let fx = f.read(455, 460, Ok(None));
        assert_eq!(published_leader(&fx), Some(false));
    }

    #[test]
    fn a_failover_is_written_at_its_deadline_not_at_the_next_check() {
        let mut f = Fixture::joined(false, Role::Follower { leader: None });
        f.confirm(50);
        f.layer(100, Layer::Primary, Role::Suspended);
        f.confirm(110);
        let t = f.m.timings;
        // Silent since the mode was first seen + G at the latest, unhealthy since 100 ms.
        let due =
            (f.at(100) + t.failover_decision).max(f.at(1) + t.takeover_delay + t.failover_decision);
        let mut written = None;
        while written.is_none() {
            let d = f.m.next_deadline().expect("a deadline");
            assert!(d <= due, "no deadline past the decision");
            f.fx.clear();
            f.m.handle(d, Input::Tick, &mut f.fx);
            if cas_kinds(&f.fx) == [ChangeKind::Failover] {
                written = Some(d);
            }
        }
        assert_eq!(written, Some(due));
    }

    #[test]
    fn a_fallback_leader_stops_at_its_mode_lease_deadline() {
        let mut f = Fixture::new(false);
        f.handle(0, Input::Join);
        f.layer(0, Layer::Primary, Role::Follower { leader: None });
        f.layer(0, Layer::Fallback, leader(1));
        f.read(0, 1, mode_value(Mode::new(Layer::Fallback, 9), 1));
        let g = f.m.timings.takeover_delay;
        let v = f.m.timings.mode_lease;
        // Keep confirming until the guard ends.
        let mut ms = 100;
        while Duration::from_millis(ms) < g + Duration::from_millis(100) {
            f.read(ms - 10, ms, mode_value(Mode::new(Layer::Fallback, 9), 1));
            ms += 100;
        }
        f.handle(ms, Input::Tick);
        assert!(f.leading());
        let last_sent = f.at(ms - 110);
        let lease_end = last_sent + v;
        while let Some(d) = f.m.next_deadline().filter(|&d| d < lease_end) {
            f.fx.clear();
            f.m.handle(d, Input::Tick, &mut f.fx);
            assert!(f.leading(), "leading until the lease ends");
        }
        assert_eq!(f.m.next_deadline(), Some(lease_end));
        f.fx.clear();
        f.m.handle(lease_end, Input::Tick, &mut f.fx);
        assert!(!f.leading(), "the lease ends exactly at its deadline");
    }
}
