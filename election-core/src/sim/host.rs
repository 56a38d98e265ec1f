//! A simulated process running one participant's machine: its drifting clock, its inbox
//! and its executor's pace. Every backend's simulated world is built from these.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Rng, Vt};
use crate::participant::{virtual_origin, Machine};

const MS: Vt = 1_000;

/// One simulated process's executor state.
#[derive(Debug)]
pub struct Host<I> {
    /// Its clock's rate against virtual time (drift within ±4 %).
    pub rate: f64,
    /// Inputs not yet fed to the machine.
    pub inbox: VecDeque<I>,
    /// The executor is busy carrying out effects until then: the next input waits.
    pub busy_until: Vt,
    /// The latest timer asked for (an older one that fires is stale).
    pub timer_token: u64,
}

/// What one step of a [`Host`] produced, for the world to schedule.
#[derive(Debug)]
pub struct Stepped<E> {
    /// Each effect with the virtual instant the executor carries it out.
    pub effects: Vec<(Vt, E)>,
    /// The machine's timer: when, and its token.
    pub timer: Option<(Vt, u64)>,
    /// When to run the inbox again (inputs are waiting).
    pub again: Option<Vt>,
}

impl<I> Host<I> {
    /// A process whose clock rate is drawn from `rng`.
    pub fn new(rng: &mut Rng) -> Self {
        let drift = rng.range(0, 81) as f64 / 1000.0 - 0.04;
        Host {
            rate: 1.0 + drift,
            inbox: VecDeque::new(),
            busy_until: 0,
            timer_token: 0,
        }
    }

    /// A duration `d` measured by this process's clock, in virtual time.
    pub fn local(&self, d: Vt) -> Vt {
        (d as f64 / self.rate) as Vt
    }

    /// What this process's clock reads at virtual instant `vt`.
    pub fn instant(&self, vt: Vt) -> Instant {
        let local = (vt as f64 * self.rate) as u64;
        virtual_origin() + Duration::from_micros(local)
    }

    /// The virtual instant at which this process's clock reads `at`.
    pub fn vt(&self, at: Instant) -> Vt {
        let local = at.saturating_duration_since(virtual_origin()).as_micros() as f64;
        (local / self.rate).ceil() as Vt
    }

    /// Feed `input` to `m` at virtual instant `now`: the executor carries out the effects
    /// in order, each a little after the last (occasionally much later: a slow executor, a
    /// busy runtime), and is busy until the last; the machine's timer is renewed.
    pub fn step<M: Machine<Input = I>>(
        &mut self,
        m: &mut M,
        now: Vt,
        input: I,
        rng: &mut Rng,
    ) -> Stepped<M::Effect> {
        let mut fx = Vec::new();
        m.handle(self.instant(now), input, &mut fx);
        let mut at = now;
        let effects = fx
            .into_iter()
            .map(|e| {
                at += if rng.chance(30) {
                    rng.range(MS, 25 * MS)
                } else {
                    rng.range(0, 200)
                };
                (at, e)
            })
            .collect();
        self.busy_until = at + 1;
        self.timer_token += 1;
        let timer = m
            .next_deadline()
            .map(|d| (self.vt(d).max(now), self.timer_token));
        let again = (!self.inbox.is_empty()).then_some(self.busy_until);
        Stepped {
            effects,
            timer,
            again,
        }
    }
}

/// A network delay: mostly well under a millisecond or two, sometimes tens of them.
pub fn net_delay(rng: &mut Rng) -> Vt {
    if rng.chance(20) {
        rng.range(5 * MS, 40 * MS)
    } else {
        rng.range(100, 3 * MS)
    }
}

/// A connection id never used before in this thread's simulations (messages in flight on
/// an earlier connection, of this process or of one it replaced, are lost).
pub fn next_wire() -> u64 {
    thread_local!(static WIRE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    WIRE.with(|w| {
        w.set(w.get() + 1);
        w.get()
    })
}
