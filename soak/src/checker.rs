//! The history checker: pure functions from a [`History`] to a [`Verdict`]. No I/O, no
//! clock: the unit tests below feed it synthetic histories with planted violations.
//!
//! Rules, per election (group):
//! 1. **One leader at a time.** Leadership intervals run from an `elected` event to the
//!    participant's next `revoked`, `closed`, `elected` (a new term) or its process exit
//!    (for a kill -9, the moment the runner sent SIGKILL). Two intervals of different
//!    participants that overlap are a violation, except the *fencing case*: a participant
//!    frozen by SIGSTOP while leading cannot know it was frozen; the overlap that lies
//!    within its frozen-and-after span is reported apart, with the length of its
//!    post-resume window (SIGCONT to its `revoked`).
//! 2. **Terms strictly increase** over the grants of one election, across participants, in
//!    time order. The same participant granted the same term again with no other grant in
//!    between (leadership resumed, e.g. after a reconnect within the session) is counted as
//!    a *resumption*, not a violation: it is the same fencing token held by the same node.
//! 3. **Liveness.** After every episode heals, each group it disturbed has a leader within
//!    that group's bound: the earliest instant at or after the heal from which one
//!    participant leads for at least `stable` (or until the next episode / the end).
//!    Leadership counts only up to a SIGSTOP of its holder (after it, a stale leader).
//! 4. **No crash.** A participant process that exits without the runner having killed or
//!    stopped it is a violation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use succession_core::Term;

use crate::history::{Event, EventKind, FaultKind, Group, History};

/// What the checker needs besides the history.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Per group: the longest a group may stay leaderless after a heal (ns).
    pub bound: BTreeMap<Group, u64>,
    /// A leader counts as recovered once it has led this long (ns), or until the next
    /// episode / the end.
    pub stable: u64,
}

/// A kind of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Two participants leading at once in one election.
    TwoLeaders,
    /// A grant whose term is not above the previous grant's.
    TermNotIncreasing,
    /// No leader within the bound after a fault healed.
    NoLeaderAfterHeal,
    /// A participant process exited on its own.
    Crashed,
    /// A participant did not answer `/healthz` with 200 (runner probe).
    Unhealthy,
    /// A participant did not exit after SIGTERM (runner).
    Stuck,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::TwoLeaders => "two leaders at once",
            ViolationKind::TermNotIncreasing => "term not increasing",
            ViolationKind::NoLeaderAfterHeal => "no leader after heal",
            ViolationKind::Crashed => "participant crashed",
            ViolationKind::Unhealthy => "participant unhealthy",
            ViolationKind::Stuck => "participant stuck",
        })
    }
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What rule.
    pub kind: ViolationKind,
    /// In which election (`None`: not tied to one).
    pub group: Option<Group>,
    /// When (CLOCK_MONOTONIC ns), for the timeline excerpt.
    pub at: u64,
    /// Human-readable detail.
    pub detail: String,
}

/// A SIGSTOPped leader's stale window after it was resumed (the fencing case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingWindow {
    /// The paused participant.
    pub who: String,
    /// Its election.
    pub group: Group,
    /// The term it still believed it held.
    pub term: Term,
    /// SIGCONT at.
    pub resumed: u64,
    /// From SIGCONT to its `revoked` (ns); 0 if it stopped leading before resuming.
    pub window: u64,
    /// Whether another participant led during its pause or window (the overlap a resource
    /// must refuse by fencing on terms).
    pub overlapped: bool,
}

/// How fast one group got a leader after one episode healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The episode.
    pub episode: usize,
    /// The group.
    pub group: Group,
    /// The fault kinds of the episode.
    pub kinds: Vec<FaultKind>,
    /// Heal to stable leader (ns); `None`: none within the bound.
    pub after: Option<u64>,
    /// Time without any (unfrozen) leader in the group from the episode's first injection
    /// to its recovery (or to the next episode when it did not recover), ns.
    pub leaderless: u64,
}

/// How much of `[from, to)` the segments cover.
fn covered(mut segs: Vec<(u64, u64)>, from: u64, to: u64) -> u64 {
    segs.retain(|&(a, b)| b > from && a < to);
    segs.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in segs {
        let (a, b) = (a.max(from), b.min(to));
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((ca, cb)) = cur {
        total += cb - ca;
    }
    total
}

/// The checker's answer.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Everything that broke a rule.
    pub violations: Vec<Violation>,
    /// The fencing cases (not violations).
    pub fencing: Vec<FencingWindow>,
    /// Per episode and disturbed group.
    pub recoveries: Vec<Recovery>,
    /// Grants that resumed the same term for the same participant.
    pub resumptions: usize,
    /// Leadership intervals seen, per group.
    pub grants: BTreeMap<Group, usize>,
}

/// A leadership interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// Who led.
    pub who: String,
    /// In which election.
    pub group: Group,
    /// With what term.
    pub term: Term,
    /// From (ns).
    pub start: u64,
    /// To (ns; the history's end if still leading).
    pub end: u64,
}

/// Events in time order (stable for equal stamps: the input order is kept).
fn sorted(events: &[Event]) -> Vec<&Event> {
    let mut v: Vec<&Event> = events.iter().collect();
    v.sort_by_key(|e| e.at);
    v
}

/// Every leadership interval of the history.
pub fn intervals(h: &History) -> Vec<Interval> {
    let mut open: HashMap<&str, (Group, Term, u64)> = HashMap::new();
    let mut out = Vec::new();
    for e in sorted(&h.events) {
        let close = |open: &mut HashMap<&str, (Group, Term, u64)>, out: &mut Vec<Interval>| {
            if let Some((group, term, start)) = open.remove(e.who.as_str()) {
                out.push(Interval {
                    who: e.who.clone(),
                    group,
                    term,
                    start,
                    end: e.at,
                });
            }
        };
        match &e.kind {
            EventKind::Elected { term, .. } => {
                close(&mut open, &mut out);
                open.insert(e.who.as_str(), (e.group, *term, e.at));
            }
            EventKind::Revoked { .. } | EventKind::Closed | EventKind::Exited { .. } => {
                close(&mut open, &mut out)
            }
            _ => {}
        }
    }
    for (who, (group, term, start)) in open {
        out.push(Interval {
            who: who.to_string(),
            group,
            term,
            start,
            end: h.end.max(start),
        });
    }
    out.sort_by(|a, b| (a.start, &a.who).cmp(&(b.start, &b.who)));
    out
}

/// Per participant: its SIGSTOP spans `(paused, resumed)` (resumed = end if never).
fn pauses(h: &History) -> HashMap<String, Vec<(u64, u64)>> {
    let mut out: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut open: HashMap<&str, u64> = HashMap::new();
    for e in sorted(&h.events) {
        match e.kind {
            EventKind::Paused => {
                open.insert(e.who.as_str(), e.at);
            }
            EventKind::Resumed | EventKind::Exited { .. } => {
                if let Some(p) = open.remove(e.who.as_str()) {
                    out.entry(e.who.clone()).or_default().push((p, e.at));
                }
            }
            _ => {}
        }
    }
    for (who, p) in open {
        out.entry(who.to_string()).or_default().push((p, h.end));
    }
    out
}

/// The pause of `iv`'s holder that began while it led, if any.
fn pause_within(iv: &Interval, pauses: &HashMap<String, Vec<(u64, u64)>>) -> Option<(u64, u64)> {
    pauses
        .get(&iv.who)?
        .iter()
        .copied()
        .find(|&(p, _)| iv.start <= p && p < iv.end)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Judges a history.
pub fn check(h: &History, rules: &Rules) -> Verdict {
    let mut v = Verdict::default();
    let ivs = intervals(h);
    let pauses = pauses(h);
    for iv in &ivs {
        *v.grants.entry(iv.group).or_default() += 1;
    }

    // 1. One leader at a time (fencing case apart).
    let mut fenced: HashMap<(String, u64), FencingWindow> = HashMap::new();
    for iv in &ivs {
        if let Some((_, resumed)) = pause_within(iv, &pauses) {
            fenced.insert(
                (iv.who.clone(), iv.start),
                FencingWindow {
                    who: iv.who.clone(),
                    group: iv.group,
                    term: iv.term,
                    resumed,
                    window: iv.end.saturating_sub(resumed),
                    overlapped: false,
                },
            );
        }
    }
    for (i, a) in ivs.iter().enumerate() {
        for b in &ivs[i + 1..] {
            if b.start >= a.end {
                // Sorted by start: no later interval overlaps `a` either.
                break;
            }
            if a.group != b.group || a.who == b.who {
                continue;
            }
            let from = a.start.max(b.start);
            let to = a.end.min(b.end);
            if from >= to {
                continue;
            }
            // The fencing case: the overlap lies within one holder's pause-and-after.
            let stale = [a, b]
                .into_iter()
                .find(|x| pause_within(x, &pauses).is_some_and(|(p, _)| p <= from && to <= x.end));
            if let Some(x) = stale {
                if let Some(f) = fenced.get_mut(&(x.who.clone(), x.start)) {
                    f.overlapped = true;
                }
                continue;
            }
            v.violations.push(Violation {
                kind: ViolationKind::TwoLeaders,
                group: Some(a.group),
                at: from,
                detail: format!(
                    "{} (term {}) and {} (term {}) both led for {:.3} ms",
                    a.who,
                    a.term,
                    b.who,
                    b.term,
                    ms(to - from)
                ),
            });
        }
    }
    let mut fencing: Vec<FencingWindow> = fenced.into_values().collect();
    fencing.sort_by_key(|f| f.resumed);
    v.fencing = fencing;

    // 2. Terms strictly increase per election.
    let mut last: HashMap<Group, (Term, String)> = HashMap::new();
    for e in sorted(&h.events) {
        let EventKind::Elected { term, .. } = &e.kind else {
            continue;
        };
        if let Some((prev, prev_who)) = last.get(&e.group) {
            if term == prev && *prev_who == e.who {
                v.resumptions += 1;
            } else if term <= prev {
                v.violations.push(Violation {
                    kind: ViolationKind::TermNotIncreasing,
                    group: Some(e.group),
                    at: e.at,
                    detail: format!(
                        "{} granted term {term} after {prev_who} was granted {prev}",
                        e.who
                    ),
                });
            }
        }
        let keep = match last.get(&e.group) {
            Some((prev, _)) => term >= prev,
            None => true,
        };
        if keep {
            last.insert(e.group, (*term, e.who.clone()));
        }
    }

    // 3. Liveness after every healed episode.
    for ep in &h.episodes {
        let Some(healed) = ep.healed else {
            continue;
        };
        let faults: Vec<_> = h.faults.iter().filter(|f| f.episode == ep.index).collect();
        let mut kinds: Vec<FaultKind> = faults.iter().map(|f| f.kind).collect();
        kinds.sort();
        kinds.dedup();
        let mut groups: Vec<Group> = faults.iter().flat_map(|f| f.groups.clone()).collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            let bound = rules.bound.get(&g).copied().unwrap_or(u64::MAX);
            let first = ivs
                .iter()
                .filter(|iv| iv.group == g)
                .filter_map(|iv| {
                    // A frozen holder is no leader from the moment it was frozen.
                    let end = pause_within(iv, &pauses).map_or(iv.end, |(p, _)| p);
                    let t = iv.start.max(healed);
                    let lasts = end > t && (end - t >= rules.stable || end >= ep.until.min(h.end));
                    lasts.then_some(t)
                })
                .min();
            let after = first.map(|t| t - healed).filter(|&d| d <= bound);
            if after.is_none() {
                v.violations.push(Violation {
                    kind: ViolationKind::NoLeaderAfterHeal,
                    group: Some(g),
                    at: healed,
                    detail: format!(
                        "episode {} ({}) healed; {}",
                        ep.index,
                        kinds
                            .iter()
                            .map(|k| k.name())
                            .collect::<Vec<_>>()
                            .join(" + "),
                        match first {
                            Some(t) => format!(
                                "first stable leader after {:.0} ms, bound {:.0} ms",
                                ms(t - healed),
                                ms(bound)
                            ),
                            None => format!("no stable leader at all (bound {:.0} ms)", ms(bound)),
                        }
                    ),
                });
            }
            let segs: Vec<(u64, u64)> = ivs
                .iter()
                .filter(|iv| iv.group == g)
                .map(|iv| {
                    let end = pause_within(iv, &pauses).map_or(iv.end, |(p, _)| p);
                    (iv.start, end.max(iv.start))
                })
                .collect();
            let to = match after {
                Some(d) => healed + d,
                None => ep.until.min(h.end).max(healed),
            };
            let from = ep.start.min(to);
            let leaderless = (to - from) - covered(segs, from, to);
            v.recoveries.push(Recovery {
                episode: ep.index,
                group: g,
                kinds: kinds.clone(),
                after,
                leaderless,
            });
        }
    }

    // 4. No crash.
    for e in &h.events {
        if let EventKind::Exited {
            status,
            expected: false,
        } = &e.kind
        {
            v.violations.push(Violation {
                kind: ViolationKind::Crashed,
                group: Some(e.group),
                at: e.at,
                detail: format!("{} exited on its own: {status}", e.who),
            });
        }
    }
    v.violations.sort_by_key(|x| x.at);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Episode, Fault};

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn ev(at: u64, who: &str, kind: EventKind) -> Event {
        let group = if who.starts_with("zk") {
            Group::Zk
        } else if who.starts_with("etcd") {
            Group::Etcd
        } else {
            Group::Supervised
        };
        Event {
            at,
            who: who.into(),
            group,
            kind,
        }
    }

    fn elected(at: u64, who: &str, seq: u64) -> Event {
        ev(
            at,
            who,
            EventKind::Elected {
                term: Term::new(1, seq),
                layer: "zk".into(),
            },
        )
    }

    fn revoked(at: u64, who: &str) -> Event {
        ev(
            at,
            who,
            EventKind::Revoked {
                reason: "test".into(),
            },
        )
    }

    fn rules() -> Rules {
        Rules {
            bound: Group::ALL.iter().map(|g| (*g, 5 * S)).collect(),
            stable: S,
        }
    }

    /// One fault on the ZooKeeper-only group, 10 s to 12 s; next episode at 30 s.
    fn one_episode(events: Vec<Event>) -> History {
        History {
            events,
            faults: vec![Fault {
                episode: 0,
                kind: FaultKind::ZkNodeKill,
                target: "zk peer 1".into(),
                participant: None,
                groups: vec![Group::Zk],
                start: 10 * S,
                heal: Some(12 * S),
            }],
            episodes: vec![Episode {
                index: 0,
                start: 10 * S,
                healed: Some(12 * S),
                until: 30 * S,
            }],
            end: 30 * S,
        }
    }

    #[test]
    fn a_clean_handover_passes_and_recovery_is_measured() {
        let h = one_episode(vec![
            elected(S, "zk-1", 1),
            revoked(11 * S, "zk-1"),
            elected(11 * S + MS, "zk-2", 2),
        ]);
        let v = check(&h, &rules());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.recoveries.len(), 1);
        // zk-2 leads since before the heal: recovered at the heal itself.
        assert_eq!(v.recoveries[0].after, Some(0));
        // From the injection (10 s) on, zk-1 led until 11 s, zk-2 from 11.001 s.
        assert_eq!(v.recoveries[0].leaderless, MS);
        assert_eq!(v.grants[&Group::Zk], 2);
    }

    #[test]
    fn coverage_merges_overlapping_segments() {
        assert_eq!(covered(vec![(0, 10), (5, 15), (20, 30)], 2, 25), 13 + 5);
        assert_eq!(covered(vec![], 0, 10), 0);
        assert_eq!(covered(vec![(0, 100)], 10, 20), 10);
    }

    #[test]
    fn planted_two_overlapping_leaders_are_caught() {
        let h = one_episode(vec![
            elected(S, "zk-1", 1),
            elected(5 * S, "zk-2", 2),
            revoked(5 * S + 3 * MS, "zk-1"),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        let x = &v.violations[0];
        assert_eq!(x.kind, ViolationKind::TwoLeaders);
        assert_eq!(x.at, 5 * S);
        assert!(x.detail.contains("3.000 ms"), "{}", x.detail);
    }

    #[test]
    fn overlaps_in_different_elections_are_fine() {
        let h = one_episode(vec![elected(S, "zk-1", 1), elected(2 * S, "etcd-1", 1)]);
        assert!(check(&h, &rules()).violations.is_empty());
    }

    #[test]
    fn planted_term_going_backwards_is_caught() {
        let h = one_episode(vec![
            elected(S, "zk-1", 7),
            revoked(2 * S, "zk-1"),
            elected(3 * S, "zk-2", 5),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::TermNotIncreasing);
        assert_eq!(v.violations[0].at, 3 * S);
    }

    #[test]
    fn a_repeated_term_by_another_participant_is_caught_but_a_resumption_is_not() {
        let h = one_episode(vec![
            elected(S, "zk-1", 7),
            revoked(2 * S, "zk-1"),
            elected(3 * S, "zk-1", 7),
            revoked(4 * S, "zk-1"),
            elected(5 * S, "zk-2", 7),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.resumptions, 1);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::TermNotIncreasing);
    }

    #[test]
    fn planted_no_leader_after_heal_is_caught() {
        // zk-1 leads, the fault heals at 12 s, nobody leads again.
        let h = one_episode(vec![elected(S, "zk-1", 1), revoked(11 * S, "zk-1")]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::NoLeaderAfterHeal);
        assert_eq!(v.recoveries[0].after, None);
    }

    #[test]
    fn a_leader_later_than_the_bound_is_caught() {
        let h = one_episode(vec![
            elected(S, "zk-1", 1),
            revoked(11 * S, "zk-1"),
            elected(18 * S, "zk-2", 2),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::NoLeaderAfterHeal);
        assert!(v.violations[0].detail.contains("6000 ms"));
    }

    #[test]
    fn a_flicker_shorter_than_stable_does_not_count_as_recovered() {
        let h = one_episode(vec![
            elected(13 * S, "zk-1", 1),
            revoked(13 * S + 10 * MS, "zk-1"),
            elected(14 * S, "zk-2", 2),
        ]);
        let v = check(&h, &rules());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.recoveries[0].after, Some(2 * S));
        // Leaderless from 10 s to 14 s except zk-1's 10 ms.
        assert_eq!(v.recoveries[0].leaderless, 4 * S - 10 * MS);
    }

    #[test]
    fn a_paused_leader_is_the_fencing_case_not_a_violation() {
        let mut h = one_episode(vec![
            elected(S, "zk-1", 1),
            ev(10 * S, "zk-1", EventKind::Paused),
            elected(13 * S, "zk-2", 2),
            ev(15 * S, "zk-1", EventKind::Resumed),
            revoked(15 * S + 40 * MS, "zk-1"),
        ]);
        h.faults[0].kind = FaultKind::PauseParticipant;
        h.episodes[0].healed = Some(15 * S);
        let v = check(&h, &rules());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.fencing.len(), 1);
        let f = &v.fencing[0];
        assert_eq!(f.who, "zk-1");
        assert_eq!(f.window, 40 * MS);
        assert!(f.overlapped);
        // zk-2 is the stable leader at the heal.
        assert_eq!(v.recoveries[0].after, Some(0));
    }

    #[test]
    fn a_leader_counts_for_recovery_until_it_is_frozen_but_not_after() {
        // zk-2 leads from the heal (12 s) until frozen at 14 s: recovered at once.
        let h = one_episode(vec![
            elected(11 * S, "zk-2", 2),
            ev(14 * S, "zk-2", EventKind::Paused),
        ]);
        let v = check(&h, &rules());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.recoveries[0].after, Some(0));
        // Frozen 300 ms after the heal: not a stable leader, and nobody else leads.
        let h = one_episode(vec![
            elected(11 * S, "zk-2", 2),
            ev(12 * S + 300 * MS, "zk-2", EventKind::Paused),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::NoLeaderAfterHeal);
    }

    #[test]
    fn an_overlap_before_the_pause_is_still_a_violation() {
        let h = one_episode(vec![
            elected(S, "zk-1", 1),
            elected(2 * S, "zk-2", 2),
            ev(10 * S, "zk-1", EventKind::Paused),
            ev(15 * S, "zk-1", EventKind::Resumed),
            revoked(15 * S + 40 * MS, "zk-1"),
        ]);
        let v = check(&h, &rules());
        assert!(v
            .violations
            .iter()
            .any(|x| x.kind == ViolationKind::TwoLeaders));
    }

    #[test]
    fn a_killed_leader_ends_at_the_kill_and_a_crash_is_caught() {
        let h = one_episode(vec![
            elected(S, "zk-1", 1),
            ev(
                10 * S,
                "zk-1",
                EventKind::Exited {
                    status: "signal: 9".into(),
                    expected: true,
                },
            ),
            elected(12 * S, "zk-2", 2),
            ev(
                20 * S,
                "zk-3",
                EventKind::Exited {
                    status: "exit status: 101".into(),
                    expected: false,
                },
            ),
        ]);
        let v = check(&h, &rules());
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::Crashed);
    }
}
