//! `succession-bench __driver`: the process that hosts OUR participants during a run.
//!
//! It speaks the same line protocol as the Curator driver (`bench/java/BenchLatch.java`),
//! so both sides are measured the same way: each in a process of its own, stamping events
//! with `CLOCK_MONOTONIC` nanoseconds (see [`crate::clock`]).
//!
//! Commands (stdin, one per line):
//!
//! | command | answer |
//! |---|---|
//! | `ping` | `pong <ns>` |
//! | `addzk <tag> <n> <connect> <path> <session ms>` | `added <ns at receipt> <first index> <n>`, then events |
//! | `addetcd <tag> <n> <endpoint> <prefix> <ttl s> <lease info 0/1>` | same |
//! | `close <index>` | `closing <ns> <index>` just before `close()`, then `closed <ns> <index>` |
//! | `closeall` | closes every open participant, `closedall <ns>` |
//! | `floor <connect> <path> <reps>` | raw zookeeper-client figures: `floor <ns>`, `rtt <ns>`, `wrtt <ns>`, `sample claim <ns>`, `sample claimahead <ns>`, `sample idlefloor <ns>` (the delete sent after an idle pause) lines, then `floordone` |
//! | `etcdfloor <endpoint> <prefix> <reps>` | the same with raw etcd-client: delete -> watch event, Range and Put round trips; also `sample revokefloor <ns>` (lease revoke -> Delete event), `sample revokertt <ns>` and `sample revokeidlefloor <ns>` (the revoke sent after an idle pause) |
//! | `quit` | exits |
//!
//! Events: `ev <ns> <index> joined <ZooKeeper session id hex or ->` (our place is held),
//! `ev <ns> <index> leader`, `ev <ns> <index> notleader`, `lease <index> <ns>` (etcd, with
//! lease info on: the instant before which the server cannot expire the lease), and
//! `err <index> <message>`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use succession_core::{Election, Role};
use succession_etcd::{EtcdConfig, EtcdElection};
use succession_zk::{ZkConfig, ZkElection};
use tokio::io::{AsyncBufReadExt, BufReader};
use zookeeper_client as zk;

use crate::clock::{instant_ns, now_ns};

/// One participant hosted by the driver.
#[derive(Clone)]
enum Part {
    Zk(Arc<ZkElection>),
    Etcd(Arc<EtcdElection>),
}

impl Part {
    fn election(&self) -> Arc<dyn Election> {
        match self {
            Part::Zk(e) => e.clone(),
            Part::Etcd(e) => e.clone(),
        }
    }

    fn session(&self) -> String {
        match self {
            Part::Zk(e) => e
                .session_id()
                .map(|s| format!("{s:x}"))
                .unwrap_or_else(|| "-".into()),
            Part::Etcd(_) => "-".into(),
        }
    }
}

type Parts = Arc<Mutex<Vec<Option<Part>>>>;

pub(crate) fn say(line: &str) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the driver until `quit` or the end of stdin.
pub fn main() -> i32 {
    // Participants still open are dropped with the runtime, like a process exit.
    run_driver("driver", serve())
}

/// Run a driver process's `serve` future on a 2-worker runtime; the exit code.
pub fn run_driver(name: &str, serve: impl std::future::Future<Output = ()>) -> i32 {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => {
            rt.block_on(serve);
            0
        }
        Err(e) => {
            eprintln!("succession-bench {name}: cannot build a tokio runtime: {e}");
            1
        }
    }
}

async fn serve() {
    let parts: Parts = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["ping"] => say(&format!("pong {}", now_ns())),
            ["addzk", tag, n, connect, path, ms] => {
                let t0 = now_ns();
                let (Ok(n), Ok(ms)) = (n.parse::<usize>(), ms.parse::<u64>()) else {
                    say(&format!("err -1 bad addzk line: {line}"));
                    continue;
                };
                let mut made = Vec::new();
                for _ in 0..n {
                    let idx = next_index(&parts);
                    let cfg = ZkConfig::builder(*connect, *path, format!("{tag}-{idx}"))
                        .session_timeout(Duration::from_millis(ms))
                        .build();
                    match cfg.and_then(ZkElection::new) {
                        Ok(e) => made.push((idx, Part::Zk(Arc::new(e)))),
                        Err(e) => say(&format!("err {idx} {e}")),
                    }
                }
                start(&parts, t0, made, false);
            }
            ["addetcd", tag, n, endpoint, prefix, ttl, info] => {
                let t0 = now_ns();
                let (Ok(n), Ok(ttl)) = (n.parse::<usize>(), ttl.parse::<u64>()) else {
                    say(&format!("err -1 bad addetcd line: {line}"));
                    continue;
                };
                let mut made = Vec::new();
                for _ in 0..n {
                    let idx = next_index(&parts);
                    let cfg = EtcdConfig::builder()
                        .endpoint(*endpoint)
                        .prefix(*prefix)
                        .id(format!("{tag}-{idx}"))
                        .ttl(Duration::from_secs(ttl))
                        .build();
                    match cfg.and_then(EtcdElection::new) {
                        Ok(e) => made.push((idx, Part::Etcd(Arc::new(e)))),
                        Err(e) => say(&format!("err {idx} {e}")),
                    }
                }
                start(&parts, t0, made, *info == "1");
            }
            ["close", idx] => {
                let Ok(idx) = idx.parse::<usize>() else {
                    say(&format!("err -1 bad close line: {line}"));
                    continue;
                };
                let part = lock(&parts).get_mut(idx).and_then(|p| p.take());
                match part {
                    Some(p) => {
                        tokio::spawn(async move {
                            say(&format!("closing {} {idx}", now_ns()));
                            if let Err(e) = p.election().close().await {
                                say(&format!("err {idx} close: {e}"));
                            }
                            say(&format!("closed {} {idx}", now_ns()));
                        });
                    }
                    None => say(&format!("err {idx} close: no such open participant")),
                }
            }
            ["closeall"] => {
                let open: Vec<(usize, Part)> = lock(&parts)
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, p)| p.take().map(|p| (i, p)))
                    .collect();
                let closes = open.into_iter().map(|(idx, p)| async move {
                    if let Err(e) = p.election().close().await {
                        say(&format!("err {idx} close: {e}"));
                    }
                });
                futures::future::join_all(closes).await;
                say(&format!("closedall {}", now_ns()));
            }
            ["floor", connect, path, reps] => match reps.parse::<usize>() {
                Ok(reps) => {
                    if let Err(e) = floor(connect, path, reps).await {
                        say(&format!("err -1 floor: {e}"));
                    }
                    say("floordone");
                }
                Err(_) => say(&format!("err -1 bad floor line: {line}")),
            },
            ["etcdfloor", endpoint, prefix, reps] => match reps.parse::<usize>() {
                Ok(reps) => {
                    if let Err(e) = etcd_floor(endpoint, prefix, reps).await {
                        say(&format!("err -1 etcdfloor: {e}"));
                    }
                    say("floordone");
                }
                Err(_) => say(&format!("err -1 bad etcdfloor line: {line}")),
            },
            ["quit"] => break,
            _ => say(&format!("err -1 unknown command: {line}")),
        }
    }
}

fn next_index(parts: &Parts) -> usize {
    let mut v = lock(parts);
    v.push(None);
    v.len() - 1
}

/// Store the new participants, watch their status, and join them all at once.
fn start(parts: &Parts, t0: u64, made: Vec<(usize, Part)>, lease_info: bool) {
    let first = made.first().map(|(i, _)| *i).unwrap_or(0);
    let n = made.len();
    {
        let mut v = lock(parts);
        for (idx, p) in &made {
            v[*idx] = Some(p.clone());
        }
    }
    for (idx, p) in made {
        let e = p.election();
        tokio::spawn(follow(idx, p.clone()));
        if lease_info {
            if let Part::Etcd(e) = &p {
                tokio::spawn(follow_lease(idx, Arc::downgrade(e)));
            }
        }
        tokio::spawn(async move {
            if let Err(err) = e.join().await {
                say(&format!("err {idx} join: {err}"));
            }
        });
    }
    say(&format!("added {t0} {first} {n}"));
}

/// Print `joined`, `leader` and `notleader` events of one participant.
async fn follow(idx: usize, p: Part) {
    let mut rx = p.election().status();
    let weak = match &p {
        Part::Zk(e) => Weak::Zk(Arc::downgrade(e)),
        Part::Etcd(e) => Weak::Etcd(Arc::downgrade(e)),
    };
    drop(p);
    let mut joined = false;
    // The newest leadership start and end printed. Leaderships come from the status's
    // history, not from the role read now: a loss and a new grant published between two
    // reads of the watch channel (a busy driver, a quick re-grant) are printed too.
    let (mut started, mut ended) = (None, None);
    loop {
        let (role, since, spans) = {
            let s = rx.borrow_and_update();
            (s.role.clone(), s.since, s.leaderships.clone())
        };
        if !joined && role.is_joined() {
            joined = true;
            // The instant the participant published the role (what Curator's listener
            // stamps in its callback), not when this task got around to reading it.
            let t = instant_ns(since);
            let sid = weak.upgrade().map(|p| p.session()).unwrap_or("-".into());
            say(&format!("ev {t} {idx} joined {sid}"));
        }
        for span in spans.iter() {
            if started.is_none_or(|t| span.start > t) {
                started = Some(span.start);
                say(&format!("ev {} {idx} leader", instant_ns(span.start)));
            }
            if let Some(end) = span.end {
                if ended.is_none_or(|t| end > t) {
                    ended = Some(end);
                    say(&format!("ev {} {idx} notleader", instant_ns(end)));
                }
            }
        }
        if role == Role::Closed || rx.changed().await.is_err() {
            return;
        }
    }
}

enum Weak {
    Zk(std::sync::Weak<ZkElection>),
    Etcd(std::sync::Weak<EtcdElection>),
}

impl Weak {
    fn upgrade(&self) -> Option<Part> {
        match self {
            Weak::Zk(w) => w.upgrade().map(Part::Zk),
            Weak::Etcd(w) => w.upgrade().map(Part::Etcd),
        }
    }
}

/// Print the lease's earliest possible expiry each time it moves (crash-handover victims).
async fn follow_lease(idx: usize, e: std::sync::Weak<EtcdElection>) {
    let mut last = 0u64;
    loop {
        let Some(e) = e.upgrade() else { return };
        if let Some(info) = e.lease() {
            let at = instant_ns(info.expires_no_earlier_than);
            // Renewals move it by about TTL/3; ignore conversion jitter.
            if at.abs_diff(last) > 1_000_000 {
                last = at;
                say(&format!("lease {idx} {at}"));
            }
        }
        drop(e);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The floor of a graceful handover, with raw zookeeper-client sessions: the time from
/// sending the delete of a node to the getData watch event at another session, and the
/// round trips of a read (getData), a write (setData) and of the claim multis (`sample
/// claim`, `sample claimahead`) on the same connection.
async fn floor(connect: &str, path: &str, reps: usize) -> Result<(), zk::Error> {
    let connector = || {
        zk::Client::connector()
            .with_session_timeout(Duration::from_secs(6))
            .connect(connect)
    };
    let a = connector().await?;
    let b = connector().await?;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match a.mkdir(path, &persistent).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => return Err(e),
    }
    const WARMUP: usize = 10;
    for i in 0..WARMUP + reps {
        let node = format!("{path}/n{i}");
        a.create(&node, b"x", &ephemeral).await?;
        let (_, _, watcher) = b.get_and_watch_data(&node).await?;
        let fired = tokio::spawn(async move {
            let _ = watcher.changed().await;
            now_ns()
        });
        let t0 = now_ns();
        a.delete(&node, None).await?;
        let t1 = fired.await.unwrap_or(t0);
        if i >= WARMUP {
            say(&format!("floor {}", t1.saturating_sub(t0)));
        }
        // The same after `IDLE_BEFORE_HANDOVER` without requests on either session, as a
        // graceful handover in the bench meets the server (fewer samples: each waits).
        if i < WARMUP + reps.min(IDLE_FLOOR_REPS) {
            let node = format!("{path}/i{i}");
            a.create(&node, b"x", &ephemeral).await?;
            let (_, _, watcher) = b.get_and_watch_data(&node).await?;
            let fired = tokio::spawn(async move {
                let _ = watcher.changed().await;
                now_ns()
            });
            tokio::time::sleep(crate::etcd::IDLE_BEFORE_HANDOVER).await;
            let t0 = now_ns();
            a.delete(&node, None).await?;
            let t1 = fired.await.unwrap_or(t0);
            if i >= WARMUP {
                say(&format!("sample idlefloor {}", t1.saturating_sub(t0)));
            }
        }
    }
    for i in 0..WARMUP + reps {
        let t0 = now_ns();
        b.get_data(path).await?;
        let t1 = now_ns();
        a.set_data(path, b"y", None).await?;
        let t2 = now_ns();
        if i >= WARMUP {
            say(&format!("rtt {}", t1 - t0));
            say(&format!("wrtt {}", t2 - t1));
        }
    }
    // The claim multis our successor sends: check its node + setData on the latch path, and
    // the same asserting that one earlier node is gone (create + delete of its name).
    let eph = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, seq) = a.create(&format!("{path}/own-"), b"x", &eph).await?;
    let own = format!("{path}/own-{seq}");
    for i in 0..WARMUP + reps {
        let mut w = a.new_multi_writer();
        w.add_check_version(&own, -1)?;
        w.add_set_data(path, b"c", None)?;
        let t0 = now_ns();
        w.commit().await.map_err(zk::Error::from)?;
        let t1 = now_ns();
        let mut w = a.new_multi_writer();
        w.add_check_version(&own, -1)?;
        let gone = format!("{path}/gone-{i}");
        w.add_create(&gone, &[], &persistent)?;
        w.add_delete(&gone, None)?;
        w.add_set_data(path, b"c", None)?;
        let t2 = now_ns();
        w.commit().await.map_err(zk::Error::from)?;
        let t3 = now_ns();
        if i >= WARMUP {
            say(&format!("sample claim {}", t1 - t0));
            say(&format!("sample claimahead {}", t3 - t2));
        }
    }
    let _ = a.delete(&own, None).await;
    let _ = a.delete(path, None).await;
    Ok(())
}

/// Watch `key` from after revision `rev` (waiting until the watch is in place); the task
/// returns the instant (ns) the key's Delete event arrives, 0 if the stream ends first.
async fn stamp_delete(
    b: &mut etcd_client::Client,
    key: &str,
    rev: i64,
) -> Result<tokio::task::JoinHandle<u64>, etcd_client::Error> {
    use etcd_client::{EventType, WatchOptions};
    let mut w = b
        .watch(key, Some(WatchOptions::new().with_start_revision(rev + 1)))
        .await?;
    while let Some(r) = w.message().await? {
        if r.created() {
            break;
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok(Some(r)) = w.message().await {
            if r.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return now_ns();
            }
        }
        0
    }))
}

/// Samples of the idle floors (ZooKeeper delete, etcd lease revoke; each waits
/// `IDLE_BEFORE_HANDOVER` first).
const IDLE_FLOOR_REPS: usize = 40;

/// The floor of an etcd handover, with raw etcd-client connections: from sending the delete
/// of a key to the Delete event on another connection's watch, and Range / Put round trips.
async fn etcd_floor(endpoint: &str, prefix: &str, reps: usize) -> Result<(), etcd_client::Error> {
    use etcd_client::{DeleteOptions, PutOptions};
    let mut a = etcd_client::Client::connect([endpoint], None).await?;
    let mut b = etcd_client::Client::connect([endpoint], None).await?;
    const WARMUP: usize = 10;
    for i in 0..WARMUP + reps {
        let key = format!("{prefix}/k{i}");
        let put = a.put(key.clone(), "x", None).await?;
        let rev = put.header().map(|h| h.revision()).unwrap_or(0);
        let fired = stamp_delete(&mut b, &key, rev).await?;
        let t0 = now_ns();
        a.delete(key, None).await?;
        let t1 = fired.await.unwrap_or(0);
        if i >= WARMUP && t1 >= t0 {
            say(&format!("floor {}", t1 - t0));
        }
        // The same, deleting the key by revoking its lease (what our close() does).
        let key = format!("{prefix}/l{i}");
        let lease = a.lease_grant(60, None).await?.id();
        let put = a
            .put(key.clone(), "x", Some(PutOptions::new().with_lease(lease)))
            .await?;
        let rev = put.header().map(|h| h.revision()).unwrap_or(0);
        let fired = stamp_delete(&mut b, &key, rev).await?;
        let t0 = now_ns();
        a.lease_revoke(lease).await?;
        let t2 = now_ns();
        let t1 = fired.await.unwrap_or(0);
        if i >= WARMUP && t1 >= t0 {
            say(&format!("sample revokefloor {}", t1 - t0));
            say(&format!("sample revokertt {}", t2 - t0));
        }
        // The same after `IDLE_BEFORE_HANDOVER` without requests, as a graceful handover in
        // the bench meets etcd (fewer samples: each waits).
        if i < WARMUP + reps.min(IDLE_FLOOR_REPS) {
            let key = format!("{prefix}/i{i}");
            let lease = a.lease_grant(60, None).await?.id();
            let put = a
                .put(key.clone(), "x", Some(PutOptions::new().with_lease(lease)))
                .await?;
            let rev = put.header().map(|h| h.revision()).unwrap_or(0);
            let fired = stamp_delete(&mut b, &key, rev).await?;
            tokio::time::sleep(crate::etcd::IDLE_BEFORE_HANDOVER).await;
            let t0 = now_ns();
            a.lease_revoke(lease).await?;
            let t1 = fired.await.unwrap_or(0);
            if i >= WARMUP && t1 >= t0 {
                say(&format!("sample revokeidlefloor {}", t1 - t0));
            }
        }
    }
    let key = format!("{prefix}/rtt");
    for i in 0..WARMUP + reps {
        let t0 = now_ns();
        b.get(key.clone(), None).await?;
        let t1 = now_ns();
        a.put(key.clone(), "y", None).await?;
        let t2 = now_ns();
        if i >= WARMUP {
            say(&format!("rtt {}", t1 - t0));
            say(&format!("wrtt {}", t2 - t1));
        }
    }
    a.delete(
        format!("{prefix}/"),
        Some(DeleteOptions::new().with_prefix()),
    )
    .await?;
    Ok(())
}
