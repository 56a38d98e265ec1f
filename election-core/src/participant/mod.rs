//! The participant shell every backend shares: the one `join` wait, the one path by which
//! a permanent failure found by a participation task reaches `join`, and the one runner
//! that feeds a decision [`Machine`] and carries out its effects ([`feed`], through a
//! backend's [`Executor`]), deferring every store effect of a batch until after the
//! batch's status publications ("stop leading before leaving", enforced here whatever the
//! machine emits).
//!
//! Every participant (ZooKeeper latch, etcd election, memory, supervisor) is a handle that
//! steers a background task and reads its [`Status`] stream. What `join` waits for is the
//! same everywhere, so it is written once here ([`wait_joined`]), and so is the channel for
//! permanent refusals such as a denied permission ([`Fatal`]). Backend implementors use
//! these; applications do not need them.

use std::sync::Arc;

mod machine;
mod runner;
mod slot;
pub use machine::{mix, virtual_origin, Machine};
pub use runner::{feed, publications_first, EffectKind, Executor};
pub use slot::RoundSlot;

use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::status::{Role, Status};

/// A permanent failure reported by a participation task (e.g. permission denied), for
/// `join` to return. Cloning shares the slot.
#[derive(Debug, Clone)]
pub struct Fatal {
    tx: Arc<watch::Sender<Option<(ErrorKind, String)>>>,
}

impl Default for Fatal {
    fn default() -> Self {
        Self::new()
    }
}

impl Fatal {
    /// An empty slot.
    pub fn new() -> Self {
        Fatal {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Report a permanent failure. Publish the health that explains it before (a `join`
    /// returning this error then finds it published), and a role that gives up (`Idle`)
    /// only after (a `join` woken by `Idle` must find the failure, not take it for a resign).
    pub fn report(&self, kind: ErrorKind, msg: impl Into<String>) {
        self.tx.send_replace(Some((kind, msg.into())));
    }

    /// Forget an earlier failure (a new `join`, or progress proved it no longer holds).
    pub fn clear(&self) {
        self.tx.send_if_modified(|f| f.take().is_some());
    }

    /// The failure reported, if any.
    pub fn get(&self) -> Option<Error> {
        self.tx
            .borrow()
            .as_ref()
            .map(|(kind, msg)| Error::new(*kind, msg.clone()))
    }

    fn subscribe(&self) -> watch::Receiver<Option<(ErrorKind, String)>> {
        self.tx.subscribe()
    }
}

/// What `join` waits for, for every backend: resolves `Ok` once our place is held (role
/// `Follower` or `Leader`); fails with the reported [`Fatal`] failure, with what
/// `extra_check` returns (checked after each status change; e.g. the supervisor's active
/// layer refusing us), with [`ErrorKind::Closed`] when the participant is or gets closed
/// (`what` names it in the message), or with [`ErrorKind::NotLeader`] when it resigned
/// while joining. Failures are checked before the role, since a participant that gives
/// up publishes `Idle`.
pub async fn wait_joined(
    mut status: watch::Receiver<Status>,
    fatal: Option<&Fatal>,
    id: &str,
    what: &str,
    mut extra_check: impl FnMut() -> Option<Error>,
) -> Result<()> {
    let mut fatal_rx = fatal.map(Fatal::subscribe);
    loop {
        if let Some(e) = fatal.and_then(Fatal::get) {
            return Err(e);
        }
        if let Some(e) = extra_check() {
            return Err(e);
        }
        let role = status.borrow_and_update().role.clone();
        match role {
            Role::Closed => return Err(Error::closed(what)),
            Role::Idle => {
                return Err(Error::new(
                    ErrorKind::NotLeader,
                    format!("{id} resigned while joining; call join again"),
                ))
            }
            r if r.is_joined() => return Ok(()),
            _ => {}
        }
        let fatal_changed = async {
            match fatal_rx.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = status.changed() => {
                if r.is_err() {
                    return Err(Error::closed(what));
                }
            }
            _ = fatal_changed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusCell;
    use crate::term::Term;

    #[tokio::test]
    async fn joined_roles_resolve_the_wait() {
        let cell = StatusCell::new();
        cell.set_role(Role::Candidate, "joining");
        let rx = cell.subscribe();
        let wait =
            tokio::spawn(async move { wait_joined(rx, None, "a", "test of a", || None).await });
        cell.set_role(
            Role::Leader {
                term: Term::new(1, 1),
            },
            "elected",
        );
        wait.await.expect("task").expect("joined");
    }

    #[tokio::test]
    async fn a_reported_failure_wins_over_the_idle_role_it_publishes() {
        let cell = StatusCell::new();
        cell.set_role(Role::Candidate, "joining");
        let fatal = Fatal::new();
        let (rx, f) = (cell.subscribe(), fatal.clone());
        let wait =
            tokio::spawn(async move { wait_joined(rx, Some(&f), "a", "test of a", || None).await });
        fatal.report(ErrorKind::PermissionDenied, "permission denied on /x");
        cell.set_role(Role::Idle, "permission denied");
        let err = wait.await.expect("task").expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        // Reported before the wait starts: the failure, never "resigned".
        let err = wait_joined(cell.subscribe(), Some(&fatal), "a", "test of a", || None)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        fatal.clear();
        let err = wait_joined(cell.subscribe(), Some(&fatal), "a", "test of a", || None)
            .await
            .expect_err("resigned");
        assert_eq!(err.kind(), ErrorKind::NotLeader, "{err}");
    }

    #[tokio::test]
    async fn resigned_and_closed_are_told_apart() {
        let cell = StatusCell::new();
        cell.set_role(Role::Idle, "resigned");
        let err = wait_joined(cell.subscribe(), None, "a", "test of a", || None)
            .await
            .expect_err("resigned");
        assert_eq!(err.kind(), ErrorKind::NotLeader);
        assert!(
            err.to_string().contains("a resigned while joining"),
            "{err}"
        );
        cell.close("closed");
        let err = wait_joined(cell.subscribe(), None, "a", "test of a", || None)
            .await
            .expect_err("closed");
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(err.to_string().contains("test of a"), "{err}");
    }

    #[tokio::test]
    async fn the_extra_check_is_heard() {
        let cell = StatusCell::new();
        cell.set_role(Role::Candidate, "joining");
        let err = wait_joined(cell.subscribe(), None, "a", "test of a", || {
            Some(Error::new(ErrorKind::PermissionDenied, "layer refused"))
        })
        .await
        .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    }
}
