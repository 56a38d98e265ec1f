//! A deterministic, in-memory, single-member etcd v3 server for the simulation.
//!
//! [`SimEtcd`] interprets the election machine's [`Op`]s (each one txn) with the etcd 3.4
//! semantics the election relies on. It is pure data: no clock, no threads, no randomness.
//! Time comes in as `now_ms`; watch responses come out as [`Delivery`] lists for the caller
//! to route to the clients' watch streams.
//!
//! # The model
//!
//! - **Revisions.** The store starts at revision 1, as an empty etcd does. A txn that
//!   changes at least one key takes exactly the next revision, and all its changes carry it
//!   (mvcc's `storeTxnWrite.End` bumps `currentRev` once, and only if there were changes):
//!   read-only txns, failed txns and deletes of nothing take none. Revoking a lease deletes
//!   all its keys in one txn, so one revision. Granting or renewing a lease takes none.
//! - **Keys** carry create revision, mod revision, version and lease, as in mvcc. A put
//!   keeps the create revision of a live key and bumps its version; a delete forgets the
//!   key (a later put creates it anew).
//! - **Leases** expire on the lessor's 500 ms loop (`lessor.runLoop` in 3.4): a lease whose
//!   expiry has passed is revoked at the next tick, modelled as the first multiple of
//!   500 ms at or after the expiry. Until then it still exists: keys may still be put under
//!   it, but a renew fails (`lessor.Renew` waits for an expired lease's revocation and
//!   answers `ErrLeaseNotFound`).
//! - **Watches** are on one exact key each and belong to a caller-chosen stream
//!   ([`StreamId`]). A synced watcher gets one response per revision that changes its key,
//!   with that revision as header. A watcher starting at or below the current revision is
//!   first caught up from the history in one response whose header is the current
//!   revision (`syncWatchers` sends one batch per watcher), or cancelled if its start
//!   revision was compacted (strictly below the compaction revision, as in 3.4's
//!   `syncWatchers`: a compaction at `C` keeps revision `C`).
//! - **Permissions** are modelled as denied key prefixes ([`SimEtcd::set_denied`]): a
//!   request touching a denied key or overlapping a denied range is refused whole, and a
//!   watch on a denied key is cancelled on creation. They are the simulation's setting and
//!   survive [`SimEtcd::wipe`].
//!
//! # Simplified away
//!
//! One member, so no raft, no leader changes, no linearizability questions: every request
//! is applied at once, in call order. No minimum lease TTL, no revocation rate limit, no
//! checkpoints. Lease ticks are aligned to multiples of 500 ms of the caller's time (the
//! real loop runs 500 ms after its last run). Compaction keeps every event at or above the
//! compaction revision (real compaction also drops a tombstone sitting exactly at it).
//! Permission changes do not cancel existing watchers (etcd 3.4 checks at creation only).
//! Progress notifications, fragmenting and watch-id allocation are not modelled; the
//! cancel acknowledgement is not sent.

use std::collections::{BTreeMap, BTreeSet};

use crate::machine::ops::{Answer, EtcdErr, KeyInfo, Op, ReqId, WatchEv, WatchNote};

/// A watch stream (one gRPC watch stream of one client), chosen by the caller.
pub type StreamId = u64;

/// One watch note for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream that carries the note.
    pub stream: StreamId,
    /// The note.
    pub note: WatchNote,
}

/// The lessor's loop period in etcd 3.4 (`lessor.runLoop`): expired leases are revoked only
/// when it runs.
pub const LEASE_TICK_MS: i64 = 500;

const PERMISSION_DENIED: &str = "etcdserver: permission denied";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const COMPACTED: &str = "mvcc: required revision has been compacted";

/// One live key.
#[derive(Debug, Clone)]
struct Kv {
    value: Vec<u8>,
    create_rev: i64,
    mod_rev: i64,
    version: i64,
    /// 0: no lease.
    lease: i64,
}

impl Kv {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            create_rev: self.create_rev,
            lease: self.lease,
        }
    }
}

/// One live lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl_ms: i64,
    expiry_ms: i64,
}

/// One registered watcher.
#[derive(Debug, Clone)]
struct Watcher {
    stream: StreamId,
    id: ReqId,
    key: String,
    /// The lowest revision it reports (mvcc's `watcher.minRev`).
    min_rev: i64,
}

/// One event of the history.
#[derive(Debug, Clone)]
struct Event {
    rev: i64,
    key: String,
    deleted: bool,
}

/// One write of a txn.
enum Write<'a> {
    Put {
        key: &'a str,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(&'a str),
}

/// The first lessor tick at or after `expiry_ms`: when the lease is revoked.
fn revoke_tick(expiry_ms: i64) -> i64 {
    let q = expiry_ms.div_euclid(LEASE_TICK_MS);
    if expiry_ms.rem_euclid(LEASE_TICK_MS) == 0 {
        q * LEASE_TICK_MS
    } else {
        (q + 1) * LEASE_TICK_MS
    }
}

fn denied_err() -> EtcdErr {
    EtcdErr::Refused(
        succession_core::ErrorKind::PermissionDenied,
        PERMISSION_DENIED.into(),
    )
}

/// The simulated etcd server: keys, leases, history and watchers.
#[derive(Debug, Clone)]
pub struct SimEtcd {
    /// The current (last committed) revision.
    rev: i64,
    /// The last compaction revision (0: never compacted).
    compact_rev: i64,
    kvs: BTreeMap<String, Kv>,
    leases: BTreeMap<i64, Lease>,
    /// Every change at or above `compact_rev`, in revision order.
    history: Vec<Event>,
    /// Watchers, in registration order.
    watchers: Vec<Watcher>,
    /// Denied key prefixes (the simulation's setting: survives a wipe).
    denied: BTreeSet<String>,
}

impl Default for SimEtcd {
    fn default() -> Self {
        SimEtcd::new()
    }
}

impl SimEtcd {
    /// An empty cluster at revision 1.
    pub fn new() -> SimEtcd {
        SimEtcd {
            rev: 1,
            compact_rev: 0,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            denied: BTreeSet::new(),
        }
    }

    // ----- permissions -----

    /// Deny (or allow again) every request touching a key that starts with `prefix`.
    pub fn set_denied(&mut self, prefix: &str, denied: bool) {
        if denied {
            self.denied.insert(prefix.to_owned());
        } else {
            self.denied.remove(prefix);
        }
    }

    fn key_denied(&self, key: &str) -> bool {
        self.denied.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// A prefix range is refused if it overlaps a denied prefix either way: etcd's RBAC
    /// permits a range only if all of it is permitted.
    fn range_denied(&self, range: &str) -> bool {
        self.denied
            .iter()
            .any(|p| range.starts_with(p.as_str()) || p.starts_with(range))
    }

    fn op_denied(&self, op: &Op) -> bool {
        match op {
            Op::EnsureEpoch { key, .. } | Op::DeleteKey { key, .. } => self.key_denied(key),
            Op::Campaign { key, epoch_key, .. } => {
                self.key_denied(key) || self.key_denied(epoch_key)
            }
            Op::ReadQueue {
                range,
                key,
                epoch_key,
                ..
            } => self.range_denied(range) || self.key_denied(key) || self.key_denied(epoch_key),
        }
    }

    // ----- requests -----

    /// Apply one request; returns its answer and the watch notes its write produced.
    pub fn apply(&mut self, op: &Op, wall_ms: u64) -> (Result<Answer, EtcdErr>, Vec<Delivery>) {
        if self.op_denied(op) {
            return (Err(denied_err()), Vec::new());
        }
        match op {
            Op::EnsureEpoch { key, at_least } => match self.kvs.get(key) {
                Some(kv) => {
                    let answer = Answer::Epoch {
                        created: false,
                        value: Some(kv.value.clone()),
                    };
                    (Ok(answer), Vec::new())
                }
                None => {
                    let value = wall_ms.max(*at_least).to_string().into_bytes();
                    let put = Write::Put {
                        key,
                        value: value.clone(),
                        lease: 0,
                    };
                    let out = self.write(vec![put]);
                    let answer = Answer::Epoch {
                        created: true,
                        value: Some(value),
                    };
                    (Ok(answer), out)
                }
            },
            Op::Campaign {
                key,
                lease,
                id,
                epoch_key,
            } => {
                let epoch_exists = self.kvs.contains_key(epoch_key);
                let own = self.kvs.get(key).map(Kv::info);
                if own.is_none() && epoch_exists {
                    // etcd checks the leases of the branch the compares chose before applying
                    // anything (`checkRequests` on the txn path): a missing lease fails the
                    // whole txn.
                    if *lease != 0 && !self.leases.contains_key(lease) {
                        return (Err(EtcdErr::LeaseGone(LEASE_NOT_FOUND.into())), Vec::new());
                    }
                    let put = Write::Put {
                        key,
                        value: id.clone(),
                        lease: *lease,
                    };
                    let out = self.write(vec![put]);
                    let answer = Answer::Campaign {
                        succeeded: true,
                        header_rev: self.rev,
                        own: None,
                        epoch_exists: true,
                    };
                    (Ok(answer), out)
                } else {
                    let answer = Answer::Campaign {
                        succeeded: false,
                        header_rev: self.rev,
                        own,
                        epoch_exists,
                    };
                    (Ok(answer), Vec::new())
                }
            }
            Op::ReadQueue {
                range,
                key,
                epoch_key,
                below,
                limit,
            } => (
                Ok(self.read_queue(range, key, epoch_key, *below, *limit)),
                Vec::new(),
            ),
            Op::DeleteKey { key, lease } => {
                // A missing key compares as lease 0 (etcd compares the zero value), and
                // deleting nothing takes no revision either way.
                let matches = self.kvs.get(key).is_some_and(|kv| kv.lease == *lease);
                let out = if matches {
                    self.write(vec![Write::Delete(key)])
                } else {
                    Vec::new()
                };
                (Ok(Answer::Done), out)
            }
        }
    }

    fn read_queue(
        &self,
        range: &str,
        key: &str,
        epoch_key: &str,
        below: i64,
        limit: usize,
    ) -> Answer {
        let mut in_range: Vec<(&String, &Kv)> = self
            .kvs
            .range(range.to_owned()..)
            .take_while(|(k, _)| k.starts_with(range))
            .collect();
        // Sorted by create revision; ties (one txn creating several keys) by key, as the
        // range read them.
        in_range.sort_by_key(|(k, kv)| (kv.create_rev, *k));
        let first = in_range
            .first()
            .map(|(k, kv)| ((*k).clone(), kv.value.clone()));
        // etcd 3.4's `applierV3backend.Range` fetches everything when a create-revision
        // filter or a sort is asked, prunes by MaxCreateRevision (0: no filter), sorts, and
        // only then truncates to the limit (0: none), setting More if it did.
        let mut ahead: Vec<String> = in_range
            .iter()
            .rev()
            .filter(|(_, kv)| below == 0 || kv.create_rev <= below)
            .map(|(k, _)| (*k).clone())
            .collect();
        let more = limit > 0 && ahead.len() > limit;
        if more {
            ahead.truncate(limit);
        }
        Answer::Queue {
            rev: self.rev,
            first,
            ahead,
            more,
            own: self.kvs.get(key).map(Kv::info),
            epoch: self.kvs.get(epoch_key).map(|kv| kv.value.clone()),
        }
    }

    /// Apply one txn's writes (distinct keys). If anything changed, they all take the next
    /// revision, go into the history and to the synced watchers.
    fn write(&mut self, writes: Vec<Write<'_>>) -> Vec<Delivery> {
        let rev = self.rev + 1;
        let mut changes: Vec<Event> = Vec::new();
        for w in writes {
            match w {
                Write::Put { key, value, lease } => {
                    let kv = self.kvs.entry(key.to_owned()).or_insert(Kv {
                        value: Vec::new(),
                        create_rev: rev,
                        mod_rev: rev,
                        version: 0,
                        lease: 0,
                    });
                    kv.value = value;
                    kv.mod_rev = rev;
                    kv.version += 1;
                    // A put names its lease; one without a lease detaches the key.
                    kv.lease = lease;
                    changes.push(Event {
                        rev,
                        key: key.to_owned(),
                        deleted: false,
                    });
                }
                Write::Delete(key) => {
                    if self.kvs.remove(key).is_some() {
                        changes.push(Event {
                            rev,
                            key: key.to_owned(),
                            deleted: true,
                        });
                    }
                }
            }
        }
        if changes.is_empty() {
            return Vec::new();
        }
        self.rev = rev;
        let out = self.notify(rev, &changes);
        self.history.extend(changes);
        out
    }

    /// One response per synced watcher whose key changed at `rev`, in registration order.
    fn notify(&self, rev: i64, changes: &[Event]) -> Vec<Delivery> {
        self.watchers
            .iter()
            .filter(|w| rev >= w.min_rev)
            .filter_map(|w| {
                let events: Vec<WatchEv> = changes
                    .iter()
                    .filter(|e| e.key == w.key)
                    .map(|e| WatchEv {
                        deleted: e.deleted,
                        mod_rev: e.rev,
                    })
                    .collect();
                (!events.is_empty()).then_some(Delivery {
                    stream: w.stream,
                    note: WatchNote::Events {
                        id: w.id,
                        header_rev: rev,
                        events,
                    },
                })
            })
            .collect()
    }

    // ----- leases -----

    /// Grant lease `id` (positive) with a TTL, expiring at `now_ms + ttl_ms`.
    pub fn grant(&mut self, id: i64, ttl_ms: i64, now_ms: i64) -> Result<(), EtcdErr> {
        if id <= 0 {
            return Err(EtcdErr::Transient("sim: lease id must be positive".into()));
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdErr::Transient(
                "etcdserver: lease already exists".into(),
            ));
        }
        self.leases.insert(
            id,
            Lease {
                ttl_ms,
                expiry_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        Ok(())
    }

    /// Renew lease `id` (a keep-alive): its expiry becomes `now_ms + ttl`; returns the TTL.
    /// A lease past its expiry but not yet revoked cannot be renewed: etcd 3.4's
    /// `lessor.Renew` waits for its revocation and answers "lease not found".
    pub fn renew(&mut self, id: i64, now_ms: i64) -> Result<i64, EtcdErr> {
        match self.leases.get_mut(&id) {
            Some(l) if now_ms < l.expiry_ms => {
                l.expiry_ms = now_ms.saturating_add(l.ttl_ms);
                Ok(l.ttl_ms)
            }
            _ => Err(EtcdErr::LeaseGone(LEASE_NOT_FOUND.into())),
        }
    }

    /// Revoke lease `id`: it goes with every key under it (one revision if there was any).
    /// An absent lease: nothing happens.
    pub fn revoke(&mut self, id: i64) -> Vec<Delivery> {
        if self.leases.remove(&id).is_none() {
            return Vec::new();
        }
        let keys: Vec<String> = self
            .kvs
            .iter()
            .filter(|(_, kv)| kv.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        self.write(keys.iter().map(|k| Write::Delete(k)).collect())
    }

    /// Revoke every lease whose revocation tick (see [`Self::next_expiry_tick`]) is at or
    /// before `now_ms`, in lease-id order; returns their ids and the watch notes.
    pub fn expire_due(&mut self, now_ms: i64) -> (Vec<i64>, Vec<Delivery>) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| revoke_tick(l.expiry_ms) <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for &id in &due {
            out.extend(self.revoke(id));
        }
        (due, out)
    }

    /// The earliest instant a live lease will be revoked: the first multiple of
    /// [`LEASE_TICK_MS`] at or after its expiry.
    pub fn next_expiry_tick(&self) -> Option<i64> {
        self.leases.values().map(|l| revoke_tick(l.expiry_ms)).min()
    }

    /// The live leases, in id order.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Whether lease `id` exists (possibly expired, awaiting its tick).
    pub fn lease_exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    // ----- watches -----

    /// Register watcher `id` on stream `stream` for the exact `key`, from `start_rev`
    /// (`None` or 0: from the next revision). Returns `Created`, then a catch-up response
    /// or a cancellation if there is one. A watcher with the same stream and id is replaced.
    pub fn watch(
        &mut self,
        stream: StreamId,
        id: ReqId,
        key: &str,
        start_rev: Option<i64>,
    ) -> Vec<Delivery> {
        self.cancel_watch(stream, id);
        let note = |note| Delivery { stream, note };
        let mut out = vec![note(WatchNote::Created(id))];
        if self.key_denied(key) {
            // etcd 3.4 answers a forbidden create with Created and Canceled in one response.
            out.push(note(WatchNote::Cancelled {
                id,
                compacted: false,
                reason: PERMISSION_DENIED.into(),
            }));
            return out;
        }
        let min_rev = match start_rev.filter(|&s| s != 0) {
            Some(s) if s <= self.rev => {
                // An unsynced watcher: `syncWatchers` cancels it if its start was compacted
                // (`minRev < compactRev`), else sends all its events since then in one
                // response headed by the current revision.
                if s < self.compact_rev {
                    out.push(note(WatchNote::Cancelled {
                        id,
                        compacted: true,
                        reason: COMPACTED.into(),
                    }));
                    return out;
                }
                let events: Vec<WatchEv> = self
                    .history
                    .iter()
                    .filter(|e| e.rev >= s && e.key == key)
                    .map(|e| WatchEv {
                        deleted: e.deleted,
                        mod_rev: e.rev,
                    })
                    .collect();
                if !events.is_empty() {
                    out.push(note(WatchNote::Events {
                        id,
                        header_rev: self.rev,
                        events,
                    }));
                }
                self.rev + 1
            }
            // Synced at once; a future start revision only holds back earlier events
            // (`watchableStore.watch` sets `minRev` to it).
            Some(s) => s,
            None => self.rev + 1,
        };
        self.watchers.push(Watcher {
            stream,
            id,
            key: key.to_owned(),
            min_rev,
        });
        out
    }

    /// Remove watcher `id` of `stream` (no note).
    pub fn cancel_watch(&mut self, stream: StreamId, id: ReqId) {
        self.watchers
            .retain(|w| !(w.stream == stream && w.id == id));
    }

    /// Remove every watcher of `stream` (the stream broke).
    pub fn drop_stream(&mut self, stream: StreamId) {
        self.watchers.retain(|w| w.stream != stream);
    }

    /// How many watchers are registered.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Compact the history at `rev` (clamped to the current revision): events below it are
    /// forgotten, and watches from below it are cancelled. A revision at or below the last
    /// compaction does nothing (etcd answers ErrCompacted).
    pub fn compact(&mut self, rev: i64) {
        let rev = rev.min(self.rev);
        if rev <= self.compact_rev {
            return;
        }
        self.compact_rev = rev;
        self.history.retain(|e| e.rev >= rev);
    }

    /// The last compaction revision (0: never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    // ----- operator faults -----

    /// An operator deletes `key` (whatever its lease).
    pub fn delete_key(&mut self, key: &str) -> Vec<Delivery> {
        self.write(vec![Write::Delete(key)])
    }

    /// An operator deletes every key starting with `prefix`, in one revision.
    pub fn delete_prefix(&mut self, prefix: &str) -> Vec<Delivery> {
        let keys: Vec<String> = self
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        self.write(keys.iter().map(|k| Write::Delete(k)).collect())
    }

    /// An operator puts `key` = `value` without a lease (detaching it from any lease).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Vec<Delivery> {
        self.write(vec![Write::Put {
            key,
            value: value.to_vec(),
            lease: 0,
        }])
    }

    /// The cluster is replaced by an empty one: keys, leases, history and watchers are gone,
    /// the revision is 1 again. Returns the streams that had watchers, in id order (the
    /// caller ends them). Denied prefixes stay (they are the simulation's setting).
    pub fn wipe(&mut self) -> Vec<StreamId> {
        let streams: BTreeSet<StreamId> = self.watchers.iter().map(|w| w.stream).collect();
        let denied = std::mem::take(&mut self.denied);
        *self = SimEtcd {
            denied,
            ..SimEtcd::new()
        };
        streams.into_iter().collect()
    }

    // ----- inspection -----

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The keys starting with `prefix` as (key, value, create revision, lease), by create
    /// revision.
    pub fn keys(&self, prefix: &str) -> Vec<(String, Vec<u8>, i64, i64)> {
        let mut keys: Vec<(String, Vec<u8>, i64, i64)> = self
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, kv)| (k.clone(), kv.value.clone(), kv.create_rev, kv.lease))
            .collect();
        keys.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        keys
    }

    /// The value of `key`, if it exists.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.kvs.get(key).map(|kv| kv.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: &str = "/e/epoch";
    const RANGE: &str = "/e/q/";

    fn ensure(s: &mut SimEtcd, wall: u64) -> Answer {
        let op = Op::EnsureEpoch {
            key: EPOCH.into(),
            at_least: 0,
        };
        s.apply(&op, wall).0.unwrap()
    }

    fn campaign_op(key: &str, lease: i64) -> Op {
        Op::Campaign {
            key: key.into(),
            lease,
            id: key.as_bytes().to_vec(),
            epoch_key: EPOCH.into(),
        }
    }

    fn campaign(s: &mut SimEtcd, key: &str, lease: i64) -> Answer {
        s.apply(&campaign_op(key, lease), 0).0.unwrap()
    }

    fn read_queue(s: &mut SimEtcd, key: &str, below: i64, limit: usize) -> Answer {
        let op = Op::ReadQueue {
            range: RANGE.into(),
            key: key.into(),
            epoch_key: EPOCH.into(),
            below,
            limit,
        };
        s.apply(&op, 0).0.unwrap()
    }

    fn events(stream: StreamId, id: ReqId, header_rev: i64, evs: &[(bool, i64)]) -> Delivery {
        Delivery {
            stream,
            note: WatchNote::Events {
                id,
                header_rev,
                events: evs
                    .iter()
                    .map(|&(deleted, mod_rev)| WatchEv { deleted, mod_rev })
                    .collect(),
            },
        }
    }

    fn created(stream: StreamId, id: ReqId) -> Delivery {
        Delivery {
            stream,
            note: WatchNote::Created(id),
        }
    }

    fn cancelled(stream: StreamId, id: ReqId, compacted: bool, reason: &str) -> Delivery {
        let reason = reason.into();
        let note = WatchNote::Cancelled {
            id,
            compacted,
            reason,
        };
        Delivery { stream, note }
    }

    fn delete_op(key: &str, lease: i64) -> Op {
        let key = key.into();
        Op::DeleteKey { key, lease }
    }

    #[test]
    fn a_txn_is_one_revision_and_reads_take_none() {
        let mut s = SimEtcd::new();
        assert_eq!(s.revision(), 1);
        s.grant(7, 5_000, 0).unwrap();
        assert_eq!(s.revision(), 1, "a grant takes no revision");
        ensure(&mut s, 1_000);
        assert_eq!(s.revision(), 2);
        ensure(&mut s, 2_000);
        assert_eq!(s.revision(), 2, "an epoch that exists is only read");
        campaign(&mut s, "/e/q/a", 7);
        campaign(&mut s, "/e/q/b", 7);
        assert_eq!(s.revision(), 4);
        read_queue(&mut s, "/e/q/b", 3, 10);
        assert_eq!(s.apply(&delete_op("/e/q/none", 0), 0).0, Ok(Answer::Done));
        assert_eq!(s.revision(), 4, "reads and deletes of nothing take none");
        s.revoke(7);
        assert_eq!(
            s.revision(),
            5,
            "a revoke deletes both keys in one revision"
        );
        assert!(s.keys(RANGE).is_empty());
        s.put("/x/1", b"1");
        s.put("/x/2", b"2");
        s.delete_prefix("/x/");
        assert_eq!(s.revision(), 8);
    }

    #[test]
    fn ensure_epoch_creates_once_with_the_larger_of_wall_clock_and_floor() {
        let mut s = SimEtcd::new();
        let op = Op::EnsureEpoch {
            key: EPOCH.into(),
            at_least: 5_000,
        };
        let created = Answer::Epoch {
            created: true,
            value: Some(b"5000".to_vec()),
        };
        assert_eq!(s.apply(&op, 1_000).0, Ok(created));
        let read = Answer::Epoch {
            created: false,
            value: Some(b"5000".to_vec()),
        };
        assert_eq!(s.apply(&op, 9_000).0, Ok(read));
        assert_eq!(s.keys(EPOCH), vec![(EPOCH.into(), b"5000".to_vec(), 2, 0)]);
    }

    #[test]
    fn campaign_on_a_missing_lease_applies_nothing() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        let (res, out) = s.apply(&campaign_op("/e/q/a", 9), 0);
        assert_eq!(res, Err(EtcdErr::LeaseGone(LEASE_NOT_FOUND.into())));
        assert!(out.is_empty());
        assert_eq!(s.revision(), 2);
        assert_eq!(s.value("/e/q/a"), None);
    }

    #[test]
    fn campaign_put_branch_answers_its_revision() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        let won = Answer::Campaign {
            succeeded: true,
            header_rev: 3,
            own: None,
            epoch_exists: true,
        };
        assert_eq!(campaign(&mut s, "/e/q/a", 1), won);
        assert_eq!(
            s.keys(RANGE),
            vec![("/e/q/a".into(), b"/e/q/a".to_vec(), 3, 1)]
        );
    }

    #[test]
    fn campaign_else_branch_reports_own_key_without_a_lease_check() {
        let mut s = SimEtcd::new();
        // No epoch record: the else branch runs, even with a missing lease.
        let no_epoch = Answer::Campaign {
            succeeded: false,
            header_rev: 1,
            own: None,
            epoch_exists: false,
        };
        assert_eq!(campaign(&mut s, "/e/q/a", 9), no_epoch);
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        campaign(&mut s, "/e/q/a", 1);
        s.revoke(1);
        s.put("/e/q/a", b"op");
        // The key exists (now without a lease): the else branch reports it, lease 9 unknown.
        let again = Answer::Campaign {
            succeeded: false,
            header_rev: 5,
            own: Some(KeyInfo {
                create_rev: 5,
                lease: 0,
            }),
            epoch_exists: true,
        };
        assert_eq!(campaign(&mut s, "/e/q/a", 9), again);
        assert_eq!(s.revision(), 5);
    }

    #[test]
    fn read_queue_ahead_is_nearest_first_filtered_before_the_limit_with_more() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        for k in ["a", "b", "c", "d", "e"] {
            campaign(&mut s, &format!("/e/q/{k}"), 1); // revisions 3..=7
        }
        s.put("/e/other", b"x"); // outside the range
        let Answer::Queue {
            rev,
            first,
            ahead,
            more,
            own,
            epoch,
        } = read_queue(&mut s, "/e/q/e", 6, 2)
        else {
            panic!("not a queue answer");
        };
        assert_eq!(rev, 8);
        assert_eq!(first, Some(("/e/q/a".into(), b"/e/q/a".to_vec())));
        assert_eq!(ahead, vec!["/e/q/d".to_string(), "/e/q/c".to_string()]);
        assert!(more);
        assert_eq!(
            own,
            Some(KeyInfo {
                create_rev: 7,
                lease: 1
            })
        );
        assert_eq!(epoch, Some(b"1".to_vec()));
        let Answer::Queue { ahead, more, .. } = read_queue(&mut s, "/e/q/c", 4, 2) else {
            panic!("not a queue answer");
        };
        assert_eq!(ahead, vec!["/e/q/b".to_string(), "/e/q/a".to_string()]);
        assert!(!more, "exactly the limit matched");
    }

    #[test]
    fn a_synced_watcher_gets_one_live_response_per_revision_headed_by_it() {
        let mut s = SimEtcd::new();
        assert_eq!(s.watch(1, 10, "/k", None), vec![created(1, 10)]);
        assert_eq!(s.watch(2, 20, "/k", None), vec![created(2, 20)]);
        s.watch(2, 21, "/other", None);
        assert_eq!(s.watcher_count(), 3);
        assert_eq!(
            s.put("/k", b"1"),
            vec![
                events(1, 10, 2, &[(false, 2)]),
                events(2, 20, 2, &[(false, 2)])
            ]
        );
        assert_eq!(
            s.delete_key("/k"),
            vec![
                events(1, 10, 3, &[(true, 3)]),
                events(2, 20, 3, &[(true, 3)])
            ]
        );
        assert!(s.delete_key("/k").is_empty());
    }

    #[test]
    fn a_watcher_from_an_older_revision_gets_one_catch_up_response_headed_by_now() {
        let mut s = SimEtcd::new();
        s.put("/k", b"1"); // 2
        s.put("/j", b"1"); // 3
        s.delete_key("/k"); // 4
        s.put("/j", b"2"); // 5
        assert_eq!(
            s.watch(1, 10, "/k", Some(2)),
            vec![created(1, 10), events(1, 10, 5, &[(false, 2), (true, 4)])]
        );
        // Nothing for /k since 5: only the creation.
        assert_eq!(s.watch(1, 11, "/k", Some(5)), vec![created(1, 11)]);
        // Synced now: the next put is live.
        assert_eq!(
            s.put("/k", b"2"),
            vec![
                events(1, 10, 6, &[(false, 6)]),
                events(1, 11, 6, &[(false, 6)])
            ]
        );
    }

    #[test]
    fn a_future_start_revision_holds_back_earlier_events() {
        let mut s = SimEtcd::new();
        s.watch(1, 10, "/k", Some(3));
        assert!(
            s.put("/k", b"1").is_empty(),
            "revision 2 is before the start"
        );
        assert_eq!(s.put("/k", b"2"), vec![events(1, 10, 3, &[(false, 3)])]);
    }

    #[test]
    fn a_compacted_start_revision_is_cancelled_and_the_compaction_revision_is_kept() {
        let mut s = SimEtcd::new();
        s.put("/k", b"1"); // 2
        s.put("/k", b"2"); // 3
        s.put("/k", b"3"); // 4
        s.compact(3);
        assert_eq!(s.compact_revision(), 3);
        assert_eq!(
            s.watch(1, 10, "/k", Some(2)),
            vec![created(1, 10), cancelled(1, 10, true, COMPACTED)]
        );
        assert_eq!(s.watcher_count(), 0);
        assert_eq!(
            s.watch(1, 11, "/k", Some(3)),
            vec![created(1, 11), events(1, 11, 4, &[(false, 3), (false, 4)])]
        );
        s.compact(100);
        assert_eq!(s.compact_revision(), 4, "clamped to the current revision");
    }

    #[test]
    fn lease_expiry_waits_for_the_500ms_tick_and_deletes_its_keys_in_one_revision() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 1_200, 0).unwrap();
        s.grant(2, 5_000, 0).unwrap();
        campaign(&mut s, "/e/q/a", 1); // 3
        campaign(&mut s, "/e/q/b", 2); // 4
        s.put("/e/q/c", b"x"); // 5
        campaign(&mut s, "/e/q/z", 1); // 6
        s.watch(1, 10, "/e/q/a", None);
        s.watch(1, 11, "/e/q/z", None);
        assert_eq!(s.next_expiry_tick(), Some(1_500));
        assert_eq!(s.expire_due(1_499), (vec![], vec![]));
        assert!(
            s.lease_exists(1),
            "expired at 1200, revoked only at the 1500 tick"
        );
        assert_eq!(
            s.renew(1, 1_300),
            Err(EtcdErr::LeaseGone(LEASE_NOT_FOUND.into())),
            "an expired lease cannot be renewed"
        );
        let (ids, out) = s.expire_due(1_500);
        assert_eq!(ids, vec![1]);
        assert_eq!(
            out,
            vec![
                events(1, 10, 7, &[(true, 7)]),
                events(1, 11, 7, &[(true, 7)])
            ]
        );
        assert_eq!(s.revision(), 7);
        assert_eq!(s.lease_ids(), vec![2]);
        let left: Vec<String> = s.keys(RANGE).into_iter().map(|k| k.0).collect();
        assert_eq!(left, vec!["/e/q/b".to_string(), "/e/q/c".to_string()]);
        assert_eq!(s.renew(2, 4_000), Ok(5_000));
        assert_eq!(s.next_expiry_tick(), Some(9_000));
        assert_eq!(
            s.renew(1, 1_600),
            Err(EtcdErr::LeaseGone(LEASE_NOT_FOUND.into()))
        );
    }

    #[test]
    fn wipe_restarts_revisions_and_forgets_leases_keys_and_watchers() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        campaign(&mut s, "/e/q/a", 1);
        s.watch(3, 1, "/e/q/a", None);
        s.watch(2, 1, EPOCH, None);
        s.watch(3, 2, EPOCH, None);
        s.compact(2);
        assert_eq!(s.wipe(), vec![2, 3]);
        assert_eq!(s.revision(), 1);
        assert_eq!(s.compact_revision(), 0);
        assert!(s.lease_ids().is_empty());
        assert!(s.keys("").is_empty());
        assert_eq!(s.watcher_count(), 0);
        assert!(
            s.grant(1, 5_000, 0).is_ok(),
            "the old lease id is free again"
        );
        assert_eq!(s.watch(1, 1, "/k", Some(1)), vec![created(1, 1)]);
    }

    #[test]
    fn a_denied_prefix_refuses_and_changes_nothing() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        s.set_denied("/e/q/", true);
        let (res, out) = s.apply(&campaign_op("/e/q/a", 1), 0);
        assert_eq!(res, Err(denied_err()));
        assert!(out.is_empty());
        // A range covering the denied prefix is refused too.
        let op = Op::ReadQueue {
            range: "/e/".into(),
            key: "/e/a".into(),
            epoch_key: EPOCH.into(),
            below: 0,
            limit: 1,
        };
        assert_eq!(s.apply(&op, 0).0, Err(denied_err()));
        assert_eq!(s.revision(), 2);
        assert_eq!(
            s.watch(1, 10, "/e/q/a", None),
            vec![created(1, 10), cancelled(1, 10, false, PERMISSION_DENIED)]
        );
        assert_eq!(s.watcher_count(), 0);
        s.set_denied("/e/q/", false);
        assert!(matches!(
            campaign(&mut s, "/e/q/a", 1),
            Answer::Campaign {
                succeeded: true,
                ..
            }
        ));
    }

    #[test]
    fn delete_key_under_another_lease_is_a_no_op() {
        let mut s = SimEtcd::new();
        ensure(&mut s, 1);
        s.grant(1, 5_000, 0).unwrap();
        s.grant(2, 5_000, 0).unwrap();
        campaign(&mut s, "/e/q/a", 1);
        s.watch(1, 10, "/e/q/a", None);
        let other = delete_op("/e/q/a", 2);
        assert_eq!(s.apply(&other, 0), (Ok(Answer::Done), vec![]));
        assert_eq!(s.revision(), 3);
        assert!(s.value("/e/q/a").is_some());
        let ours = delete_op("/e/q/a", 1);
        assert_eq!(
            s.apply(&ours, 0),
            (Ok(Answer::Done), vec![events(1, 10, 4, &[(true, 4)])])
        );
        assert_eq!(s.value("/e/q/a"), None);
    }

    #[test]
    fn cancelled_and_dropped_watchers_hear_nothing_more() {
        let mut s = SimEtcd::new();
        s.watch(1, 10, "/k", None);
        s.watch(1, 11, "/k", None);
        s.watch(2, 10, "/k", None);
        s.cancel_watch(1, 10);
        assert_eq!(s.put("/k", b"1").len(), 2);
        s.drop_stream(1);
        assert_eq!(s.watcher_count(), 1);
        assert_eq!(s.put("/k", b"2"), vec![events(2, 10, 3, &[(false, 3)])]);
    }

    #[test]
    fn grant_refuses_an_existing_lease_and_revoke_of_an_absent_one_is_a_no_op() {
        let mut s = SimEtcd::new();
        s.grant(1, 1_000, 0).unwrap();
        assert!(matches!(s.grant(1, 1_000, 0), Err(EtcdErr::Transient(_))));
        assert!(s.revoke(5).is_empty());
        assert!(s.revoke(1).is_empty(), "no key under it");
        assert_eq!(s.revision(), 1);
        assert!(!s.lease_exists(1));
        assert_eq!(s.next_expiry_tick(), None);
    }
}
