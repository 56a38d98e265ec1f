//! What a participant is doing right now: its [`Role`] and the [`Health`] of its link to the
//! store, published together as a [`Status`] on a `tokio::sync::watch` channel.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::ElectionMetrics;

/// The current instant on tokio's clock (the std clock, except under tokio's paused test
/// clock, where it is virtual): every instant election-core records comes from here, so
/// that contact, takeover bounds and health timestamps agree with the timers that drive
/// them in paused-time tests.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
use crate::term::Term;

/// The part a participant plays at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Not taking part: before `join`, or after `resign`.
    Idle,
    /// Taking part, but our place in the queue is not (yet) held in the store: joining,
    /// re-joining after a session loss, or repairing a path that vanished.
    Candidate,
    /// Our place is held in the store and another participant leads (its id when known).
    Follower {
        /// The id of the leader as of this participant's last evaluation of the queue. A
        /// follower re-evaluates when the participant just before it changes (no herd), so
        /// further back in the queue this can lag a handover; `Election::leader()` reads
        /// the live value.
        leader: Option<String>,
    },
    /// We lead, with this fencing term.
    Leader {
        /// The fencing token of this grant.
        term: Term,
    },
    /// The link to the store is in doubt. NOT leader; our place may still be held.
    Suspended,
    /// The handle was closed for good.
    Closed,
}

impl Role {
    /// Whether this role is `Leader`.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The term when leading.
    pub fn term(&self) -> Option<Term> {
        match self {
            Role::Leader { term } => Some(*term),
            _ => None,
        }
    }

    /// Whether our place in the queue is held in the store (the CLI's `joined`).
    pub fn is_joined(&self) -> bool {
        matches!(self, Role::Follower { .. } | Role::Leader { .. })
    }

    /// A short stable name: idle, candidate, follower, leader, suspended, closed.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Candidate => "candidate",
            Role::Follower { .. } => "follower",
            Role::Leader { .. } => "leader",
            Role::Suspended => "suspended",
            Role::Closed => "closed",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Follower { leader: Some(l) } => write!(f, "follower (leader {l})"),
            Role::Leader { term } => write!(f, "leader (term {term})"),
            other => f.write_str(other.name()),
        }
    }
}

/// How well a participant's link to its store is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthLevel {
    /// Connected, our place held (or being taken) without trouble.
    Healthy,
    /// Working around trouble: connection suspended, repairing a path, retrying.
    Degraded,
    /// Cannot take part: no connection for longer than the session timeout, lease lost,
    /// permission denied.
    Unhealthy,
}

impl HealthLevel {
    /// healthy / degraded / unhealthy.
    pub fn name(self) -> &'static str {
        match self {
            HealthLevel::Healthy => "healthy",
            HealthLevel::Degraded => "degraded",
            HealthLevel::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The health of a participant: a level, why, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// How well things are going.
    pub level: HealthLevel,
    /// Why (e.g. "connected", "connection suspended", "latch path deleted, repairing").
    pub reason: Arc<str>,
    /// When the level last changed (kept when only the reason changes).
    pub since: Instant,
}

impl Health {
    /// A health value stamped now.
    pub fn new(level: HealthLevel, reason: impl Into<Arc<str>>) -> Self {
        Health {
            level,
            reason: reason.into(),
            since: now(),
        }
    }

    /// `Healthy` with a reason, stamped now.
    pub fn healthy(reason: impl Into<Arc<str>>) -> Self {
        Health::new(HealthLevel::Healthy, reason)
    }

    /// `Degraded` with a reason, stamped now.
    pub fn degraded(reason: impl Into<Arc<str>>) -> Self {
        Health::new(HealthLevel::Degraded, reason)
    }

    /// `Unhealthy` with a reason, stamped now.
    pub fn unhealthy(reason: impl Into<Arc<str>>) -> Self {
        Health::new(HealthLevel::Unhealthy, reason)
    }
}

/// A participant's role and health at one instant, as published on its status stream.
///
/// `since` is taken when the role is set, before any store operation that follows from it,
/// so timestamps of different participants in one process can be compared (the
/// leadership checker relies on this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The role.
    pub role: Role,
    /// The health of the link to the store.
    pub health: Health,
    /// Why the role last changed (e.g. "predecessor deleted", "resigned", "session expired").
    pub reason: Arc<str>,
    /// When the role last changed.
    pub since: Instant,
    /// The most recent leaderships this participant held (current or ended, oldest first,
    /// up to [`LeadershipHistory::CAPACITY`]), so that a reader that missed intermediate
    /// updates of the watch channel still learns every grant's exact start and end.
    pub leaderships: LeadershipHistory,
}

/// The recent [`LeadershipSpan`]s of one participant, oldest first. Cheap to clone.
///
/// Allocated at the first leadership only: a participant that never led (most followers
/// among thousands of elections in one process) keeps none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeadershipHistory(Option<Arc<std::collections::VecDeque<LeadershipSpan>>>);

impl LeadershipHistory {
    /// How many spans are kept.
    pub const CAPACITY: usize = 64;

    /// The most recent span (the current one while leading).
    pub fn last(&self) -> Option<&LeadershipSpan> {
        self.0.as_ref()?.back()
    }

    /// All kept spans, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &LeadershipSpan> {
        self.0.iter().flat_map(|spans| spans.iter())
    }
}

/// One grant of leadership as held by one participant: its term, start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipSpan {
    /// The grant's term.
    pub term: Term,
    /// When the participant published that it leads.
    pub start: Instant,
    /// When it published that it no longer leads (None while leading).
    pub end: Option<Instant>,
}

/// Apply a role change to `s`, keeping `since` and `last_leadership` consistent.
fn change_role(s: &mut Status, role: Role, reason: Arc<str>) {
    let now = now();
    let ends = s
        .leaderships
        .last()
        .is_some_and(|span| span.end.is_none() && role.term() != Some(span.term));
    let starts = role.term().filter(|t| s.role.term() != Some(*t));
    if ends || starts.is_some() {
        let spans = Arc::make_mut(s.leaderships.0.get_or_insert_with(Default::default));
        if ends {
            if let Some(span) = spans.back_mut() {
                span.end = Some(now);
            }
        }
        if let Some(term) = starts {
            if spans.len() == LeadershipHistory::CAPACITY {
                spans.pop_front();
            } else if spans.len() == spans.capacity() {
                // Room for one span first (most elections lead once), then doubling; a
                // plain push would reserve four at once.
                spans.reserve_exact(spans.len().max(1));
            }
            spans.push_back(LeadershipSpan {
                term,
                start: now,
                end: None,
            });
        }
    }
    s.role = role;
    s.reason = reason;
    s.since = now;
}

/// `role (reason) / health (health reason)`, e.g.
/// `follower (waiting for predecessor) / healthy (connected)`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) / {} ({})",
            self.role, self.reason, self.health.level, self.health.reason
        )
    }
}

impl Status {
    /// The initial status of a new handle: Idle and Healthy.
    pub fn idle() -> Self {
        Status {
            role: Role::Idle,
            health: Health::healthy("not started"),
            reason: "created".into(),
            since: now(),
            leaderships: LeadershipHistory::default(),
        }
    }

    /// Whether this status is Leader.
    pub fn is_leader(&self) -> bool {
        self.role.is_leader()
    }
}

/// Publishes a participant's [`Status`], keeping invariants every backend needs: a role
/// change stamps `since`; a health change of level stamps `health.since`; nothing changes
/// after `Closed`; a Leader is never published while Suspended or Unhealthy.
///
/// Backends own one of these; users hold `watch::Receiver<Status>` from it.
#[derive(Debug)]
pub struct StatusCell {
    tx: tokio::sync::watch::Sender<Status>,
    metrics: ElectionMetrics,
    /// Reference point of `contact`.
    base: Instant,
    /// Nanoseconds after `base` of the latest contact with the store, plus one (0: none).
    contact: AtomicU64,
    /// Nanoseconds a leader may go without contact (see [`Contact::safe_for`]).
    safe_for: AtomicU64,
    /// Contact sent before this point (nanoseconds after `base`, plus one) no longer
    /// counts: set by [`forget_contact`](StatusCell::forget_contact).
    floor: AtomicU64,
}

/// When a participant last had confirmed contact with its store, and how long a leader may
/// go without it: the input of the liveness check ([`LeaderHealthCheck`](crate::health::LeaderHealthCheck)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contact {
    /// When the participant last heard from its store (ZooKeeper: the send instant of the
    /// latest answered request; etcd: the send instant of the latest answered lease renewal;
    /// supervisor: the layer it leads through). None before the first contact.
    pub last: Option<Instant>,
    /// How long after `last` a leader's claim is still safe without further contact
    /// (ZooKeeper: half the session timeout; etcd: the lease keeper's step-down margin;
    /// memory: one second). A leader past this bound should already have stepped down.
    pub safe_for: Duration,
}

impl Contact {
    /// A contact record.
    pub fn new(last: Option<Instant>, safe_for: Duration) -> Self {
        Contact { last, safe_for }
    }
}

impl Default for StatusCell {
    fn default() -> Self {
        Self::new()
    }
}

/// One tracing event per published change, in the caller's span (the backend's task),
/// naming the election by its metric labels.
fn trace_change(m: &ElectionMetrics, before: &Status, after: &Status) {
    let (backend, election) = (m.backend(), m.election());
    if before.role != after.role {
        tracing::info!(
            backend,
            election,
            role = %after.role,
            health = %after.health.level,
            reason = %after.reason,
            "role changed"
        );
    } else if before.health.level != after.health.level {
        if after.health.level == HealthLevel::Unhealthy {
            tracing::warn!(backend, election, health = %after.health.level, reason = %after.health.reason, "health changed");
        } else {
            tracing::info!(backend, election, health = %after.health.level, reason = %after.health.reason, "health changed");
        }
    } else {
        tracing::debug!(backend, election, reason = %after.health.reason, "health reason changed");
    }
}

impl StatusCell {
    /// A cell starting at [`Status::idle`].
    pub fn new() -> Self {
        Self::with_metrics(ElectionMetrics::disabled())
    }

    /// A cell that records leadership, term and health changes into `metrics` (see
    /// [`crate::metrics`]).
    pub fn with_metrics(metrics: ElectionMetrics) -> Self {
        let (tx, _rx) = tokio::sync::watch::channel(Status::idle());
        metrics.start();
        StatusCell {
            tx,
            metrics,
            base: now(),
            contact: AtomicU64::new(0),
            safe_for: AtomicU64::new(Duration::from_secs(1).as_nanos() as u64),
            floor: AtomicU64::new(0),
        }
    }

    /// The metrics this cell records into (backends add their own counters here).
    pub fn metrics(&self) -> &ElectionMetrics {
        &self.metrics
    }

    /// Record contact with the store at `at` (kept if later than the latest one).
    pub fn touch(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        if nanos < self.floor.load(Ordering::Relaxed) {
            return; // sent before our session was known lost: it proves nothing now
        }
        self.contact.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Our session or lease is known lost (expired, or the store was wiped): whatever was
    /// granted under it may be granted to someone else right now. Contact becomes unknown
    /// (so [`Election::takeover_bound`](crate::Election::takeover_bound) is `None`: stop
    /// at once), and answers to requests sent before `now` no longer count. Call it BEFORE
    /// publishing the status that reports the loss. `now` may be earlier (e.g. the send
    /// instant of the lost lease's last renewal) when later answers cannot be stale.
    pub fn forget_contact(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        self.floor.fetch_max(nanos, Ordering::Relaxed);
        self.contact.store(0, Ordering::Relaxed);
    }

    /// Set how long a leader may go without contact ([`Contact::safe_for`]).
    pub fn set_contact_bound(&self, safe_for: Duration) {
        self.safe_for
            .store(safe_for.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The latest contact and its bound.
    pub fn contact(&self) -> Contact {
        let c = self.contact.load(Ordering::Relaxed);
        let last = (c > 0).then(|| self.base + Duration::from_nanos(c - 1));
        Contact::new(
            last,
            Duration::from_nanos(self.safe_for.load(Ordering::Relaxed)),
        )
    }

    /// Apply `f` to the status; publish and record metrics when it reports a change.
    fn update(&self, f: impl FnOnce(&mut Status) -> bool) -> bool {
        self.tx.send_if_modified(|s| {
            let before = s.clone();
            let changed = f(s);
            if changed {
                self.metrics.status_changed(&before, s);
                trace_change(&self.metrics, &before, s);
            }
            changed
        })
    }

    /// A new receiver of the status stream.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Status> {
        self.tx.subscribe()
    }

    /// The current role (cheaper than [`get`](Self::get) when only the role matters).
    pub fn role(&self) -> Role {
        self.tx.borrow().role.clone()
    }

    /// The current status.
    pub fn get(&self) -> Status {
        self.tx.borrow().clone()
    }

    /// Set the role (no-op once closed, or when equal to the current role).
    /// Returns whether anything changed.
    pub fn set_role(&self, role: Role, reason: impl Into<Arc<str>>) -> bool {
        let reason = reason.into();
        self.update(|s| {
            if s.role == Role::Closed || s.role == role {
                return false;
            }
            if role.is_leader() && s.health.level == HealthLevel::Unhealthy {
                return false;
            }
            change_role(s, role, reason);
            true
        })
    }

    /// Set the health (keeps `since` if only the reason changes). A leader whose health
    /// becomes Unhealthy is demoted to Suspended in the same update.
    pub fn set_health(&self, level: HealthLevel, reason: impl Into<Arc<str>>) -> bool {
        let reason = reason.into();
        self.update(|s| {
            if s.role == Role::Closed {
                return false;
            }
            if s.health.level == level && s.health.reason == reason {
                return false;
            }
            if s.health.level != level {
                s.health.since = now();
            }
            s.health.level = level;
            s.health.reason = reason.clone();
            if level == HealthLevel::Unhealthy && s.role.is_leader() {
                change_role(s, Role::Suspended, reason);
            }
            true
        })
    }

    /// Set role and health in one update (one notification).
    pub fn set(&self, role: Role, level: HealthLevel, reason: impl Into<Arc<str>>) -> bool {
        let reason = reason.into();
        self.update(|s| {
            if s.role == Role::Closed {
                return false;
            }
            let mut changed = false;
            if s.health.level != level || s.health.reason != reason {
                if s.health.level != level {
                    s.health.since = now();
                }
                s.health.level = level;
                s.health.reason = reason.clone();
                changed = true;
            }
            let role = if role.is_leader() && level == HealthLevel::Unhealthy {
                Role::Suspended
            } else {
                role
            };
            if s.role != role {
                change_role(s, role, reason);
                changed = true;
            }
            changed
        })
    }

    /// Mark closed for good (the last update this cell ever publishes).
    pub fn close(&self, reason: impl Into<Arc<str>>) {
        let reason = reason.into();
        self.update(|s| {
            if s.role == Role::Closed {
                return false;
            }
            change_role(s, Role::Closed, reason);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_leader_is_demoted_and_closed_is_final() {
        let cell = StatusCell::new();
        assert!(cell.set_role(
            Role::Leader {
                term: Term::new(1, 1)
            },
            "won"
        ));
        assert!(cell.set_health(HealthLevel::Unhealthy, "no connection"));
        assert_eq!(cell.get().role, Role::Suspended);
        assert!(
            !cell.set_role(
                Role::Leader {
                    term: Term::new(1, 2)
                },
                "won"
            ),
            "no leader while unhealthy"
        );
        cell.close("closed");
        assert!(!cell.set(Role::Candidate, HealthLevel::Healthy, "x"));
        assert_eq!(cell.get().role, Role::Closed);
    }

    #[test]
    fn health_since_kept_when_only_reason_changes() {
        let cell = StatusCell::new();
        cell.set_health(HealthLevel::Degraded, "a");
        let since = cell.get().health.since;
        cell.set_health(HealthLevel::Degraded, "b");
        let h = cell.get().health;
        assert_eq!(h.since, since);
        assert_eq!(&*h.reason, "b");
    }

    #[test]
    fn forgotten_contact_is_unknown_and_older_answers_do_not_revive_it() {
        let cell = StatusCell::new();
        let t0 = now();
        cell.touch(t0 + Duration::from_millis(10));
        assert!(cell.contact().last.is_some());
        cell.forget_contact(t0 + Duration::from_millis(20));
        assert_eq!(
            cell.contact().last,
            None,
            "unknown: work under the old grant stops at once"
        );
        cell.touch(t0 + Duration::from_millis(15));
        assert_eq!(
            cell.contact().last,
            None,
            "an answer to a request sent before the loss"
        );
        cell.touch(t0 + Duration::from_millis(30));
        assert_eq!(cell.contact().last, Some(t0 + Duration::from_millis(30)));
    }
}
