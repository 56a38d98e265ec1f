//! [`EtcdRecord`]: a compare-and-swap record in etcd, for the supervisor's mode record.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions};
use succession_core::{validate, CasOutcome, CasRecord, Error, ErrorKind, Result, Versioned};

use crate::config::EtcdConfig;
use crate::conn::{Backoff, Connection};
use crate::error;
use crate::read_batch::ReadBatcher;
use crate::watch_hub::{Route, WatchHub, WatchMsg};

/// A versioned record at one etcd key, written only by compare-and-swap.
///
/// The version is the key's mod revision. [`compare_and_swap`](CasRecord::compare_and_swap)
/// is one txn: "if mod_revision(key) == expected (or create_revision == 0 when the record
/// must not exist) then put else get". [`changed`](CasRecord::changed) watches the key.
///
/// A wiped etcd loses the record (reads give `None`) and counts revisions from 1 again, so
/// after a wipe the same version can name a different value. This handle remembers the
/// values it saw at its last few versions (the newest value per version) and compares the
/// value as well as the mod revision (in the txn of `compare_and_swap`, and in `changed`),
/// so a version it handed out before a wipe does not match a different record written at
/// the same revision after it.
pub struct EtcdRecord {
    conn: Arc<Connection>,
    /// The session's shared watch stream, for a record made from an election: thousands of
    /// records then watch on a few streams instead of opening one each (etcd and the
    /// connection serve only so many streams at once).
    hub: Option<WatchHub>,
    /// The session's batched reads, for a record made from an election (see
    /// `read_batch.rs`): thousands of polled records then cost a few txns per interval.
    reads: Option<Arc<ReadBatcher>>,
    key: String,
    /// (version, value) pairs this handle read or wrote, newest last, at most [`SEEN`].
    seen: Mutex<VecDeque<(u64, Vec<u8>)>>,
}

/// How many (version, value) pairs an [`EtcdRecord`] remembers.
const SEEN: usize = 8;

impl fmt::Debug for EtcdRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRecord")
            .field("key", &self.key)
            .field("endpoints", &self.conn.config.endpoints)
            .finish()
    }
}

impl EtcdRecord {
    /// A record at `key` (absolute, e.g. `/services/my-app/mode`) using the endpoints,
    /// credentials and timeouts of `config` (its prefix, id and TTL are not used). No I/O
    /// until the first call. Prefer [`EtcdElection::record`](crate::EtcdElection::record)
    /// to share an election's connection.
    pub fn new(config: &EtcdConfig, key: &str) -> Result<EtcdRecord> {
        Self::with_connection(Arc::new(Connection::new(config.session())), key)
    }

    pub(crate) fn with_connection(conn: Arc<Connection>, key: &str) -> Result<EtcdRecord> {
        Self::on_session(conn, None, key)
    }

    /// A record of a session: its watches go on the session's shared watch stream `hub`
    /// and its reads through the session's batched `reads` (both given for a record made
    /// from an election).
    pub(crate) fn on_session(
        conn: Arc<Connection>,
        shared: Option<(WatchHub, Arc<ReadBatcher>)>,
        key: &str,
    ) -> Result<EtcdRecord> {
        validate::store_path(key, "etcd record key")?;
        let (hub, reads) = shared.unzip();
        Ok(EtcdRecord {
            conn,
            hub,
            reads,
            key: key.to_owned(),
            seen: Mutex::new(VecDeque::with_capacity(SEEN)),
        })
    }

    /// Remember that the record held `value` at `version`.
    fn remember(&self, version: u64, value: &[u8]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.iter().any(|(v, x)| *v == version && x == value) {
            return;
        }
        seen.retain(|(v, _)| *v != version);
        if seen.len() == SEEN {
            seen.pop_front();
        }
        seen.push_back((version, value.to_vec()));
    }

    /// The value this handle saw at `version`, if it remembers one.
    fn value_at(&self, version: u64) -> Option<Vec<u8>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .rev()
            .find(|(v, _)| *v == version)
            .map(|(_, x)| x.clone())
    }

    /// Whether `current` is still the record a caller saw as `seen`: same version and, when
    /// the value at that version is `known`, the same value.
    fn unchanged(current: Option<&Versioned>, seen: Option<u64>, known: Option<&[u8]>) -> bool {
        match (current, seen) {
            (None, None) => true,
            (Some(c), Some(s)) => c.version == s && known.is_none_or(|v| v == c.value),
            _ => false,
        }
    }

    fn versioned(&self, kv: &etcd_client::KeyValue) -> Versioned {
        let v = Versioned {
            value: kv.value().to_vec(),
            version: kv.mod_revision() as u64,
        };
        self.remember(v.version, &v.value);
        v
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The record after the last event of `resp`, when that differs from `seen` (whose
    /// value was `known`).
    fn differs(
        &self,
        resp: &etcd_client::WatchResponse,
        seen: Option<u64>,
        known: Option<&[u8]>,
    ) -> Option<Option<Versioned>> {
        let ev = resp.events().last()?;
        let now = match ev.event_type() {
            EventType::Delete => None,
            EventType::Put => ev.kv().map(|kv| self.versioned(kv)),
        };
        (!Self::unchanged(now.as_ref(), seen, known)).then_some(now)
    }

    /// Watch the record on the session's shared stream from `rev + 1` until it differs
    /// from `seen`, or until the caller must read again.
    async fn watch_on_hub(
        &self,
        hub: &WatchHub,
        rev: i64,
        seen: Option<u64>,
        known: Option<&[u8]>,
    ) -> Result<Watched> {
        let mut watch = HubWatch {
            hub: hub.clone(),
            inbox: Route::default(),
            id: None,
        };
        hub.create(
            self.key.clone(),
            Some(WatchOptions::new().with_start_revision(rev + 1)),
            &watch.inbox,
        );
        loop {
            match watch.inbox.recv().await {
                WatchMsg::Resp(resp, generation) => {
                    if resp.created() && !resp.canceled() {
                        watch.id = Some((generation, resp.watch_id()));
                    }
                    if resp.canceled() {
                        return Ok(Watched::Ended {
                            broke: resp.compact_revision() == 0,
                        });
                    }
                    if let Some(now) = self.differs(&resp, seen, known) {
                        return Ok(Watched::Changed(now));
                    }
                }
                WatchMsg::Ended(e) => {
                    if e.kind() == ErrorKind::PermissionDenied || !e.is_retryable() {
                        return Err(*e);
                    }
                    return Ok(Watched::Ended { broke: true });
                }
            }
        }
    }

    /// Read the record and the store revision of the read.
    async fn read_at(&self) -> Result<(Option<Versioned>, i64)> {
        if let Some(reads) = &self.reads {
            let (kv, rev) = reads.read(&self.conn, &self.key).await?;
            return Ok((kv.map(|kv| self.versioned(&kv)), rev));
        }
        let mut c = self.conn.client().await?;
        let resp = self
            .conn
            .request("read the record", c.get(self.key.clone(), None))
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let v = resp.kvs().first().map(|kv| self.versioned(kv));
        Ok((v, rev))
    }
}

#[async_trait]
impl CasRecord for EtcdRecord {
    async fn read(&self) -> Result<Option<Versioned>> {
        Ok(self.read_at().await?.0)
    }

    async fn compare_and_swap(&self, expected: Option<u64>, value: Vec<u8>) -> Result<CasOutcome> {
        let cmp = match expected {
            None => vec![Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )],
            Some(v) => {
                let rev = i64::try_from(v).map_err(|_| {
                    Error::invalid_config(format!(
                        "version {v} is not an etcd revision; pass a version read from this record"
                    ))
                })?;
                let mut cmp = vec![Compare::mod_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    rev,
                )];
                // The revision alone can match a different record after a wipe.
                if let Some(value) = self.value_at(v) {
                    cmp.push(Compare::value(self.key.clone(), CompareOp::Equal, value));
                }
                cmp
            }
        };
        let txn = Txn::new()
            .when(cmp)
            .and_then(vec![TxnOp::put(self.key.clone(), value.clone(), None)])
            .or_else(vec![TxnOp::get(self.key.clone(), None)]);
        let mut c = self.conn.client().await?;
        let resp = self
            .conn
            .request("compare-and-swap the record", c.txn(txn))
            .await?;
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.remember(rev as u64, &value);
            return Ok(CasOutcome::Swapped(rev as u64));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| self.versioned(kv))),
            _ => None,
        });
        Ok(CasOutcome::Conflict(current.flatten()))
    }

    async fn changed(&self, seen: Option<u64>) -> Result<Option<Versioned>> {
        let mut backoff = Backoff::for_ttl(self.conn.config.ttl);
        // The value at `seen` as this handle knew it before reading again.
        let known = seen.and_then(|s| self.value_at(s));
        loop {
            let (current, rev) = self.read_at().await?;
            if !Self::unchanged(current.as_ref(), seen, known.as_deref()) {
                return Ok(current);
            }
            // Watch from just after the read: nothing between the read and the watch is missed.
            let watched = match &self.hub {
                Some(hub) => self.watch_on_hub(hub, rev, seen, known.as_deref()).await?,
                None => {
                    self.watch_on_own_stream(rev, seen, known.as_deref())
                        .await?
                }
            };
            match watched {
                Watched::Changed(now) => return Ok(now),
                // The stream broke (e.g. etcd restarted): re-read and watch again.
                Watched::Ended { broke: true } => {
                    tokio::time::sleep(backoff.next_delay(rand::random())).await
                }
                Watched::Ended { broke: false } => {}
            }
        }
    }
}

/// How a watch of the record ended.
enum Watched {
    /// The record differs from what the caller saw: this is it now.
    Changed(Option<Versioned>),
    /// Read again: at once after a cancelled watch (compacted past its revision), after a
    /// backoff when `broke` (the stream ended or failed).
    Ended { broke: bool },
}

impl EtcdRecord {
    /// Watch the record on a gRPC stream of its own from `rev + 1` (a record made without
    /// a session: [`EtcdRecord::new`]).
    async fn watch_on_own_stream(
        &self,
        rev: i64,
        seen: Option<u64>,
        known: Option<&[u8]>,
    ) -> Result<Watched> {
        let mut c = self.conn.client().await?;
        let mut stream = self
            .conn
            .request(
                "watch the record",
                c.watch(
                    self.key.clone(),
                    Some(WatchOptions::new().with_start_revision(rev + 1)),
                ),
            )
            .await?;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        return Ok(Watched::Ended {
                            broke: resp.compact_revision() == 0,
                        });
                    }
                    if let Some(now) = self.differs(&resp, seen, known) {
                        return Ok(Watched::Changed(now));
                    }
                }
                Ok(None) => return Ok(Watched::Ended { broke: true }),
                Err(e) => {
                    let e = error::map("watch the record", e);
                    if e.kind() == ErrorKind::PermissionDenied || !e.is_retryable() {
                        return Err(e);
                    }
                    return Ok(Watched::Ended { broke: true });
                }
            }
        }
    }
}

/// One watcher of a record on a shared stream: cancelled when dropped (also when the
/// caller stops waiting), so the stream carries only the watchers someone waits on.
struct HubWatch {
    hub: WatchHub,
    inbox: Route,
    /// (stream generation, watch id) once etcd acknowledged it.
    id: Option<(u32, i64)>,
}

impl Drop for HubWatch {
    fn drop(&mut self) {
        // Not acknowledged yet: the hub cancels it when the acknowledgement finds the inbox
        // closed.
        self.inbox.close();
        if let Some((generation, id)) = self.id {
            self.hub.cancel(generation, id);
        }
    }
}
