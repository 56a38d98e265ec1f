//! What one simulated schedule of single-layer participants showed, and the loop that runs
//! many (shared by the backends' simulations).

use super::{TimelineReport, Vt};

/// What one schedule showed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The timeline checker's verdict.
    pub report: TimelineReport,
    /// Problems found in the store at the end (e.g. a participant without exactly one
    /// place in the queue).
    pub store: Vec<String>,
    /// Faults injected.
    pub faults: usize,
    /// The trace (when asked for).
    pub trace: Vec<String>,
    /// The command that replays this seed.
    pub replay: String,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.report.violations.is_empty() && self.store.is_empty()
    }

    /// A readable account: the violations, then the trace, then how to replay it.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "seed {} ({} faults, {} grants):\n",
            self.seed, self.faults, self.report.grants
        );
        for v in self.report.violations.iter().chain(&self.store) {
            s.push_str(&format!("  VIOLATION {v}\n"));
        }
        if !self.trace.is_empty() {
            s.push_str("trace:\n");
            for l in &self.trace {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s.push_str(&format!("replay: {}\n", self.replay));
        s
    }
}

/// Totals over many schedules.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Schedules run.
    pub runs: usize,
    /// Faults injected in all.
    pub faults: usize,
    /// Grants in all.
    pub grants: usize,
    /// Overlaps excused as the fencing case (a paused leader resumed, a place taken from
    /// outside).
    pub fenced: usize,
    /// The longest of them after the resume or revocation (µs).
    pub max_fenced: Vt,
    /// The longest time from the end of faults to a leader (µs).
    pub max_time_to_leader: Vt,
}

/// Run `run(seed, trace)` for every seed; the first failing one is run again with its
/// trace and returned as `Err` with its description.
pub fn explore(seeds: &[u64], run: impl Fn(u64, bool) -> Outcome) -> Result<Summary, String> {
    let mut sum = Summary::default();
    for &seed in seeds {
        let o = run(seed, false);
        if !o.ok() {
            return Err(run(seed, true).describe());
        }
        sum.runs += 1;
        sum.faults += o.faults;
        sum.grants += o.report.grants;
        sum.fenced += o.report.fenced;
        sum.max_fenced = sum.max_fenced.max(o.report.max_fenced);
        sum.max_time_to_leader = sum
            .max_time_to_leader
            .max(o.report.time_to_leader.unwrap_or(0));
    }
    Ok(sum)
}

/// For tests: run the schedules of `seeds(base, n)` (see [`super::seeds`]) and return the
/// totals; panic with the first failing seed's description (its trace, how to replay it).
#[track_caller]
pub fn explore_or_panic(base: u64, n: u64, run: impl Fn(u64, bool) -> Outcome) -> Summary {
    let started = std::time::Instant::now();
    match explore(&super::seeds(base, n), run) {
        Ok(s) => {
            eprintln!("{} schedules in {:?}: {s:?}", s.runs, started.elapsed());
            s
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// For tests of planted bugs: the first of `n` schedules from `base` that breaks an
/// invariant must exist, and name one of `what` among its violations.
#[track_caller]
pub fn assert_caught(base: u64, n: u64, what: &[&str], run: impl Fn(u64) -> Outcome) -> Outcome {
    let o = (base..base + n)
        .map(run)
        .find(|o| !o.ok())
        .unwrap_or_else(|| panic!("the planted bug survived {n} schedules"));
    let all = format!("{:?} {:?}", o.report.violations, o.store);
    assert!(
        what.iter().any(|w| all.contains(w)),
        "caught, but not as {what:?}: {all}"
    );
    eprintln!("caught by seed {}: {all}", o.seed);
    o
}
