//! Where our node stands in the latch queue, and what a round does about it: a pure
//! decision (no I/O, no clock), taken by the round once it has read the queue.

use crate::names::Child;

/// At most this many nodes before our predecessor are asserted gone by the claim; with more,
/// the successor reads the queue first.
pub(crate) const MAX_AHEAD: usize = 8;

/// What a round does once it knows the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Our node is not in the queue (deleted, or never ours): stop leading or following
    /// BEFORE the repair, so that no grant is carried over to the node the next round
    /// creates (a new node that sorts first must claim afresh).
    Lost,
    /// First, and leading since a claim that no demotion has ended: the same grant goes on.
    StillLeading,
    /// First, not leading: claim.
    Claim,
    /// Not first: watch `pred`.
    Follow {
        /// Our predecessor's name.
        pred: String,
        /// The first node's name when it is not our predecessor (its data names the
        /// leader; with `None`, the predecessor's data does).
        leader: Option<String>,
        /// The nodes before our predecessor, which a claim on the predecessor's deletion
        /// asserts are gone.
        ahead: Vec<String>,
        /// Whether the predecessor's deletion makes us claim at once (asserting `ahead` gone)
        /// rather than read the queue again.
        claim_next: bool,
    },
}

/// Where `ours` stands among `kids` (the latch nodes in election order, see
/// [`crate::names::sorted`]). `leading`: we hold a grant that no demotion has ended.
/// `assert_ahead`: the server lets a claim assert that the nodes ahead are gone.
pub(crate) fn standing(kids: &[Child], ours: &str, leading: bool, assert_ahead: bool) -> Standing {
    let Some(pos) = kids.iter().position(|k| k.name == ours) else {
        return Standing::Lost;
    };
    if pos == 0 {
        return if leading {
            Standing::StillLeading
        } else {
            Standing::Claim
        };
    }
    let ahead: Vec<String> = kids[..pos - 1].iter().map(|k| k.name.clone()).collect();
    let claim_next = pos == 1 || (assert_ahead && ahead.len() <= MAX_AHEAD);
    Standing::Follow {
        pred: kids[pos - 1].name.clone(),
        leader: (pos > 1).then(|| kids[0].name.clone()),
        ahead,
        claim_next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::sorted;

    fn queue(n: usize) -> Vec<Child> {
        sorted(
            (0..n)
                .map(|i| format!("_c_u{i}-latch-{i:010}"))
                .chain(["foreign".to_string()])
                .collect(),
        )
    }

    #[test]
    fn a_node_missing_from_the_queue_is_lost_even_for_a_leader() {
        let kids = queue(3);
        for leading in [true, false] {
            assert_eq!(
                standing(&kids, "_c_gone-latch-0000000007", leading, true),
                Standing::Lost
            );
        }
        assert_eq!(
            standing(&[], "_c_u0-latch-0000000000", true, true),
            Standing::Lost
        );
    }

    #[test]
    fn first_continues_a_grant_or_claims() {
        let kids = queue(3);
        let first = &kids[0].name;
        assert_eq!(standing(&kids, first, true, true), Standing::StillLeading);
        assert_eq!(standing(&kids, first, false, true), Standing::Claim);
    }

    #[test]
    fn second_watches_the_first_and_claims_on_its_deletion() {
        let kids = queue(3);
        for assert_ahead in [true, false] {
            assert_eq!(
                standing(&kids, &kids[1].name, false, assert_ahead),
                Standing::Follow {
                    pred: kids[0].name.clone(),
                    leader: None,
                    ahead: vec![],
                    claim_next: true,
                }
            );
        }
    }

    #[test]
    fn a_leader_that_is_no_longer_first_follows() {
        let kids = queue(3);
        let s = standing(&kids, &kids[2].name, true, true);
        assert_eq!(
            s,
            Standing::Follow {
                pred: kids[1].name.clone(),
                leader: Some(kids[0].name.clone()),
                ahead: vec![kids[0].name.clone()],
                claim_next: true,
            }
        );
    }

    #[test]
    fn claim_next_needs_the_assertion_and_at_most_max_ahead_nodes_ahead() {
        let kids = queue(MAX_AHEAD + 3);
        let at = |i: usize, assert_ahead: bool| match standing(
            &kids,
            &kids[i].name,
            false,
            assert_ahead,
        ) {
            Standing::Follow {
                claim_next, ahead, ..
            } => (claim_next, ahead.len()),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(MAX_AHEAD + 1, true), (true, MAX_AHEAD));
        assert_eq!(at(MAX_AHEAD + 2, true), (false, MAX_AHEAD + 1));
        assert_eq!(at(2, false), (false, 1));
    }
}
