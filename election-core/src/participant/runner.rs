//! The one loop that feeds a [`Machine`] and carries out its effects: every executor (the
//! ZooKeeper latch's, the etcd election's, the supervisor's) runs its machine through
//! [`feed`], so the order rules hold in one place.

use std::collections::VecDeque;
use std::time::Instant;

use super::Machine;

/// How an effect stands to the rule "stop leading before leaving": a status publication
/// is applied before any store effect emitted with it.
pub trait EffectKind {
    /// A status publication (a role or health change, `Leader` included).
    fn is_publication(&self) -> bool;
    /// A request to the store (a read, a write, a watch): carried out only after every
    /// publication emitted in the same batch.
    fn is_store(&self) -> bool;
}

/// What carries out a machine's effects: one per participant, holding its machine.
pub trait Executor {
    /// The machine it runs.
    type M: Machine;

    /// The machine.
    fn machine(&mut self) -> &mut Self::M;

    /// The executor's clock, read before each call of the machine.
    fn now(&self) -> Instant;

    /// Called before each call of the machine (e.g. to tell it the role someone else
    /// published for it).
    fn prepare(&mut self) {}

    /// Carry out one effect; an input returned is fed at once (e.g. a refused `Leader`
    /// publication, a slot granted on the spot), its effects queued after the others.
    fn execute(
        &mut self,
        effect: <Self::M as Machine>::Effect,
    ) -> Option<<Self::M as Machine>::Input>;
}

/// Feed `input` to the executor's machine and carry out the effects, in order, except that
/// within each batch the machine emits, every store effect is deferred until after the
/// batch's last publication (a machine that asked for a delete before publishing that it
/// stopped leading is corrected here, not trusted).
pub fn feed<X: Executor>(x: &mut X, input: <X::M as Machine>::Input)
where
    <X::M as Machine>::Effect: EffectKind,
{
    let mut queue = VecDeque::new();
    let mut batch = Vec::new();
    call(x, input, &mut batch, &mut queue);
    while let Some(effect) = queue.pop_front() {
        if let Some(next) = x.execute(effect) {
            call(x, next, &mut batch, &mut queue);
        }
    }
}

fn call<X: Executor>(
    x: &mut X,
    input: <X::M as Machine>::Input,
    batch: &mut Vec<<X::M as Machine>::Effect>,
    queue: &mut VecDeque<<X::M as Machine>::Effect>,
) where
    <X::M as Machine>::Effect: EffectKind,
{
    x.prepare();
    let now = x.now();
    x.machine().handle(now, input, batch);
    publications_first(batch);
    queue.extend(batch.drain(..));
}

/// Move every store effect that precedes the batch's last publication to just after it,
/// keeping the order of the store effects among themselves and of everything else.
pub fn publications_first<E: EffectKind>(batch: &mut Vec<E>) {
    let Some(last) = batch.iter().rposition(EffectKind::is_publication) else {
        return;
    };
    if !batch[..last].iter().any(EffectKind::is_store) {
        return;
    }
    let tail = batch.split_off(last + 1);
    let (store, rest): (Vec<E>, Vec<E>) = batch.drain(..).partition(EffectKind::is_store);
    batch.extend(rest);
    batch.extend(store);
    batch.extend(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum E {
        Publish(u8),
        Store(u8),
        Other(u8),
    }

    impl EffectKind for E {
        fn is_publication(&self) -> bool {
            matches!(self, E::Publish(_))
        }
        fn is_store(&self) -> bool {
            matches!(self, E::Store(_))
        }
    }

    #[test]
    fn a_store_effect_before_a_publication_is_moved_after_it() {
        let mut b = vec![
            E::Store(1),
            E::Other(2),
            E::Publish(3),
            E::Store(4),
            E::Other(5),
        ];
        publications_first(&mut b);
        assert_eq!(
            b,
            vec![
                E::Other(2),
                E::Publish(3),
                E::Store(1),
                E::Store(4),
                E::Other(5)
            ]
        );
    }

    #[test]
    fn a_batch_already_in_order_is_left_alone() {
        let order = vec![
            E::Other(1),
            E::Publish(2),
            E::Store(3),
            E::Other(4),
            E::Store(5),
        ];
        let mut b = order.clone();
        publications_first(&mut b);
        assert_eq!(b, order);
        let mut none = vec![E::Store(1), E::Other(2), E::Store(3)];
        publications_first(&mut none);
        assert_eq!(none, vec![E::Store(1), E::Other(2), E::Store(3)]);
    }

    #[test]
    fn store_effects_keep_their_order_among_themselves() {
        let mut b = vec![
            E::Store(1),
            E::Store(2),
            E::Publish(3),
            E::Store(4),
            E::Publish(5),
        ];
        publications_first(&mut b);
        assert_eq!(
            b,
            vec![
                E::Publish(3),
                E::Publish(5),
                E::Store(1),
                E::Store(2),
                E::Store(4)
            ]
        );
    }
}
