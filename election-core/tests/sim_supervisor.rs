//! Deterministic simulation of supervised clusters: the production supervisor machine
//! through thousands of seeded fault schedules (see `succession_core::sim`).
//!
//! `SUCCESSION_SIM_SEEDS=N` runs N schedules per test; `SUCCESSION_SIM_SEED=S` replays one.

use succession_core::sim::{self, supervised::*};

fn explore_or_panic(cfg: &SimConfig, base: u64, n: u64) -> Summary {
    let seeds = sim::seeds(base, n);
    match explore(cfg, &seeds) {
        Ok(s) => s,
        Err(report) => panic!("{report}"),
    }
}

#[test]
fn smoke() {
    let s = explore_or_panic(&SimConfig::default(), 0, 200);
    eprintln!("{s:?}");
}
