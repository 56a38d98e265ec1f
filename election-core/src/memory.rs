//! The in-memory backend: several participants in one process sharing a [`MemoryStore`],
//! with the same semantics as the real backends (FIFO queue, handover, resign, close,
//! terms that grow across wipes) and injectable faults (a participant's link suspended, the
//! whole store unavailable, the store wiped).
//!
//! It is the embedded default for the quickstart and the supervisor's unit tests. It needs a
//! tokio runtime (session expiry uses timers).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> succession_core::Result<()> {
//! use std::time::Duration;
//! use succession_core::{memory::MemoryStore, Election, ElectionExt};
//!
//! let store = MemoryStore::new();
//! let a = store.election("a")?;
//! let b = store.election("b")?;
//! a.join().await?;
//! b.join().await?;
//! let lead = a.wait_for_leadership(Duration::from_secs(1)).await?;
//! a.resign().await?; // a stops leading first, then leaves the queue
//! assert!(lead.term() < b.wait_for_leadership(Duration::from_secs(1)).await?.term());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::election::{Election, Participant};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::ElectionMetrics;
use crate::record::{CasOutcome, CasRecord, Versioned};
use crate::status::{Contact, HealthLevel, Role, Status, StatusCell};
use crate::term::Term;
use crate::validate;

/// Default session timeout of a [`MemoryStore`]: how long a participant whose link is
/// suspended (or a store that is unavailable) keeps its place before it expires.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(1);

/// A shared in-memory election store. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("MemoryStore")
            .field("available", &st.available)
            .field("epoch", &st.epoch)
            .field("queue", &st.queue.len())
            .field("members", &st.members.len())
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    session_timeout: Duration,
    records_tx: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters to a test double; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct State {
    available: bool,
    outage: u64,
    epoch: u64,
    next_seq: u64,
    queue: Vec<Entry>,
    members: BTreeMap<u64, Member>,
    next_uid: u64,
    records: HashMap<String, Versioned>,
    next_version: u64,
}

#[derive(Clone)]
struct Entry {
    uid: u64,
    id: String,
    /// The store sequence when the entry was created (its place in the queue).
    #[allow(dead_code)]
    seq: u64,
    /// The sequence of the current grant while this entry's owner leads: every grant,
    /// also a re-grant after a suspension, draws a new one, so terms never repeat.
    granted: Option<u64>,
}

struct Member {
    id: String,
    cell: Arc<StatusCell>,
    wants: bool,
    suspended: bool,
    suspend_gen: u64,
    expired: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with [`DEFAULT_SESSION_TIMEOUT`].
    pub fn new() -> Self {
        Self::with_session_timeout(DEFAULT_SESSION_TIMEOUT)
    }

    /// A store whose sessions expire `session_timeout` after their link is lost.
    pub fn with_session_timeout(session_timeout: Duration) -> Self {
        let (records_tx, _) = watch::channel(0);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    available: true,
                    outage: 0,
                    epoch: 1,
                    next_seq: 1,
                    queue: Vec::new(),
                    members: BTreeMap::new(),
                    next_uid: 1,
                    records: HashMap::new(),
                    next_version: 1,
                }),
                session_timeout,
                records_tx,
            }),
        }
    }

    /// The session timeout of this store.
    pub fn session_timeout(&self) -> Duration {
        self.shared.session_timeout
    }

    /// A new participant handle with `id` (validated; ids need not be unique).
    pub fn election(&self, id: &str) -> Result<MemoryElection> {
        validate::participant_id(id)?;
        let cell = Arc::new(StatusCell::with_metrics(ElectionMetrics::new(
            "memory", "memory",
        )));
        cell.set_contact_bound(self.shared.session_timeout);
        let mut st = self.shared.lock();
        let uid = st.next_uid;
        st.next_uid += 1;
        st.members.insert(
            uid,
            Member {
                id: id.to_owned(),
                cell: cell.clone(),
                wants: false,
                suspended: false,
                suspend_gen: 0,
                expired: false,
            },
        );
        Ok(MemoryElection {
            store: self.clone(),
            uid,
            id: id.to_owned(),
            cell,
        })
    }

    /// A compare-and-swap record named `name` in this store.
    pub fn record(&self, name: &str) -> MemoryRecord {
        MemoryRecord {
            store: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Fault: make the whole store unreachable (`false`) or reachable again (`true`).
    ///
    /// While unavailable every participant is `Suspended` (Degraded); after the session
    /// timeout their places expire (Unhealthy). When it is back, everyone rejoins.
    pub fn set_available(&self, available: bool) {
        let mut st = self.shared.lock();
        if st.available == available {
            return;
        }
        st.available = available;
        if !available {
            // The link was up until now.
            let now = crate::status::now();
            for m in st.members.values() {
                m.cell.touch(now);
            }
            st.outage += 1;
            let outage = st.outage;
            self.spawn_expiry(move |st| {
                if st.available || st.outage != outage {
                    return false;
                }
                st.queue.clear();
                for m in st.members.values_mut() {
                    if m.wants {
                        m.expired = true;
                    }
                }
                true
            });
        } else {
            for m in st.members.values_mut() {
                m.expired = false;
            }
        }
        reconcile(&mut st);
    }

    /// Whether the store is reachable.
    pub fn is_available(&self) -> bool {
        self.shared.lock().available
    }

    /// Fault: lose every entry and record, as a wiped ZooKeeper or etcd would. The epoch
    /// grows (so terms keep growing); sequences restart. Live participants repair and rejoin.
    pub fn wipe(&self) {
        let mut st = self.shared.lock();
        st.queue.clear();
        st.records.clear();
        st.epoch += 1;
        st.next_seq = 1;
        self.shared.records_tx.send_modify(|v| *v += 1);
        reconcile(&mut st);
    }

    /// The ids in the queue, in order (what a store listing would show).
    pub fn entries(&self) -> Vec<String> {
        self.shared
            .lock()
            .queue
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Names of the records currently stored.
    pub fn record_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.shared.lock().records.keys().cloned().collect();
        v.sort();
        v
    }

    fn spawn_expiry(&self, expire: impl FnOnce(&mut State) -> bool + Send + 'static) {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let timeout = self.shared.session_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(shared) = weak.upgrade() {
                let mut st = shared.lock();
                if expire(&mut st) {
                    reconcile(&mut st);
                }
            }
        });
    }
}

/// Bring every participant's published status in line with the store, demoting before
/// promoting so that two leaders are never published, even for an instant.
fn reconcile(st: &mut State) {
    let store_ok = st.available;
    // Live participants that lost their place repair it (path repair): re-enter at the back.
    let uids: Vec<u64> = st.members.keys().copied().collect();
    for uid in uids {
        let m = &st.members[&uid];
        let live = m.wants && store_ok && !m.suspended;
        if live && !st.queue.iter().any(|e| e.uid == uid) {
            let seq = st.next_seq;
            st.next_seq += 1;
            let id = m.id.clone();
            st.queue.push(Entry {
                uid,
                id,
                seq,
                granted: None,
            });
            st.members.get_mut(&uid).expect("member").expired = false;
        }
    }
    let head_live = st.queue.first().is_some_and(|h| {
        st.members
            .get(&h.uid)
            .is_some_and(|m| m.wants && store_ok && !m.suspended)
    });
    // Only a live head holds a grant; a head that is not live loses it, so that its next
    // grant gets a new term.
    for (i, e) in st.queue.iter_mut().enumerate() {
        if i > 0 || !head_live {
            e.granted = None;
        }
    }
    if head_live && st.queue[0].granted.is_none() {
        let g = st.next_seq;
        st.next_seq += 1;
        st.queue[0].granted = Some(g);
    }
    let head = st.queue.first().cloned();
    let mut leader: Option<(Arc<StatusCell>, Term)> = None;
    for (uid, m) in &st.members {
        if !m.wants {
            continue;
        }
        let held = st.queue.iter().any(|e| e.uid == *uid);
        if !store_ok || m.suspended {
            let why = if !store_ok {
                "store unavailable"
            } else {
                "connection suspended"
            };
            let (level, reason) = if m.expired {
                (HealthLevel::Unhealthy, format!("{why}; session expired"))
            } else {
                (HealthLevel::Degraded, why.to_owned())
            };
            let role = if held {
                Role::Suspended
            } else {
                Role::Candidate
            };
            m.cell.set(role, level, reason);
            continue;
        }
        match &head {
            Some(h) if h.uid == *uid && head_live => {
                let term = Term::new(st.epoch, h.granted.expect("a live head holds a grant"));
                let current = m.cell.get().role;
                if current.is_leader() && current != (Role::Leader { term }) {
                    m.cell.set(
                        Role::Candidate,
                        HealthLevel::Healthy,
                        "place lost; rejoined",
                    );
                }
                leader = Some((m.cell.clone(), term));
            }
            _ => {
                let leader_id = head.as_ref().map(|h| h.id.clone());
                let reason = if m.cell.get().role.is_leader() {
                    "lost its place at the head of the queue"
                } else {
                    "waiting for predecessor"
                };
                m.cell.set(
                    Role::Follower { leader: leader_id },
                    HealthLevel::Healthy,
                    reason,
                );
            }
        }
    }
    if let Some((cell, term)) = leader {
        cell.set(
            Role::Leader { term },
            HealthLevel::Healthy,
            "first in queue",
        );
    }
}

/// One participant of a [`MemoryStore`] election.
pub struct MemoryElection {
    store: MemoryStore,
    uid: u64,
    id: String,
    cell: Arc<StatusCell>,
}

impl std::fmt::Debug for MemoryElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryElection")
            .field("id", &self.id)
            .field("role", &self.cell.get().role)
            .finish()
    }
}

impl MemoryElection {
    /// Fault: this participant's link to the store is in doubt. It is `Suspended` at once;
    /// its place expires after the session timeout (then a successor is elected).
    pub fn suspend(&self) {
        let mut st = self.store.shared.lock();
        let Some(m) = st.members.get_mut(&self.uid) else {
            return;
        };
        if m.suspended {
            return;
        }
        m.cell.touch(crate::status::now());
        m.suspended = true;
        m.suspend_gen += 1;
        let gen = m.suspend_gen;
        let uid = self.uid;
        self.store.spawn_expiry(move |st| {
            let Some(m) = st.members.get_mut(&uid) else {
                return false;
            };
            if !m.suspended || m.suspend_gen != gen {
                return false;
            }
            m.expired = true;
            st.queue.retain(|e| e.uid != uid);
            true
        });
        reconcile(&mut st);
    }

    /// Fault: the store expires this participant's session while its link is up (as when
    /// someone revokes an etcd lease or closes a ZooKeeper session): its place is gone at
    /// once, it stops leading, and it takes a new place at the back, as a participant does
    /// with a new session.
    pub fn expire(&self) {
        let mut st = self.store.shared.lock();
        if !st.queue.iter().any(|e| e.uid == self.uid) {
            return;
        }
        st.queue.retain(|e| e.uid != self.uid);
        reconcile(&mut st);
    }

    /// End a [`suspend`](MemoryElection::suspend): the link is back; the participant
    /// re-takes its place if it expired.
    pub fn resume(&self) {
        let mut st = self.store.shared.lock();
        if let Some(m) = st.members.get_mut(&self.uid) {
            m.suspended = false;
            m.expired = false;
        }
        reconcile(&mut st);
    }

    fn leave(&self, st: &mut State, reason: &str) {
        if let Some(m) = st.members.get_mut(&self.uid) {
            m.wants = false;
        }
        // Stop leading (publish) BEFORE removing the place from the queue.
        self.cell.set(Role::Idle, HealthLevel::Healthy, reason);
        st.queue.retain(|e| e.uid != self.uid);
        reconcile(st);
    }
}

#[async_trait]
impl Election for MemoryElection {
    fn id(&self) -> &str {
        &self.id
    }

    async fn join(&self) -> Result<()> {
        let rx = self.cell.subscribe();
        {
            let mut st = self.store.shared.lock();
            let Some(m) = st.members.get_mut(&self.uid) else {
                return Err(Error::closed(&format!("memory election of {}", self.id)));
            };
            if !m.wants {
                m.wants = true;
                self.cell.set_role(Role::Candidate, "joining");
            }
            reconcile(&mut st);
        }
        let what = format!("memory election of {}", self.id);
        crate::participant::wait_joined(rx, None, &self.id, &what, || None).await
    }

    async fn resign(&self) -> Result<()> {
        let mut st = self.store.shared.lock();
        if !st.members.contains_key(&self.uid) {
            return Ok(());
        }
        self.leave(&mut st, "resigned");
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let mut st = self.store.shared.lock();
        if st.members.contains_key(&self.uid) {
            self.leave(&mut st, "closing");
            st.members.remove(&self.uid);
            self.cell.close("closed");
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.cell.subscribe()
    }

    async fn leader(&self) -> Result<Option<Participant>> {
        Ok(self.participants().await?.into_iter().next())
    }

    fn contact(&self) -> Contact {
        let st = self.store.shared.lock();
        let linked = st.available && st.members.get(&self.uid).is_some_and(|m| !m.suspended);
        if linked {
            // An in-process store answers at once: contact is now while the link is up,
            // and stays at the last such reading while it is down.
            self.cell.touch(crate::status::now());
        }
        self.cell.contact()
    }

    async fn participants(&self) -> Result<Vec<Participant>> {
        let st = self.store.shared.lock();
        if !st.available {
            return Err(unavailable());
        }
        Ok(st
            .queue
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let p = Participant::new(e.id.clone(), i == 0);
                match e.granted {
                    Some(g) => p.with_term(Term::new(st.epoch, g)),
                    None => p,
                }
            })
            .collect())
    }
}

impl Drop for MemoryElection {
    fn drop(&mut self) {
        // Like a process exit: the session ends and the place is freed at once.
        let mut st = self.store.shared.lock();
        if st.members.remove(&self.uid).is_some() {
            self.cell.close("handle dropped");
            st.queue.retain(|e| e.uid != self.uid);
            reconcile(&mut st);
        }
    }
}

fn unavailable() -> Error {
    Error::new(
        ErrorKind::Connection,
        "memory store is unavailable (fault injected with set_available(false)); retry later",
    )
}

/// A [`CasRecord`] in a [`MemoryStore`]; lost on [`MemoryStore::wipe`], unreachable while the
/// store is unavailable.
#[derive(Debug, Clone)]
pub struct MemoryRecord {
    store: MemoryStore,
    name: String,
}

#[async_trait]
impl CasRecord for MemoryRecord {
    async fn read(&self) -> Result<Option<Versioned>> {
        let st = self.store.shared.lock();
        if !st.available {
            return Err(unavailable());
        }
        Ok(st.records.get(&self.name).cloned())
    }

    async fn compare_and_swap(&self, expected: Option<u64>, value: Vec<u8>) -> Result<CasOutcome> {
        let mut st = self.store.shared.lock();
        if !st.available {
            return Err(unavailable());
        }
        let current = st.records.get(&self.name).cloned();
        if current.as_ref().map(|v| v.version) != expected {
            return Ok(CasOutcome::Conflict(current));
        }
        let version = st.next_version;
        st.next_version += 1;
        st.records
            .insert(self.name.clone(), Versioned { value, version });
        self.store.shared.records_tx.send_modify(|v| *v += 1);
        Ok(CasOutcome::Swapped(version))
    }

    async fn changed(&self, seen: Option<u64>) -> Result<Option<Versioned>> {
        let mut rx = self.store.shared.records_tx.subscribe();
        loop {
            rx.borrow_and_update();
            let current = self.read().await?;
            if current.as_ref().map(|v| v.version) != seen {
                return Ok(current);
            }
            rx.changed()
                .await
                .map_err(|_| Error::closed("memory store"))?;
        }
    }
}
