//! Following who leads an election without taking part: [`EtcdLeaderWatch`].
//!
//! One consistent read of the election (candidate keys and epoch record) at revision R,
//! then a watch on the prefix from R + 1. Every event is applied to a local copy of the
//! queue, and the leader is recomputed after each revision, so every leadership is seen,
//! however short, as long as the watch keeps up (after a compaction or a broken stream the
//! copy is read again).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use succession_core::{Participant, Result, Term};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;
use crate::conn::{parse_epoch, Connection, Layout};
use crate::error;

/// Follows the leader of one etcd election from a watch on its prefix, without joining.
///
/// [`next`](Self::next) yields the leader when following starts, then every change of the
/// leader or its term: `Ok(Some(p))` (the key first by create revision, with the same
/// [`Term`] its own participant reports), `Ok(None)` when nobody campaigns, and `Err(e)`
/// when reading or watching failed (retried with backoff; a non-retryable error, e.g.
/// refused credentials, ends the watch). Uses the configuration's endpoints, prefix,
/// credentials and TLS. Dropping it stops the background task.
#[derive(Debug)]
pub struct EtcdLeaderWatch {
    rx: mpsc::UnboundedReceiver<Result<Option<Participant>>>,
    task: JoinHandle<()>,
}

impl EtcdLeaderWatch {
    /// Start following (spawns a task on the current tokio runtime). `refresh`: read the
    /// election again this often even when the watch is quiet (a safety net).
    pub fn start(cfg: EtcdConfig, refresh: Duration) -> EtcdLeaderWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(follow(cfg, refresh, tx));
        EtcdLeaderWatch { rx, task }
    }

    /// The next observation; `None` once the watch has ended (after a non-retryable error).
    pub async fn next(&mut self) -> Option<Result<Option<Participant>>> {
        self.rx.recv().await
    }
}

impl Drop for EtcdLeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local copy of the election.
#[derive(Default)]
struct Queue {
    /// create revision -> (key, value)
    by_rev: BTreeMap<i64, (Vec<u8>, String)>,
    epoch: Option<u64>,
}

impl Queue {
    fn leader(&self) -> Option<Participant> {
        let (rev, (_, id)) = self.by_rev.iter().next()?;
        let p = Participant::new(id.clone(), true);
        Some(match self.epoch {
            Some(e) => p.with_term(Term::new(e, *rev as u64)),
            None => p,
        })
    }

    fn put(&mut self, kv: &KeyValue) {
        self.by_rev.insert(
            kv.create_revision(),
            (
                kv.key().to_vec(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ),
        );
    }

    fn delete(&mut self, key: &[u8]) {
        self.by_rev.retain(|_, (k, _)| k.as_slice() != key);
    }
}

type Tx = mpsc::UnboundedSender<Result<Option<Participant>>>;

/// Sends `p` when it differs from the last one sent; false when the receiver is gone.
fn report(tx: &Tx, last: &mut Option<Option<Participant>>, p: Option<Participant>) -> bool {
    if last.as_ref() == Some(&p) {
        return true;
    }
    *last = Some(p.clone());
    tx.send(Ok(p)).is_ok()
}

async fn follow(cfg: EtcdConfig, refresh: Duration, tx: Tx) {
    let layout = Layout::new(&cfg.prefix);
    let conn = Connection::new(cfg.session());
    let mut last: Option<Option<Participant>> = None;
    let mut backoff = crate::conn::Backoff::for_ttl(cfg.ttl);
    loop {
        let attempt = watch_once(&conn, &layout, refresh, &tx, &mut last).await;
        match attempt {
            Ok(Flow::Stop) => return,
            Ok(Flow::Again) => {
                backoff.reset();
                continue;
            }
            Err(e) => {
                let fatal = !e.is_retryable();
                if tx.send(Err(e)).is_err() || fatal {
                    return;
                }
                tokio::time::sleep(backoff.next_delay(rand::random())).await;
            }
        }
    }
}

enum Flow {
    /// The receiver is gone.
    Stop,
    /// Read again and re-watch (refresh, compaction, a stream that ended).
    Again,
}

async fn watch_once(
    conn: &Connection,
    layout: &Layout,
    refresh: Duration,
    tx: &Tx,
    last: &mut Option<Option<Participant>>,
) -> Result<Flow> {
    let client = conn.client().await?;
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let txn = Txn::new().and_then(vec![
        TxnOp::get(layout.range.clone(), Some(opts)),
        TxnOp::get(layout.epoch_key.clone(), None),
    ]);
    let mut c = client.clone();
    let resp = conn.request("read the election", c.txn(txn)).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut q = Queue::default();
    for (i, r) in resp.op_responses().into_iter().enumerate() {
        if let TxnOpResponse::Get(g) = r {
            for kv in g.kvs() {
                if i == 0 {
                    q.put(kv);
                } else {
                    q.epoch = Some(parse_epoch(kv.value())?);
                }
            }
        }
    }
    if !report(tx, last, q.leader()) {
        return Ok(Flow::Stop);
    }
    // The prefix itself covers the epoch key and `<prefix>/`; keys such as `<prefix>x` are
    // ignored below.
    let mut c = client.clone();
    let mut stream = conn
        .request(
            "watch the election",
            c.watch(
                layout.epoch_key.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
    let until = tokio::time::Instant::now() + refresh;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep_until(until) => return Ok(Flow::Again),
            _ = tx.closed() => return Ok(Flow::Stop),
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Flow::Again),
            Err(e) => {
                return Err(error::map_in(
                    "watch the election",
                    e,
                    conn.config.tls.as_deref(),
                ))
            }
        };
        if resp.canceled() {
            return Ok(Flow::Again);
        }
        let mut at: Option<i64> = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = kv.key();
            let in_range = key.starts_with(layout.range.as_bytes());
            let is_epoch = key == layout.epoch_key.as_bytes();
            if !in_range && !is_epoch {
                continue;
            }
            // Report the state after each revision, before applying the next one.
            if at.is_some_and(|r| r != kv.mod_revision()) && !report(tx, last, q.leader()) {
                return Ok(Flow::Stop);
            }
            at = Some(kv.mod_revision());
            match (ev.event_type(), is_epoch) {
                (EventType::Put, false) => q.put(kv),
                (EventType::Delete, false) => q.delete(key),
                (EventType::Put, true) => q.epoch = Some(parse_epoch(kv.value())?),
                (EventType::Delete, true) => q.epoch = None,
            }
        }
        if !report(tx, last, q.leader()) {
            return Ok(Flow::Stop);
        }
    }
}
