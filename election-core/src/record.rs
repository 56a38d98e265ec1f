//! [`CasRecord`]: a small versioned record changed only by compare-and-swap. The dual-layer
//! supervisor keeps its mode record `{layer, generation}` in one, in the fallback store.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;

/// A record's value and the store version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The store's version of this value (etcd: mod revision); changes on every write.
    pub version: u64,
}

/// The outcome of [`CasRecord::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new version.
    Swapped(u64),
    /// Someone else wrote first; what the record holds now (None: absent).
    Conflict(Option<Versioned>),
}

/// A versioned record in a store, written only by compare-and-swap.
#[async_trait]
pub trait CasRecord: Send + Sync + fmt::Debug + 'static {
    /// The current value, or None when the record does not exist.
    async fn read(&self) -> Result<Option<Versioned>>;

    /// Write `value` if the record is still at `expected` (None: the record must not exist).
    async fn compare_and_swap(&self, expected: Option<u64>, value: Vec<u8>) -> Result<CasOutcome>;

    /// Resolves with the record as soon as its version differs from `seen` (at once if it
    /// already does). Callers bound the wait with a timeout.
    async fn changed(&self, seen: Option<u64>) -> Result<Option<Versioned>>;
}

#[allow(dead_code)]
fn _assert_object_safe(_: Box<dyn CasRecord>) {}
