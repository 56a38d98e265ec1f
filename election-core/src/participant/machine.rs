//! The sans-IO half of a participant: a [`Machine`] decides, an executor does.
//!
//! A machine holds all the decision state of one participant and performs no I/O: it reads
//! no clock (time comes in as `now`), spawns nothing and touches no store client. Its
//! executor (a tokio task in production, the deterministic simulator in tests) feeds it
//! inputs — store answers, watch events, connection changes, commands, timer expiry — and
//! carries out the effects it returns, in order. Modelled on quinn-proto's `Connection`
//! (`handle_*` with `now`, `poll_timeout`) and rustls's `ConnectionCommon`.
//!
//! Rules every executor follows:
//! * effects are executed in the order the machine emitted them; a machine emits a status
//!   publication before any store request that depends on it ("stop leading before
//!   leaving" lives in the machine, and the executor must not reorder);
//! * when `now` reaches [`Machine::next_deadline`], the executor calls `handle` with the
//!   machine's timer input (a decision fires at its deadline, not at a poll tick).

use std::time::Instant;

/// A pure decision machine: `handle(now, input)` appends effects; `next_deadline` says when
/// it wants to be called again even if nothing happens.
pub trait Machine {
    /// What the executor reports (store answers, status changes, commands, timer expiry).
    type Input;
    /// What the machine asks for (publications, store requests, events).
    type Effect;

    /// Feed one input observed at `now` (the executor's monotonic clock) and append the
    /// effects to carry out, in order, to `effects`.
    fn handle(&mut self, now: Instant, input: Self::Input, effects: &mut Vec<Self::Effect>);

    /// The instant at which the machine wants its timer input, if any.
    fn next_deadline(&self) -> Option<Instant>;
}

/// The origin of virtual time for simulations and machine tests: one wall-clock read per
/// process, used only as an opaque base (`std::time::Instant` has no other constructor);
/// only differences from it ever matter, so runs stay deterministic. Machines never call it.
pub fn virtual_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// SplitMix64's step: a well-mixed 64-bit value from `x`. Machines draw their jitter (and
/// ZooKeeper's protected-name uuids) from a seed with it, so that a seeded simulation
/// replays them exactly; the simulation's own generator is the same sequence.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
