//! A leader per shard: many elections in one process on ONE ZooKeeper session (or one etcd
//! lease, or both under the supervisor), the way a service with a scheduler per queue or a
//! controller per partition runs them.
//!
//! Start three copies with different ids against your servers; each prints a line whenever
//! it starts or stops leading a shard, and every shard is led by exactly one of them:
//!
//! ```text
//! cargo run --example shard_leaders --features zk,etcd -- --backend zk --zk 127.0.0.1:2181 --shards 1000 --id node-1
//! cargo run --example shard_leaders --features zk,etcd -- --backend etcd --etcd http://127.0.0.1:2379 --shards 1000 --id node-2
//! cargo run --example shard_leaders --features zk,etcd -- --backend supervised --zk 127.0.0.1:2181 --etcd http://127.0.0.1:2379 --shards 100 --id node-3
//! ```
//!
//! Output, one line per change, prefixed by CLOCK_MONOTONIC in nanoseconds (comparable
//! across processes on one host): `<ns> ready <shards>` once every shard is joined,
//! `<ns> lead <shard> <term> [primary|fallback]`, `<ns> lost <shard> <term>` (stamped with the instant the
//! election published the change), and `<ns> closed` after a graceful
//! close. Type `close` (or end stdin) to close the session(s) gracefully: every shard this
//! process leads is handed over at once. `status <shard>` prints
//! `<ns> status <shard> <role> <health> ...` (what a stuck shard is doing).
//!
//! Options: `--backend zk|etcd|supervised` (default zk), `--zk CONNECT`, `--etcd ENDPOINT`,
//! `--shards N` (default 100), `--id ID` (default: the pid), `--path /prefix` (default
//! `/shard-leaders`; shard `i` is `<path>/s<i>`), `--session SECS` (ZooKeeper session
//! timeout and etcd lease TTL, default 6), `--failover-after SECS` (supervised, default
//! 2 × session). `RUST_LOG` (e.g. `succession_etcd::lease=debug`) logs to stderr.

use std::error::Error;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use succession::etcd::{EtcdSession, EtcdSessionConfig};
use succession::zk::{ZkSession, ZkSessionConfig};
use succession::{Election, Role, Supervisor};

struct Args {
    backend: String,
    zk: String,
    etcd: String,
    shards: usize,
    id: String,
    path: String,
    session: Duration,
    failover_after: Option<Duration>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "zk".into(),
        zk: "127.0.0.1:2181".into(),
        etcd: "http://127.0.0.1:2379".into(),
        shards: 100,
        id: format!("pid-{}", std::process::id()),
        path: "/shard-leaders".into(),
        session: Duration::from_secs(6),
        failover_after: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value (see the example's docs)"))
        };
        let secs = |v: String| -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite())
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{flag} takes seconds > 0, e.g. 6 or 1.5; got {v:?}"))
        };
        match flag.as_str() {
            "--backend" => a.backend = value()?,
            "--zk" => a.zk = value()?,
            "--etcd" => a.etcd = value()?,
            "--shards" => {
                let v = value()?;
                a.shards = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--shards takes a count > 0; got {v:?}"))?;
            }
            "--id" => a.id = value()?,
            "--path" => a.path = value()?,
            "--session" => a.session = secs(value()?)?,
            "--failover-after" => a.failover_after = Some(secs(value()?)?),
            other => return Err(format!("unknown option {other:?} (see the example's docs)")),
        }
    }
    if !["zk", "etcd", "supervised"].contains(&a.backend.as_str()) {
        return Err(format!(
            "--backend is zk, etcd or supervised; got {:?}",
            a.backend
        ));
    }
    Ok(a)
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on the host.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `at` on CLOCK_MONOTONIC, in nanoseconds.
fn mono_at(at: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(at);
    mono_ns().saturating_sub(ago.as_nanos() as u64)
}

fn say_at(ns: u64, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{ns} {line}");
    let _ = out.flush();
}

fn say(line: &str) {
    say_at(mono_ns(), line);
}

/// Print every grant and loss of one shard, stamped with the instant the election
/// published it (from the status stream's leadership history, so no change is missed and
/// a late print does not move the timestamp).
///
/// Supervised shards also name the layer they lead through (`primary` or `fallback`, the
/// mode the supervisor follows when it reports): `<ns> lead <shard> <term> <layer>`.
fn report(shard: usize, election: &Arc<dyn Election>, sup: Option<Arc<Supervisor>>) {
    let mut rx = election.status();
    tokio::spawn(async move {
        let (mut started, mut ended) = (None, None);
        loop {
            let status = rx.borrow_and_update().clone();
            for span in status.leaderships.iter() {
                if started.is_none_or(|t| span.term > t) {
                    started = Some(span.term);
                    let layer = sup
                        .as_ref()
                        .and_then(|s| s.mode())
                        .map(|m| format!(" {}", m.layer))
                        .unwrap_or_default();
                    say_at(
                        mono_at(span.start),
                        &format!("lead {shard} {}{layer}", span.term),
                    );
                }
                if let Some(end) = span.end {
                    if ended.is_none_or(|t| span.term > t) {
                        ended = Some(span.term);
                        say_at(mono_at(end), &format!("lost {shard} {}", span.term));
                    }
                }
            }
            if status.role == Role::Closed || rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Answer `status <shard>`: `<ns> status <shard> <role> <health level> ...`.
fn print_status(shards: &[Arc<dyn Election>], line: &str) {
    let Some(shard) = line.trim().strip_prefix("status ").map(str::trim) else {
        return;
    };
    match shard.parse::<usize>().ok().and_then(|i| shards.get(i)) {
        Some(e) => {
            let s = e.status().borrow().clone();
            say(&format!(
                "status {shard} {:?} {:?} role since {:?}: {} | health since {:?}: {}",
                s.role,
                s.health.level,
                s.since.elapsed(),
                s.reason,
                s.health.since.elapsed(),
                s.health.reason
            ));
        }
        None => say(&format!("status {shard} unknown")),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("shard_leaders: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let a = parse()?;
    // `RUST_LOG=succession_etcd::lease=debug` (for example) logs to stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let zk = match a.backend.as_str() {
        "zk" | "supervised" => Some(ZkSession::new(
            ZkSessionConfig::builder(a.zk.clone())
                .session_timeout(a.session)
                .build()?,
        )?),
        _ => None,
    };
    let etcd = match a.backend.as_str() {
        "etcd" | "supervised" => Some(EtcdSession::new(
            EtcdSessionConfig::builder()
                .endpoint(a.etcd.clone())
                .ttl(a.session)
                .build()?,
        )?),
        _ => None,
    };
    let mut shards: Vec<Arc<dyn Election>> = Vec::with_capacity(a.shards);
    for i in 0..a.shards {
        let path = format!("{}/s{i}", a.path);
        let (e, sup): (Arc<dyn Election>, _) = match (&zk, &etcd) {
            (Some(z), None) => (Arc::new(z.election(&path, &a.id)?), None),
            (None, Some(e)) => (Arc::new(e.election(&path, &a.id)?), None),
            (Some(z), Some(e)) => {
                let mut b = succession::supervised::on_sessions(z, e, &path, &path, &a.id)?;
                if let Some(f) = a.failover_after {
                    b = b.failover_after(f);
                }
                let sup = Arc::new(b.build()?);
                (sup.clone() as Arc<dyn Election>, Some(sup))
            }
            (None, None) => unreachable!("parse() accepts only the three backends"),
        };
        report(i, &e, sup);
        shards.push(e);
    }
    // Until `close` or the end of stdin; `status <shard>` prints that shard's status (also
    // while joining: what a stuck shard is doing).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if l.trim() == "close" || tx.send(l).is_err() {
                break;
            }
        }
    });
    let join = futures::future::try_join_all(shards.iter().map(|e| e.join()));
    tokio::pin!(join);
    let mut joined = false;
    loop {
        tokio::select! {
            r = &mut join, if !joined => {
                r?;
                joined = true;
                say(&format!("ready {}", a.shards));
            }
            line = rx.recv() => match line {
                Some(l) => print_status(&shards, &l),
                None => break,
            },
        }
    }
    if a.backend == "supervised" {
        // Each supervisor closes its two layers; the sessions close after.
        futures::future::join_all(shards.iter().map(|e| e.close())).await;
    }
    if let Some(z) = &zk {
        z.close().await?;
    }
    if let Some(e) = &etcd {
        e.close().await?;
    }
    say("closed");
    Ok(())
}
