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
