//! The [`Election`] contract, the [`Leadership`] handle and the [`ElectionExt`] conveniences.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::status::{Contact, HealthLevel, Role, Status};
use crate::term::Term;

/// One participant as the store sees it, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Participant {
    /// The participant id (ZooKeeper: the latch node's data; etcd: the key's value).
    pub id: String,
    /// Whether it is first in the queue, i.e. the leader.
    pub is_leader: bool,
    /// The fencing term it holds (or would hold) as leader, when the backend can compute it
    /// from what it read.
    pub term: Option<Term>,
}

impl Participant {
    /// A participant entry.
    pub fn new(id: impl Into<String>, is_leader: bool) -> Self {
        Participant {
            id: id.into(),
            is_leader,
            term: None,
        }
    }

    /// The same entry with its term.
    pub fn with_term(mut self, term: Term) -> Self {
        self.term = Some(term);
        self
    }
}

/// A leader election, seen from one participant.
///
/// # Contract
///
/// Every backend (ZooKeeper latch, etcd, in-memory, the dual-layer supervisor) keeps it, and
/// the conformance suite (feature `conformance`) proves it:
///
/// * **At most one leader.** At any instant at most one participant's [`status`](Election::status)
///   says [`Role::Leader`]. On [`resign`](Election::resign) and [`close`](Election::close) a
///   participant publishes that it no longer leads BEFORE it removes its place from the
///   store, so no successor is elected while it still acts.
/// * **Terms only grow.** Every grant carries a [`Term`] greater than every earlier grant of
///   the same election, across store wipes and supervisor failovers.
/// * **In doubt means not leader.** `Suspended`, unhealthy and closed participants are never
///   leader.
/// * **Liveness.** When the leader leaves, crashes or loses its session, a live participant
///   leads within the backend's documented bound; after any store outage ends (including a
///   wipe that lost every node and path), a leader is elected again. Participants never
///   drop out of the election on their own.
/// * **Clean exit.** After `close`, nothing of this participant is left in the store.
///
/// Participation runs in a background task owned by the handle; the methods only steer it.
/// Dropping the handle ends participation like a process exit would (best effort, without
/// waiting); call `close` for a clean, confirmed exit.
///
/// Conveniences (waiting for leadership, running work only while leading) are in
/// [`ElectionExt`], implemented for every `Election`: wrappers need not forward them.
#[async_trait]
pub trait Election: Send + Sync + fmt::Debug + 'static {
    /// This participant's id (what other participants see as the leader's id).
    fn id(&self) -> &str;

    /// Take part in the election. Idempotent.
    ///
    /// Starts participation (if not running) and resolves once our place is held in the
    /// store (role `Follower` or `Leader`). While the store is unreachable it keeps trying
    /// and keeps waiting (status shows `Candidate` and the health why); wrap it in a timeout
    /// when you need a bound. Dropping this future does NOT stop participation: use
    /// [`resign`](Election::resign) or [`close`](Election::close).
    ///
    /// Errors: [`ErrorKind::Closed`] after close; permanent store refusals such as
    /// [`ErrorKind::PermissionDenied`].
    async fn join(&self) -> Result<()>;

    /// Leave the election; `join` may be called again later (at the back of the queue).
    ///
    /// A leader first publishes that it no longer leads, then removes its place. Resolves
    /// when the place is removed (or the session that held it is gone). Ok when not joined.
    async fn resign(&self) -> Result<()>;

    /// Leave for good: resign, release every store resource (node, watch, lease, session),
    /// publish [`Role::Closed`]. Idempotent. After it, `join` fails with `Closed`.
    async fn close(&self) -> Result<()>;

    /// The status stream. The current value is available at once with `borrow()`.
    fn status(&self) -> watch::Receiver<Status>;

    /// The current leader, read live from the store; `Ok(None)` when nobody leads
    /// (including when the election path or prefix does not exist).
    async fn leader(&self) -> Result<Option<Participant>>;

    /// Every participant in queue order (the first is the leader), read live from the store.
    async fn participants(&self) -> Result<Vec<Participant>>;

    /// When this participant last had confirmed contact with its store, and how long a
    /// leader's claim stays safe without it. No I/O. Read by
    /// [`LeaderHealthCheck`](crate::health::LeaderHealthCheck).
    fn contact(&self) -> Contact;

    /// The earliest instant at which ANOTHER participant could be granted leadership if
    /// this participant lost every contact with its store now: work started under a grant
    /// that is lost must have stopped before it. `None` before any contact (nothing was
    /// ever granted here). No I/O.
    ///
    /// The default is [`contact()`](Election::contact)`.last + safe_for`: ZooKeeper, half the
    /// session timeout after the send instant of the latest request the server answered
    /// (the server expires the session no sooner than a whole timeout after it heard it); etcd, the
    /// lease keeper's step-down point, a safety margin before the lease can expire. The
    /// supervisor also bounds it by its mode lease, since a new mode generation is led only
    /// after the takeover delay. What no bound covers: a store fact that removes us at
    /// once (an operator deleting our node or key, revoking our lease), and a host paused
    /// past the bound (its work resumes late; fence on [`Term`]s for that).
    ///
    /// `succession::process` (feature `process`) and `succession run` cap the stop grace
    /// of a leader's command with it.
    fn takeover_bound(&self) -> Option<std::time::Instant> {
        let c = self.contact();
        c.last.map(|last| last + c.safe_for)
    }
}

/// Compile-time proof that [`Election`] stays object safe and shareable.
#[allow(dead_code)]
fn _assert_object_safe(_: Box<dyn Election>) {}
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<std::sync::Arc<dyn Election>>();
    is::<Leadership>();
    is::<Status>();
    is::<Participant>();
    is::<Term>();
    is::<Error>();
}

/// Held while leading: the grant's [`Term`] and a way to learn the moment it is lost.
///
/// Like client-go's `OnStartedLeading` context: `select!` your work against
/// [`lost`](Leadership::lost), and pass [`term`](Leadership::term) to whatever you write to.
#[derive(Debug, Clone)]
pub struct Leadership {
    term: Term,
    rx: watch::Receiver<Status>,
}

impl Leadership {
    /// A handle for the grant `term` on the status stream `rx`.
    pub fn new(term: Term, rx: watch::Receiver<Status>) -> Self {
        Leadership { term, rx }
    }

    /// The fencing token of this grant.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Whether this grant still holds (status is `Leader` with this term).
    pub fn is_current(&self) -> bool {
        self.rx.borrow().role == Role::Leader { term: self.term }
    }

    /// Completes the moment this grant is lost (any status other than `Leader` with this
    /// term, or the handle is gone). Completes at once if already lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        let term = self.term;
        async move {
            loop {
                if rx.borrow_and_update().role != (Role::Leader { term }) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Conveniences over any [`Election`]. Implemented for every `Election` (including
/// `dyn Election`) by a blanket impl; do not implement it yourself.
pub trait ElectionExt: Election {
    /// Whether the status says Leader right now.
    fn is_leader(&self) -> bool {
        self.status().borrow().is_leader()
    }

    /// The current grant, if leading.
    fn leadership(&self) -> Option<Leadership> {
        let rx = self.status();
        let term = rx.borrow().role.term()?;
        Some(Leadership::new(term, rx))
    }

    /// Wait until `pred` holds for the status, at most `timeout`.
    ///
    /// Errors: `Timeout` (with the last status in the message); `Closed` when the handle
    /// closes while waiting (unless `pred` accepts the closed status).
    fn wait_for_status<P>(
        &self,
        timeout: Duration,
        mut pred: P,
    ) -> impl Future<Output = Result<Status>> + Send
    where
        P: FnMut(&Status) -> bool + Send,
    {
        let mut rx = self.status();
        let id = self.id().to_owned();
        async move {
            let wait = async {
                loop {
                    let s = rx.borrow_and_update().clone();
                    if pred(&s) {
                        return Ok(s);
                    }
                    if s.role == Role::Closed {
                        return Err(Error::closed(&format!("election of {id}")));
                    }
                    if rx.changed().await.is_err() {
                        return Err(Error::closed(&format!("election of {id}")));
                    }
                }
            };
            match tokio::time::timeout(timeout, wait).await {
                Ok(r) => r,
                Err(_) => {
                    let s = rx.borrow().clone();
                    Err(Error::timeout(format!(
                        "{id} did not reach the awaited status within {timeout:?}; last status: {} ({}), health {} ({})",
                        s.role, s.reason, s.health.level, s.health.reason
                    )))
                }
            }
        }
    }

    /// Wait until this participant leads, at most `timeout`; returns the grant.
    ///
    /// Call [`Election::join`] first (or concurrently). Errors: `Timeout`, `Closed`.
    fn wait_for_leadership(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Leadership>> + Send {
        let rx = self.status();
        let fut = self.wait_for_status(timeout, |s| s.is_leader());
        async move {
            let s = fut.await?;
            let term = s.role.term().expect("predicate ensured leader");
            Ok(Leadership::new(term, rx))
        }
    }

    /// Run `work` only while this participant leads: fails at once with `NotLeader` when
    /// not leading; cancels (drops) `work` the moment leadership is lost and fails with
    /// `NotLeader`; otherwise returns its output.
    fn run_while_leader<F>(&self, work: F) -> impl Future<Output = Result<F::Output>> + Send
    where
        F: Future + Send,
        F::Output: Send,
    {
        let leadership = self.leadership();
        let id = self.id().to_owned();
        async move {
            let Some(leadership) = leadership else {
                return Err(Error::new(
                    ErrorKind::NotLeader,
                    format!("{id} is not the leader; wait_for_leadership first"),
                ));
            };
            let term = leadership.term();
            tokio::select! {
                biased;
                _ = leadership.lost() => Err(Error::new(
                    ErrorKind::NotLeader,
                    format!("{id} lost leadership (term {term}) while the work ran; it was cancelled"),
                )),
                out = work => Ok(out),
            }
        }
    }

    /// The current health level.
    fn health_level(&self) -> HealthLevel {
        self.status().borrow().health.level
    }
}

impl<E: Election + ?Sized> ElectionExt for E {}
