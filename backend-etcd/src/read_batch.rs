//! Record reads shared by the elections of a session: a [`ReadBatcher`] coalesces the
//! reads of many records (each supervised election polls its mode and heartbeat records
//! every `check_interval`) into one etcd txn of gets.
//!
//! A txn is linearizable like a plain get, and it is sent after each read in it was asked
//! for and answered before that read returns, so each read means what it meant alone: the
//! record as it was at one instant between the call and the return. Reads are never
//! delayed to wait for company: a read asked for while no batch is in flight goes at once,
//! alone; reads asked for while [`IN_FLIGHT`] batches are in flight go together in the
//! next one. So 1000 supervised elections polling two records each cost a few dozen
//! requests per interval instead of thousands.
//!
//! A batch that etcd refuses as a whole for permission is asked again one key at a time,
//! so a key the credentials may not read fails alone.

use std::sync::{Arc, Mutex as StdMutex};

use etcd_client::{KeyValue, Txn, TxnOp, TxnOpResponse};
use succession_core::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::conn::Connection;

/// The most gets in one txn (etcd's `--max-txn-ops` defaults to 128).
pub(crate) const MAX_BATCH: usize = 64;
/// Batches in flight at once per session.
pub(crate) const IN_FLIGHT: usize = 4;

/// What one read returns: the key's value (if present) and the store revision of the read.
pub(crate) type ReadResult = Result<(Option<KeyValue>, i64)>;

type Ask = (String, oneshot::Sender<ReadResult>);

/// The read batcher of one session (its task starts on first use and ends with the
/// session).
#[derive(Default)]
pub(crate) struct ReadBatcher {
    tx: StdMutex<Option<mpsc::UnboundedSender<Ask>>>,
}

impl ReadBatcher {
    /// Read `key` (in a batch with whatever other reads of this session are waiting).
    pub(crate) async fn read(&self, conn: &Arc<Connection>, key: &str) -> ReadResult {
        let (tx, rx) = oneshot::channel();
        self.sender(conn)
            .send((key.to_owned(), tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    fn sender(&self, conn: &Arc<Connection>) -> mpsc::UnboundedSender<Ask> {
        let mut slot = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref().filter(|t| !t.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::debug_span!("etcd_record_reads");
        tokio::spawn(run(conn.clone(), rx).instrument(span));
        *slot = Some(tx.clone());
        tx
    }
}

fn gone() -> Error {
    Error::new(
        ErrorKind::Connection,
        "the session's record reader stopped (the session is closing)",
    )
    .with_retryable(true)
}

async fn run(conn: Arc<Connection>, mut rx: mpsc::UnboundedReceiver<Ask>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every slot is busy, reads gather in the channel.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        // The caller may have given up (its own timeout): skip what nobody waits for.
        batch.retain(|(_, tx)| !tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let conn = conn.clone();
        tokio::spawn(
            async move {
                answer(&conn, batch).await;
                drop(slot);
            }
            .in_current_span(),
        );
    }
}

/// Read every key of `batch` in one txn and answer each.
async fn answer(conn: &Connection, batch: Vec<Ask>) {
    let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
    match read_many(conn, &keys).await {
        Ok((kvs, rev)) => {
            for ((_, tx), kv) in batch.into_iter().zip(kvs) {
                let _ = tx.send(Ok((kv, rev)));
            }
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied && batch.len() > 1 => {
            for (key, tx) in batch {
                let r = read_many(conn, &[key.as_str()])
                    .await
                    .map(|(mut kvs, rev)| (kvs.pop().flatten(), rev));
                let _ = tx.send(r);
            }
        }
        Err(e) => {
            // The same error for each (its source, not clonable, stays with the first).
            let (kind, msg, retryable) = (e.kind(), e.message().to_owned(), e.is_retryable());
            let mut first = Some(e);
            for (_, tx) in batch {
                let e = first
                    .take()
                    .unwrap_or_else(|| Error::new(kind, msg.clone()).with_retryable(retryable));
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// One txn of gets: each key's value (in order) and the revision of the read.
async fn read_many(conn: &Connection, keys: &[&str]) -> Result<(Vec<Option<KeyValue>>, i64)> {
    let txn = Txn::new().and_then(
        keys.iter()
            .map(|k| TxnOp::get(*k, None))
            .collect::<Vec<_>>(),
    );
    let resp = conn.txn("read the records", txn).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let kvs: Vec<Option<KeyValue>> = resp
        .op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        })
        .collect();
    if kvs.len() != keys.len() {
        return Err(Error::new(
            ErrorKind::Backend,
            format!(
                "etcd answered a txn of {} gets with {} results; retrying",
                keys.len(),
                kvs.len()
            ),
        )
        .with_retryable(true));
    }
    Ok((kvs, rev))
}
