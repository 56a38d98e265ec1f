//! `succession-bench __shared`: the process that hosts OUR side of the `shared` group — E
//! elections in one process, on the latch paths `<prefix>/e<i>`, all on ONE ZooKeeper
//! session (`ZkSession`, see [`shared_elections`]).
//!
//! It speaks the same line protocol as the Curator driver of the group
//! (`bench/java/BenchShared.java`):
//!
//! | command | answer |
//! |---|---|
//! | `ping` | `pong <ns>` |
//! | `shared <tag> <E> <connect> <prefix> <session ms>` | `added <ns at receipt> 0 <E>` once every election is created and joining, then batched events |
//! | `leaders` | `leaderset <count> <i,i,...>` (`-` for none): the elections whose status says `Leader` now |
//! | `sessions` | `sessions <count> <sid hex,...>`: the distinct ZooKeeper session ids of the elections |
//! | `close` | `closing <ns> 0` just before closing every election (and the session), `closed <ns> 0` after |
//! | `quit` | exits |
//!
//! Events, batched to keep 10,000 elections' output small: `b <kind> <ns> <i,i,...>`, kind `j`
//! (joined: our place is held), `l` (leader) or `n` (no longer leader); `<ns>` is the latest
//! stamp in the batch (each stamp is the `since` instant of the status, as in `__driver`);
//! batches keep the order of the events. Failures: `err <index> <message>`.

use std::time::Duration;

use succession_core::Election;
use succession_zk::{ZkElection, ZkSession, ZkSessionConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::clock::{instant_ns, now_ns};
use crate::driver::say;

/// What keeps the elections' session alive and closes it.
pub struct Handle(ZkSession);

impl Handle {
    /// Close every election (each publishes `Closed`, its node deleted) and the session.
    async fn close(self) {
        if let Err(err) = self.0.close().await {
            say(&format!("err close: {err}"));
        }
    }
}

/// E elections of one process on ONE ZooKeeper session, election `i` on `paths[i]` with the
/// id `<tag>-e<i>`.
pub fn shared_elections(
    connect: &str,
    paths: &[String],
    tag: &str,
    session: Duration,
) -> succession_core::Result<(Handle, Vec<ZkElection>)> {
    let s = ZkSession::new(
        ZkSessionConfig::builder(connect)
            .session_timeout(session)
            .build()?,
    )?;
    let es = paths
        .iter()
        .enumerate()
        .map(|(i, p)| s.election(p.as_str(), &format!("{tag}-e{i}")))
        .collect::<succession_core::Result<Vec<_>>>()?;
    Ok((Handle(s), es))
}

/// Run the driver until `quit` or the end of stdin.
pub fn main() -> i32 {
    crate::driver::run_driver("shared driver", serve())
}

/// One status event: kind (`j`, `l`, `n`), index, stamp (ns).
type Ev = (char, usize, u64);

async fn serve() {
    let (tx, rx) = mpsc::unbounded_channel::<Ev>();
    let printer = tokio::spawn(print_batches(rx));
    let mut held: Option<(Handle, Vec<ZkElection>)> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["ping"] => say(&format!("pong {}", now_ns())),
            ["shared", tag, n, connect, prefix, ms] => {
                let t0 = now_ns();
                let (Ok(n), Ok(ms)) = (n.parse::<usize>(), ms.parse::<u64>()) else {
                    say(&format!("err -1 bad shared line: {line}"));
                    continue;
                };
                if held.is_some() {
                    say("err -1 shared: elections already created");
                    continue;
                }
                let paths: Vec<String> = (0..n).map(|i| format!("{prefix}/e{i}")).collect();
                match shared_elections(connect, &paths, tag, Duration::from_millis(ms)) {
                    Ok((handle, es)) => {
                        // One task follows every election: the driver's own cost per
                        // election stays a few dozen bytes (a task per election would be
                        // counted in the RSS per election).
                        tokio::spawn(follow_all(
                            es.iter().map(|e| e.status()).collect(),
                            tx.clone(),
                        ));
                        // Started like Curator's latches (`LeaderLatch.start()`), with
                        // no future per election while they join; a refusal would show
                        // as an election that never leads (its status says why).
                        for (i, e) in es.iter().enumerate() {
                            if let Err(err) = e.start() {
                                say(&format!("err {i} start: {err}"));
                            }
                        }
                        held = Some((handle, es));
                        say(&format!("added {t0} 0 {n}"));
                    }
                    Err(e) => say(&format!("err -1 shared: {e}")),
                }
            }
            ["leaders"] => {
                let led: Vec<String> = held
                    .as_ref()
                    .map(|(_, es)| {
                        es.iter()
                            .enumerate()
                            .filter(|(_, e)| e.status().borrow().role.is_leader())
                            .map(|(i, _)| i.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let list = if led.is_empty() {
                    "-".to_string()
                } else {
                    led.join(",")
                };
                say(&format!("leaderset {} {list}", led.len()));
            }
            ["sessions"] => {
                let mut sids: Vec<String> = held
                    .as_ref()
                    .map(|(_, es)| {
                        es.iter()
                            .filter_map(|e| e.session_id())
                            .map(|s| format!("{s:x}"))
                            .collect()
                    })
                    .unwrap_or_default();
                sids.sort();
                sids.dedup();
                let list = if sids.is_empty() {
                    "-".to_string()
                } else {
                    sids.join(",")
                };
                say(&format!("sessions {} {list}", sids.len()));
            }
            ["close"] => {
                say(&format!("closing {} 0", now_ns()));
                if let Some((handle, _)) = held.take() {
                    handle.close().await;
                }
                say(&format!("closed {} 0", now_ns()));
            }
            ["quit"] => break,
            _ => say(&format!("err -1 unknown command: {line}")),
        }
    }
    drop(tx);
    printer.abort();
}

/// Report every election's `j`, `l` and `n` events (`rxs[i]` is election `i`'s status); a
/// new term without a visible gap counts as `n` then `l`. The statuses are polled every
/// [`FOLLOW_EVERY`], with no future or task per election (what this process costs per
/// election beyond the library's own is its receiver and this record); each event keeps
/// the exact instant of its status (`since`), so polling does not move the stamps.
async fn follow_all(
    mut rxs: Vec<tokio::sync::watch::Receiver<succession_core::Status>>,
    tx: mpsc::UnboundedSender<Ev>,
) {
    // Per election: joined yet, and the term last reported.
    let mut seen: Vec<(bool, Option<succession_core::Term>)> = vec![(false, None); rxs.len()];
    for rx in &mut rxs {
        rx.mark_changed();
    }
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (idx, rx) in rxs.iter_mut().enumerate() {
            if !rx.has_changed().unwrap_or(false) {
                continue;
            }
            let (role, since) = {
                let s = rx.borrow_and_update();
                (s.role.clone(), s.since)
            };
            let t = instant_ns(since);
            let (joined, term) = &mut seen[idx];
            if !*joined && role.is_joined() {
                *joined = true;
                let _ = tx.send(('j', idx, t));
            }
            match (role.term(), *term) {
                (Some(now), Some(was)) if now != was => {
                    let _ = tx.send(('n', idx, t));
                    let _ = tx.send(('l', idx, t));
                }
                (Some(_), None) => {
                    let _ = tx.send(('l', idx, t));
                }
                (None, Some(_)) => {
                    let _ = tx.send(('n', idx, t));
                }
                _ => {}
            }
            *term = role.term();
        }
    }
}

/// How often [`follow_all`] reads every election's status.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Print events as `b` lines: every few milliseconds, runs of one kind, at most 2000 each.
async fn print_batches(mut rx: mpsc::UnboundedReceiver<Ev>) {
    let mut buf: Vec<Ev> = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.push(first);
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Ok(e) = rx.try_recv() {
            buf.push(e);
        }
        let mut start = 0;
        while start < buf.len() {
            let kind = buf[start].0;
            let mut end = start;
            while end < buf.len() && buf[end].0 == kind && end - start < 2000 {
                end += 1;
            }
            let run = &buf[start..end];
            let tmax = run.iter().map(|e| e.2).max().unwrap_or(0);
            let list: Vec<String> = run.iter().map(|e| e.1.to_string()).collect();
            say(&format!("b {kind} {tmax} {}", list.join(",")));
            start = end;
        }
        buf.clear();
    }
}
