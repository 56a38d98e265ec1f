//! `succession observe`: follow the election without taking part, driven by the store's
//! watches (ZooKeeper: the latch children, the latch path and the leader's node; etcd: the
//! prefix). Prints a `leader` event with the leader's id and term at start and on every
//! change; `--interval` is only a fallback re-read.
//!
//! Supervised mode: both stores are watched, and any change in either leads to a re-read
//! of the supervised leader (the layer that counts is the one in the mode record).

use std::process::ExitCode;
use std::time::Duration;

use succession::etcd::EtcdLeaderWatch;
use succession::zk::ZkLeaderWatch;
use succession::Participant;

use crate::args::{Backend, Settings};
use crate::events::{Emitter, V};
use crate::Shutdown;

/// One store's watch.
enum Watch {
    Zk(ZkLeaderWatch),
    Etcd(EtcdLeaderWatch),
}

impl Watch {
    async fn next(&mut self) -> Option<succession::Result<Option<Participant>>> {
        match self {
            Watch::Zk(w) => w.next().await,
            Watch::Etcd(w) => w.next().await,
        }
    }
}

/// Run `observe` until SIGINT/SIGTERM.
pub async fn observe(s: Settings, interval: Duration, stop: Shutdown) -> Result<ExitCode, String> {
    match &s.backend {
        Backend::Zk { connect, path } => {
            let cfg = crate::backend::zk_config(&s, connect, path)?;
            let em = Emitter::new(&s.id);
            single(&s, Watch::Zk(ZkLeaderWatch::start(cfg, interval)), em, stop).await
        }
        Backend::Etcd { endpoints, prefix } => {
            let cfg = crate::backend::etcd_config(&s, endpoints, prefix)?;
            let em = Emitter::new(&s.id);
            single(
                &s,
                Watch::Etcd(EtcdLeaderWatch::start(cfg, interval)),
                em,
                stop,
            )
            .await
        }
        Backend::Supervised { .. } => supervised(s, interval, stop).await,
    }
}

/// Until the first observation: bounded by --startup-timeout; a non-retryable error ends
/// it at once.
async fn first(s: &Settings, w: &mut Watch) -> Result<Option<Participant>, String> {
    let deadline = tokio::time::Instant::now() + s.startup_timeout;
    let mut last_err: Option<succession::Error> = None;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(Ok(p))) => return Ok(p),
            Ok(Some(Err(e))) if !e.is_retryable() => {
                return Err(format!("cannot read the election: {e}"))
            }
            Ok(Some(Err(e))) => last_err = Some(e),
            Ok(None) => return Err("cannot read the election: the watch ended".into()),
            Err(_) => {
                let why = last_err
                    .map(|e| e.to_string().trim_end_matches("; retrying").to_string())
                    .unwrap_or_else(|| "no answer; is the store running and reachable?".into());
                return Err(format!(
                    "could not read the election within {} (--startup-timeout): {why}",
                    humantime::format_duration(s.startup_timeout)
                ));
            }
        }
    }
}

async fn single(
    s: &Settings,
    mut w: Watch,
    em: Emitter,
    mut stop: Shutdown,
) -> Result<ExitCode, String> {
    let p = tokio::select! {
        p = first(s, &mut w) => p?,
        _ = stop.recv() => {
            em.emit("closed", &[]);
            return Ok(ExitCode::SUCCESS);
        }
    };
    emit_leader(&em, &p);
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            o = w.next() => match o {
                Some(Ok(p)) => emit_leader(&em, &p),
                Some(Err(e)) if !e.is_retryable() => {
                    return Err(format!("cannot read the election: {e}"))
                }
                Some(Err(e)) => eprintln!(
                    "succession: reading the leader failed: {}",
                    crate::ui::in_cli_terms(&e.to_string())
                ),
                None => return Err("the watch on the election ended".into()),
            },
        }
    }
    em.emit("closed", &[]);
    Ok(ExitCode::SUCCESS)
}

async fn supervised(
    s: Settings,
    interval: Duration,
    mut stop: Shutdown,
) -> Result<ExitCode, String> {
    let Backend::Supervised {
        connect,
        path,
        endpoints,
        prefix,
    } = &s.backend
    else {
        unreachable!("supervised observe needs supervised settings")
    };
    let mut zk = ZkLeaderWatch::start(crate::backend::zk_config(&s, connect, path)?, interval);
    let mut etcd = EtcdLeaderWatch::start(
        crate::backend::etcd_config(&s, endpoints, prefix)?,
        interval,
    );
    let built = crate::backend::build(&s)?;
    let e = built.election;
    let em = Emitter::new(e.id());
    let first = tokio::select! {
        r = tokio::time::timeout(s.startup_timeout, e.leader()) => r,
        _ = stop.recv() => {
            let _ = tokio::time::timeout(crate::CLOSE_BOUND, e.close()).await;
            em.emit("closed", &[]);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut last = match first {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => return Err(format!("cannot read the election: {err}")),
        Err(_) => {
            return Err(format!(
            "could not read the election within {} (--startup-timeout); is the store reachable?",
            humantime::format_duration(s.startup_timeout)
        ))
        }
    };
    emit_leader(&em, &last);
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            o = zk.next() => check(o)?,
            o = etcd.next() => check(o)?,
            _ = tokio::time::sleep(interval) => {}
        }
        match e.leader().await {
            Ok(l) => {
                if l != last {
                    emit_leader(&em, &l);
                    last = l;
                }
            }
            Err(err) => eprintln!(
                "succession: reading the leader failed: {}",
                crate::ui::in_cli_terms(&err.to_string())
            ),
        }
    }
    let _ = tokio::time::timeout(crate::CLOSE_BOUND, e.close()).await;
    em.emit("closed", &[]);
    Ok(ExitCode::SUCCESS)
}

/// A wake-up from one store's watch: fine unless the watch ended for good.
fn check(o: Option<succession::Result<Option<Participant>>>) -> Result<(), String> {
    match o {
        None => Err("the watch on the election ended".into()),
        Some(Err(e)) if !e.is_retryable() => Err(format!("cannot read the election: {e}")),
        Some(_) => Ok(()),
    }
}

fn emit_leader(em: &Emitter, l: &Option<Participant>) {
    match l {
        Some(p) => {
            let term = p.term.map(|t| t.to_string());
            em.emit(
                "leader",
                &[
                    ("leader", V::S(&p.id)),
                    ("term", term.as_deref().map(V::S).unwrap_or(V::Null)),
                ],
            );
        }
        None => em.emit("leader", &[("leader", V::Null), ("term", V::Null)]),
    }
}
