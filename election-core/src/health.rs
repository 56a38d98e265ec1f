//! A liveness check for leaders, like client-go's `HealthzAdaptor`.
//!
//! A participant that believes it leads but has not heard from its store for longer than
//! its claim stays safe is broken: its backend should have stepped down and did not (a
//! stuck task, a blocked runtime). [`LeaderHealthCheck`] reports exactly that, so a
//! liveness probe can restart the process. Everything else — following, candidates,
//! suspended or unhealthy-but-not-leading participants, a store that is down — is
//! reported healthy: restarting those would not help, and the election already keeps
//! them from acting.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use succession_core::health::LeaderHealthCheck;
//! use succession_core::memory::MemoryStore;
//! use succession_core::Election;
//!
//! let store = MemoryStore::new();
//! let election: Arc<dyn Election> = Arc::new(store.election("node-a").unwrap());
//! let check = LeaderHealthCheck::new(election).tolerance(Duration::from_secs(2));
//! let report = check.report();
//! assert!(report.is_healthy(), "{report}");
//! ```
//!
//! The CLI serves it on `--health-addr` (`GET /healthz`: 200 or 503 with the report).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::election::Election;
use crate::status::{Contact, Role, Status};
use crate::term::Term;

/// Default [`LeaderHealthCheck::tolerance`]: one second.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(1);

/// Checks one participant (any [`Election`], including a supervisor) for a leader that
/// lost contact with its store beyond the safe bound.
#[derive(Debug, Clone)]
pub struct LeaderHealthCheck {
    election: Arc<dyn Election>,
    tolerance: Duration,
}

impl LeaderHealthCheck {
    /// A check of `election` with [`DEFAULT_TOLERANCE`].
    pub fn new(election: Arc<dyn Election>) -> Self {
        LeaderHealthCheck {
            election,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Extra time past the safe bound before the check fails (absorbs scheduling delays;
    /// client-go calls it `maxTolerableExpiredLease`).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The report as of now.
    pub fn report(&self) -> HealthReport {
        let status = self.election.status().borrow().clone();
        evaluate(
            &status,
            self.election.contact(),
            self.tolerance,
            crate::status::now(),
        )
    }

    /// `Ok` when healthy, else [`Unhealthy`] with the report (for health-check frameworks
    /// that take a `Result`).
    pub fn check(&self) -> Result<HealthReport, Unhealthy> {
        let r = self.report();
        if r.is_healthy() {
            Ok(r)
        } else {
            Err(Unhealthy(Box::new(r)))
        }
    }
}

/// The error of [`LeaderHealthCheck::check`]: a leader out of contact beyond the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy(pub Box<HealthReport>);

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Unhealthy {}

/// The outcome of a [`LeaderHealthCheck`], with what it was based on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Whether the participant is healthy in the liveness sense.
    pub healthy: bool,
    /// Its role name ([`Role::name`]).
    pub role: &'static str,
    /// The term it holds, when leading.
    pub term: Option<Term>,
    /// How long ago it last heard from its store (None: never).
    pub contact_age: Option<Duration>,
    /// How long a leader's claim is safe without contact.
    pub safe_for: Duration,
    /// The tolerance on top.
    pub tolerance: Duration,
    /// One line saying why.
    pub reason: String,
}

impl HealthReport {
    /// Whether the participant is healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.healthy { "ok" } else { "unhealthy" };
        write!(f, "{verdict}: {}", self.reason)
    }
}

/// The verdict for one status and contact record at `now` (the check without I/O).
pub fn evaluate(
    status: &Status,
    contact: Contact,
    tolerance: Duration,
    now: Instant,
) -> HealthReport {
    let age = contact.last.map(|t| now.saturating_duration_since(t));
    let limit = contact.safe_for + tolerance;
    let (healthy, reason) = match &status.role {
        Role::Leader { term } => match age {
            Some(a) if a <= limit => (
                true,
                format!(
                    "leading (term {term}); last store contact {} ms ago, within {} ms",
                    a.as_millis(),
                    limit.as_millis()
                ),
            ),
            Some(a) => (
                false,
                format!(
                    "believes it leads (term {term}) but last heard from its store {} ms ago, beyond the safe bound {} ms + tolerance {} ms: its backend should have stepped down; restart it",
                    a.as_millis(),
                    contact.safe_for.as_millis(),
                    tolerance.as_millis()
                ),
            ),
            None => (
                false,
                format!("believes it leads (term {term}) but never heard from its store; restart it"),
            ),
        },
        role => (true, format!("{}: {}", role.name(), status.reason)),
    };
    HealthReport {
        healthy,
        role: status.role.name(),
        term: status.role.term(),
        contact_age: age,
        safe_for: contact.safe_for,
        tolerance,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusCell;
    use crate::HealthLevel;

    fn leader_status() -> Status {
        let cell = StatusCell::new();
        cell.set(
            Role::Leader {
                term: Term::new(1, 7),
            },
            HealthLevel::Healthy,
            "first",
        );
        cell.get()
    }

    #[test]
    fn leader_with_recent_contact_is_healthy() {
        let now = crate::status::now();
        let c = Contact::new(
            Some(now - Duration::from_millis(500)),
            Duration::from_secs(2),
        );
        let r = evaluate(&leader_status(), c, Duration::from_secs(1), now);
        assert!(r.is_healthy(), "{r}");
        assert_eq!(r.role, "leader");
        assert_eq!(r.term, Some(Term::new(1, 7)));
    }

    #[test]
    fn leader_past_safe_bound_plus_tolerance_is_unhealthy_and_says_why() {
        let now = crate::status::now();
        let c = Contact::new(
            Some(now - Duration::from_millis(3_500)),
            Duration::from_secs(2),
        );
        let r = evaluate(&leader_status(), c, Duration::from_secs(1), now);
        assert!(!r.is_healthy());
        assert!(r.reason.contains("beyond the safe bound 2000 ms"), "{r}");
        assert!(r.to_string().starts_with("unhealthy:"), "{r}");
        // Just inside the bound is still fine.
        let c = Contact::new(
            Some(now - Duration::from_millis(2_900)),
            Duration::from_secs(2),
        );
        assert!(evaluate(&leader_status(), c, Duration::from_secs(1), now).is_healthy());
    }

    #[test]
    fn leader_without_any_contact_is_unhealthy() {
        let r = evaluate(
            &leader_status(),
            Contact::new(None, Duration::from_secs(2)),
            Duration::ZERO,
            crate::status::now(),
        );
        assert!(!r.is_healthy(), "{r}");
    }

    #[test]
    fn non_leaders_are_healthy_however_stale_their_contact() {
        let cell = StatusCell::new();
        cell.set(
            Role::Suspended,
            HealthLevel::Unhealthy,
            "no connection to the store",
        );
        let now = crate::status::now();
        let c = Contact::new(Some(now - Duration::from_secs(600)), Duration::from_secs(2));
        let r = evaluate(&cell.get(), c, Duration::ZERO, now);
        assert!(r.is_healthy(), "{r}");
        assert_eq!(r.role, "suspended");
    }

    #[test]
    fn cell_contact_keeps_the_latest_instant() {
        let cell = StatusCell::new();
        assert_eq!(cell.contact().last, None);
        let t1 = crate::status::now();
        let t0 = t1 - Duration::from_millis(10);
        cell.touch(t1);
        cell.touch(t0);
        let got = cell.contact().last.unwrap();
        assert!(
            got >= t1 && got <= t1 + Duration::from_micros(1),
            "{got:?} vs {t1:?}"
        );
        cell.set_contact_bound(Duration::from_secs(4));
        assert_eq!(cell.contact().safe_for, Duration::from_secs(4));
    }
}
