//! [`SupervisorEvent`]s and how they reach callbacks and subscribers.
//!
//! The supervisor's state machine emits events in the order it makes its observations and
//! decisions, into two non-blocking sinks:
//!
//! * an unbounded channel drained by one callback task (spawned at build, carrying the
//!   builder's tracing span): callbacks run there, one event at a time, in order, none
//!   dropped. A slow callback delays only the callbacks after it, never the supervisor;
//!   a callback that must block or do I/O should hand the work to `spawn_blocking` or a
//!   task of its own. A panicking callback is logged and skipped.
//! * a `tokio::sync::broadcast` channel ([`Supervisor::events`](super::Supervisor::events)):
//!   each receiver sees every event sent after it subscribed, in order; a receiver that
//!   falls behind by more than the capacity gets `RecvError::Lagged` (broadcast semantics).

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::mode::LayerRef;
use crate::status::HealthLevel;
use crate::term::Term;

/// Something the supervisor observed or did. Each carries what a JSON-lines printer needs
/// (layer names, generation, reason); [`name`](SupervisorEvent::name) gives a stable kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A layer's health level changed (as seen by this participant).
    LayerHealth {
        /// The layer.
        layer: LayerRef,
        /// Its new level.
        level: HealthLevel,
        /// The layer's reason.
        reason: Arc<str>,
    },
    /// The supervisor's own health level changed (see [`Supervisor`](super::Supervisor) for
    /// how it summarizes both layers).
    Health {
        /// The new level.
        level: HealthLevel,
        /// Why.
        reason: Arc<str>,
    },
    /// This participant learned the mode for the first time, or the mode record got a new
    /// generation without a layer change (re-created after a wipe, repaired).
    Mode {
        /// The layer that counts.
        layer: LayerRef,
        /// The record's generation.
        generation: u64,
        /// How it came about.
        reason: Arc<str>,
        /// Whether this participant wrote the record.
        initiated_here: bool,
    },
    /// The mode moved from the primary to the fallback layer (seen by this participant).
    Failover {
        /// The layer left (the primary).
        from: LayerRef,
        /// The layer now counting (the fallback).
        to: LayerRef,
        /// The new generation.
        generation: u64,
        /// The deciding policy's reason when initiated here; otherwise what was observed.
        reason: Arc<str>,
        /// Whether this participant made the change (won the compare-and-swap).
        initiated_here: bool,
    },
    /// The mode moved from the fallback back to the primary layer (seen by this participant).
    Failback {
        /// The layer left (the fallback).
        from: LayerRef,
        /// The layer now counting (the primary).
        to: LayerRef,
        /// The new generation.
        generation: u64,
        /// The deciding policy's reason when initiated here; otherwise what was observed.
        reason: Arc<str>,
        /// Whether this participant made the change.
        initiated_here: bool,
    },
    /// This participant started leading (published `Leader`).
    LeadershipGained {
        /// The layer it leads through.
        layer: LayerRef,
        /// The supervisor term (layer term with the mode generation).
        term: Term,
    },
    /// This participant stopped leading (published a non-leader status).
    LeadershipLost {
        /// The layer it led through.
        layer: LayerRef,
        /// The term it held.
        term: Term,
        /// Why (the new status reason).
        reason: Arc<str>,
    },
}

impl SupervisorEvent {
    /// Whether this is a [`Failover`](SupervisorEvent::Failover).
    pub fn is_failover(&self) -> bool {
        matches!(self, SupervisorEvent::Failover { .. })
    }

    /// Whether this is a [`Failback`](SupervisorEvent::Failback).
    pub fn is_failback(&self) -> bool {
        matches!(self, SupervisorEvent::Failback { .. })
    }

    /// Whether the mode changed or was learned: failover, failback or mode.
    pub fn is_mode_change(&self) -> bool {
        matches!(
            self,
            SupervisorEvent::Failover { .. }
                | SupervisorEvent::Failback { .. }
                | SupervisorEvent::Mode { .. }
        )
    }

    /// Whether this participant gained or lost leadership.
    pub fn is_leadership_change(&self) -> bool {
        matches!(
            self,
            SupervisorEvent::LeadershipGained { .. } | SupervisorEvent::LeadershipLost { .. }
        )
    }

    /// For a mode change: whether this participant made it (won the compare-and-swap).
    pub fn initiated_here(&self) -> bool {
        match self {
            SupervisorEvent::Failover { initiated_here, .. }
            | SupervisorEvent::Failback { initiated_here, .. }
            | SupervisorEvent::Mode { initiated_here, .. } => *initiated_here,
            _ => false,
        }
    }

    /// A short stable kind: `layer_health`, `health`, `mode`, `failover`, `failback`,
    /// `leadership_gained`, `leadership_lost`.
    pub fn name(&self) -> &'static str {
        match self {
            SupervisorEvent::LayerHealth { .. } => "layer_health",
            SupervisorEvent::Health { .. } => "health",
            SupervisorEvent::Mode { .. } => "mode",
            SupervisorEvent::Failover { .. } => "failover",
            SupervisorEvent::Failback { .. } => "failback",
            SupervisorEvent::LeadershipGained { .. } => "leadership_gained",
            SupervisorEvent::LeadershipLost { .. } => "leadership_lost",
        }
    }
}

impl fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorEvent::LayerHealth {
                layer,
                level,
                reason,
            } => {
                write!(f, "layer {layer} {level}: {reason}")
            }
            SupervisorEvent::Health { level, reason } => write!(f, "supervisor {level}: {reason}"),
            SupervisorEvent::Mode {
                layer,
                generation,
                reason,
                ..
            } => {
                write!(f, "mode {}/{generation} ({layer}): {reason}", layer.layer)
            }
            SupervisorEvent::Failover {
                from,
                to,
                generation,
                reason,
                initiated_here,
            } => write!(
                f,
                "failover {from} -> {to}, generation {generation}{}: {reason}",
                if *initiated_here {
                    " (initiated here)"
                } else {
                    ""
                }
            ),
            SupervisorEvent::Failback {
                from,
                to,
                generation,
                reason,
                initiated_here,
            } => write!(
                f,
                "failback {from} -> {to}, generation {generation}{}: {reason}",
                if *initiated_here {
                    " (initiated here)"
                } else {
                    ""
                }
            ),
            SupervisorEvent::LeadershipGained { layer, term } => {
                write!(f, "leading through {layer}, term {term}")
            }
            SupervisorEvent::LeadershipLost {
                layer,
                term,
                reason,
            } => {
                write!(f, "stopped leading through {layer} (term {term}): {reason}")
            }
        }
    }
}

/// Which events a callback wants.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Filter {
    All,
    LayerHealth,
    Failover,
    Failback,
    Leadership,
}

impl Filter {
    fn accepts(self, e: &SupervisorEvent) -> bool {
        match self {
            Filter::All => true,
            Filter::LayerHealth => matches!(e, SupervisorEvent::LayerHealth { .. }),
            Filter::Failover => matches!(e, SupervisorEvent::Failover { .. }),
            Filter::Failback => matches!(e, SupervisorEvent::Failback { .. }),
            Filter::Leadership => matches!(
                e,
                SupervisorEvent::LeadershipGained { .. } | SupervisorEvent::LeadershipLost { .. }
            ),
        }
    }
}

pub(crate) type Callback = Arc<dyn Fn(&SupervisorEvent) + Send + Sync + 'static>;

/// Spawn the callback task; returns its sender (None when there are no callbacks).
pub(crate) fn spawn_callbacks(
    callbacks: Vec<(Filter, Callback)>,
    id: String,
) -> Option<mpsc::UnboundedSender<SupervisorEvent>> {
    use tracing::Instrument;
    if callbacks.is_empty() {
        return None;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<SupervisorEvent>();
    let task = async move {
        while let Some(event) = rx.recv().await {
            for (filter, cb) in &callbacks {
                if !filter.accepts(&event) {
                    continue;
                }
                let run = std::panic::AssertUnwindSafe(|| cb(&event));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(participant = %id, event = event.name(), "a supervisor callback panicked; skipped");
                }
            }
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    Some(tx)
}
