//! What the etcd election machine asks of etcd and what it gets back: plain data, no client.
//!
//! Each [`Op`] is one request (a txn) of the real election. Its executor maps it onto
//! etcd-client; the simulation onto [`crate::sim::SimEtcd`]. Watches are separate: the
//! machine asks for a watcher with [`Effect::Watch`](super::Effect::Watch) and hears of it
//! through [`WatchNote`]s, in the order etcd sent them on the session's watch stream (the
//! acknowledgements of one stream's creates come in request order). Answers to requests
//! and watch notes travel on different streams: nothing orders one against the other.

/// The id the machine gives a request or a watcher; its answer (or notes) carry it.
pub type ReqId = u64;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The epoch record: `if version(key) == 0 { put(key, value) } else { get(key) }`, with
    /// `value = max(the sender's wall-clock milliseconds, at_least)` decided when the
    /// request is sent (by the executor, which reads a clock; the machine does not).
    EnsureEpoch {
        /// The epoch record's key.
        key: String,
        /// The lowest epoch to create (one more than any epoch seen).
        at_least: u64,
    },
    /// Go's campaign txn: `if create_revision(key) == 0 && version(epoch_key) > 0
    /// { put(key, id, lease); get(epoch_key) } else { get(key); get(epoch_key) }`.
    Campaign {
        /// Our candidate key.
        key: String,
        /// The lease it is put under.
        lease: i64,
        /// Its value: our participant id.
        id: Vec<u8>,
        /// The epoch record's key.
        epoch_key: String,
    },
    /// Read the queue in one txn: the first key of `range` by create revision; the keys
    /// with the greatest create revisions up to `below` (nearest first, at most `limit`,
    /// and whether there are more); our key; the epoch record.
    ReadQueue {
        /// The election's key prefix (with its trailing `/`).
        range: String,
        /// Our candidate key.
        key: String,
        /// The epoch record's key.
        epoch_key: String,
        /// The highest create revision of the keys ahead of ours (ours minus one).
        below: i64,
        /// How many keys ahead of ours to return.
        limit: usize,
    },
    /// `if lease(key) == lease { delete(key) }`.
    DeleteKey {
        /// The key.
        key: String,
        /// The lease it must be under.
        lease: i64,
    },
}

/// A key's create revision and lease, as a read saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The revision that created the key.
    pub create_rev: i64,
    /// The lease it is under (0: none).
    pub lease: i64,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// For `EnsureEpoch`: whether this request created it, and the record's value (what was
    /// put, or what was read; `None` if it vanished between the compare and the read,
    /// which a txn cannot see, so never from etcd, kept for clarity).
    Epoch {
        /// The put branch ran.
        created: bool,
        /// The value put or read.
        value: Option<Vec<u8>>,
    },
    /// For `Campaign`.
    Campaign {
        /// The put branch ran.
        succeeded: bool,
        /// The txn's header revision (our key's create revision when `succeeded`).
        header_rev: i64,
        /// Our key when the else branch ran.
        own: Option<KeyInfo>,
        /// Whether the epoch record exists.
        epoch_exists: bool,
    },
    /// For `ReadQueue`.
    Queue {
        /// The read's header revision.
        rev: i64,
        /// The first key of the range (the leader) and its value.
        first: Option<(String, Vec<u8>)>,
        /// The keys ahead of ours, nearest first.
        ahead: Vec<String>,
        /// Whether keys beyond `ahead` are ahead of ours too.
        more: bool,
        /// Our key.
        own: Option<KeyInfo>,
        /// The epoch record's value.
        epoch: Option<Vec<u8>>,
    },
    /// For `DeleteKey` (deleted or not there under that lease).
    Done,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdErr {
    /// etcd says the lease does not exist (revoked, expired, or the cluster was wiped).
    LeaseGone(String),
    /// Refused for good (authentication, permission): report it, keep retrying slowly.
    Refused(succession_core::ErrorKind, String),
    /// Anything temporary (unavailable, timed out, connection reset): the request may or
    /// may not have been applied.
    Transient(String),
}

impl std::fmt::Display for EtcdErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdErr::LeaseGone(m) | EtcdErr::Refused(_, m) | EtcdErr::Transient(m) => {
                f.write_str(m)
            }
        }
    }
}

/// One event of a watch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEv {
    /// A delete (else a put).
    pub deleted: bool,
    /// The event's revision (the key's mod revision).
    pub mod_rev: i64,
}

/// What the session's watch stream says about one of our watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchNote {
    /// etcd acknowledged the watcher.
    Created(ReqId),
    /// Events of one response. A response sent as the writes are applied (a synced
    /// watcher) carries one revision's events with `header_rev` equal to it; a catch-up
    /// response may carry several and a later header revision.
    Events {
        /// The watcher.
        id: ReqId,
        /// The response's header revision.
        header_rev: i64,
        /// Its events, in revision order.
        events: Vec<WatchEv>,
    },
    /// etcd cancelled the watcher: its start revision was compacted (`compacted`), or for
    /// `reason` (an error: report it and retry).
    Cancelled {
        /// The watcher.
        id: ReqId,
        /// Cancelled because its start revision was compacted.
        compacted: bool,
        /// etcd's reason, if any.
        reason: String,
    },
    /// The watch stream ended (etcd restarted or wiped, connection broken): every watcher
    /// of ours is gone; the error text says why.
    Ended(String),
}
