//! The mode record `{layer, generation}` and the primary leader's heartbeat: what they hold
//! and how they are written (plain text, parsed strictly).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::term::Term;

/// One of the two layers of a [`Supervisor`](super::Supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// The preferred election (e.g. ZooKeeper).
    Primary,
    /// The election used while the primary is unhealthy (e.g. etcd); it also holds the
    /// mode record.
    Fallback,
}

impl Layer {
    /// `primary` or `fallback`: the spelling used in the mode record.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Primary => "primary",
            Layer::Fallback => "fallback",
        }
    }

    /// The other layer.
    pub fn other(self) -> Layer {
        match self {
            Layer::Primary => Layer::Fallback,
            Layer::Fallback => Layer::Primary,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Layer::Primary => 0,
            Layer::Fallback => 1,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer together with the name the user gave it (e.g. `primary` named `zookeeper`), as
/// carried by [`SupervisorEvent`](super::SupervisorEvent)s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerRef {
    /// Which layer.
    pub layer: Layer,
    /// Its configured name ([`SupervisorBuilder::layer_names`](super::SupervisorBuilder::layer_names);
    /// defaults to `primary` and `fallback`).
    pub name: Arc<str>,
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if &*self.name == self.layer.as_str() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} ({})", self.layer, self.name)
        }
    }
}

/// The content of the mode record: which layer counts, and the generation of that decision.
///
/// Stored as UTF-8 text `LAYER/GENERATION`, e.g. `primary/1732000000000` or
/// `fallback/1732000000001`: `LAYER` is `primary` or `fallback`, `GENERATION` an unsigned
/// 64-bit decimal without sign, spaces or leading zeros. Anything else is refused by
/// [`Mode::decode`] with an error that says how to repair the record.
///
/// A record is created with generation = the Unix time in milliseconds (or one more than the
/// highest generation the creating node has seen, if that is larger), and every change
/// (failover, failback, re-creation after a wipe) increases it, so that supervisor terms
/// ([`Term::with_generation`]) of a later decision order after every earlier one — also across
/// a wipe of the fallback store, under the same clock assumption as [`Term`]'s epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode {
    /// The layer whose leader is the leader.
    pub layer: Layer,
    /// Increases with every change of the record.
    pub generation: u64,
}

impl Mode {
    /// A mode value.
    pub const fn new(layer: Layer, generation: u64) -> Self {
        Mode { layer, generation }
    }

    /// The stored form, `LAYER/GENERATION`.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parse the stored form strictly. Errors are [`ErrorKind::Backend`], not retryable,
    /// and say how to repair the record.
    pub fn decode(bytes: &[u8]) -> Result<Mode> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| bad_mode(&String::from_utf8_lossy(bytes), "it is not valid UTF-8"))?;
        text.parse()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.layer, self.generation)
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (layer, generation) = s
            .split_once('/')
            .ok_or_else(|| bad_mode(s, "there is no '/' between layer and generation"))?;
        let layer = match layer {
            "primary" => Layer::Primary,
            "fallback" => Layer::Fallback,
            other => {
                return Err(bad_mode(
                    s,
                    &format!("the layer {other:?} is neither \"primary\" nor \"fallback\""),
                ))
            }
        };
        let generation = strict_u64(generation).ok_or_else(|| {
            bad_mode(
                s,
                "the generation is not an unsigned decimal without leading zeros",
            )
        })?;
        Ok(Mode { layer, generation })
    }
}

fn bad_mode(raw: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "the supervisor mode record holds {raw:?}, which is not LAYER/GENERATION (e.g. \"primary/7\"): {why}. \
             Supervisors keep the last mode they saw until it is repaired: delete the record (the \
             supervisors re-create it with a fresh generation) or compare-and-swap it to \
             \"primary/N\" or \"fallback/N\" with N above every generation used so far"
        ),
    )
    .with_retryable(false)
}

/// Digits only, no sign, no leading zero (except "0"), fits in u64.
fn strict_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// What the leader of the primary layer writes into the heartbeat record, every check
/// interval, while it leads: `GENERATION/TERM/ID`, e.g. `1732000000000/1732000000000.1731999990000.42/node-a`.
/// Observers do not compare clocks: a heartbeat is "fresh" when they saw the record's version
/// change (with the current generation) recently by their own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) generation: u64,
    pub(crate) term: Term,
    pub(crate) id: String,
}

impl Heartbeat {
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{}/{}/{}", self.generation, self.term, self.id).into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Heartbeat> {
        let bad = || {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "the supervisor heartbeat record holds {:?}, which is not GENERATION/TERM/ID; \
                     it is ignored (the primary leader overwrites it)",
                    String::from_utf8_lossy(bytes)
                ),
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(3, '/');
        let generation = parts.next().and_then(strict_u64).ok_or_else(bad)?;
        let term = parts
            .next()
            .and_then(|t| t.parse::<Term>().ok())
            .ok_or_else(bad)?;
        let id = parts.next().filter(|id| !id.is_empty()).ok_or_else(bad)?;
        Ok(Heartbeat {
            generation,
            term,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips() {
        for m in [
            Mode::new(Layer::Primary, 0),
            Mode::new(Layer::Fallback, 7),
            Mode::new(Layer::Primary, u64::MAX),
        ] {
            assert_eq!(Mode::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(Mode::new(Layer::Primary, 7).to_string(), "primary/7");
    }

    #[test]
    fn mode_garbage_is_refused_with_a_repair_hint() {
        for bad in [
            "",
            "primary",
            "primary/",
            "/7",
            "Primary/7",
            "secondary/7",
            " primary/7",
            "primary/7 ",
            "primary/ 7",
            "primary/+7",
            "primary/-7",
            "primary/07",
            "primary/7/8",
            "primary/7.0",
            "primary/18446744073709551616",
            "fallback\n/7",
        ] {
            let e = bad.parse::<Mode>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Backend, "{bad:?}");
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("LAYER/GENERATION"), "{e}");
            assert!(e.to_string().contains("delete the record"), "{e}");
        }
        let e = Mode::decode(&[0xff, b'/', b'1']).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn heartbeat_round_trips_and_ids_may_hold_slashes() {
        let hb = Heartbeat {
            generation: 9,
            term: Term::new(3, 4).with_generation(9),
            id: "host/a:1".into(),
        };
        assert_eq!(Heartbeat::decode(&hb.encode()).unwrap(), hb);
        for bad in ["", "9", "9/1.2.3", "9/1.2.3/", "x/1.2.3/a", "9/1.2/a"] {
            assert!(Heartbeat::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
