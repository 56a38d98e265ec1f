//! Following who leads a latch without taking part: [`ZkLeaderWatch`].
//!
//! Driven by the store's watches: a getChildren watch on the latch path (who is queued), a
//! data watch on the latch path itself (every grant writes it, see
//! [`ZkElection`](crate::ZkElection)'s terms) and a data watch on the leader's node. Any of
//! them firing leads to one re-read; ZooKeeper delivers a watch event a few milliseconds
//! after the change, so a leadership that lasts longer than a re-read round trip is seen.
//! A leadership shorter than that is still reported when the re-read finds claims (each
//! grant writes the latch path once, so its data version counts them) that the current
//! first node cannot have made: they were made, in queue order, by the nodes next in line
//! at the previous read that are gone now. The latest such claim is reported with its term;
//! earlier ones without (ZooKeeper 3.8 watch events do not carry the zxid that caused them),
//! and a node that joined and led entirely between two reads is not seen. Every term
//! reported is the one the leader itself was granted.

use std::time::{Duration, Instant};

use succession_core::{Error, Participant, Result, Term};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;
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
    /// The latch path does not exist.
    NoPath,
    /// The latch path's stat, and the first three nodes' ids and creation zxids (empty:
    /// nobody queued).
    Latch {
        path: zk::Stat,
        queue: Vec<(String, i64)>,
    },
    /// Something moved during the read: read again at once.
    Again,
}

/// What the follower remembers between reads.
#[derive(Default)]
struct Seen {
    /// The last report sent.
    last: Option<Option<Participant>>,
    /// The latch path's ctime and data version at the last read: every claim writes the
    /// path once, so the version counts claims.
    path: Option<(i64, i32)>,
    /// The first nodes at the last read, and whether the first had claimed.
    queue: Vec<(String, i64)>,
    first_claimed: bool,
    /// The first node while it has not claimed, and since when.
    unclaimed: Option<(String, i64, Instant)>,
}

impl Seen {
    /// The reports for one read, in order.
    fn reports(&mut self, view: View) -> Vec<Option<Participant>> {
        let mut out = Vec::new();
        let View::Latch { path, queue } = view else {
            // No latch path (View::Again never gets here).
            *self = Seen {
                last: self.last.take(),
                ..Seen::default()
            };
            out.push(None);
            return out;
        };
        let term = Term::new(path.ctime.max(0) as u64, path.mzxid.max(0) as u64);
        // Claims since the last read: every grant writes the latch path once, so its data
        // version counts them.
        let comparable =
            matches!(self.path, Some((ctime, v)) if ctime == path.ctime && path.version >= v);
        let claims = match self.path {
            Some((_, v)) if comparable => (path.version - v) as usize,
            _ => 0,
        };
        // Nodes next in line at the last read (after the first, if it had claimed) that
        // are gone now: they may have led between two reads.
        let start = usize::from(self.first_claimed);
        let gone: Vec<&(String, i64)> = self
            .queue
            .iter()
            .skip(start)
            .filter(|(_, c)| !queue.iter().any(|(_, c2)| c2 == c))
            .collect();
        let same_first = self.queue.first().map(|q| q.1) == queue.first().map(|q| q.1);
        // Whether the latest claim (the path's mzxid) is the current first node's.
        let first_claimed = match queue.first() {
            None => false,
            // Written before the node existed: someone else's claim.
            Some((_, czxid)) if path.mzxid <= *czxid => false,
            // No child came or went since the claim: the claimant is still first.
            Some(_) if path.mzxid > path.pzxid => true,
            // First read: as `ZkElection::leader` reads it.
            Some(_) if !comparable => true,
            // No claim since the last read: only a first node that had claimed then.
            Some(_) if claims == 0 => same_first && self.first_claimed,
            // A new claim, and children changed after it: the first node's, unless a node
            // next in line then, now gone, can have made it.
            Some(_) => !gone.iter().any(|(_, c)| *c < path.mzxid),
        };
        // Claims the current first node does not account for were made, in queue order,
        // by the gone nodes: short leaderships between two reads. The latest one's term is
        // the path's mzxid; earlier ones are unknown (ZooKeeper 3.8 watch events carry no
        // zxid).
        let missed = if first_claimed {
            claims.saturating_sub(1)
        } else {
            claims
        };
        let missed_nodes: Vec<_> = gone.into_iter().take(missed).collect();
        for (i, (id, _)) in missed_nodes.iter().enumerate() {
            let p = Participant::new(id.clone(), true);
            let latest = i + 1 == missed && !first_claimed;
            out.push(Some(if latest { p.with_term(term) } else { p }));
        }
        self.path = Some((path.ctime, path.version));
        self.first_claimed = first_claimed;
        match queue.first().cloned() {
            None => {
                self.unclaimed = None;
                out.push(None);
            }
            Some((id, _)) if first_claimed => {
                self.unclaimed = None;
                out.push(Some(Participant::new(id, true).with_term(term)));
            }
            Some((id, czxid)) => {
                let since = match &self.unclaimed {
                    Some((uid, uc, t)) if *uid == id && *uc == czxid => *t,
                    _ => Instant::now(),
                };
                self.unclaimed = Some((id.clone(), czxid, since));
                // Participants that never claim (Curator's LeaderLatch) are reported
                // without a term after a grace period.
                if since.elapsed() >= CLAIM_GRACE {
                    out.push(Some(Participant::new(id, true)));
                }
            }
        }
        self.queue = queue;
        out
    }

    /// How long until an unclaimed first node is reported without a term.
    fn grace_left(&self) -> Option<Duration> {
        self.unclaimed
            .as_ref()
            .map(|(_, _, t)| CLAIM_GRACE.saturating_sub(t.elapsed()))
    }
}

async fn follow(
    cfg: ZkConfig,
    refresh: Duration,
    tx: mpsc::UnboundedSender<Result<Option<Participant>>>,
) {
    let mut seen = Seen::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let client = match connect(&cfg).await {
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
            match &view {
                View::Again => continue,
                View::NoPath => debug!(path = %cfg.path, "observe: no latch path"),
                View::Latch { path, queue } => {
                    debug!(mzxid = path.mzxid, queue = ?queue, "observe: read the latch")
                }
            }
            for p in seen.reports(view) {
                if seen.last.as_ref() != Some(&p) {
                    if tx.send(Ok(p.clone())).is_err() {
                        return;
                    }
                    seen.last = Some(p);
                }
            }
            let wait = seen.grace_left().map_or(refresh, |g| g.min(refresh));
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

/// One read of the latch: its children (watched), the latch path's stat (data watched;
/// every grant writes it) and the first node's data (watched).
async fn read(client: &zk::Client, path: &str) -> std::result::Result<(View, Wake), zk::Error> {
    let (children, _, children_w) = match client.get_and_watch_children(path).await {
        Ok(r) => r,
        Err(zk::Error::NoNode) => {
            let (stat, w) = client.check_and_watch_stat(path).await?;
            if stat.is_some() {
                return Ok((View::Again, never()));
            }
            return Ok((View::NoPath, wake_on(vec![w])));
        }
        Err(e) => return Err(e),
    };
    let (_, path_stat, path_w) = match client.get_and_watch_data(path).await {
        Ok(r) => r,
        Err(zk::Error::NoNode) => return Ok((View::Again, never())),
        Err(e) => return Err(e),
    };
    let kids = names::sorted(children);
    let Some(first) = kids.first() else {
        return Ok((
            View::Latch {
                path: path_stat,
                queue: Vec::new(),
            },
            wake_on(vec![children_w, path_w]),
        ));
    };
    let (data, node_stat, node_w) = match client
        .get_and_watch_data(&format!("{path}/{}", first.name))
        .await
    {
        Ok(r) => r,
        Err(zk::Error::NoNode) => return Ok((View::Again, never())),
        Err(e) => return Err(e),
    };
    let mut queue = vec![(String::from_utf8_lossy(&data).into_owned(), node_stat.czxid)];
    // The next in line, to know who made a claim we only see after it left.
    for next in kids.iter().skip(1).take(2) {
        match client.get_data(&format!("{path}/{}", next.name)).await {
            Ok((data, stat)) => {
                queue.push((String::from_utf8_lossy(&data).into_owned(), stat.czxid))
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((
        View::Latch {
            path: path_stat,
            queue,
        },
        wake_on(vec![children_w, path_w, node_w]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mzxid: i64, pzxid: i64, version: i32) -> zk::Stat {
        zk::Stat {
            czxid: 2,
            mzxid,
            pzxid,
            ctime: 1000,
            mtime: 1000,
            version,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 0,
            num_children: 0,
        }
    }

    fn latch(mzxid: i64, pzxid: i64, version: i32, queue: &[(&str, i64)]) -> View {
        View::Latch {
            path: stat(mzxid, pzxid, version),
            queue: queue.iter().map(|(id, c)| (id.to_string(), *c)).collect(),
        }
    }

    fn led(id: &str, mzxid: u64) -> Option<Participant> {
        Some(Participant::new(id, true).with_term(Term::new(1000, mzxid)))
    }

    #[test]
    fn a_claim_after_the_queue_last_changed_is_the_first_nodes() {
        let mut s = Seen::default();
        assert_eq!(s.reports(latch(8, 7, 1, &[("a", 7)])), vec![led("a", 8)]);
        // b joins behind a: a still leads with the same term.
        assert_eq!(
            s.reports(latch(8, 9, 1, &[("a", 7), ("b", 9)])),
            vec![led("a", 8)]
        );
    }

    #[test]
    fn a_new_first_node_does_not_inherit_the_previous_leaders_term() {
        let mut s = Seen::default();
        s.reports(latch(8, 10, 1, &[("a", 7), ("b", 9), ("c", 10)]));
        // a left, b claimed at 12, and we read after both.
        assert_eq!(
            s.reports(latch(12, 11, 2, &[("b", 9), ("c", 10)])),
            vec![led("b", 12)]
        );
        // b left; c has not claimed: nothing to report yet (not c with b's term).
        assert_eq!(s.reports(latch(12, 13, 2, &[("c", 10)])), vec![]);
        // c claims.
        assert_eq!(
            s.reports(latch(14, 13, 3, &[("c", 10)])),
            vec![led("c", 14)]
        );
    }

    #[test]
    fn a_leadership_between_two_reads_is_reported_with_its_term() {
        let mut s = Seen::default();
        s.reports(latch(8, 10, 1, &[("a", 7), ("b", 9), ("c", 10)]));
        // a left, b claimed at 12 and left, c not claimed yet.
        assert_eq!(
            s.reports(latch(12, 13, 2, &[("c", 10)])),
            vec![led("b", 12)]
        );
        assert_eq!(
            s.reports(latch(15, 13, 3, &[("c", 10)])),
            vec![led("c", 15)]
        );
    }

    #[test]
    fn a_leadership_hidden_behind_a_later_claim_is_reported_without_its_term() {
        let mut s = Seen::default();
        s.reports(latch(8, 10, 1, &[("a", 7), ("b", 9), ("c", 10)]));
        // a left, b claimed and left, c claimed at 15: b's term is unknown.
        assert_eq!(
            s.reports(latch(15, 13, 3, &[("c", 10)])),
            vec![Some(Participant::new("b", true)), led("c", 15)]
        );
    }

    #[test]
    fn an_empty_latch_reports_no_leader() {
        let mut s = Seen::default();
        assert_eq!(s.reports(latch(8, 9, 1, &[])), vec![None]);
        assert_eq!(s.reports(View::NoPath), vec![None]);
    }
}
