//! Deterministic simulation of supervised clusters: the production supervisor machine
//! (`SupervisorMachine`, the same code the tokio driver runs) through thousands of seeded
//! fault schedules, judged by the timeline checker (see `succession_core::sim`).
//!
//! `SUCCESSION_SIM_SEEDS=N` runs N schedules per test instead of the CI default (a soak);
//! `SUCCESSION_SIM_SEED=S` replays one seed and prints its trace on failure.

use succession_core::sim::{self, supervised::*};

/// Run the seeds; panic with the seed, the violations and the trace on the first failure.
fn explore_or_panic(cfg: &SimConfig, base: u64, n: u64) -> Summary {
    let seeds = sim::seeds(base, n);
    let started = std::time::Instant::now();
    match explore(cfg, &seeds) {
        Ok(s) => {
            eprintln!("{} schedules in {:?}: {s:?}", s.runs, started.elapsed());
            s
        }
        Err(report) => panic!("{report}"),
    }
}

/// The first seed (of `n` from `base`) whose run breaks an invariant.
fn first_failure(cfg: &SimConfig, base: u64, n: u64) -> Option<Outcome> {
    (base..base + n).map(|s| run(s, cfg)).find(|o| !o.ok())
}

fn with_bugs(bugs: Bugs) -> SimConfig {
    SimConfig {
        bugs,
        ..SimConfig::default()
    }
}

#[track_caller]
fn assert_caught(what: &str, cfg: &SimConfig, n: u64) -> Outcome {
    let o = first_failure(cfg, 0, n)
        .unwrap_or_else(|| panic!("planted bug not caught in {n} schedules: {what}"));
    eprintln!(
        "{what}: caught by seed {}: {}",
        o.seed, o.report.violations[0]
    );
    o
}

#[test]
fn default_mode_keeps_one_leader_and_increasing_terms_and_elects_after_faults_5000_schedules() {
    let s = explore_or_panic(&SimConfig::default(), 0, 5_000);
    if s.runs >= 1_000 {
        // The schedules exercise what they claim to (not when replaying one seed).
        assert!(
            s.failovers > 0 && s.failbacks > 0 && s.grants > s.runs,
            "{s:?}"
        );
        assert!(s.max_fenced <= 200_000, "{s:?}");
    }
}

#[test]
fn strict_mode_lease_keeps_one_leader_and_increasing_terms_and_elects_after_faults_5000_schedules()
{
    let cfg = SimConfig {
        strict_mode_lease: true,
        ..SimConfig::default()
    };
    let s = explore_or_panic(&cfg, 1_000_000, 5_000);
    if s.runs >= 1_000 {
        assert!(s.failovers > 0 && s.failbacks > 0, "{s:?}");
        assert_eq!(
            s.stale_generation + s.compound,
            0,
            "none with the strict mode lease"
        );
    }
}

#[test]
fn strict_mode_lease_closes_the_asymmetric_partition_window() {
    let cfg = SimConfig {
        strict_mode_lease: true,
        faults: Faults {
            asymmetric: true,
            ..Faults::ALL
        },
        ..SimConfig::default()
    };
    explore_or_panic(&cfg, 2_000_000, 500);
}

#[test]
fn the_documented_asymmetric_partition_window_is_found_without_strict_mode_lease() {
    let cfg = SimConfig {
        faults: Faults {
            asymmetric: true,
            ..Faults::ALL
        },
        ..SimConfig::default()
    };
    let o = assert_caught("asymmetric partition, default mode", &cfg, 500);
    assert!(
        o.report
            .violations
            .iter()
            .any(|v| v.starts_with("two leaders at once")),
        "{:?}",
        o.report.violations
    );
}

#[test]
fn replaying_a_seed_reproduces_the_run_exactly() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    for seed in [3, 96, 203, 351] {
        let (a, b) = (run(seed, &cfg), run(seed, &cfg));
        assert!(!a.trace.is_empty());
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.report.violations, b.report.violations);
        assert_eq!(a.events, b.events);
    }
}

#[test]
fn planted_bug_skipping_the_takeover_wait_is_caught() {
    let cfg = with_bugs(Bugs {
        skip_takeover_wait: true,
        ..Bugs::default()
    });
    assert_caught("skip the takeover wait", &cfg, 2_000);
}

#[test]
fn planted_bug_a_suspended_layer_leader_kept_as_leader_is_caught() {
    let cfg = with_bugs(Bugs {
        suspended_leader_kept: true,
        ..Bugs::default()
    });
    assert_caught("suspended layer leader kept", &cfg, 2_000);
}

#[test]
fn planted_bug_a_term_reused_after_a_regrant_is_caught() {
    let cfg = with_bugs(Bugs {
        no_generation_renewal: true,
        ..Bugs::default()
    });
    let o = assert_caught("no generation renewal", &cfg, 2_000);
    assert!(
        o.report
            .violations
            .iter()
            .any(|v| v.starts_with("term did not increase")),
        "{:?}",
        o.report.violations
    );
}

#[test]
fn planted_bug_publishing_leader_before_the_confirming_read_is_caught() {
    let cfg = with_bugs(Bugs {
        lead_before_mode_read: true,
        ..Bugs::default()
    });
    assert_caught("leader before the mode read", &cfg, 2_000);
}

#[test]
fn planted_bug_writing_the_mode_record_before_publishing_the_step_down_is_caught() {
    let cfg = with_bugs(Bugs {
        write_before_publish: true,
        ..Bugs::default()
    });
    let o = assert_caught("write before publish", &cfg, 2_000);
    assert!(
        o.report
            .violations
            .iter()
            .any(|v| v.contains("after a mode write")),
        "{:?}",
        o.report.violations
    );
}

/// Found by the simulation in the code before it (seed 203 in the first version of the
/// schedules): a participant cut off from the fallback store while the cluster failed over
/// later became primary leader under the old generation. Fixed: a new primary leadership
/// needs a confirmation of the mode as fresh as a fallback leader's.
#[test]
fn found_a_new_primary_leader_under_an_unconfirmed_old_mode_is_caught_and_fixed() {
    let old = with_bugs(Bugs {
        primary_grant_unconfirmed: true,
        ..Bugs::default()
    });
    let o = assert_caught("new primary leadership without confirmation", &old, 3_000);
    assert!(
        run(o.seed, &SimConfig::default()).ok(),
        "seed {} still fails with the fix",
        o.seed
    );
}

/// Found by the simulation and documented rather than fixed (seed 987 in the first version
/// of the schedules): in the default mode a primary handover while the mode record is
/// unreadable leads under the last generation seen; if that generation was renewed just
/// before the record became unreadable (after a wipe, or a resumed grant), the new term is
/// lower than an earlier grant's. Never an overlap (the layer's own guarantee holds); the
/// checker counts these apart and keeps judging every overlap. `strict_mode_lease` has none.
#[test]
fn a_primary_handover_on_an_unreadable_record_may_reuse_an_older_generation_and_is_counted() {
    let found = (0..5_000)
        .map(|s| run(s, &SimConfig::default()))
        .find(|o| o.report.stale_generation > 0)
        .expect("the simulation finds the documented stale-generation handover");
    assert!(found.ok(), "{}", found.describe());
    eprintln!("stale-generation handover: seed {}", found.seed);
    let strict = SimConfig {
        strict_mode_lease: true,
        ..SimConfig::default()
    };
    assert_eq!(run(found.seed, &strict).report.stale_generation, 0);
}

const MS: u64 = 1_000;

/// The first leadership through `layer_epoch` (1: primary, 2: fallback in the simulation)
/// granted at or after `after`, as (who, start).
fn first_grant(o: &Outcome, layer_epoch: u64, after: u64) -> Option<(usize, u64)> {
    o.leaderships
        .iter()
        .filter(|(_, t, s, _)| t.epoch() == layer_epoch && *s >= after)
        .map(|(w, _, s, _)| (*w, *s))
        .min_by_key(|&(_, s)| s)
}

/// The longest stretch without any leader inside `[from, to)`.
fn longest_leaderless(o: &Outcome, from: u64, to: u64) -> u64 {
    let mut spans: Vec<(u64, u64)> = o
        .leaderships
        .iter()
        .map(|(_, _, s, e)| (*s, e.unwrap_or(u64::MAX)))
        .filter(|&(s, e)| e > from && s < to)
        .collect();
    spans.sort_unstable();
    let (mut at, mut worst) = (from, 0);
    for (s, e) in spans {
        if s > at {
            worst = worst.max(s - at);
        }
        at = at.max(e);
    }
    worst.max(to.saturating_sub(at))
}

fn scripted(script: Vec<Scripted>) -> SimConfig {
    SimConfig {
        script: Some(script),
        ..SimConfig::default()
    }
}

fn seeds_for_scenarios() -> Vec<u64> {
    sim::seeds(7_000_000, 200)
}

/// Store delays a directed scenario allows: the simulated stores' rare tail is 70 ms per
/// hop, and a handover takes up to two (the compare-and-swap, the watch notification or a
/// client's reconnect notice).
const STORE_DELAYS: u64 = 150 * MS;

/// The primary store goes down for good at 1.5 s. The fallback-layer leader must act within
/// `failover_after` of that, plus what the simulated clients need to notice the loss (up to
/// a third of the session timeout), store delays and clock-rate drift (×1.05 on
/// `failover_after`; rates differ by up to ±4 %). Before the failover decision moved a
/// takeover delay ahead, the fallback leader acted after failover_after + the notice + up
/// to one check interval + G (600 + 1..100 + 0..100 + 230 ms): most seeds broke this bound.
#[test]
fn a_primary_outage_gets_a_fallback_leader_within_failover_after_across_clock_drift() {
    let start = 1_500 * MS;
    let cfg = scripted(vec![Scripted::Outage {
        store: 0,
        start,
        end: FAULT_PHASE,
    }]);
    let bound = FAILOVER_AFTER * 105 / 100 + SESSION_TIMEOUT / 3 + STORE_DELAYS;
    let mut worst = 0;
    for seed in seeds_for_scenarios() {
        let o = run(seed, &cfg);
        assert!(o.ok(), "{}", o.describe());
        let (_, at) = first_grant(&o, 2, start).expect("a fallback leader");
        let took = at - start;
        assert!(
            took <= bound,
            "seed {seed}: fallback leader {} ms after the primary outage; bound {} ms",
            took / MS,
            bound / MS
        );
        assert!(
            took >= FAILOVER_AFTER * 95 / 100,
            "seed {seed}: fallback leader after {} ms, before failover_after",
            took / MS
        );
        worst = worst.max(took);
    }
    eprintln!(
        "primary outage -> fallback leader: worst {} ms (failover_after {} ms, bound {} ms)",
        worst / MS,
        FAILOVER_AFTER / MS,
        bound / MS
    );
}

/// The primary store is down from 1 s to 2.5 s (the cluster fails over), then serves again:
/// a primary-layer leader within `failback_after` (×1.05 for drift) plus store delays.
/// Before, it took failback_after + up to one check interval + G (1200 + 100 + 230 ms).
#[test]
fn a_primary_back_gets_a_primary_leader_within_failback_after_across_clock_drift() {
    let back = 2_500 * MS;
    let cfg = scripted(vec![Scripted::Outage {
        store: 0,
        start: 1_000 * MS,
        end: back,
    }]);
    let bound = FAILBACK_AFTER * 105 / 100 + STORE_DELAYS;
    let mut worst = 0;
    for seed in seeds_for_scenarios() {
        let o = run(seed, &cfg);
        assert!(o.ok(), "{}", o.describe());
        assert!(o.failovers > 0, "seed {seed}: no failover");
        let (_, at) = first_grant(&o, 1, back).expect("a primary leader again");
        let took = at - back;
        assert!(
            took <= bound,
            "seed {seed}: primary leader {} ms after the primary is back; bound {} ms",
            took / MS,
            bound / MS
        );
        worst = worst.max(took);
    }
    eprintln!(
        "primary back -> primary leader: worst {} ms (failback_after {} ms, bound {} ms)",
        worst / MS,
        FAILBACK_AFTER / MS,
        bound / MS
    );
}

/// The fallback store goes down at 1.5 s, is wiped at 1.7 s and serves again (empty) at
/// 2 s, under a healthy primary leader: that leader keeps leading under its term while it
/// re-creates the record (no leaderless instant, one leadership across the whole outage),
/// and nobody else leads meanwhile. With the behaviour before it (planted: step down,
/// re-create, wait the takeover delay) the same scenario has a gap of about G.
#[test]
fn a_fallback_wipe_under_a_healthy_primary_leader_costs_no_leadership() {
    let script = vec![
        Scripted::Outage {
            store: 1,
            start: 1_500 * MS,
            end: 2_000 * MS,
        },
        Scripted::Wipe { at: 1_700 * MS },
    ];
    let cfg = scripted(script.clone());
    let old = SimConfig {
        bugs: Bugs {
            no_carry: true,
            ..Bugs::default()
        },
        ..scripted(script)
    };
    let (mut worst_old, mut grants) = (0, 0);
    for seed in seeds_for_scenarios() {
        let o = run(seed, &cfg);
        assert!(o.ok(), "{}", o.describe());
        let gap = longest_leaderless(&o, 1_000 * MS, 4_000 * MS);
        assert_eq!(gap, 0, "seed {seed}: {} ms without a leader", gap / MS);
        let spanning: Vec<_> = o
            .leaderships
            .iter()
            .filter(|(_, _, s, e)| *s < 1_000 * MS && e.is_none_or(|e| e >= 4_000 * MS))
            .collect();
        assert_eq!(spanning.len(), 1, "seed {seed}: {:?}", o.leaderships);
        grants += o.leaderships.len();
        let o = run(seed, &old);
        assert!(o.ok(), "{}", o.describe());
        worst_old = worst_old.max(longest_leaderless(&o, 1_000 * MS, 4_000 * MS));
    }
    eprintln!(
        "fallback wipe under a healthy primary leader: no gap (before: up to {} ms); {grants} grants in all",
        worst_old / MS
    );
    assert!(worst_old > 0, "the planted old behaviour shows a gap");
}

/// A wipe of the fallback store while it keeps serving (the leader read the record just
/// before: it cannot rule out a failover the wipe erased) still costs at most the
/// takeover delay plus store round trips — the documented remaining case.
#[test]
fn an_instant_fallback_wipe_under_a_primary_leader_costs_at_most_the_takeover_delay() {
    let cfg = scripted(vec![Scripted::Wipe { at: 1_700 * MS }]);
    let mut worst = 0;
    for seed in seeds_for_scenarios() {
        let o = run(seed, &cfg);
        assert!(o.ok(), "{}", o.describe());
        worst = worst.max(longest_leaderless(&o, 1_000 * MS, 4_000 * MS));
    }
    let g = 230 * MS; // takeover delay with X = 100 ms, T = 50 ms
    assert!(worst <= g + 150 * MS, "worst gap {} ms", worst / MS);
    eprintln!("instant fallback wipe: worst gap {} ms", worst / MS);
}
