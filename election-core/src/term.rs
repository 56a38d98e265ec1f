//! [`Term`]: the fencing token handed out with every grant of leadership.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A fencing token: totally ordered, strictly increasing over the successive grants of one
/// election — also across a store wipe and across a supervisor failover.
///
/// A term has three parts compared in order:
///
/// * `generation` — set by the dual-layer supervisor: it increases on every failover and
///   failback, so every term granted after a layer change orders after every term before it.
///   Plain backends leave it at 0.
/// * `epoch` — survives store wipes. The ZooKeeper backend uses the creation time (ms) of
///   the latch path, the etcd backend the creation time recorded in its epoch key: both are
///   recreated after a wipe with a later server clock reading. The assumption is that the
///   store's clock does not step backwards across a wipe by more than the wipe took.
/// * `sequence` — a store fact that increases with every grant within one epoch
///   (ZooKeeper: the czxid of the leader's node; etcd: the create revision of its key).
///
/// Pass the term to whatever the leader writes to, and have that resource refuse writes
/// carrying a term lower than the highest it has seen. `Display` gives `generation.epoch.sequence`,
/// which [`FromStr`] parses back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term {
    generation: u64,
    epoch: u64,
    sequence: u64,
}

impl Term {
    /// A backend term: `epoch` and `sequence`, generation 0.
    pub const fn new(epoch: u64, sequence: u64) -> Self {
        Term {
            generation: 0,
            epoch,
            sequence,
        }
    }

    /// The same term placed in supervisor `generation`.
    pub const fn with_generation(self, generation: u64) -> Self {
        Term { generation, ..self }
    }

    /// The supervisor layer generation (0 for plain backends).
    pub const fn generation(&self) -> u64 {
        self.generation
    }

    /// The epoch that survives store wipes.
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The per-grant store fact within an epoch.
    pub const fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.generation, self.epoch, self.sequence)
    }
}

impl FromStr for Term {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            Error::invalid_config(format!(
                "term {s:?} is not of the form GENERATION.EPOCH.SEQUENCE (three unsigned integers, e.g. 0.1732000000000.42)"
            ))
        };
        let mut parts = s.split('.');
        let mut next = || -> Result<u64, Error> {
            parts
                .next()
                .ok_or_else(bad)?
                .parse::<u64>()
                .map_err(|_| bad())
        };
        let term = Term {
            generation: next()?,
            epoch: next()?,
            sequence: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_order_by_generation_then_epoch_then_sequence() {
        let a = Term::new(5, 100);
        assert!(a < Term::new(5, 101));
        assert!(
            Term::new(5, 999) < Term::new(6, 1),
            "a new epoch beats any sequence"
        );
        assert!(
            Term::new(9, 999).with_generation(1) < Term::new(1, 1).with_generation(2),
            "a new generation beats any epoch"
        );
    }

    #[test]
    fn term_display_round_trips_and_bad_text_is_refused() {
        let t = Term::new(1_732_000_000_000, 42).with_generation(3);
        assert_eq!(t.to_string(), "3.1732000000000.42");
        assert_eq!(t.to_string().parse::<Term>().unwrap(), t);
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "-1.2.3"] {
            let e = bad.parse::<Term>().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig, "{bad}");
        }
    }
}
