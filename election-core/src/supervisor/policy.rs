//! When to fail over and back: the [`Policy`] decides, the [`Supervisor`](super::Supervisor)
//! does (like tower's `retry::Policy` and the retry service).
//!
//! While it takes part (joined), its latest read of the mode record confirmed the mode it
//! follows, and no write of its own is pending, the supervisor asks its policy on every
//! change it observes, at the instant the policy names ([`Policy::wake_at`]) and at least
//! once per check interval, handing it a [`View`] of what this node knows. The policy answers with a
//! [`Decision`]; the supervisor carries it out only where the mechanism allows it:
//!
//! * [`Decision::FailOver`] is honoured in primary mode, from any participant that has
//!   joined (the compare-and-swap on the mode record makes exactly one of them win);
//! * [`Decision::FailBack`] is honoured in fallback mode only from the participant that
//!   currently leads through the fallback layer, or holds that layer's grant while not
//!   publishing it (a lapsed mode lease, a renewal) — "the fallback leader decides failback".
//!
//! Safety (never two leaders) does not depend on the policy: any policy, even one that
//! flips on every call, only costs availability. The default, [`DampedPolicy`], is
//! documented below.

use std::fmt;
use std::time::Duration;

use std::time::Instant;

use super::mode::{Layer, Mode};
use crate::status::{HealthLevel, Status};

/// The supervisor's timings, validated and derived at build time
/// (see [`SupervisorBuilder`](super::SupervisorBuilder) for what each one means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timings {
    /// The primary election's session timeout, as given to the builder.
    pub primary_session_timeout: Duration,
    /// How long the primary must stay unhealthy (and silent) before failing over.
    pub failover_after: Duration,
    /// How long the primary must stay healthy again before failing back (the base value;
    /// the default policy grows it after repeated failovers).
    pub failback_after: Duration,
    /// How often every participant re-reads the mode record (and the heartbeat record), and
    /// how often the primary leader writes its heartbeat. Changes are also watched, so this
    /// is the worst case, not the usual delay.
    pub check_interval: Duration,
    /// How long one read or compare-and-swap of a record may take before it counts as failed.
    pub record_timeout: Duration,
    /// `V = check_interval + record_timeout + check_interval / 2`: a read of the mode record
    /// sent at instant `s` confirms the mode until `s + V`. Fallback leaders (and, with
    /// [`strict_mode_lease`](super::SupervisorBuilder::strict_mode_lease), primary leaders)
    /// lead only while their confirmation is that fresh. Reads are sent every
    /// `check_interval` and answered within `record_timeout`, so a connected participant's
    /// confirmation never lapses.
    pub mode_lease: Duration,
    /// `G = V + V / 10 + 10 ms`: after a participant first sees a new generation of the mode
    /// record it waits `G` before it leads under it (the takeover guard). `G > V` covers both
    /// a leader of the old generation that re-reads and steps down (within
    /// `check_interval + record_timeout` of the change) and one whose lease runs out; the
    /// extra 10 % + 10 ms allow for clock-rate differences and scheduling delay.
    pub takeover_delay: Duration,
    /// `failover_after − G`: how long the primary must have been unhealthy (and no primary
    /// leader heard from) when the failover is written, so that the fallback leader, which
    /// waits `G` after seeing the new generation, acts `failover_after` after the primary
    /// went bad. The builder refuses a `failover_after` that leaves this shorter than the
    /// primary session timeout or than 2 × `check_interval`.
    pub failover_decision: Duration,
}

/// The takeover delay `G` that `check_interval` and `record_timeout` give.
pub(crate) fn takeover_delay(check_interval: Duration, record_timeout: Duration) -> Duration {
    let mode_lease = check_interval + record_timeout + check_interval / 2;
    mode_lease + mode_lease / 10 + Duration::from_millis(10)
}

impl Timings {
    pub(crate) fn derive(
        primary_session_timeout: Duration,
        failover_after: Duration,
        failback_after: Duration,
        check_interval: Duration,
        record_timeout: Duration,
    ) -> Timings {
        let mode_lease = check_interval + record_timeout + check_interval / 2;
        let takeover_delay = takeover_delay(check_interval, record_timeout);
        Timings {
            primary_session_timeout,
            failover_after,
            failback_after,
            check_interval,
            record_timeout,
            mode_lease,
            takeover_delay,
            failover_decision: failover_after.saturating_sub(takeover_delay),
        }
    }

    /// When a mode change must be written for its new leader to act `delay` after the
    /// condition began: `delay − G` (the new leader waits `G` after seeing the change).
    pub fn decide_ahead(&self, delay: Duration) -> Duration {
        delay.saturating_sub(self.takeover_delay)
    }
}

/// One change of the mode as this participant observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeChange {
    /// The mode before (None: this participant had not seen any).
    pub from: Option<Mode>,
    /// The mode after.
    pub to: Mode,
    /// When this participant first saw it.
    pub at: Instant,
}

impl ModeChange {
    /// Whether this change moved the cluster from the primary to the fallback layer.
    pub fn is_failover(&self) -> bool {
        self.from.is_some_and(|f| f.layer == Layer::Primary) && self.to.layer == Layer::Fallback
    }

    /// Whether this change moved the cluster from the fallback back to the primary layer.
    pub fn is_failback(&self) -> bool {
        self.from.is_some_and(|f| f.layer == Layer::Fallback) && self.to.layer == Layer::Primary
    }
}

/// What one participant knows when its policy is asked. All instants are this
/// participant's `std::time::Instant`s (virtual time under tokio's paused clock or in the
/// simulation), never compared across machines.
#[derive(Debug)]
#[non_exhaustive]
pub struct View<'a> {
    /// Now.
    pub now: Instant,
    /// The mode this participant follows (confirmed by its latest read of the record).
    pub mode: Mode,
    /// The supervisor's timings.
    pub timings: &'a Timings,
    /// The primary layer's current status.
    pub primary: &'a Status,
    /// The fallback layer's current status.
    pub fallback: &'a Status,
    /// Since when the primary has been `Healthy` without interruption (None: it is not).
    pub primary_healthy_since: Option<Instant>,
    /// Since when the primary has been not `Healthy` (Degraded or Unhealthy) without
    /// interruption (None: it is healthy).
    pub primary_unhealthy_since: Option<Instant>,
    /// Since when the fallback has been `Healthy` without interruption (None: it is not).
    pub fallback_healthy_since: Option<Instant>,
    /// The last sign of life of a primary leader: when this participant last saw the
    /// heartbeat record change under the current generation, or — if it saw none — the
    /// instant a primary leader could first have written one (when this participant first
    /// saw the current generation plus the takeover delay, or when it started).
    pub primary_leader_heard: Instant,
    /// Whether this participant currently leads (only the fallback leader's — or the
    /// fallback grant holder's — [`Decision::FailBack`] is honoured).
    pub leading: bool,
    /// The most recent mode changes this participant observed, oldest first (up to 32).
    pub changes: &'a [ModeChange],
    pub(crate) names: [&'a str; 2],
}

impl View<'_> {
    /// The configured name of `layer` (for reasons and logs).
    pub fn name(&self, layer: Layer) -> &str {
        self.names[layer.index()]
    }

    /// How long no primary leader has been heard from.
    pub fn primary_silent_for(&self) -> Duration {
        self.now
            .saturating_duration_since(self.primary_leader_heard)
    }
}

/// What a [`Policy`] wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Keep the current mode.
    Stay,
    /// Move to the fallback layer (honoured in primary mode only).
    FailOver {
        /// Why, for events and logs.
        reason: String,
    },
    /// Move back to the primary layer (honoured in fallback mode, from the fallback leader only).
    FailBack {
        /// Why, for events and logs.
        reason: String,
    },
}

/// Decides when to fail over and back. Must answer quickly and never block (it runs inside
/// the supervisor's state machine); keep any state it needs in `self`.
pub trait Policy: Send + fmt::Debug + 'static {
    /// Decide from what this participant knows.
    fn decide(&mut self, view: &View<'_>) -> Decision;

    /// After [`decide`](Policy::decide) answered [`Decision::Stay`]: the instant at which the
    /// answer would change if nothing else changed (e.g. when the primary will have been
    /// unhealthy long enough). The supervisor asks again exactly then, instead of at its next
    /// `check_interval`. Default: `None` (asked again within `check_interval`).
    fn wake_at(&self, view: &View<'_>) -> Option<Instant> {
        let _ = view;
        None
    }
}

/// Compile-time proof that [`Policy`] stays object safe.
#[allow(dead_code)]
fn _assert_object_safe(_: Box<dyn Policy>) {}

/// The default policy: fail over on sustained, cluster-wide primary trouble; fail back on
/// sustained primary health; damp flapping.
///
/// * **Fail over** when, in primary mode, all of these hold:
///   the primary has been not `Healthy` here for [`Timings::failover_decision`]
///   (`failover_after − G`); no primary leader has written a heartbeat for that long (so one
///   participant cut off from the primary alone cannot move the cluster while a primary
///   leader is alive); the fallback is `Healthy` here (never fail over into a sick layer);
///   and the hold-down has passed. The fallback leader waits the takeover delay `G` after
///   the change, so it acts `failover_after` after the primary went bad.
/// * **Fail back** when, in fallback mode (asked of the fallback leader only), the primary
///   has been `Healthy` here for the *effective failback delay* minus `G` and the hold-down
///   has passed, so that the primary leader acts the effective failback delay after the
///   primary became healthy here.
/// * **Hold-down**: no change within `hold_down` (default: `failover_after`) of the last
///   change of layer this participant saw (renewals of the generation within a layer do not
///   count).
/// * **Growing failback delay**: effective delay = `failback_after × backoff^(n−1)`, where
///   `n` is the number of failovers seen within `flap_window` (default: 10 × `failback_after`),
///   capped at `max_failback_after` (default: 8 × `failback_after`). `backoff` defaults to 2.
///   After a quiet `flap_window` the delay is back to `failback_after`.
///
/// The history it uses is the supervisor's [`View::changes`] (what this participant saw),
/// so whichever participant becomes the fallback leader applies the same damping.
#[derive(Debug, Clone, Default)]
pub struct DampedPolicy {
    hold_down: Option<Duration>,
    backoff: Option<u32>,
    max_failback_after: Option<Duration>,
    flap_window: Option<Duration>,
}

impl DampedPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// No mode change within `d` of the previous one (default: `failover_after`).
    pub fn hold_down(mut self, d: Duration) -> Self {
        self.hold_down = Some(d);
        self
    }

    /// Multiply the failback delay by `factor` per recent failover (default 2; 1 disables).
    pub fn backoff(mut self, factor: u32) -> Self {
        self.backoff = Some(factor.max(1));
        self
    }

    /// Never wait longer than `d` to fail back (default: 8 × `failback_after`).
    pub fn max_failback_after(mut self, d: Duration) -> Self {
        self.max_failback_after = Some(d);
        self
    }

    /// Failovers older than `d` no longer grow the failback delay (default: 10 × `failback_after`).
    pub fn flap_window(mut self, d: Duration) -> Self {
        self.flap_window = Some(d);
        self
    }

    /// The failback delay that applies now: `failback_after` grown by recent failovers.
    pub fn failback_delay(&self, view: &View<'_>) -> Duration {
        let t = view.timings;
        let window = self.flap_window.unwrap_or(t.failback_after * 10);
        let recent = view
            .changes
            .iter()
            .filter(|c| c.is_failover() && view.now.saturating_duration_since(c.at) <= window)
            .count() as u32;
        let factor = u64::from(self.backoff.unwrap_or(2)).saturating_pow(recent.saturating_sub(1));
        let max = self.max_failback_after.unwrap_or(t.failback_after * 8);
        let grown = t
            .failback_after
            .as_nanos()
            .saturating_mul(u128::from(factor))
            .min(u128::from(u64::MAX));
        Duration::from_nanos(grown as u64).min(max.max(t.failback_after))
    }
}

/// The latest change of the layer (or the first mode seen): renewals of the generation
/// within one layer are no flapping and do not start a hold-down.
fn last_layer_change<'a>(v: &View<'a>) -> Option<&'a ModeChange> {
    v.changes
        .iter()
        .rev()
        .find(|c| c.from.is_none_or(|f| f.layer != c.to.layer))
}

fn ms(d: Duration) -> String {
    format!("{:?}", Duration::from_millis(d.as_millis() as u64))
}

impl DampedPolicy {
    /// When the conditions that only need time to pass (hold-down, how long the primary has
    /// been unhealthy or healthy, how long no primary leader was heard) will all hold.
    fn ripe_at(&self, v: &View<'_>) -> Option<Instant> {
        let t = v.timings;
        let hold = self.hold_down.unwrap_or(t.failover_after);
        let held = last_layer_change(v).map(|c| c.at + hold);
        let due = match v.mode.layer {
            Layer::Primary => {
                let since = v.primary_unhealthy_since?;
                let d = t.failover_decision;
                (since + d).max(v.primary_leader_heard + d)
            }
            Layer::Fallback => v.primary_healthy_since? + t.decide_ahead(self.failback_delay(v)),
        };
        Some(held.map_or(due, |h| h.max(due)))
    }
}

impl Policy for DampedPolicy {
    fn wake_at(&self, v: &View<'_>) -> Option<Instant> {
        self.ripe_at(v).filter(|&at| at > v.now)
    }

    fn decide(&mut self, v: &View<'_>) -> Decision {
        let t = v.timings;
        let hold = self.hold_down.unwrap_or(t.failover_after);
        if let Some(last) = last_layer_change(v) {
            if v.now.saturating_duration_since(last.at) < hold {
                return Decision::Stay;
            }
        }
        let p = v.name(Layer::Primary);
        match v.mode.layer {
            Layer::Primary => {
                let Some(since) = v.primary_unhealthy_since else {
                    return Decision::Stay;
                };
                let sick = v.now.saturating_duration_since(since);
                let silent = v.primary_silent_for();
                let need = t.failover_decision;
                if sick < need || silent < need {
                    return Decision::Stay;
                }
                if v.fallback_healthy_since.is_none()
                    || v.fallback.health.level != HealthLevel::Healthy
                {
                    return Decision::Stay;
                }
                Decision::FailOver {
                    reason: format!(
                        "{p} not healthy here for {} ({}) and no {p} leader heartbeat for {} \
                         (decided at failover_after {} minus the takeover delay {})",
                        ms(sick),
                        v.primary.health.reason,
                        ms(silent),
                        ms(t.failover_after),
                        ms(t.takeover_delay)
                    ),
                }
            }
            Layer::Fallback => {
                let Some(since) = v.primary_healthy_since else {
                    return Decision::Stay;
                };
                let healthy = v.now.saturating_duration_since(since);
                let need = self.failback_delay(v);
                if healthy < t.decide_ahead(need) {
                    return Decision::Stay;
                }
                Decision::FailBack {
                    reason: format!(
                        "{p} healthy again for {} (decided at the failback delay {} minus the takeover delay {}{})",
                        ms(healthy),
                        ms(need),
                        ms(t.takeover_delay),
                        if need > t.failback_after {
                            ", grown by repeated failovers"
                        } else {
                            ""
                        }
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Health, Role};

    fn timings() -> Timings {
        Timings::derive(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
    }

    fn status(level: HealthLevel) -> Status {
        let mut s = Status::idle();
        s.role = Role::Candidate;
        s.health = Health::new(level, "test");
        s
    }

    struct Case {
        now: Instant,
        mode: Mode,
        primary: Status,
        fallback: Status,
        p_healthy: Option<Instant>,
        p_sick: Option<Instant>,
        f_healthy: Option<Instant>,
        heard: Instant,
        changes: Vec<ModeChange>,
    }

    impl Case {
        fn view<'a>(&'a self, t: &'a Timings) -> View<'a> {
            View {
                now: self.now,
                mode: self.mode,
                timings: t,
                primary: &self.primary,
                fallback: &self.fallback,
                primary_healthy_since: self.p_healthy,
                primary_unhealthy_since: self.p_sick,
                fallback_healthy_since: self.f_healthy,
                primary_leader_heard: self.heard,
                leading: true,
                changes: &self.changes,
                names: ["zookeeper", "etcd"],
            }
        }

        fn decide(&self, policy: &mut DampedPolicy) -> Decision {
            let t = timings();
            policy.decide(&self.view(&t))
        }
    }

    const S: Duration = Duration::from_secs(1);

    fn primary_down(t0: Instant) -> Case {
        Case {
            now: t0 + 10 * S,
            mode: Mode::new(Layer::Primary, 5),
            primary: status(HealthLevel::Unhealthy),
            fallback: status(HealthLevel::Healthy),
            p_healthy: None,
            p_sick: Some(t0 + 5 * S),
            f_healthy: Some(t0),
            heard: t0 + 5 * S,
            changes: vec![],
        }
    }

    #[test]
    fn fails_over_only_when_sick_long_enough_and_no_leader_heartbeat_and_fallback_healthy() {
        let t0 = crate::participant::virtual_origin();
        let mut p = DampedPolicy::new();
        let c = primary_down(t0);
        match c.decide(&mut p) {
            Decision::FailOver { reason } => {
                assert!(
                    reason.contains("zookeeper not healthy here for 5s"),
                    "{reason}"
                );
                assert!(
                    reason.contains("no zookeeper leader heartbeat for 5s"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut c = primary_down(t0);
        c.p_sick = Some(c.now - S);
        assert_eq!(
            c.decide(&mut p),
            Decision::Stay,
            "not sick for failover_after yet"
        );
        let mut c = primary_down(t0);
        c.heard = c.now - S;
        assert_eq!(
            c.decide(&mut p),
            Decision::Stay,
            "a primary leader is still heard from"
        );
        let mut c = primary_down(t0);
        c.f_healthy = None;
        c.fallback = status(HealthLevel::Degraded);
        assert_eq!(
            c.decide(&mut p),
            Decision::Stay,
            "never fail over into a sick layer"
        );
        let mut c = primary_down(t0);
        c.p_sick = None;
        c.p_healthy = Some(t0);
        c.primary = status(HealthLevel::Healthy);
        assert_eq!(c.decide(&mut p), Decision::Stay, "healthy primary");
    }

    #[test]
    fn decisions_are_taken_a_takeover_delay_ahead_and_the_policy_names_that_instant() {
        let t0 = crate::participant::virtual_origin();
        let t = timings();
        let mut p = DampedPolicy::new();
        let mut c = primary_down(t0);
        let since = c.now - S;
        c.p_sick = Some(since);
        c.heard = since;
        let due = since + t.failover_after - t.takeover_delay;
        assert_eq!(t.failover_decision, t.failover_after - t.takeover_delay);
        assert_eq!(p.wake_at(&c.view(&t)), Some(due));
        c.now = due - Duration::from_millis(1);
        assert_eq!(c.decide(&mut p), Decision::Stay);
        c.now = due;
        assert!(matches!(c.decide(&mut p), Decision::FailOver { .. }));
        assert_eq!(p.wake_at(&c.view(&t)), None, "due now: nothing to wait for");
        // A heartbeat heard later moves the instant.
        let mut c = primary_down(t0);
        c.p_sick = Some(c.now - 2 * S);
        c.heard = c.now - S / 2;
        assert_eq!(p.wake_at(&c.view(&t)), Some(c.heard + t.failover_decision));
        // Failback: the effective delay minus G after the primary became healthy.
        let mut c = on_fallback(t0, &[10]);
        c.p_healthy = Some(c.now - S);
        assert_eq!(
            p.wake_at(&c.view(&t)),
            Some(c.now - S + t.failback_after - t.takeover_delay)
        );
    }

    #[test]
    fn hold_down_blocks_changes_right_after_a_change() {
        let t0 = crate::participant::virtual_origin();
        let mut c = primary_down(t0);
        c.changes = vec![ModeChange {
            from: Some(Mode::new(Layer::Fallback, 4)),
            to: Mode::new(Layer::Primary, 5),
            at: c.now - S,
        }];
        assert_eq!(
            c.decide(&mut DampedPolicy::new()),
            Decision::Stay,
            "default hold-down = failover_after (2s)"
        );
        assert!(matches!(
            c.decide(&mut DampedPolicy::new().hold_down(S / 2)),
            Decision::FailOver { .. }
        ));
    }

    fn on_fallback(t0: Instant, failovers_ago: &[u64]) -> Case {
        let now = t0 + 1000 * S;
        let mut changes = Vec::new();
        for (i, ago) in failovers_ago.iter().enumerate() {
            let g = 10 + 2 * i as u64;
            changes.push(ModeChange {
                from: Some(Mode::new(Layer::Primary, g)),
                to: Mode::new(Layer::Fallback, g + 1),
                at: now - Duration::from_secs(*ago),
            });
        }
        Case {
            now,
            mode: Mode::new(Layer::Fallback, 99),
            primary: status(HealthLevel::Healthy),
            fallback: status(HealthLevel::Healthy),
            p_healthy: None,
            p_sick: None,
            f_healthy: Some(t0),
            heard: t0,
            changes,
        }
    }

    #[test]
    fn failback_delay_grows_with_repeated_failovers_is_capped_and_decays() {
        let t0 = crate::participant::virtual_origin();
        let p = DampedPolicy::new();
        let delay = |ago: &[u64]| {
            let c = on_fallback(t0, ago);
            let t = timings();
            p.failback_delay(&c.view(&t))
        };
        assert_eq!(delay(&[10]), 3 * S, "one failover: failback_after");
        assert_eq!(delay(&[20, 10]), 6 * S, "two: doubled");
        assert_eq!(
            delay(&[25, 20, 15, 10]),
            24 * S,
            "four: x8 = the default cap"
        );
        assert_eq!(
            delay(&[29, 25, 20, 15, 10]),
            24 * S,
            "capped at 8 x failback_after"
        );
        assert_eq!(
            delay(&[100, 10]),
            3 * S,
            "a failover older than the 30s window is forgotten"
        );
        let p1 = DampedPolicy::new().backoff(1);
        let c = on_fallback(t0, &[20, 10]);
        let t = timings();
        assert_eq!(
            p1.failback_delay(&c.view(&t)),
            3 * S,
            "backoff 1 disables growth"
        );
    }

    #[test]
    fn fails_back_after_the_effective_delay_of_primary_health() {
        let t0 = crate::participant::virtual_origin();
        let mut p = DampedPolicy::new();
        let mut c = on_fallback(t0, &[20, 10]);
        c.p_healthy = Some(c.now - 5 * S);
        assert_eq!(c.decide(&mut p), Decision::Stay, "5s < 6s (doubled)");
        c.p_healthy = Some(c.now - 6 * S);
        match c.decide(&mut p) {
            Decision::FailBack { reason } => {
                assert!(reason.contains("grown by repeated failovers"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        c.p_healthy = None;
        c.p_sick = Some(t0);
        assert_eq!(c.decide(&mut p), Decision::Stay, "primary not healthy");
    }
}
