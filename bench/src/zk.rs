//! ZooKeeper: our latch vs Curator LeaderLatch 5.4.0, on the same server in the same run.

use std::time::Duration;

use succession_testkit::four_letter_word;
use zookeeper_client as zkc;

use crate::clock::{ms_between, now_ns};
use crate::proc::{Driver, Msg, Side};
use crate::report::{Section, Table};
use crate::stats::{fmt_ms, fmt_ratio, ratio, Samples};
use crate::{fresh, Ctx, Res, Results};

const SIDES: [Side; 2] = [Side::Ours, Side::Curator];
const LONG: Duration = Duration::from_secs(30);

fn idx(side: Side) -> usize {
    match side {
        Side::Ours => 0,
        Side::Curator => 1,
    }
}

/// When the server on `port` first answered `srvr` as serving: a probe is sent every 2 ms,
/// without waiting for earlier ones (a probe that connected while the server was still
/// starting can sit unanswered for a while and must not hide the moment it starts serving);
/// the instant (ns) the first "serving" answer was received. None after `timeout`.
pub async fn serving_after(port: u16, timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut probes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tokio::select! {
            Some(t) = rx.recv() => {
                let mut first: u64 = t;
                while let Ok(t) = rx.try_recv() {
                    first = first.min(t);
                }
                probes.abort_all();
                return Some(first);
            }
            _ = tick.tick() => {
                if tokio::time::Instant::now() >= deadline {
                    probes.abort_all();
                    return None;
                }
                while probes.try_join_next().is_some() {}
                if probes.len() < 64 {
                    let tx = tx.clone();
                    probes.spawn(async move {
                        if let Ok(text) =
                            four_letter_word(port, "srvr", Duration::from_millis(500)).await
                        {
                            if text.contains("Zxid:") {
                                let _ = tx.send(now_ns());
                            }
                        }
                    });
                }
            }
        }
    }
}

/// After how much silence zookeeper-client 0.11 pings, for a session timeout and our default
/// connection timeout: 3 ticks, a tick being session/20 when the connection timeout exceeds
/// 3/5 of the session, else connection timeout/8 (`Session::calc_tick_timeout`).
pub fn zk_ping_after(session: Duration) -> Duration {
    let conn = succession_zk::DEFAULT_CONNECTION_TIMEOUT;
    let tick = if conn > session * 3 / 5 {
        session / 20
    } else {
        conn / 8
    };
    tick * 3
}

/// Raw zookeeper-client floor of a graceful handover, and read/write round trips.
pub async fn floor(ctx: &mut Ctx) -> Res<()> {
    ctx.progress("zk: floor (raw delete -> getData watch event) and round trips ...");
    let path = fresh("floor");
    let addr = ctx.zk.addr();
    let reps = ctx.p.floor;
    let from = ctx.ours.mark();
    let (f, r, w) = floor_samples(&mut ctx.ours, &format!("floor {addr} {path} {reps}")).await?;
    ctx.res.floor = f;
    ctx.res.rtt = r;
    ctx.res.wrtt = w;
    for m in &ctx.ours.log[from..] {
        match m {
            Msg::Sample(name, ns) if name == "claim" => ctx.res.zk_claim[0].push(*ns as f64 / 1e6),
            Msg::Sample(name, ns) if name == "claimahead" => {
                ctx.res.zk_claim[1].push(*ns as f64 / 1e6)
            }
            Msg::Sample(name, ns) if name == "idlefloor" => {
                ctx.res.zk_idle_floor.push(*ns as f64 / 1e6)
            }
            _ => {}
        }
    }
    Ok(())
}

/// Send a `floor`/`etcdfloor` command to our driver and collect (floor, read RTT, write RTT);
/// named samples stay in the driver's log after `from` (returned too).
pub async fn floor_samples(d: &mut Driver, cmd: &str) -> Res<(Samples, Samples, Samples)> {
    let from = d.mark();
    d.send(cmd).await?;
    d.wait(from, "`floordone`", Duration::from_secs(120), |m| {
        matches!(m, Msg::FloorDone)
    })
    .await?;
    let (mut f, mut r, mut w) = (Samples::new(), Samples::new(), Samples::new());
    for m in &d.log[from..] {
        match m {
            Msg::Floor(ns) => f.push(*ns as f64 / 1e6),
            Msg::Rtt(ns) => r.push(*ns as f64 / 1e6),
            Msg::Wrtt(ns) => w.push(*ns as f64 / 1e6),
            _ => {}
        }
    }
    if f.is_empty() {
        return Err(format!("`{cmd}` produced no samples (see the driver's errors)").into());
    }
    Ok((f, r, w))
}

/// N participants start at once -> exactly one leader.
pub async fn cold_start(ctx: &mut Ctx) -> Res<()> {
    let (n, session) = (ctx.p.group, ctx.p.session);
    let total = ctx.p.warmup + ctx.p.cold;
    ctx.progress(&format!(
        "zk: cold start, {n} participants at once, {total} repetitions per side ..."
    ));
    let addr = ctx.zk.addr();
    let mut extra_leaders = [0usize; 2];
    for rep in 0..total {
        for side in SIDES {
            let path = fresh("cold");
            let d = ctx.host(side);
            let from = d.mark();
            let g = d.add_zk("cold", n, &addr, &path, session).await?;
            let (t, _) = d.next_leader(from, &g.members, LONG).await.ok_or_else(|| {
                format!("{}: no leader within {LONG:?} of a cold start", side.name())
            })?;
            // Exactly one: nobody else may lead shortly after.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let leading = d.leaders_in(&g.members).len();
            if rep >= ctx.p.warmup {
                ctx.res.zk_cold[idx(side)].push(ms_between(g.t0, t));
                if leading != 1 {
                    extra_leaders[idx(side)] += 1;
                }
            }
            ctx.host(side).close_all(LONG).await?;
        }
    }
    let mut s = Section::new("ZooKeeper: cold start");
    s.before.push(format!(
        "{n} participants on a fresh latch path are created and started at once in one driver \
         process (each with its own new session); measured from the driver receiving the command \
         to the first `leader` event (ours: status `Leader`; Curator: `isLeader()` callback). \
         Includes connecting the sessions. 300 ms later exactly one must lead."
    ));
    let mut t = Table::new(&[
        "implementation",
        "n",
        "min",
        "median",
        "p95",
        "max",
        "not exactly one leader",
    ]);
    for side in SIDES {
        let mut row = vec![side.name().to_string()];
        row.extend(ctx.res.zk_cold[idx(side)].cells());
        row.push(extra_leaders[idx(side)].to_string());
        t.row(row);
    }
    t.row(ratio_row(&ctx.res.zk_cold));
    s.tables.push(t);
    ctx.publish(s);
    Ok(())
}

fn ratio_row(pair: &[Samples; 2]) -> Vec<String> {
    let r = |f: fn(&Samples) -> Option<f64>| fmt_ratio(ratio(f(&pair[0]), f(&pair[1])));
    vec![
        "ratio ours / Curator".into(),
        String::new(),
        r(Samples::min),
        r(Samples::median),
        r(|s| s.percentile(95.0)),
        r(Samples::max),
    ]
}

/// A group of participants kept at a constant size on one path.
struct Queue {
    path: String,
    members: Vec<usize>,
}

async fn queue(d: &mut Driver, addr: &str, n: usize, session: Duration) -> Res<Queue> {
    let path = fresh("graceful");
    let from = d.mark();
    let g = d.add_zk("g", n, addr, &path, session).await?;
    d.next_leader(from, &g.members, LONG)
        .await
        .ok_or("no leader in a new queue")?;
    d.wait_joined(&g.members, LONG).await?;
    Ok(Queue {
        path,
        members: g.members,
    })
}

/// The current leader closes; time to the successor's leader event, and how long the
/// leader's close took. Then one participant joins at the back, so the queue keeps its size.
async fn handover(
    d: &mut Driver,
    q: &mut Queue,
    addr: &str,
    session: Duration,
) -> Res<(f64, f64, f64)> {
    let leaders = d.leaders_in(&q.members);
    let [leader] = leaders.as_slice() else {
        return Err(format!("{}: expected one leader, saw {leaders:?}", d.side.name()).into());
    };
    let leader = *leader;
    let rest: Vec<usize> = q.members.iter().copied().filter(|&i| i != leader).collect();
    let from = d.mark();
    let t0 = d.close(leader).await?;
    let (t1, _) = d
        .next_leader(from, &rest, LONG)
        .await
        .ok_or_else(|| format!("{}: no successor within {LONG:?}", d.side.name()))?;
    let t2 = d.wait_closed(leader, LONG).await?;
    let g = d.add_zk("g", 1, addr, &q.path, session).await?;
    d.wait_joined(&g.members, LONG).await?;
    q.members = rest;
    q.members.extend(g.members);
    // Let the newcomer's watches settle before the next handover.
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok((ms_between(t0, t1), ms_between(t0, t2), ms_between(t2, t1)))
}

/// Graceful handover, ours and Curator interleaved.
pub async fn graceful(ctx: &mut Ctx) -> Res<()> {
    let (n, session) = (ctx.p.group, ctx.p.session);
    let total = ctx.p.warmup + ctx.p.graceful;
    ctx.progress(&format!(
        "zk: graceful handover, queue of {n}, {total} handovers per side ..."
    ));
    let addr = ctx.zk.addr();
    let mut qo = queue(&mut ctx.ours, &addr, n, session).await?;
    let mut qc = queue(&mut ctx.curator, &addr, n, session).await?;
    let mut close = [Samples::new(), Samples::new()];
    let mut after_close = [Samples::new(), Samples::new()];
    for rep in 0..total {
        let o = handover(&mut ctx.ours, &mut qo, &addr, session).await?;
        let c = handover(&mut ctx.curator, &mut qc, &addr, session).await?;
        if rep >= ctx.p.warmup {
            ctx.res.zk_graceful[0].push(o.0);
            ctx.res.zk_graceful[1].push(c.0);
            close[0].push(o.1);
            close[1].push(c.1);
            after_close[0].push(o.2);
            after_close[1].push(c.2);
        }
    }
    ctx.ours.close_all(LONG).await?;
    ctx.curator.close_all(LONG).await?;
    ctx.res.zk_close = close.clone();

    let r = &ctx.res;
    let mut s = Section::new("ZooKeeper: graceful handover and its floor");
    s.before.push(format!(
        "A queue of {n} participants on one latch path; the leader closes (ours: `close()`; \
         Curator: `latch.close(); client.close()`), measured from just before that call to the \
         successor's `leader` event. A new participant then joins at the back. Ours and \
         Curator alternate, on the same server."
    ));
    s.before.push(
        "The floor: two raw zookeeper-client sessions in our driver process; one deletes a node \
         the other watches with getData — from sending the delete to the watch event. No \
         handover can be faster than this. Round trips: getData (read), setData (write) and the \
         two forms of our claim multi, on an idle connection."
            .into(),
    );
    let mut t = Table::new(&["measurement", "n", "min", "median", "p95", "max"]);
    for side in SIDES {
        let mut row = vec![format!("{} handover", side.name())];
        row.extend(r.zk_graceful[idx(side)].cells());
        t.row(row);
    }
    t.row(ratio_row(&r.zk_graceful));
    let mut row = vec!["floor: delete -> watch event (raw)".to_string()];
    row.extend(r.floor.cells());
    t.row(row);
    let mut row = vec![format!(
        "floor after {} ms idle (as a handover here meets the server)",
        crate::etcd::IDLE_BEFORE_HANDOVER.as_millis()
    )];
    row.extend(r.zk_idle_floor.cells());
    t.row(row);
    let fm = r.floor.median().unwrap_or(0.0);
    let im = r.zk_idle_floor.median().unwrap_or(fm);
    for (side, i) in [("succession", 0), ("Curator", 1)] {
        let mut row = vec![format!("{side} − floor median")];
        row.extend(r.zk_graceful[i].minus(fm).cells());
        t.row(row);
        let mut row = vec![format!("{side} − idle floor median")];
        row.extend(r.zk_graceful[i].minus(im).cells());
        t.row(row);
    }
    for side in SIDES {
        let mut row = vec![format!("{}: the leader's close call returns", side.name())];
        row.extend(close[idx(side)].cells());
        t.row(row);
        let mut row = vec![format!(
            "{}: successor leads − leader's close returned",
            side.name()
        )];
        row.extend(after_close[idx(side)].cells());
        t.row(row);
    }
    let mut row = vec!["read round trip (getData)".to_string()];
    row.extend(r.rtt.cells());
    t.row(row);
    let mut row = vec!["write round trip (setData)".to_string()];
    row.extend(r.wrtt.cells());
    t.row(row);
    let mut row = vec!["claim round trip (multi: check + setData)".to_string()];
    row.extend(r.zk_claim[0].cells());
    t.row(row);
    let mut row =
        vec!["claim round trip asserting one earlier node gone (+ create, delete)".to_string()];
    row.extend(r.zk_claim[1].cells());
    t.row(row);
    s.tables.push(t);
    s.after.push(
        "What our successor does between the watch event and `Leader` (backend-zk `round`): \
         only the claim — one multi: check its own node, assert that the nodes it saw ahead of \
         its predecessor when it last read the queue are gone (a create and a delete of each \
         name, which fails with NodeExists while the node is there), and setData on the latch \
         path, whose mzxid becomes the term. No `getChildren`: sequence numbers only grow, so \
         no node created since sorts before its own, and its pending watch on its own node \
         vouches that the node still exists. One write round trip. In this queue every \
         successor last read the queue when it joined at the back, so its claim asserts the \
         nodes that were ahead then. Curator 5.4 does `getChildren` and then calls \
         `isLeader()`."
            .into(),
    );
    ctx.publish(s);
    Ok(())
}

/// Crash handover: the leader's process is killed -9; its session expires on the server.
pub async fn crash(ctx: &mut Ctx) -> Res<()> {
    let session = ctx.p.crash_session;
    let reps = ctx.p.crash;
    ctx.progress(&format!(
        "zk: crash handover (kill -9 of the leader's process, session {session:?}), {reps} per side ..."
    ));
    let addr = ctx.zk.addr();
    for rep in 0..reps {
        for side in SIDES {
            let path = fresh("crash");
            let mut victim =
                Driver::spawn(&ctx.env, side, &format!("crash-victim-{rep}-{}", idx(side))).await?;
            let gv = victim.add_zk("v", 1, &addr, &path, session).await?;
            victim
                .next_leader(0, &gv.members, LONG)
                .await
                .ok_or("crash victim never led")?;
            let d = ctx.host(side);
            let gs = d.add_zk("s", 1, &addr, &path, session).await?;
            d.wait_joined(&gs.members, LONG).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(rss) = victim.rss() {
                ctx.res.standalone_rss[idx(side)].push(rss as f64);
            }
            let d = ctx.host(side);
            let from = d.mark();
            let t0 = victim.kill9();
            let got = d.next_leader(from, &gs.members, session * 3 + LONG).await;
            victim.reap().await;
            let (t1, _) =
                got.ok_or_else(|| format!("{}: no successor after a crash", side.name()))?;
            ctx.res.zk_crash[idx(side)].push(ms_between(t0, t1));
            let d = ctx.host(side);
            d.close(gs.members[0]).await?;
            d.wait_closed(gs.members[0], LONG).await?;
        }
    }
    let r = &ctx.res;
    let sms = session.as_secs_f64() * 1000.0;
    let mut s = Section::new("ZooKeeper: crash handover");
    s.before.push(format!(
        "The leader runs alone in its own process (ours: a `succession-bench __driver`; \
         Curator: a JVM) and is killed with SIGKILL; the successor waits in the long-lived \
         driver. Measured from just before the kill to the successor's `leader` event. The \
         session timeout is {} ms for both; the server expires a session at the last packet \
         it heard from the client + the timeout, rounded up to the next tick ({} ms), and \
         idle clients ping (zookeeper-client after {} ms of silence here, the Java client \
         after a third of the timeout).",
        sms,
        succession_testkit::ZK_TICK_MS,
        zk_ping_after(session).as_millis()
    ));
    let mut t = Table::new(&["measurement", "n", "min", "median", "p95", "max"]);
    for side in SIDES {
        let mut row = vec![format!("{} kill -> successor", side.name())];
        row.extend(r.zk_crash[idx(side)].cells());
        t.row(row);
        let mut row = vec![format!("{} minus session timeout", side.name())];
        row.extend(r.zk_crash[idx(side)].minus(sms).cells());
        t.row(row);
    }
    t.row(ratio_row(&r.zk_crash));
    s.tables.push(t);
    ctx.publish(s);
    Ok(())
}

/// kill -9 the server and restart it with its data, within the session timeout.
pub async fn restart_with_data(ctx: &mut Ctx) -> Res<()> {
    let session = ctx.p.restart_session;
    let reps = ctx.p.restart;
    let n = 3;
    ctx.progress(&format!(
        "zk: server kill -9 + restart with data (session {session:?}), {reps} times ..."
    ));
    let addr = ctx.zk.addr();
    let port = ctx.zk.port();
    let mut groups = Vec::new();
    for side in SIDES {
        let path = fresh("restart");
        let d = ctx.host(side);
        let from = d.mark();
        let g = d.add_zk("r", n, &addr, &path, session).await?;
        d.next_leader(from, &g.members, LONG)
            .await
            .ok_or("no leader before the restart")?;
        d.wait_joined(&g.members, LONG).await?;
        groups.push(g.members);
    }
    let mut outage = Samples::new();
    for rep in 0..reps {
        // Both groups lead before the kill.
        for side in SIDES {
            let members = groups[idx(side)].clone();
            let d = ctx.host(side);
            let deadline = tokio::time::Instant::now() + LONG;
            while d.leaders_in(&members).is_empty() {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("{}: no leader before restart {rep}", side.name()).into());
                }
                let from = d.mark();
                d.next_leader(from, &members, Duration::from_millis(200))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let marks = [ctx.ours.mark(), ctx.curator.mark()];
        let t_kill = now_ns();
        ctx.zk.kill().await?;
        let poll = tokio::spawn(serving_after(port, Duration::from_secs(120)));
        ctx.zk.restart().await?;
        let t_ans = poll
            .await?
            .ok_or("ZooKeeper did not answer after the restart")?;
        outage.push(ms_between(t_kill, t_ans));
        for side in SIDES {
            let members = groups[idx(side)].clone();
            let d = ctx.host(side);
            match d.next_leader(marks[idx(side)], &members, LONG).await {
                Some((t, _)) => ctx.res.zk_restart[idx(side)].push(ms_between(t_ans, t)),
                None => {
                    if side == Side::Ours {
                        return Err(format!(
                            "ours: no leader within {LONG:?} after a restart with data"
                        )
                        .into());
                    }
                    ctx.res.zk_restart_curator_missing += 1;
                }
            }
        }
    }
    ctx.ours.close_all(LONG).await?;
    ctx.curator.close_all(LONG).await?;
    let r = &ctx.res;
    let mut s = Section::new("ZooKeeper: server restarted with its data");
    s.before.push(format!(
        "{n} participants per implementation (session timeout {} s) on two latch paths of the \
         same server; the server is killed with SIGKILL and restarted on the same data dir \
         (back within the session timeout, so the server still holds the sessions and nodes). Measured from the \
         moment the server answers `srvr` as serving (a probe every 2 ms, overlapping; the \
         receipt of the first \"serving\" answer) to the first `leader` event after the kill. \
         Kill -> server answers: median {} ms.",
        session.as_secs(),
        fmt_ms(outage.median())
    ));
    let mut t = Table::new(&["implementation", "n", "min", "median", "p95", "max"]);
    for side in SIDES {
        let mut row = vec![side.name().to_string()];
        row.extend(r.zk_restart[idx(side)].cells());
        t.row(row);
    }
    t.row(ratio_row(&r.zk_restart));
    s.tables.push(t);
    if r.zk_restart_curator_missing > 0 {
        s.after.push(format!(
            "Curator had no leader within {} s in {} of {reps} restarts (not in the table).",
            LONG.as_secs(),
            r.zk_restart_curator_missing
        ));
    }
    ctx.publish(s);
    Ok(())
}

/// Stop, wipe, restart the server: time from "answers again" to a leader.
pub async fn wipe(ctx: &mut Ctx) -> Res<()> {
    let session = ctx.p.session;
    let reps = ctx.p.wipe;
    let bound = ctx.p.curator_wipe_bound;
    let n = 3;
    ctx.progress(&format!(
        "zk: ensemble wipe (stop, wipe, restart), {reps} times; Curator once, bounded at {bound:?} ..."
    ));
    let addr = ctx.zk.addr();
    let port = ctx.zk.port();
    let path = fresh("wipe");
    let from = ctx.ours.mark();
    let go = ctx.ours.add_zk("w", n, &addr, &path, session).await?;
    ctx.ours
        .next_leader(from, &go.members, LONG)
        .await
        .ok_or("no leader before the wipe")?;
    ctx.ours.wait_joined(&go.members, LONG).await?;
    // Curator in a JVM of its own: it is expected to stay broken.
    let cpath = fresh("wipe-curator");
    let mut cur = Driver::spawn(&ctx.env, Side::Curator, "curator-wipe").await?;
    let gc = cur.add_zk("w", n, &addr, &cpath, session).await?;
    cur.next_leader(0, &gc.members, LONG)
        .await
        .ok_or("Curator: no leader before the wipe")?;
    cur.wait_joined(&gc.members, LONG).await?;
    let mut cur = Some(cur);
    let mut curator_after = String::new();
    let mut down = Samples::new();
    for rep in 0..reps {
        let deadline = tokio::time::Instant::now() + LONG;
        while ctx.ours.leaders_in(&go.members).is_empty() {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("ours: no leader before wipe {rep}").into());
            }
            let from = ctx.ours.mark();
            ctx.ours
                .next_leader(from, &go.members, Duration::from_millis(200))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mo = ctx.ours.mark();
        let mc = cur.as_mut().map(|c| c.mark());
        let t_stop = now_ns();
        ctx.zk.stop().await?;
        ctx.zk.wipe()?;
        let poll = tokio::spawn(serving_after(port, Duration::from_secs(120)));
        ctx.zk.restart().await?;
        let t_ans = poll
            .await?
            .ok_or("ZooKeeper did not answer after the wipe")?;
        down.push(ms_between(t_stop, t_ans));
        let (t, _) = ctx
            .ours
            .next_leader(mo, &go.members, LONG)
            .await
            .ok_or("ours: no leader within 30 s after a wipe")?;
        ctx.res.zk_wipe.push(ms_between(t_ans, t));
        if let (Some(mut c), Some(mc)) = (cur.take(), mc) {
            let left = Duration::from_nanos(
                (bound.as_nanos() as u64).saturating_sub(now_ns().saturating_sub(t_ans)),
            );
            let got = c.next_leader(mc, &gc.members, left).await;
            ctx.res.zk_wipe_curator = Some(got.map(|(t, _)| ms_between(t_ans, t)));
            let from = c.mark();
            c.send("leaders").await?;
            let leading = match c
                .find(from, Duration::from_secs(10), |m| {
                    matches!(m, Msg::Leaders(_))
                })
                .await
            {
                Some(Msg::Leaders(k)) => k.to_string(),
                _ => "?".into(),
            };
            let nodes = children(&addr, &cpath).await;
            curator_after = format!(
                "After {} s: {leading} of {n} Curator latches report `hasLeadership()`; the \
                 Curator latch path {}.",
                bound.as_secs(),
                match nodes {
                    Ok(None) => "does not exist on the server (nobody re-created it)".to_string(),
                    Ok(Some(k)) => format!("has {k} participant node(s)"),
                    Err(e) => format!("could not be read ({e})"),
                }
            );
            c.reap().await;
        }
    }
    ctx.ours.close_all(LONG).await?;
    let r = &ctx.res;
    let mut s = Section::new("ZooKeeper: ensemble wiped (stop, empty data dir, restart)");
    s.before.push(format!(
        "{n} participants per implementation (session timeout {} s). The server is stopped \
         (SIGTERM), its data dir emptied, and restarted empty; measured from the moment \
         it answers `srvr` as serving (a probe every 2 ms, overlapping; the \
         receipt of the first \"serving\" answer) to the first `leader` event. Stop -> \
         answers: median {} ms. Curator runs in the first wipe only, in a JVM of its own, and \
         gets {} s after the server answers (CURATOR-724: 5.4.0 is expected never to recover).",
        session.as_secs(),
        fmt_ms(down.median()),
        bound.as_secs()
    ));
    let mut t = Table::new(&["implementation", "n", "min", "median", "p95", "max"]);
    let mut row = vec![Side::Ours.name().to_string()];
    row.extend(r.zk_wipe.cells());
    t.row(row);
    let cur_cells = match r.zk_wipe_curator {
        Some(Some(ms)) => vec![
            "1".into(),
            fmt_ms(Some(ms)),
            fmt_ms(Some(ms)),
            fmt_ms(Some(ms)),
            fmt_ms(Some(ms)),
        ],
        Some(None) => {
            let never = format!("none in {} s", bound.as_secs());
            vec![
                "1".into(),
                never.clone(),
                never.clone(),
                never.clone(),
                never,
            ]
        }
        None => vec!["0".into(), "–".into(), "–".into(), "–".into(), "–".into()],
    };
    let mut row = vec![Side::Curator.name().to_string()];
    row.extend(cur_cells);
    t.row(row);
    s.tables.push(t);
    if !curator_after.is_empty() {
        s.after.push(curator_after);
    }
    ctx.publish(s);
    Ok(())
}

/// Count the TCP connections made to `port` until `stop` fires: stands in for the down
/// server (accepts and closes at once, as a refused connect fails at once).
async fn count_attempts(port: u16, stop: tokio::sync::oneshot::Receiver<()>) -> Res<u64> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut n = 0u64;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(n),
            r = listener.accept() => {
                if r.is_ok() {
                    n += 1;
                }
            }
        }
    }
}

/// Server down for a long time (kill -9; its data kept, or wiped), sessions of 2 s and 6 s
/// alternately: time from "answers again" to a leader, and how many connection attempts
/// our participants make on the down server's port.
pub async fn long_outage(ctx: &mut Ctx) -> Res<()> {
    let reps = ctx.p.long_outage;
    let down = ctx.p.long_outage_down;
    let sessions = [Duration::from_secs(2), Duration::from_secs(6)];
    let n = 3;
    ctx.progress(&format!(
        "zk: long outage (kill -9, down {down:?}, back with data / wiped), {reps} of each ..."
    ));
    let addr = ctx.zk.addr();
    let port = ctx.zk.port();
    let mut rates = Samples::new();
    for rep in 0..reps {
        for wipe in [false, true] {
            let session = sessions[rep % sessions.len()];
            let path = fresh("long-outage");
            let from = ctx.ours.mark();
            let g = ctx.ours.add_zk("lo", n, &addr, &path, session).await?;
            ctx.ours
                .next_leader(from, &g.members, LONG)
                .await
                .ok_or("no leader before the long outage")?;
            ctx.ours.wait_joined(&g.members, LONG).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mark = ctx.ours.mark();
            ctx.zk.kill().await?;
            if wipe {
                ctx.zk.wipe()?;
            }
            // The outage (the scenario). Its middle part counts connection attempts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let counter = tokio::spawn(count_attempts(port, stopped));
            let window = down.saturating_sub(Duration::from_secs(2));
            tokio::time::sleep(window).await;
            let _ = stop.send(());
            let attempts = counter.await??;
            rates.push(attempts as f64 / window.as_secs_f64() / n as f64);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let poll = tokio::spawn(serving_after(port, Duration::from_secs(120)));
            ctx.zk.restart().await?;
            let t_ans = poll
                .await?
                .ok_or("ZooKeeper did not answer after the long outage")?;
            let (t, _) = ctx
                .ours
                .next_leader(mark, &g.members, LONG)
                .await
                .ok_or("ours: no leader within 30 s after a long outage")?;
            let ms = ms_between(t_ans, t);
            let k = usize::from(wipe);
            ctx.res.zk_long[k].push(ms);
            ctx.res.zk_long_by_session[k][rep % sessions.len()].push(ms);
            ctx.ours.close_all(LONG).await?;
        }
    }
    ctx.res.zk_down_attempts = rates;
    let r = &ctx.res;
    let mut s = Section::new("ZooKeeper: long outage (server down for seconds)");
    s.before.push(format!(
        "{n} of our participants; the server is killed with SIGKILL, kept down for {} s (its \
         data dir kept, or emptied), and restarted; sessions of {} s and {} s alternately. \
         By then zookeeper-client's own reconnect backoff has grown (100 ms doubling: 12.7 s \
         after the loss its next attempt is 6.4 s away) and a 2 s session has expired on the \
         client. Measured as the other outage rows: from the moment the server answers `srvr` \
         as serving to the first `leader` event. During the middle {} s of the outage the \
         bench listens on the server's port itself and counts the TCP connections our \
         participants make (probe sessions, connection retries, and zookeeper-client's own \
         reconnects of the old session).",
        down.as_secs(),
        sessions[0].as_secs(),
        sessions[1].as_secs(),
        down.saturating_sub(Duration::from_secs(2)).as_secs()
    ));
    let mut t = Table::new(&["measurement", "n", "min", "median", "p95", "max"]);
    for (k, what) in ["back with its data", "back empty (wiped)"]
        .iter()
        .enumerate()
    {
        let mut row = vec![format!("ours, {what}: answers -> leader (ms)")];
        row.extend(r.zk_long[k].cells());
        t.row(row);
        for (j, sess) in sessions.iter().enumerate() {
            let mut row = vec![format!("  of which session {} s", sess.as_secs())];
            row.extend(r.zk_long_by_session[k][j].cells());
            t.row(row);
        }
    }
    s.tables.push(t);
    let mut t = Table::new(&[
        "while the server is down",
        "n",
        "min",
        "median",
        "p95",
        "max",
    ]);
    let mut row = vec!["connection attempts per second, per participant".to_string()];
    row.extend(r.zk_down_attempts.cells());
    t.row(row);
    s.tables.push(t);
    ctx.publish(s);
    Ok(())
}

/// The number of children of `path` (None: the path does not exist).
async fn children(addr: &str, path: &str) -> Res<Option<usize>> {
    let c = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(6))
        .connect(addr)
        .await?;
    match c.list_children(path).await {
        Ok(k) => Ok(Some(k.len())),
        Err(zkc::Error::NoNode) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Requests per handover at the smallest scale size [ours, Curator] (median), if measured.
fn requests(r: &Results) -> Option<(f64, f64)> {
    let n = r.scale.iter().map(|x| x.n).min()?;
    let get = |side: Side| {
        r.scale
            .iter()
            .find(|x| x.n == n && x.side == side.name())
            .and_then(|x| x.requests.median())
    };
    get(Side::Ours).zip(get(Side::Curator))
}

/// Why the graceful figure is what it is.
pub fn graceful_why(r: &Results) -> String {
    let o = r.zk_graceful[0].median();
    let c = r.zk_graceful[1].median();
    let reqs = match requests(r) {
        Some((a, b)) => format!(
            " Requests per handover (scale group, server-side count incl. the leader's delete): \
             ours {a:.0}, Curator {b:.0}."
        ),
        None => String::new(),
    };
    let close = format!(
        " The leader's close call returns after {} ms for ours (publish `Closed`, delete the \
         node, wait for the answer, then 20 ms later close the session and wait for ZooKeeper to confirm) and {} ms for Curator \
         (`latch.close(); client.close()`); Curator's successor already leads long before that \
         call returns, so the close duration is not on its critical path.",
        fmt_ms(r.zk_close[0].median()),
        fmt_ms(r.zk_close[1].median())
    );
    let ours = "After its predecessor's deletion event our successor sends one request, the \
                claim (a multi: check its own node, assert that the nodes it saw ahead of its \
                predecessor are gone, setData on the latch path); no `getChildren`, because \
                sequence numbers only grow (no node created since can sort before its own) and \
                its pending own-node watch vouches for its node. Curator's successor reads \
                `getChildren` and passes the watch event, the callback and the `isLeader()` \
                listener through JVM threads (ZooKeeper's event thread, Curator's background \
                thread).";
    match ratio(o, c) {
        Some(x) if x <= 0.8 => format!("{ours}{reqs}{close}"),
        Some(_) => format!(
            "{ours} What is left of ours is the claim's write round trip and the wake-ups of \
             the leader's and successor's tasks; the claim is what makes the term durable, so \
             only a term taken from the deletion's zxid (not offered by ZooKeeper 3.8's watch \
             events) would remove it.{reqs}{close}"
        ),
        None => "not measured".into(),
    }
}

/// Why ours is (or is not) within one write round trip + 0.25 ms of the floor.
pub fn floor_why(r: &Results) -> String {
    let rtt = r.rtt.median().unwrap_or(0.0);
    let w = r.wrtt.median().unwrap_or(0.0);
    format!(
        "After the watch event our successor sends one request, the claim, and publishes \
         `Leader` when it is answered: no `getChildren` (the claim asserts that the nodes it \
         saw ahead are gone). The claim is a multi, slower than a bare setData: {} ms, or {} \
         ms asserting one node gone, against {} ms for setData and {} ms for a read. On top \
         come the leader's side (publishing `Closed` before the delete, then closing its \
         session, in the same driver process) and the wake-ups of the successor's tasks, \
         which the floor's two bare sessions do not pay. The floor the verdict uses is \
         measured like the handovers run: the delete is sent after {} ms without requests \
         (a delete into a hot connection and server is faster: the hot floor row). The claim \
         cannot become a read: the term is the claim's zxid (ZooKeeper 3.8's watch events \
         carry none). Curator's successor, which only reads, is {} ms above the idle floor \
         in the same run.",
        fmt_ms(r.zk_claim[0].median()),
        fmt_ms(r.zk_claim[1].median()),
        fmt_ms(Some(w)),
        fmt_ms(Some(rtt)),
        crate::etcd::IDLE_BEFORE_HANDOVER.as_millis(),
        fmt_ms(
            r.zk_graceful[1]
                .median()
                .zip(r.zk_idle_floor.median().or(r.floor.median()))
                .map(|(c, f)| c - f)
        )
    )
}

/// Why the cold start figure is what it is.
pub fn cold_why(r: &Results) -> String {
    let base = "Both create one new session per participant, then: ours `mkdir -p` of the \
                parents (containers), create, `getChildren` together with an `exists` watch on \
                its node (both sent before either answer), and the claim multi; Curator create \
                (creating parent containers if needed) and `getChildren`. All 5 of ours start concurrently on one tokio runtime; Curator's \
                start one after the other on the command thread, connecting in the background.";
    match ratio(r.zk_cold[0].median(), r.zk_cold[1].median()) {
        Some(x) if x <= 0.8 => format!(
            "{base} Session setup dominates; Curator adds its connection-state machinery and \
             thread hand-offs per step."
        ),
        Some(_) => format!("{base} Ours does more requests before `Leader` (mkdir, claim)."),
        None => "not measured".into(),
    }
}

/// Why the wipe figure is what it is.
pub fn wipe_why(r: &Results) -> String {
    let m = r.zk_wipe.median();
    let mx = max_of(&r.zk_wipe, &r.zk_long[1]);
    let how = format!(
        "While disconnected, our latch probes with a fresh session, first after 250 ms, then \
         every 100 ms however long the outage (the interval no longer grows); a participant \
         whose session has expired retries its connection as often. A probe that connects \
         and finds our node gone (the wiped server refuses the old session without ever \
         saying \"expired\") switches to the fresh session and rejoins at once. So the time \
         after the server answers is the wait for the next probe (0-100 ms) plus the fresh \
         session's handshake and a few round trips on a server that has just started. The \
         price while the server is down: {} connection attempts per second per participant \
         (median measured in the long-outage section; a refused TCP connect each).",
        fmt_ms(r.zk_down_attempts.median())
    );
    match (m, mx) {
        (Some(_), Some(x)) if x <= 300.0 => how,
        (Some(_), Some(_)) => format!(
            "{how} The slowest repetitions are the first requests a freshly started JVM \
             server answers (and the machine's load); see the long-outage section."
        ),
        _ => "not measured".into(),
    }
}

/// The larger of two maxima.
fn max_of(a: &Samples, b: &Samples) -> Option<f64> {
    match (a.max(), b.max()) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Why the restart figure is what it is.
pub fn restart_why(r: &Results) -> String {
    let how = "The server comes back with the sessions and nodes, but zookeeper-client \
               retries a single server after 100 ms, doubling each time (+ up to 100 ms \
               jitter), capped only by its session deadline, so its own reconnect can come \
               seconds after the server answers (6.4 s away after a 12.7 s outage), and its \
               public API offers no way to make it retry now. So our participant does not \
               wait for it: its probe session (every 100 ms while disconnected) reaches the \
               server and finds our session still held, and a new client takes that session \
               over (same session, same node, same place; the leader re-claims at once; \
               nothing is deleted, so a grant's promise that nobody else is elected before its \
               takeover bound holds). The old client is retired: it is detached (it cannot \
               close the session) and carries no unanswered write of ours (else it is not \
               retired); when its backoff ends it takes the connection for an instant and \
               exits, and the new client's reconnect within 250 ms is not counted as a doubt. \
               The Java client sleeps a random 0-1 s before each attempt, hence Curator's \
               ~0.5-1 s.";
    match max_of(&r.zk_restart[0], &r.zk_long[0]) {
        Some(x) if x <= 300.0 => how.to_string(),
        Some(_) => format!(
            "{how} The max exceeds 300 ms here: the probe runs every 100 ms and a resume is \
             one more connection, so look at the run's log for a participant that could not \
             be resumed (a write left unanswered by the lost connection) and waited for its \
             client."
        ),
        None => "not measured".into(),
    }
}

/// Why the crash figure is what it is.
pub fn crash_why(r: &Results, p: &crate::Params) -> String {
    let t = p.crash_session.as_secs_f64() * 1000.0;
    format!(
        "The server, not the client, expires the session: at the last packet it heard from \
         the client + the session timeout, rounded up to the next {tick} ms tick. zookeeper-client \
         pings after {:.0} ms of silence here (3 of its ticks; see `zk_ping_after`), the Java \
         client after 1/3 of the timeout ({:.0} ms), so a crashed Curator client was on average last heard from \
         earlier and its session runs out earlier after the kill; expiry − kill lies in \
         [timeout − ping interval, timeout + {tick} ms) for both. The successor's own work after \
         the event is a few ms (see graceful). Only a shorter session timeout or tickTime moves \
         it{}.",
        zk_ping_after(p.crash_session).as_secs_f64() * 1000.0,
        t / 3.0,
        match r.zk_crash[0].median() {
            Some(m) if m > t + 100.0 => "; the target is missed by the server's tick rounding, not by the client",
            _ => "",
        },
        tick = succession_testkit::ZK_TICK_MS,
    )
}
