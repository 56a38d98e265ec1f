//! A participant's share of its session's rounds in flight.

use tokio::sync::Semaphore;

/// One participant's slot among its session's rounds in flight (a semaphore of the
/// session: many elections on one session start their rounds a bounded number at a
/// time). Asked for when the machine starts a round, held while it is in one, given back
/// when it leaves it. Permits are taken with `forget` and given back with `add_permits`,
/// so the slot is a flag, not a guard kept in every participant.
#[derive(Debug, Default)]
pub struct RoundSlot {
    held: bool,
    waiting: bool,
}

impl RoundSlot {
    /// The machine asked for a slot: true when it is held now (feed the machine its
    /// "paced" input at once); false when every slot is taken ([`wait`](Self::wait) then
    /// resolves once one is free).
    pub fn ask(&mut self, rounds: &Semaphore) -> bool {
        if !self.held {
            if let Ok(p) = rounds.try_acquire() {
                p.forget();
                self.held = true;
            }
        }
        self.waiting = !self.held;
        self.held
    }

    /// Resolves once a slot asked for is held (never, when none is asked for).
    pub async fn wait(&self, rounds: &Semaphore) {
        if self.waiting {
            // The session's semaphore is never closed: this waits for a permit.
            if let Ok(p) = rounds.acquire().await {
                p.forget();
                return;
            }
        }
        std::future::pending::<()>().await
    }

    /// Whether a slot was asked for and is not held yet (an executor that polls instead of
    /// awaiting [`wait`](Self::wait) acquires a permit itself, then calls
    /// [`granted`](Self::granted)).
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// [`wait`](Self::wait) resolved: the slot is held.
    pub fn granted(&mut self) {
        self.held = true;
        self.waiting = false;
    }

    /// After the machine's effects: a slot is kept only while the machine is in a round.
    pub fn settle(&mut self, in_round: bool, rounds: &Semaphore) {
        if !in_round {
            self.release(rounds);
            self.waiting = false;
        }
    }

    /// Give the slot back (when the participant ends, too).
    pub fn release(&mut self, rounds: &Semaphore) {
        if std::mem::take(&mut self.held) {
            rounds.add_permits(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_is_held_during_a_round_and_given_back_after_it() {
        let rounds = Semaphore::new(1);
        let mut a = RoundSlot::default();
        let mut b = RoundSlot::default();
        assert!(a.ask(&rounds));
        assert!(!b.ask(&rounds), "the only slot is taken");
        a.settle(true, &rounds);
        assert_eq!(rounds.available_permits(), 0, "held while in a round");
        a.settle(false, &rounds);
        tokio::time::timeout(std::time::Duration::from_secs(5), b.wait(&rounds))
            .await
            .expect("the slot given back goes to the waiting participant");
        b.granted();
        b.release(&rounds);
        assert_eq!(rounds.available_permits(), 1);
    }
}
