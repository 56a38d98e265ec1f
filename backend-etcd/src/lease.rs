//! The lease keeper: grant a lease, renew it every TTL/3 on a keep-alive stream of our own,
//! and track the earliest instant the server could expire it.
//!
//! # The deadline
//!
//! etcd sets a lease's expiry to "now + TTL" when it processes a grant or a renewal, and it
//! processes a request only after we sent it. So after a renewal (or the grant) sent at
//! instant `s` is answered positively, the server cannot expire the lease before `s + TTL`
//! (restarts and leader changes only extend leases). The keeper records, for the newest
//! answered renewal, `expires = s + TTL` (TTL as the server reported it, never more than
//! granted) and `drop_at = expires - margin`, with `margin = max(TTL/6, 300 ms)`. The
//! election stops leading at `drop_at` at the latest unless a newer renewal was answered.
//! The argument needs the client's and the server's clocks to run at about the same rate
//! (they measure durations, not wall time); the margin absorbs drift, timer lateness and
//! scheduling delays.
//!
//! A broken keep-alive stream (etcd restarted, member gone, connection reset) also marks
//! the lease "in doubt" at once: after a WIPE every lease is gone instantly, whatever the
//! deadline said, so a leader must not wait for `drop_at` to step down.
//!
//! # One loss signal per session
//!
//! A lease backs every election of its [`EtcdSession`](crate::EtcdSession). The keeper is
//! the only timer on it: when `drop_at` passes without a newer answer, when the stream
//! breaks, or when the server says the lease is gone, the keeper takes the session's
//! [`Registry`] lock, demotes every election on it that leads (publishing its status), and
//! only then publishes the new lease state (which wakes the elections' tasks). An election
//! publishes `Leader` only under the same lock after checking the lease state, so no
//! election can lead on a lease the keeper has given up on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions, LeaseKeepAliveStream, LeaseKeeper};
use succession_core::text::Human;
use succession_core::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::conn::{Backoff, Connection};
use crate::error;
use crate::session::{Registry, LEASE_VALID};
use succession_core::{HealthLevel, Role};

/// What the keeper knows about the lease right now.
#[derive(Debug, Clone)]
pub(crate) struct LeaseState {
    /// Send time of the newest renewal (or the grant) the server answered positively.
    pub(crate) last_renewal: Instant,
    /// The earliest instant the server could expire the lease: `last_renewal + TTL`.
    pub(crate) expires: Instant,
    /// `expires - margin`: leadership must be dropped by then.
    pub(crate) drop_at: Instant,
    /// Whether a keep-alive stream is open and not known to be broken.
    pub(crate) stream_ok: bool,
    /// The latest renewal trouble, cleared when renewals flow again.
    pub(crate) trouble: Option<Arc<str>>,
    /// Set when the server said the lease does not exist (final).
    pub(crate) lost: Option<Arc<str>>,
    /// Set by the keeper when `drop_at` passed without a newer answer (wakes the elections;
    /// cleared by the next answer).
    pub(crate) overdue: bool,
}

impl LeaseState {
    /// Whether a leader may keep leading on this lease at `now`.
    pub(crate) fn safe_at(&self, now: Instant) -> bool {
        self.lost.is_none() && self.stream_ok && now < self.drop_at
    }

    /// Why the lease is in doubt (for status reasons).
    pub(crate) fn doubt_reason(&self, now: Instant) -> String {
        if let Some(l) = &self.lost {
            return format!("lease lost: {l}");
        }
        let since = Human(now.saturating_duration_since(self.last_renewal));
        match (&self.trouble, self.stream_ok) {
            (Some(t), false) => format!(
                "lease keep-alive stream broke ({t}); not leading until a renewal is answered (last answered renewal sent {since} ago)"
            ),
            (None, false) => format!(
                "lease keep-alive stream broke; not leading until a renewal is answered (last answered renewal sent {since} ago)"
            ),
            _ => format!(
                "no lease renewal answered for {since}; stepped down before the lease can expire"
            ),
        }
    }
}

/// A granted lease and its keeper task (aborted when this is dropped).
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) id: i64,
    pub(crate) ttl: Duration,
    pub(crate) state: watch::Receiver<LeaseState>,
    /// The keeper's sender, for [`declare_lost`](Self::declare_lost).
    tx: Arc<watch::Sender<LeaseState>>,
    registry: Arc<Registry>,
    keeper: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Lease {
    /// Grant lease `id` (chosen by us, so that a grant whose answer was lost can still be
    /// revoked) with the configured TTL and start its keeper.
    pub(crate) async fn grant(
        conn: &Arc<Connection>,
        client: &Client,
        id: i64,
        registry: Arc<Registry>,
    ) -> Result<Lease> {
        let cfg = &conn.config;
        let mut c = client.clone();
        let sent = Instant::now();
        let resp = conn
            .request(
                "grant a lease",
                c.lease_grant(
                    cfg.ttl.as_secs() as i64,
                    Some(LeaseGrantOptions::new().with_id(id)),
                ),
            )
            .await?;
        if !resp.error().is_empty() || resp.ttl() <= 0 {
            return Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "etcd refused to grant lease {id:x}: {:?} (ttl {})",
                    resp.error(),
                    resp.ttl()
                ),
            ));
        }
        // The TTL the server will enforce (it may raise one below its minimum); the
        // deadlines are computed from it, never from what we asked for.
        let ttl = Duration::from_secs(resp.ttl() as u64);
        let margin = cfg.safety_margin();
        let expires = sent + ttl;
        let (tx, rx) = watch::channel(LeaseState {
            last_renewal: sent,
            expires,
            drop_at: expires - margin,
            stream_ok: true,
            trouble: None,
            lost: None,
            overdue: false,
        });
        let tx = Arc::new(tx);
        let keeper = Keeper {
            registry: registry.clone(),
            conn: conn.clone(),
            client: client.clone(),
            id,
            ttl,
            margin,
            tx: tx.clone(),
        };
        let span = tracing::debug_span!("lease_keeper", lease = %format_args!("{id:x}"));
        let keeper = tokio::spawn(keeper.run().instrument(span));
        tracing::debug!(lease = %format_args!("{id:x}"), ?ttl, "lease granted");
        Ok(Lease {
            id,
            ttl,
            state: rx,
            tx,
            registry,
            keeper,
        })
    }

    /// Whether the server said this lease is gone.
    pub(crate) fn is_lost(&self) -> bool {
        self.state.borrow().lost.is_some()
    }

    /// An election's request was refused because the lease does not exist (e.g. revoked by
    /// someone else) before the keeper's next renewal noticed: mark it lost for the whole
    /// session now (leaders demoted first), so that the session grants a new one and no
    /// election campaigns again on the dead lease.
    pub(crate) fn declare_lost(&self, why: String) {
        mark_lost(&self.registry, &self.tx, self.id, why);
    }
}

/// Revoke lease `id`; Ok also when it no longer exists.
pub(crate) async fn revoke(conn: &Connection, client: &Client, id: i64) -> Result<()> {
    let mut c = client.clone();
    match conn.request("revoke the lease", c.lease_revoke(id)).await {
        Ok(_) => Ok(()),
        Err(e) if error::lease_gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

struct Keeper {
    registry: Arc<Registry>,
    conn: Arc<Connection>,
    client: Client,
    id: i64,
    ttl: Duration,
    margin: Duration,
    tx: Arc<watch::Sender<LeaseState>>,
}

/// Mark lease `id` lost (final): every leader of the session is demoted first, then the
/// state says lost. Nothing happens if it already is.
fn mark_lost(registry: &Registry, tx: &watch::Sender<LeaseState>, id: i64, why: String) {
    if tx.borrow().lost.is_some() {
        return;
    }
    tracing::info!(lease = %format_args!("{id:x}"), %why, "lease lost");
    let reason = format!("lease lost: {why}; campaigning again with a new lease");
    registry.demote_then(Role::Candidate, HealthLevel::Unhealthy, &reason, || {
        tx.send_modify(|s| {
            s.stream_ok = false;
            s.lost = Some(why.into());
        });
    });
}

enum Step {
    Send,
    Stuck,
    Overdue,
    Message(std::result::Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error>),
}

impl Keeper {
    /// Record a positive answer to a renewal sent at `sent` with the server's `ttl`.
    fn answered(&self, sent: Instant, ttl: Duration) {
        let ttl = ttl.min(self.ttl);
        let now = Instant::now();
        let recovered = self.tx.send_if_modified(|s| {
            let recovering = !s.stream_ok || s.trouble.is_some() || now >= s.drop_at;
            let expires = sent + ttl;
            if expires > s.expires {
                s.last_renewal = sent;
                s.expires = expires;
                s.drop_at = expires - self.margin;
            }
            s.stream_ok = true;
            s.trouble = None;
            s.overdue = false;
            // Plain renewals change the deadline silently (readers re-read it when their
            // timer fires); a recovery from doubt wakes them.
            recovering
        });
        if recovered {
            self.registry.lease_state(LEASE_VALID);
        }
    }

    fn trouble(&self, why: String, stream_ok: bool) {
        tracing::debug!(lease = %format_args!("{:x}", self.id), %why, "lease renewal trouble");
        let why: Arc<str> = why.into();
        let reason = format!("lease keep-alive trouble ({why}); stepped down");
        self.registry
            .demote_then(Role::Suspended, HealthLevel::Degraded, &reason, || {
                self.tx.send_if_modified(|s| {
                    let changed = s.stream_ok != stream_ok || s.trouble.as_deref() != Some(&*why);
                    s.stream_ok = stream_ok;
                    s.trouble = Some(why.clone());
                    changed
                });
            });
    }

    /// `drop_at` passed without a newer answer: step every leader down now.
    fn overdue(&self) {
        let since = Human(Instant::now().saturating_duration_since(self.tx.borrow().last_renewal));
        let reason = format!(
            "no lease renewal answered for {since}; stepped down before the lease can expire"
        );
        tracing::debug!(lease = %format_args!("{:x}", self.id), %reason, "lease overdue");
        self.registry
            .demote_then(Role::Suspended, HealthLevel::Degraded, &reason, || {
                self.tx.send_modify(|s| s.overdue = true);
            });
    }

    fn lost(&self, why: String) {
        mark_lost(&self.registry, &self.tx, self.id, why);
    }

    /// When the keeper must declare the lease overdue (None: already did).
    fn overdue_at(&self) -> Option<Instant> {
        let s = self.tx.borrow();
        (!s.overdue && s.lost.is_none()).then_some(s.drop_at)
    }

    async fn open(&self) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let mut c = self.client.clone();
        self.conn
            .request(
                "open the lease keep-alive stream",
                c.lease_keep_alive(self.id),
            )
            .await
    }

    async fn run(self) {
        let interval = self.ttl / 3;
        let stuck_after = self.conn.config.request_timeout.min(self.ttl);
        let mut backoff = Backoff::for_ttl(self.conn.config.ttl);
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut pending: VecDeque<Instant> = VecDeque::new();
        let mut next_send = Instant::now() + interval;
        loop {
            let Some((keeper, responses)) = stream.as_mut() else {
                // (Re)open: etcd-client does not reopen a keep-alive stream after a restart
                // or failover. Opening sends one renewal and waits for its answer.
                let sent = Instant::now();
                let overdue_at = self.overdue_at();
                let opened = tokio::select! {
                    r = self.open() => Some(r),
                    _ = tokio::time::sleep_until(overdue_at.unwrap_or_else(Instant::now)), if overdue_at.is_some() => None,
                };
                let Some(opened) = opened else {
                    self.overdue();
                    continue;
                };
                match opened {
                    Ok(s) => {
                        self.answered(sent, self.ttl);
                        stream = Some(s);
                        pending.clear();
                        next_send = sent + interval;
                        backoff.reset();
                    }
                    Err(e) if error::lease_gone(&e) => {
                        self.lost(e.to_string());
                        return;
                    }
                    Err(e) => {
                        self.trouble(e.to_string(), false);
                        let overdue_at = self.overdue_at();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_delay(rand::random())) => {}
                            _ = tokio::time::sleep_until(overdue_at.unwrap_or_else(Instant::now)), if overdue_at.is_some() => self.overdue(),
                        }
                    }
                }
                continue;
            };
            let stuck_at = pending.front().map(|s| *s + stuck_after);
            let overdue_at = self.overdue_at();
            let step = tokio::select! {
                biased;
                m = responses.message() => Step::Message(m),
                _ = tokio::time::sleep_until(overdue_at.unwrap_or_else(Instant::now)), if overdue_at.is_some() => Step::Overdue,
                _ = tokio::time::sleep_until(stuck_at.unwrap_or(next_send)), if stuck_at.is_some() => Step::Stuck,
                _ = tokio::time::sleep_until(next_send) => Step::Send,
            };
            match step {
                Step::Overdue => self.overdue(),
                Step::Send => {
                    let now = Instant::now();
                    next_send = now + interval;
                    // The request channel has room for 100; a full one means a dead stream.
                    match tokio::time::timeout(interval, keeper.keep_alive()).await {
                        Ok(Ok(())) => pending.push_back(now),
                        Ok(Err(e)) => {
                            let e = error::map("renew the lease", e);
                            self.trouble(e.to_string(), false);
                            stream = None;
                        }
                        Err(_) => {
                            self.trouble(
                                "the keep-alive stream does not take requests".into(),
                                false,
                            );
                            stream = None;
                        }
                    }
                }
                Step::Stuck => {
                    // A renewal unanswered for a whole request timeout: the server is frozen
                    // or the connection is silently dead. Try a fresh stream (the deadline
                    // keeps running; the election steps down on its own at drop_at).
                    self.trouble(
                        format!(
                            "a lease renewal got no answer within {}",
                            Human(stuck_after)
                        ),
                        false,
                    );
                    stream = None;
                }
                Step::Message(Ok(Some(resp))) if resp.ttl() > 0 => {
                    if let Some(sent) = pending.pop_front() {
                        self.answered(sent, Duration::from_secs(resp.ttl() as u64));
                    }
                }
                Step::Message(Ok(Some(_))) => {
                    self.lost("etcd answered the renewal with TTL 0: lease not found".into());
                    return;
                }
                Step::Message(Ok(None)) => {
                    self.trouble(
                        "the keep-alive stream ended (etcd restarted or the member went away)"
                            .into(),
                        false,
                    );
                    stream = None;
                }
                Step::Message(Err(e)) => {
                    let e = error::map("renew the lease", e);
                    if error::lease_gone(&e) {
                        self.lost(e.to_string());
                        return;
                    }
                    self.trouble(e.to_string(), false);
                    stream = None;
                }
            }
        }
    }
}
