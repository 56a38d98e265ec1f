//! Following who leads a latch without taking part: [`ZkLeaderWatch`].
//!
//! Driven by the store's watches: a getChildren watch on the latch path (who is queued), a
//! data watch on the latch path itself (every grant writes it, see
//! [`ZkElection`](crate::ZkElection)'s terms) and a data watch on the leader's node. Any of
//! them firing leads to one re-read; ZooKeeper delivers a watch event a few milliseconds
//! after the change, so a leadership that lasts longer than a re-read round trip is seen.

use std::time::{Duration, Instant};

use succession_core::{Error, Participant, Result, Term};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::config::ZkConfig;
use crate::error::{map, permanent, session_gone};
use crate::latch::connect;
use crate::names;

/// How long the first node of the latch may stay without having claimed its term (a write
/// of the latch path) before it is reported as leader without a term. Participants of this
/// crate claim within a round trip; Curator's LeaderLatch never writes the path.
const CLAIM_GRACE: Duration = Duration::from_millis(500);

/// Follows the leader of one ZooKeeper latch from watches, without joining it.
///
/// [`next`](Self::next) yields the leader when following starts, then every change of the
/// leader or of its term: `Ok(Some(p))` (with `p.term` once the leader has claimed, the
/// same [`Term`] its own participant reports), `Ok(None)` when nobody is queued, and
/// `Err(e)` when reading failed (retryable errors are retried with a new session when the
/// old one is gone; a non-retryable one, e.g. refused credentials, ends the watch).
/// Uses the configuration's connect string, path, session timeout and authentication.
/// Dropping it stops the background task and closes its session.
#[derive(Debug)]
pub struct ZkLeaderWatch {
    rx: mpsc::UnboundedReceiver<Result<Option<Participant>>>,
    task: JoinHandle<()>,
}

impl ZkLeaderWatch {
    /// Start following (spawns a task on the current tokio runtime). `refresh`: re-read at
    /// least this often even when no watch fired (a safety net; watches are re-armed by
    /// the server after a reconnect).
    pub fn start(cfg: ZkConfig, refresh: Duration) -> ZkLeaderWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(follow(cfg, refresh, tx));
        ZkLeaderWatch { rx, task }
    }

    /// The next observation; `None` once the watch has ended (after a non-retryable error).
    pub async fn next(&mut self) -> Option<Result<Option<Participant>>> {
        self.rx.recv().await
    }
}

impl Drop for ZkLeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one read saw.
enum View {
    /// Report this (nobody queued, or the first node with or without its term).
    Report(Option<Participant>),
    /// The first node has not claimed yet (since the instant given): wait for its claim.
    Unclaimed(String, Instant),
    /// Something moved during the read: read again at once.
    Again,
}

async fn follow(
    cfg: ZkConfig,
    refresh: Duration,
    tx: mpsc::UnboundedSender<Result<Option<Participant>>>,
) {
    let mut last: Option<Option<Participant>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut pending: Option<(String, Instant)> = None;
    loop {
        let client = match connect(&cfg, cfg.session_timeout).await {
            Ok(c) => c,
            Err(e) => {
                let fatal = !e.is_retryable();
                if tx.send(Err(e)).is_err() || fatal {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.session_timeout);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let read = tokio::time::timeout(cfg.session_timeout, read(&client, &cfg.path)).await;
            let (view, wake) = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if session_gone(&e) || client.state().is_terminated() => break,
                Ok(Err(e)) => {
                    let fatal = permanent(&e);
                    let err = map(e, &format!("observe latch {}", cfg.path));
                    if tx.send(Err(err)).is_err() || fatal {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.session_timeout);
                    continue;
                }
                Err(_) => {
                    let err = Error::timeout(format!(
                        "reading latch {} took longer than the session timeout {:?}; ZooKeeper is unreachable or slow",
                        cfg.path, cfg.session_timeout
                    ));
                    if tx.send(Err(err)).is_err() {
                        return;
                    }
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let report = match view {
                View::Report(p) => {
                    pending = None;
                    Some(p)
                }
                View::Unclaimed(id, since) => {
                    let since = match &pending {
                        Some((pid, t)) if *pid == id => *t,
                        _ => since,
                    };
                    if since.elapsed() >= CLAIM_GRACE {
                        Some(Some(Participant::new(id, true)))
                    } else {
                        pending = Some((id, since));
                        None
                    }
                }
                View::Again => continue,
            };
            if let Some(p) = report {
                if last.as_ref() != Some(&p) {
                    if tx.send(Ok(p.clone())).is_err() {
                        return;
                    }
                    last = Some(p);
                }
            }
            let wait = match &pending {
                Some((_, since)) => CLAIM_GRACE.saturating_sub(since.elapsed()).min(refresh),
                None => refresh,
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(wait) => {}
                _ = tx.closed() => return,
            }
            if client.state().is_terminated() {
                break;
            }
        }
    }
}

type Wake = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn wake_on(watchers: Vec<zk::OneshotWatcher>) -> Wake {
    Box::pin(async move {
        let all: Vec<_> = watchers
            .into_iter()
            .map(|w| Box::pin(w.changed()))
            .collect();
        futures::future::select_all(all).await;
    })
}

fn never() -> Wake {
    Box::pin(futures::future::pending())
}

/// One read of the latch: its children (watched), the latch path's data (watched; every
/// grant writes it) and the first node's data (watched).
async fn read(client: &zk::Client, path: &str) -> std::result::Result<(View, Wake), zk::Error> {
    let (children, _, children_w) = match client.get_and_watch_children(path).await {
        Ok(r) => r,
        Err(zk::Error::NoNode) => {
            let (stat, w) = client.check_and_watch_stat(path).await?;
            if stat.is_some() {
                return Ok((View::Again, never()));
            }
            return Ok((View::Report(None), wake_on(vec![w])));
        }
        Err(e) => return Err(e),
    };
    let kids = names::sorted(children);
    let Some(first) = kids.first() else {
        return Ok((View::Report(None), wake_on(vec![children_w])));
    };
    let (_, path_stat, path_w) = match client.get_and_watch_data(path).await {
        Ok(r) => r,
        Err(zk::Error::NoNode) => return Ok((View::Again, never())),
        Err(e) => return Err(e),
    };
    let (data, node_stat, node_w) = match client
        .get_and_watch_data(&format!("{path}/{}", first.name))
        .await
    {
        Ok(r) => r,
        Err(zk::Error::NoNode) => return Ok((View::Again, never())),
        Err(e) => return Err(e),
    };
    let id = String::from_utf8_lossy(&data).into_owned();
    let wake = wake_on(vec![children_w, path_w, node_w]);
    // A grant writes the latch path after its node was created: a path write newer than
    // the first node is that node's claim (a claim by a node before it that has left since
    // would also count; the next claim corrects the term).
    if path_stat.mzxid > node_stat.czxid {
        let term = Term::new(path_stat.ctime.max(0) as u64, path_stat.mzxid.max(0) as u64);
        Ok((
            View::Report(Some(Participant::new(id, true).with_term(term))),
            wake,
        ))
    } else {
        Ok((View::Unclaimed(id, Instant::now()), wake))
    }
}
