//! [`LeadershipChecker`]: records every grant and loss of leadership (with term and the
//! instant the participant published it) and checks the invariants over the whole history.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::election::Election;
use crate::status::{HealthLevel, Status};
use crate::term::Term;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Leadership granted with this term.
    Granted(Term),
    /// Leadership of this term lost; the new role's name and reason.
    Lost(Term, String),
}

/// One grant or loss, as published by a participant.
#[derive(Debug, Clone)]
pub struct LeadershipEvent {
    /// The label the participant was watched under.
    pub participant: String,
    /// Grant or loss.
    pub kind: EventKind,
    /// When the participant published it (`Status::since`).
    pub at: Instant,
}

#[derive(Default)]
struct Log {
    events: Vec<LeadershipEvent>,
    violations: Vec<String>,
    streams: Vec<Stream>,
}

struct Stream {
    label: String,
    rx: watch::Receiver<Status>,
    held: Option<Term>,
    granted: Option<Term>,
    last: Option<Status>,
}

impl Log {
    /// Record what stream `i` shows now (idempotent for an unchanged status).
    fn process(&mut self, i: usize) {
        let st = &mut self.streams[i];
        let s = st.rx.borrow().clone();
        if st.last.as_ref() == Some(&s) {
            return;
        }
        st.last = Some(s.clone());
        let label = st.label.clone();
        if s.is_leader() && s.health.level == HealthLevel::Unhealthy {
            self.violations.push(format!(
                "{label} published Leader while Unhealthy ({})",
                s.health.reason
            ));
        }
        for span in s.leaderships.iter() {
            let new = st.granted.is_none_or(|g| span.term > g);
            if new {
                if let Some(prev) = st.held.take() {
                    // A loss we never saw published: it ended before this grant started.
                    self.events.push(LeadershipEvent {
                        participant: label.clone(),
                        kind: EventKind::Lost(prev, "unobserved".into()),
                        at: span.start,
                    });
                }
                st.granted = Some(span.term);
                st.held = Some(span.term);
                self.events.push(LeadershipEvent {
                    participant: label.clone(),
                    kind: EventKind::Granted(span.term),
                    at: span.start,
                });
            } else if st.granted == Some(span.term) && st.held.is_none() && span.end.is_none() {
                // Cannot happen with a well-behaved cell; keep the record honest.
                st.held = Some(span.term);
            } else if st.granted.is_some_and(|g| span.term < g) {
                continue;
            }
            if let (Some(end), Some(t)) = (span.end, st.held) {
                if t == span.term {
                    st.held = None;
                    self.events.push(LeadershipEvent {
                        participant: label.clone(),
                        kind: EventKind::Lost(t, format!("{} ({})", s.role.name(), s.reason)),
                        at: end,
                    });
                }
            }
        }
    }

    fn process_all(&mut self) {
        for i in 0..self.streams.len() {
            self.process(i);
        }
    }
}

/// Watches participants' status streams and checks, over everything it saw:
///
/// 1. at most one participant leads at any instant (leadership intervals never overlap),
/// 2. terms strictly increase from grant to grant,
/// 3. no participant is Leader while Unhealthy (Suspended and Closed are roles of their own).
///
/// Timestamps are the participants' own `Status::since` stamps, taken when the role was
/// set (before the store operation that lets a successor in), so the check is exact for
/// participants in one process. A watch channel keeps only the newest value: a grant and
/// its loss within one scheduling gap of the checker could be missed (it then records
/// nothing for it); a backend is expected to hold each leadership far longer than that.
/// [`check`](LeadershipChecker::check) first records what every stream shows at that moment.
#[derive(Clone, Default)]
pub struct LeadershipChecker {
    log: Arc<Mutex<Log>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for LeadershipChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadershipChecker")
            .field("events", &self.events().len())
            .finish()
    }
}

impl LeadershipChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watch an election's status stream, labelled with its id plus a counter (ids need not
    /// be unique). Returns the label.
    pub fn watch(&self, election: &dyn Election) -> String {
        let label = {
            let n = self.log.lock().unwrap().streams.len();
            format!("{}#{}", election.id(), n)
        };
        self.watch_stream(label.clone(), election.status());
        label
    }

    /// Watch a raw status stream under `label`.
    pub fn watch_stream(&self, label: String, rx: watch::Receiver<Status>) {
        let mut wake = rx.clone();
        let i = {
            let mut log = self.log.lock().unwrap();
            log.streams.push(Stream {
                label,
                rx,
                held: None,
                granted: None,
                last: None,
            });
            let i = log.streams.len() - 1;
            log.process(i);
            i
        };
        let log = self.log.clone();
        let handle = tokio::spawn(async move {
            while wake.changed().await.is_ok() {
                log.lock().unwrap().process(i);
            }
            let mut log = log.lock().unwrap();
            log.process(i);
            let st = &mut log.streams[i];
            if let Some(t) = st.held.take() {
                let label = st.label.clone();
                log.events.push(LeadershipEvent {
                    participant: label,
                    kind: EventKind::Lost(t, "handle gone".into()),
                    at: crate::status::now(),
                });
            }
        });
        self.tasks.lock().unwrap().push(handle);
    }

    /// Everything recorded so far, in the order it was recorded.
    pub fn events(&self) -> Vec<LeadershipEvent> {
        let mut log = self.log.lock().unwrap();
        log.process_all();
        log.events.clone()
    }

    /// How many grants were recorded.
    pub fn grants(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Granted(_)))
            .count()
    }

    /// The highest term granted so far.
    pub fn max_term(&self) -> Option<Term> {
        self.events()
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Granted(t) => Some(t),
                _ => None,
            })
            .max()
    }

    /// Check the invariants; `Err` lists every violation with the history.
    pub fn check(&self) -> Result<(), String> {
        let (events, mut violations) = {
            let mut log = self.log.lock().unwrap();
            log.process_all();
            (log.events.clone(), log.violations.clone())
        };
        // Leadership intervals per participant.
        struct Interval {
            who: String,
            term: Term,
            start: Instant,
            end: Option<Instant>,
        }
        let mut intervals: Vec<Interval> = Vec::new();
        for e in &events {
            match &e.kind {
                EventKind::Granted(t) => intervals.push(Interval {
                    who: e.participant.clone(),
                    term: *t,
                    start: e.at,
                    end: None,
                }),
                EventKind::Lost(t, _) => {
                    if let Some(i) = intervals
                        .iter_mut()
                        .rev()
                        .find(|i| i.who == e.participant && i.term == *t && i.end.is_none())
                    {
                        i.end = Some(e.at);
                    }
                }
            }
        }
        for (x, a) in intervals.iter().enumerate() {
            for b in &intervals[x + 1..] {
                if a.who == b.who {
                    continue;
                }
                let a_before_b_ends = b.end.is_none_or(|end| a.start < end);
                let b_before_a_ends = a.end.is_none_or(|end| b.start < end);
                if a_before_b_ends && b_before_a_ends {
                    violations.push(format!(
                        "two leaders at once: {} (term {}) and {} (term {})",
                        a.who, a.term, b.who, b.term
                    ));
                }
            }
        }
        let mut grants: Vec<&Interval> = intervals.iter().collect();
        grants.sort_by_key(|i| i.start);
        for w in grants.windows(2) {
            if w[1].term <= w[0].term {
                violations.push(format!(
                    "term went backwards or repeated: {} got {} after {} had {}",
                    w[1].who, w[1].term, w[0].who, w[0].term
                ));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            let t0 = events.first().map(|e| e.at);
            let history: Vec<String> = events
                .iter()
                .map(|e| {
                    let ms = t0.map(|t| e.at.saturating_duration_since(t).as_secs_f64() * 1e3);
                    format!(
                        "  +{:>9.3} ms {} {:?}",
                        ms.unwrap_or(0.0),
                        e.participant,
                        e.kind
                    )
                })
                .collect();
            Err(format!(
                "leadership invariants violated:\n- {}\nhistory:\n{}",
                violations.join("\n- "),
                history.join("\n")
            ))
        }
    }

    /// Panic with the report if any invariant was violated.
    #[track_caller]
    pub fn assert_ok(&self) {
        if let Err(report) = self.check() {
            panic!("{report}");
        }
    }
}

impl Drop for LeadershipChecker {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
        }
    }
}
