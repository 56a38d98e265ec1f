//! Deterministic simulation of participation machines (feature `sim`).
//!
//! In the spirit of FoundationDB's simulator, TigerBeetle's VOPR and turmoil: a seed decides
//! every delay and every fault; virtual time only (no wall clock, no tokio, no threads); a
//! failing seed prints itself and a readable trace, and running it again reproduces the
//! same schedule exactly. The machines simulated are the production ones
//! ([`crate::participant::Machine`] implementations), not models of them.
//!
//! * [`Rng`]: a small seeded PRNG (SplitMix64).
//! * [`Queue`]: the event queue, ordered by (virtual time, insertion sequence).
//! * [`Timeline`]: the checker over the virtual timeline — at most one leader at any
//!   instant, terms strictly increasing, liveness once faults stop — with the documented
//!   fencing case (a participant paused while leading, which cannot know it was paused)
//!   counted apart and bounded.
//! * [`supervised`]: clusters of [`Supervisor`](crate::supervisor::Supervisor) machines over
//!   two simulated layer elections and a simulated mode-record store, with seeded faults.
//!
//! Environment: `SUCCESSION_SIM_SEEDS=N` runs N schedules per test instead of the CI
//! default; `SUCCESSION_SIM_SEED=S` replays one seed with its trace.

mod host;
mod outcome;
mod queue;
mod rng;
pub mod supervised;
mod timeline;

pub use host::{net_delay, next_wire, Host, Stepped};
pub use outcome::{assert_caught, explore, explore_or_panic, Outcome, Summary};
pub use queue::Queue;
pub use rng::Rng;
pub use timeline::{Timeline, TimelineReport};

/// Virtual time in microseconds since the start of a simulation.
pub type Vt = u64;

/// Format a virtual instant as seconds with millisecond precision.
pub fn fmt_vt(t: Vt) -> String {
    format!("{:>4}.{:03}s", t / 1_000_000, (t / 1000) % 1000)
}

/// The seeds to run: `SUCCESSION_SIM_SEED=S` gives just `S`; otherwise `base..base+n` with
/// `n` from `SUCCESSION_SIM_SEEDS` or `default_n`.
pub fn seeds(base: u64, default_n: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("SUCCESSION_SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("SUCCESSION_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default_n);
    (base..base + n).collect()
}
