use super::{fmt_vt, Vt};
use crate::term::Term;

#[derive(Debug, Clone)]
struct Interval {
    who: usize,
    term: Term,
    start: Vt,
    end: Option<Vt>,
    unconfirmed: bool,
}

/// The checker over a simulation's virtual timeline: what each participant published as
/// leader (and when it was paused or crashed), judged against the invariants.
///
/// * **At most one leader at any instant**: leaderships of two participants overlap in
///   no instant at which both processes run. A paused process does not act, so its pause is
///   not counted; what it publishes after the resume is.
/// * **The fencing case** (counted apart, never hiding anything else): a participant that
///   led across a pause cannot know it was paused; after the resume it may still lead for a
///   moment while a successor leads. Such an overlap is excused only if the stale leader's
///   term is lower than the other's, it lasts no longer than `fence_bound` after the resume,
///   and it is with that one leader (each pair is judged on its own).
/// * **Terms strictly increase**: every grant's term is above every earlier grant's.
/// * **Liveness**: once faults stop, someone leads within the documented bound.
#[derive(Debug, Clone)]
pub struct Timeline {
    names: Vec<String>,
    intervals: Vec<Interval>,
    open: Vec<Option<usize>>,
    pauses: Vec<Vec<(Vt, Vt)>>,
    revocations: Vec<Vec<(Vt, Vt)>>,
}

/// What [`Timeline::check`] found.
#[derive(Debug, Clone, Default)]
pub struct TimelineReport {
    /// Invariants broken (empty: all held).
    pub violations: Vec<String>,
    /// Overlaps excused as the documented fencing case.
    pub fenced: usize,
    /// The longest of them, measured from the resume (µs).
    pub max_fenced: Vt,
    /// Leadership grants.
    pub grants: usize,
    /// Time from the end of faults to the first leader (µs), when checked.
    pub time_to_leader: Option<Vt>,
    /// Grants on an unconfirmed mode (primary handover while the mode record was
    /// unreadable) whose term is below an earlier grant's — a generation renewed just
    /// before the record became unreadable was never seen here. Documented; never an
    /// overlap (an overlapping one is a violation).
    pub stale_generation: usize,
    /// Overlaps of a stale-generation leader (above) with a participant resumed from a
    /// pause on a stale grant under the newer generation, within the fencing bound: both
    /// documented windows at once (the fencing token then favours the resumed one).
    pub compound: usize,
}

impl Timeline {
    /// A timeline for participants named `names`.
    pub fn new(names: Vec<String>) -> Self {
        let n = names.len();
        Timeline {
            names,
            intervals: Vec::new(),
            open: vec![None; n],
            pauses: vec![Vec::new(); n],
            revocations: vec![Vec::new(); n],
        }
    }

    /// Participant `who` publishes at `at` that it leads with `term` (None: it does not).
    /// Publications are recorded in time order.
    pub fn publish(&mut self, who: usize, at: Vt, term: Option<Term>) {
        self.publish_with(who, at, term, false);
    }

    /// [`publish`](Self::publish), marking a grant made on a mode this participant could
    /// not confirm within the mode lease (the documented default-mode primary handover while
    /// the fallback store is unreadable).
    pub fn publish_with(&mut self, who: usize, at: Vt, term: Option<Term>, unconfirmed: bool) {
        let current = self.open[who].map(|i| self.intervals[i].term);
        if current == term {
            return;
        }
        if let Some(i) = self.open[who].take() {
            self.intervals[i].end = Some(at);
        }
        if let Some(term) = term {
            self.open[who] = Some(self.intervals.len());
            self.intervals.push(Interval {
                who,
                term,
                start: at,
                end: None,
                unconfirmed,
            });
        }
    }

    /// The term `who` currently publishes as leader, if any.
    pub fn leading(&self, who: usize) -> Option<Term> {
        self.open[who].map(|i| self.intervals[i].term)
    }

    /// The process of `who` stops running at `at` until [`resume`](Self::resume).
    pub fn pause(&mut self, who: usize, at: Vt) {
        self.pauses[who].push((at, Vt::MAX));
    }

    /// The process of `who` runs again at `at`.
    pub fn resume(&mut self, who: usize, at: Vt) {
        if let Some(p) = self.pauses[who].last_mut() {
            if p.1 == Vt::MAX {
                p.1 = at;
            }
        }
    }

    /// The place of `who` in the store was taken from outside at `at` (an operator deleted
    /// its node or the path, the store was wiped): it cannot know before the store tells
    /// it, which takes up to `bound` (one message, or noticing a dead connection first). An
    /// overlap of its leadership (held then, or granted on a claim already under way) with
    /// a higher term, ending within `bound` after `at`, is the fencing case, counted apart
    /// like a resumed pause; so is such a grant's term being lower than an earlier one's.
    pub fn revoke(&mut self, who: usize, at: Vt, bound: Vt) {
        self.revocations[who].push((at, bound));
    }

    /// The process of `who` crashed at `at` (it stops leading with it).
    pub fn crash(&mut self, who: usize, at: Vt) {
        self.resume(who, at);
        self.publish(who, at, None);
    }

    /// Every leadership published so far: (participant, term, from, until; None: open).
    pub fn leaderships(&self) -> Vec<(usize, Term, Vt, Option<Vt>)> {
        self.intervals
            .iter()
            .map(|i| (i.who, i.term, i.start, i.end))
            .collect()
    }

    /// Whether `who` leads (published) at `at`.
    pub fn leader_at(&self, at: Vt) -> Option<(usize, Term)> {
        self.intervals
            .iter()
            .find(|i| i.start <= at && i.end.is_none_or(|e| at < e))
            .map(|i| (i.who, i.term))
    }

    fn paused_at(&self, who: usize, t: Vt) -> bool {
        self.pauses[who].iter().any(|&(a, b)| a <= t && t < b)
    }

    /// `[s, e)` minus the pauses of `a` and `b`.
    fn active_pieces(&self, a: usize, b: usize, s: Vt, e: Vt) -> Vec<(Vt, Vt)> {
        let mut cuts: Vec<(Vt, Vt)> = self.pauses[a]
            .iter()
            .chain(&self.pauses[b])
            .filter(|&&(x, y)| x < e && y > s)
            .copied()
            .collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = s;
        for (x, y) in cuts {
            if x > at {
                out.push((at, x.min(e)));
            }
            at = at.max(y);
            if at >= e {
                break;
            }
        }
        if at < e {
            out.push((at, e));
        }
        out
    }

    /// The latest resume of `who` at or before `t` that ended a pause longer than
    /// `min_pause` (shorter ones are within the documented scheduling margin).
    fn resume_before(&self, who: usize, t: Vt, min_pause: Vt) -> Option<Vt> {
        self.pauses[who]
            .iter()
            .filter(|&&(p, r)| r <= t && r - p > min_pause)
            .map(|&(_, r)| r)
            .max()
    }

    /// Judge the timeline up to `end`. `fence`: (how long after a resume a paused
    /// participant may still lead with a stale term, the shortest pause that counts — shorter
    /// ones are within the documented scheduling margin). `liveness`: (faults over at, bound).
    pub fn check(&self, end: Vt, fence: (Vt, Vt), liveness: Option<(Vt, Vt)>) -> TimelineReport {
        let (fence_bound, min_pause) = fence;
        let mut r = TimelineReport {
            grants: self.intervals.len(),
            ..TimelineReport::default()
        };
        let name = |w: usize| &self.names[w];
        for (x, a) in self.intervals.iter().enumerate() {
            for b in &self.intervals[x + 1..] {
                if a.who == b.who {
                    continue;
                }
                let s = a.start.max(b.start);
                let e = a.end.unwrap_or(end).min(b.end.unwrap_or(end));
                if s >= e {
                    continue;
                }
                for (ps, pe) in self.active_pieces(a.who, b.who, s, e) {
                    let fenced = [(a, b), (b, a)].iter().find_map(|(stale, other)| {
                        if stale.term >= other.term {
                            return None;
                        }
                        // Measured from the latest revocation it follows.
                        let revoked = self.revocations[stale.who]
                            .iter()
                            .filter(|&&(r, bound)| r <= ps && pe <= r + bound)
                            .map(|&(r, _)| pe - r)
                            .min();
                        let resumed = self
                            .resume_before(stale.who, ps, min_pause)
                            .filter(|&r| pe <= r + fence_bound)
                            .map(|r| pe - r);
                        resumed.or(revoked)
                    });
                    // The two documented windows at once: a leader on the last mode seen
                    // (unconfirmed, older generation) and a participant just resumed on a
                    // stale grant under the newer one.
                    let compound = fenced.is_none()
                        && [(a, b), (b, a)].iter().any(|(old, resumed)| {
                            old.unconfirmed
                                && old.term < resumed.term
                                && self
                                    .resume_before(resumed.who, ps, min_pause)
                                    .is_some_and(|r| pe <= r + fence_bound)
                        });
                    match fenced {
                        Some(len) => {
                            r.fenced += 1;
                            r.max_fenced = r.max_fenced.max(len);
                        }
                        None if compound => r.compound += 1,
                        None => r.violations.push(format!(
                            "two leaders at once from {} to {}: {} (term {}, since {}) and {} (term {}, since {})",
                            fmt_vt(ps),
                            fmt_vt(pe),
                            name(a.who),
                            a.term,
                            fmt_vt(a.start),
                            name(b.who),
                            b.term,
                            fmt_vt(b.start)
                        )),
                    }
                }
            }
        }
        let mut highest: Option<&Interval> = None;
        for i in &self.intervals {
            if let Some(h) = highest {
                let end = i.end.unwrap_or(end);
                // Every instant at which this grant acts lies within the fencing bound after
                // a resume (a grant on stale state right after a pause, possibly paused
                // again before it could notice).
                let i_end = end;
                let stale_after_resume = self.resume_before(i.who, i.start, min_pause).is_some()
                    && self
                        .active_pieces(i.who, i.who, i.start, i_end)
                        .iter()
                        .all(|&(ps, pe)| {
                            self.resume_before(i.who, ps, min_pause)
                                .is_some_and(|r| pe <= r + fence_bound)
                        });
                // Overlapping another leader while both run (a paused one does not act).
                let overlaps = |i: &Interval| {
                    self.intervals.iter().any(|o| {
                        let s = o.start.max(i.start);
                        let e = o.end.unwrap_or(end).min(i.end.unwrap_or(end));
                        // (a participant just resumed on a stale grant under a newer
                        // generation is the compound case, counted above)
                        o.who != i.who
                            && s < e
                            && self
                                .active_pieces(i.who, o.who, s, e)
                                .iter()
                                .any(|&(ps, pe)| {
                                    !(i.term < o.term
                                        && self
                                            .resume_before(o.who, ps, min_pause)
                                            .is_some_and(|r| pe <= r + fence_bound))
                                })
                    })
                };
                // Or a grant made on a place taken from outside meanwhile (an operator's
                // delete, a wipe), over within the bound of learning it.
                let stale_after_revoke = self.revocations[i.who]
                    .iter()
                    .any(|&(r, bound)| r <= i.start && i.end.unwrap_or(end) <= r + bound);
                if i.term <= h.term && (stale_after_resume || stale_after_revoke) {
                    r.fenced += 1;
                } else if i.term <= h.term && i.unconfirmed && !overlaps(i) {
                    r.stale_generation += 1;
                } else if i.term <= h.term {
                    r.violations.push(format!(
                        "term did not increase: {} got {} at {} after {} had {} at {}",
                        name(i.who),
                        i.term,
                        fmt_vt(i.start),
                        name(h.who),
                        h.term,
                        fmt_vt(h.start)
                    ));
                }
            }
            if highest.is_none_or(|h| i.term > h.term) {
                highest = Some(i);
            }
        }
        if let Some((from, bound)) = liveness {
            // The first instant at or after `from` at which a running participant leads.
            let first = self
                .intervals
                .iter()
                .filter_map(|i| {
                    let s = i.start.max(from);
                    let e = i.end.unwrap_or(end);
                    (s < e)
                        .then(|| {
                            let mut t = s;
                            while t < e && self.paused_at(i.who, t) {
                                let (_, y) = self.pauses[i.who]
                                    .iter()
                                    .copied()
                                    .find(|&(a, b)| a <= t && t < b)
                                    .expect("paused");
                                t = y;
                            }
                            (t < e).then_some(t)
                        })
                        .flatten()
                })
                .min();
            match first {
                Some(t) if t <= from + bound => r.time_to_leader = Some(t - from),
                other => r.violations.push(format!(
                    "no leader within {} ms after the faults stopped at {} (first leader: {})",
                    bound / 1000,
                    fmt_vt(from),
                    other.map_or("never".to_owned(), fmt_vt)
                )),
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl() -> Timeline {
        Timeline::new(vec!["a".into(), "b".into(), "c".into()])
    }

    #[test]
    fn overlapping_leaders_are_a_violation_and_handover_is_not() {
        let mut t = tl();
        t.publish(0, 0, Some(Term::new(1, 1)));
        t.publish(0, 100, None);
        t.publish(1, 100, Some(Term::new(1, 2)));
        assert!(t.check(1000, (0, 0), None).violations.is_empty());
        t.publish(2, 500, Some(Term::new(1, 3)));
        let r = t.check(1000, (0, 0), None);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    }

    #[test]
    fn a_repeated_term_is_a_violation() {
        let mut t = tl();
        t.publish(0, 0, Some(Term::new(1, 1)));
        t.publish(0, 10, None);
        t.publish(0, 20, Some(Term::new(1, 1)));
        assert_eq!(t.check(100, (0, 0), None).violations.len(), 1);
    }

    #[test]
    fn a_paused_leader_overlaps_only_within_the_fence_bound_and_with_a_lower_term() {
        let mut t = tl();
        t.publish(0, 0, Some(Term::new(1, 1)));
        t.pause(0, 100);
        t.publish(1, 500, Some(Term::new(1, 2)));
        t.resume(0, 1000);
        t.publish(0, 1030, None);
        let r = t.check(2000, (50, 10), None);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.fenced, r.max_fenced), (1, 30));
        // Too long after the resume: a violation.
        assert_eq!(t.check(2000, (20, 10), None).violations.len(), 1);
        // A third leader during the fenced window is not hidden by it.
        t.publish(2, 1010, Some(Term::new(1, 3)));
        assert!(!t.check(2000, (50, 10), None).violations.is_empty());
    }

    #[test]
    fn both_documented_windows_at_once_are_counted_apart_and_hide_nothing_else() {
        let mut t = tl();
        // b resumes at 1000 on a stale grant under generation 9 while a leads on the last
        // mode it saw (generation 5, unconfirmed), until b's layer notices at 1040.
        t.publish(1, 0, Some(Term::new(1, 1).with_generation(9)));
        t.pause(1, 100);
        t.publish_with(0, 500, Some(Term::new(1, 2).with_generation(5)), true);
        t.resume(1, 1000);
        t.publish(1, 1040, None);
        let r = t.check(2000, (50, 10), None);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.compound, r.stale_generation), (1, 1));
        // Not when a is an ordinary (confirmed) leader.
        let mut u = tl();
        u.publish(1, 0, Some(Term::new(1, 1).with_generation(9)));
        u.pause(1, 100);
        u.publish(0, 500, Some(Term::new(1, 2).with_generation(5)));
        u.resume(1, 1000);
        u.publish(1, 1040, None);
        assert!(!u.check(2000, (50, 10), None).violations.is_empty());
    }

    #[test]
    fn liveness_needs_a_running_leader_within_the_bound() {
        let mut t = tl();
        t.publish(0, 500, Some(Term::new(1, 1)));
        assert_eq!(
            t.check(2000, (0, 0), Some((100, 500))).time_to_leader,
            Some(400)
        );
        assert_eq!(t.check(2000, (0, 0), Some((100, 300))).violations.len(), 1);
    }
}
