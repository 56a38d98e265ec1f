//! A participant's share of its session's rounds in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A permit being acquired by [`RoundSlot::poll_wait`].
type Acquiring =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

/// One participant's slot among its session's rounds in flight (a semaphore of the
/// session: many elections on one session start their rounds a bounded number at a
/// time). Asked for when the machine starts a round, held while it is in one, given back
/// when it leaves it. Permits are taken with `forget` and given back with `add_permits`,
/// so the slot is a flag, not a guard kept in every participant.
#[derive(Default)]
pub struct RoundSlot {
    held: bool,
    waiting: bool,
    /// [`poll_wait`](Self::poll_wait)'s acquisition, only while it waits (it keeps its
    /// place in the semaphore's queue between polls).
    acquiring: Option<Acquiring>,
}

impl std::fmt::Debug for RoundSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundSlot")
            .field("held", &self.held)
            .field("waiting", &self.waiting)
            .finish()
    }
}

impl RoundSlot {
    /// The machine asked for a slot: true when it is held now (feed the machine its
    /// "paced" input at once); false when every slot is taken
    /// ([`poll_wait`](Self::poll_wait) then resolves once one is free).
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

    /// Ready once a slot asked for is held (never, when none is asked for); the slot is
    /// then held. The acquisition keeps its place in the semaphore's queue between polls.
    pub fn poll_wait(&mut self, rounds: &Arc<Semaphore>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.waiting {
            self.acquiring = None;
            return Poll::Pending;
        }
        let f = self
            .acquiring
            .get_or_insert_with(|| Box::pin(rounds.clone().acquire_owned()));
        match f.as_mut().poll(cx) {
            Poll::Ready(Ok(p)) => {
                p.forget();
                self.acquiring = None;
                self.granted();
                Poll::Ready(())
            }
            // The session's semaphore is never closed.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }

    /// A slot waited for is held.
    fn granted(&mut self) {
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
        let rounds = Arc::new(Semaphore::new(1));
        let mut a = RoundSlot::default();
        let mut b = RoundSlot::default();
        assert!(a.ask(&rounds));
        assert!(!b.ask(&rounds), "the only slot is taken");
        a.settle(true, &rounds);
        assert_eq!(rounds.available_permits(), 0, "held while in a round");
        a.settle(false, &rounds);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures::future::poll_fn(|cx| b.poll_wait(&rounds, cx)),
        )
        .await
        .expect("the slot given back goes to the waiting participant");
        b.release(&rounds);
        assert_eq!(rounds.available_permits(), 1);
    }

    #[tokio::test]
    async fn poll_wait_holds_the_slot_once_given_back_and_nothing_while_not_asked() {
        let rounds = Arc::new(Semaphore::new(1));
        let mut a = RoundSlot::default();
        let mut b = RoundSlot::default();
        let mut idle = RoundSlot::default();
        assert!(a.ask(&rounds));
        assert!(!b.ask(&rounds));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            b.poll_wait(&rounds, &mut cx).is_pending(),
            "the only slot is taken"
        );
        assert!(
            idle.poll_wait(&rounds, &mut cx).is_pending(),
            "nothing asked for"
        );
        a.settle(false, &rounds);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures::future::poll_fn(|cx| b.poll_wait(&rounds, cx)),
        )
        .await
        .expect("the slot given back goes to the waiting participant");
        assert_eq!(rounds.available_permits(), 0, "held by b");
        b.release(&rounds);
        assert_eq!(rounds.available_permits(), 1);
    }
}
