//! Deterministic simulation of the ZooKeeper latch machine: seeded fault schedules over a
//! simulated ZooKeeper, judged by the timeline checker and a check of the store at the end
//! (see `succession_zk::sim`). `SUCCESSION_SIM_SEEDS=N` runs N schedules per test;
//! `SUCCESSION_SIM_SEED=S` replays one with its trace.
#![cfg(feature = "sim")]

use succession_core::sim;
use succession_zk::machine::Bugs;
use succession_zk::sim::{run, Faults, Outcome, Policy, SimConfig, Summary};

fn explore_or_panic(cfg: &SimConfig, base: u64, n: u64) -> Summary {
    sim::explore_or_panic(base, n, |seed, trace| {
        let mut c = cfg.clone();
        c.trace |= trace;
        run(seed, &c)
    })
}

fn with_bugs(bugs: Bugs) -> SimConfig {
    SimConfig {
        bugs,
        ..SimConfig::default()
    }
}

/// A planted bug must be caught within `n` schedules, as a violation naming one of `what`.
fn assert_caught(cfg: &SimConfig, n: u64, what: &[&str]) -> Outcome {
    sim::assert_caught(9_000_000, n, what, |seed| run(seed, cfg))
}

fn only(f: impl FnOnce(&mut Faults)) -> SimConfig {
    let mut faults = Faults::none();
    f(&mut faults);
    SimConfig {
        faults,
        fault_gap: 1_500_000,
        ..SimConfig::default()
    }
}

#[test]
fn standard_policy_keeps_one_leader_and_increasing_terms_and_elects_after_faults_5000_schedules() {
    let s = explore_or_panic(&SimConfig::default(), 1_000_000, 5_000);
    assert!(
        s.grants > s.runs * 3,
        "the schedules elected leaders: {s:?}"
    );
    assert!(
        s.fenced > 0,
        "the fencing case occurred and was counted: {s:?}"
    );
}

#[test]
fn session_policy_keeps_one_leader_and_increasing_terms_and_elects_after_faults_5000_schedules() {
    let cfg = SimConfig {
        policy: Policy::Session,
        ..SimConfig::default()
    };
    let s = explore_or_panic(&cfg, 2_000_000, 5_000);
    assert!(
        s.grants > s.runs * 3,
        "the schedules elected leaders: {s:?}"
    );
}

#[test]
fn replaying_a_seed_reproduces_the_run_exactly() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    let a = run(7, &cfg);
    let b = run(7, &cfg);
    assert!(a.trace.len() > 100, "a trace was kept");
    assert_eq!(a.trace, b.trace);
    assert_ne!(
        a.trace,
        run(8, &cfg).trace,
        "another seed, another schedule"
    );
}

// ---- each real-server chaos scenario, alone, as a deterministic machine test -------------

#[test]
fn wipes_alone_repair_the_path_and_elect_again_500_schedules() {
    explore_or_panic(&only(|f| f.wipes = true), 3_000_000, 500);
}

#[test]
fn path_deletes_alone_repair_the_path_and_elect_again_500_schedules() {
    explore_or_panic(&only(|f| f.path_deletes = true), 3_100_000, 500);
}

#[test]
fn own_node_deletes_alone_repair_the_node_and_elect_again_500_schedules() {
    explore_or_panic(&only(|f| f.node_deletes = true), 3_200_000, 500);
}

#[test]
fn refused_writes_alone_leave_with_the_error_and_rejoin_500_schedules() {
    explore_or_panic(&only(|f| f.auth_refused = true), 3_300_000, 500);
}

#[test]
fn closes_and_resigns_during_repairs_leave_nothing_behind_500_schedules() {
    explore_or_panic(
        &only(|f| {
            f.churn = true;
            f.path_deletes = true;
            f.outages = true;
        }),
        3_400_000,
        500,
    );
}

#[test]
fn partitions_and_expiry_while_suspended_elect_one_leader_500_schedules() {
    explore_or_panic(
        &only(|f| {
            f.partitions = true;
            f.pauses = true;
        }),
        3_500_000,
        500,
    );
}

// ---- planted bugs: the simulation catches each ---------------------------------------------

#[test]
fn planted_bug_publishing_leader_before_the_claim_write_is_caught() {
    assert_caught(
        &with_bugs(Bugs {
            lead_before_claim: true,
            ..Bugs::default()
        }),
        2_000,
        // Before the write there is no term to publish: a guessed one breaks either rule.
        &["two leaders at once", "term did not increase"],
    );
}

#[test]
fn planted_bug_a_suspended_leader_that_keeps_leading_is_caught() {
    assert_caught(
        &with_bugs(Bugs {
            suspended_leader_kept: true,
            ..Bugs::default()
        }),
        2_000,
        &["two leaders at once"],
    );
}

#[test]
fn planted_bug_a_term_reused_after_a_regrant_is_caught() {
    assert_caught(
        &with_bugs(Bugs {
            reuse_term: true,
            ..Bugs::default()
        }),
        2_000,
        &["term did not increase"],
    );
}

#[test]
fn planted_bug_deleting_the_node_before_publishing_the_step_down_is_caught() {
    assert_caught(
        &with_bugs(Bugs {
            delete_before_publish: true,
            ..Bugs::default()
        }),
        2_000,
        &["two leaders at once"],
    );
}

#[test]
fn planted_bug_claiming_without_asserting_the_nodes_ahead_gone_is_caught() {
    assert_caught(
        &with_bugs(Bugs {
            skip_ahead_assertion: true,
            ..Bugs::default()
        }),
        2_000,
        &["two leaders at once"],
    );
}
