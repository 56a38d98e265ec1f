//! Claims of many elections on one session, committed together.
//!
//! A claim (see [`ZkElection`](crate::ZkElection)'s terms) is one multi: check that the
//! claiming node exists, assert that the nodes seen ahead of its predecessor are gone
//! (create + delete each), and write the latch path. When many elections on a session are
//! granted at once (a mass handover, a rejoin after a wipe), each claim as its own request
//! is its own ZooKeeper transaction. Here the claims waiting while one commit is in flight
//! go out together as one multi: one transaction for all of them.
//!
//! A multi is atomic, so a batch either applies every claim in it or none. When one claim's
//! operation fails, the server names its index: that claim alone gets the failure (with the
//! index within its own operations, as if it had been sent alone), and the others are sent
//! again. Claims of different elections touch different nodes and latch paths; two claims
//! on the same latch path can only both pass if each node's own checks pass, which the
//! latch's rules exclude (a claimant's nodes ahead are gone, so only one can be first), and
//! if they did not, the whole batch fails and the culprit is split off. A claim that is
//! alone is sent alone, exactly as before: nothing waits for a batch to fill.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use zookeeper_client as zk;

use crate::config::NodeAcl;

/// At most this many operations in one multi (a claim has 2 + 2 × nodes asserted gone; a
/// multi of this many small operations stays far below ZooKeeper's 1 MiB request limit).
const MAX_OPS: usize = 1000;

/// One operation of a claim.
pub(crate) enum Op {
    /// The node exists (any version).
    Check(String),
    /// The node does not exist: created (with these ACLs) and deleted again.
    Gone(String, NodeAcl),
    /// Write the data of the latch path (the last operation of a claim).
    Set(String, Vec<u8>),
}

/// What a claim's commit returned: the latch path's stat after the write, or the failure
/// (an operation's index counts within the claim's own operations).
pub(crate) type Claimed = std::result::Result<zk::Stat, zk::MultiWriteError>;

impl Op {
    /// How many multi operations it is.
    fn width(&self) -> usize {
        match self {
            Op::Gone(..) => 2,
            Op::Check(_) | Op::Set(..) => 1,
        }
    }
}

struct Request {
    client: zk::Client,
    ops: Vec<Op>,
    reply: oneshot::Sender<Claimed>,
}

impl Request {
    /// How many multi operations the claim is.
    fn width(&self) -> usize {
        self.ops.iter().map(Op::width).sum()
    }
}

/// The claims of one session waiting to be committed.
#[derive(Default)]
pub(crate) struct Claims {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Request>,
    /// The ZooKeeper sessions a task is committing batches for (each takes everything
    /// pending on its session, then stops). One per session: a commit waiting on a lost
    /// session (until its client reconnects or learns it expired) never holds up the
    /// claims made on the session that replaced it.
    committing: HashSet<i64>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Claims {
    /// Commit `ops` (one claim) on `client`, together with the claims of other elections of
    /// the session that wait at the same time.
    pub(crate) async fn claim(self: &Arc<Self>, client: &zk::Client, ops: Vec<Op>) -> Claimed {
        let (reply, answer) = oneshot::channel();
        let session = client.session_id().0;
        let start = {
            let mut st = lock(&self.state);
            st.pending.push_back(Request {
                client: client.clone(),
                ops,
                reply,
            });
            st.committing.insert(session)
        };
        if start {
            // A task of its own: the claimant's round may be abandoned at any moment, and
            // the others' claims must not go with it.
            tokio::spawn(self.clone().commit_all(session));
        }
        answer
            .await
            .unwrap_or(Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::ConnectionLoss,
            }))
    }

    /// Commit batches of `session`'s claims until none is pending.
    async fn commit_all(self: Arc<Self>, session: i64) {
        loop {
            let batch = {
                let mut st = lock(&self.state);
                let batch = take_batch(&mut st.pending, session);
                if batch.is_empty() {
                    st.committing.remove(&session);
                    return;
                }
                batch
            };
            let retry = commit(batch).await;
            if !retry.is_empty() {
                let mut st = lock(&self.state);
                for r in retry.into_iter().rev() {
                    st.pending.push_front(r);
                }
            }
        }
    }
}

/// The next batch: pending claims on `session`, in order, up to [`MAX_OPS`] operations (a
/// single larger claim goes alone). Claims nobody waits for any more are dropped.
fn take_batch(pending: &mut VecDeque<Request>, session: i64) -> Vec<Request> {
    pending.retain(|r| !r.reply.is_closed());
    let mut batch = Vec::new();
    let mut ops = 0;
    let mut i = 0;
    while i < pending.len() {
        let r = &pending[i];
        if r.client.session_id().0 != session {
            i += 1;
            continue;
        }
        if !batch.is_empty() && ops + r.width() > MAX_OPS {
            break;
        }
        ops += r.width();
        batch.extend(pending.remove(i));
    }
    batch
}

/// Commit one batch as one multi and answer its claims; the claims to send again (those
/// that were not applied because another claim of the batch failed).
async fn commit(batch: Vec<Request>) -> Vec<Request> {
    let client = batch[0].client.clone();
    let mut w = client.new_multi_writer();
    for (i, r) in batch.iter().enumerate() {
        if let Err(e) = add(&mut w, &r.ops) {
            // An invalid path (never from our own names): fail that claim, retry the rest
            // without it.
            let mut rest = batch;
            let bad = rest.remove(i);
            let _ = bad
                .reply
                .send(Err(zk::MultiWriteError::RequestFailed { source: e }));
            return rest;
        }
    }
    match w.commit().await {
        Ok(results) => {
            let mut results = results.into_iter();
            for r in batch {
                let mine: Vec<zk::MultiWriteResult> = results.by_ref().take(r.width()).collect();
                let answer = match mine.into_iter().last() {
                    Some(zk::MultiWriteResult::SetData { stat }) => Ok(stat),
                    _ => Err(zk::MultiWriteError::RequestFailed {
                        source: zk::Error::UnexpectedError("claim returned no stat".into()),
                    }),
                };
                let _ = r.reply.send(answer);
            }
            Vec::new()
        }
        Err(zk::MultiWriteError::OperationFailed { index, source }) => {
            let mut start = 0;
            let mut retry = Vec::new();
            for r in batch {
                let end = start + r.width();
                if (start..end).contains(&index) {
                    let _ = r.reply.send(Err(zk::MultiWriteError::OperationFailed {
                        index: index - start,
                        source: source.clone(),
                    }));
                } else {
                    retry.push(r);
                }
                start = end;
            }
            retry
        }
        Err(zk::MultiWriteError::RequestFailed { source }) => {
            for r in batch {
                let _ = r.reply.send(Err(zk::MultiWriteError::RequestFailed {
                    source: source.clone(),
                }));
            }
            Vec::new()
        }
    }
}

fn add(w: &mut zk::MultiWriter<'_>, ops: &[Op]) -> std::result::Result<(), zk::Error> {
    for op in ops {
        match op {
            Op::Check(p) => w.add_check_version(p, -1)?,
            Op::Gone(p, acl) => {
                let gone = zk::CreateMode::Persistent.with_acls(crate::latch::acls_for(*acl));
                w.add_create(p, &[], &gone)?;
                w.add_delete(p, None)?;
            }
            Op::Set(p, data) => w.add_set_data(p, data, None)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn client() -> zk::Client {
        let zk = succession_testkit::shared_zk().await;
        zk::Client::connector()
            .with_session_timeout(Duration::from_secs(5))
            .connect(&zk.addr())
            .await
            .expect("client connects")
    }

    fn claim_ops(node: &str, ahead: Option<&str>, latch: &str) -> Vec<Op> {
        let mut ops = vec![Op::Check(node.to_string())];
        if let Some(a) = ahead {
            ops.push(Op::Gone(a.to_string(), NodeAcl::Open));
        }
        ops.push(Op::Set(latch.to_string(), b"me".to_vec()));
        ops
    }

    /// Three claims made at once go out as one multi. The second checks a node that does
    /// not exist and the third asserts that a node which exists is gone: each of those
    /// gets its own failure, with the index within its own operations. The first is
    /// applied. The three are in one batch only because the current-thread runtime runs
    /// the committing task after all three are queued.
    #[tokio::test]
    async fn coinciding_claims_commit_together_and_a_failing_one_is_split_off() {
        let c = client().await;
        let base = succession_testkit::unique_path("claims");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut paths = Vec::new();
        for i in 0..3 {
            let latch = format!("{base}-{i}");
            c.mkdir(&latch, &persistent).await.expect("latch path");
            let node = format!("{latch}/n");
            c.create(&node, &[], &persistent).await.expect("node");
            paths.push((latch, node));
        }
        let claims = Arc::new(Claims::default());
        let missing = format!("{}/gone", paths[1].0);
        let present = paths[0].1.clone();
        let (a, b, d) = tokio::join!(
            claims.claim(&c, claim_ops(&paths[0].1, None, &paths[0].0)),
            claims.claim(&c, claim_ops(&missing, None, &paths[1].0)),
            claims.claim(&c, claim_ops(&paths[2].1, Some(&present), &paths[2].0)),
        );
        let a = a.expect("the first claim is applied");
        assert_eq!(
            b,
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NoNode
            }),
            "the claim of a missing node fails on its check"
        );
        assert_eq!(
            d,
            Err(zk::MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NodeExists
            }),
            "the claim asserting a present node gone fails on that assertion"
        );
        let (data, stat) = c.get_data(&paths[0].0).await.expect("read latch 0");
        assert_eq!((data.as_slice(), stat.mzxid), (&b"me"[..], a.mzxid));
        for (latch, _) in &paths[1..] {
            let (data, _) = c.get_data(latch).await.expect("read latch");
            assert!(data.is_empty(), "a failed claim wrote nothing to {latch}");
        }
    }

    /// Claims that all pass commit as one transaction: the same zxid on every latch path.
    #[tokio::test]
    async fn coinciding_claims_that_pass_are_one_transaction() {
        let c = client().await;
        let base = succession_testkit::unique_path("claims-ok");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let claims = Arc::new(Claims::default());
        let mut futs = Vec::new();
        for i in 0..5 {
            let latch = format!("{base}-{i}");
            c.mkdir(&latch, &persistent).await.expect("latch path");
            let node = format!("{latch}/n");
            c.create(&node, &[], &persistent).await.expect("node");
            futs.push(claims.claim(&c, claim_ops(&node, None, &latch)));
        }
        let stats: Vec<zk::Stat> = futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| r.expect("claim applied"))
            .collect();
        assert!(
            stats.iter().all(|s| s.mzxid == stats[0].mzxid),
            "one transaction: {:?}",
            stats.iter().map(|s| s.mzxid).collect::<Vec<_>>()
        );
    }
}
