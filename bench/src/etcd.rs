//! etcd: our election vs the real `etcdctl elect`, on the same server in the same run.

use std::collections::VecDeque;
use std::time::Duration;

use succession_core::Election;
use succession_etcd::{EtcdConfig, EtcdElection};

use crate::clock::ms_between;
use crate::proc::{Ctl, Driver, Env, Msg, Side};
use crate::report::{Section, Table};
use crate::stats::{fmt_ms, fmt_ratio, ratio, Samples};
use crate::{fresh, Ctx, Params, Res, Results};

const LONG: Duration = Duration::from_secs(30);
/// `etcdctl elect` uses concurrency.NewSession's default TTL, with no flag to change it.
const ETCDCTL_TTL: Duration = Duration::from_secs(60);
/// The bench sends etcd nothing for this long before each side's measured graceful handover
/// (and before the idle revoke floor), so that both sides meet etcd in the same state: a
/// write after a pause costs more than one right after other requests (here ~1.4 ms vs
/// ~0.5 ms from revoke to the watch event).
pub const IDLE_BEFORE_HANDOVER: Duration = Duration::from_millis(30);

/// An observer of a prefix (not joined) to count the queue.
fn observer(endpoint: &str, prefix: &str) -> Res<EtcdElection> {
    let cfg = EtcdConfig::builder()
        .endpoint(endpoint)
        .prefix(prefix)
        .id("bench-observer")
        .build()?;
    Ok(EtcdElection::new(cfg)?)
}

/// Wait until `n` candidates are queued on the observer's prefix.
async fn queued(obs: &EtcdElection, n: usize) -> Res<()> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        if obs.participants().await?.len() == n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the etcd queue never reached {n} candidates").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// etcdctl crash handover: kill -9 the leading `etcdctl elect`; its 60 s lease must expire.
/// Returns (kill -> successor prints, TTL) in ms.
pub async fn etcdctl_crash(env: &Env, endpoint: &str) -> Res<(f64, f64)> {
    let prefix = fresh("etcdctl-crash");
    let obs = observer(endpoint, &prefix)?;
    let mut a = Ctl::spawn(env, endpoint, &["elect", &prefix, "a"])?;
    a.line(LONG).await.ok_or("etcdctl a never led")?;
    let mut b = Ctl::spawn(env, endpoint, &["elect", &prefix, "b"])?;
    queued(&obs, 2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = a.kill9();
    let got = b.line(ETCDCTL_TTL + LONG).await;
    a.wait_exit(Duration::from_secs(5)).await;
    b.sigint();
    b.wait_exit(Duration::from_secs(10)).await;
    let (t1, _) = got.ok_or("etcdctl: no successor within TTL + 30 s after a crash")?;
    Ok((ms_between(t0, t1), ETCDCTL_TTL.as_secs_f64() * 1000.0))
}

/// Everything etcd except the background etcdctl crash.
pub async fn run(ctx: &mut Ctx) -> Res<()> {
    let ep = ctx.etcd.endpoint();
    let p = ctx.p.clone();
    ctx.progress(
        "etcd: process start overheads (etcdctl version, uncontended elect; ours uncontended) ...",
    );
    let mut version = Samples::new();
    let mut elect = Samples::new();
    let mut ours_first = Samples::new();
    for rep in 0..p.warmup + p.etcdctl_start {
        let mut v = Ctl::spawn(&ctx.env, &ep, &["version"])?;
        let t = v.wait_exit(Duration::from_secs(10)).await;
        let prefix = fresh("etcdctl-alone");
        let mut e = Ctl::spawn(&ctx.env, &ep, &["elect", &prefix, "alone"])?;
        let (t1, _) = e.line(LONG).await.ok_or("etcdctl elect never printed")?;
        e.sigint();
        e.wait_exit(Duration::from_secs(10)).await;
        let prefix = fresh("ours-alone");
        let from = ctx.ours.mark();
        let g = ctx
            .ours
            .add_etcd("alone", 1, &ep, &prefix, p.ttl, false)
            .await?;
        let (t2, _) = ctx
            .ours
            .next_leader(from, &g.members, LONG)
            .await
            .ok_or("ours: no leader uncontended")?;
        ctx.ours.close(g.members[0]).await?;
        ctx.ours.wait_closed(g.members[0], LONG).await?;
        if rep >= p.warmup {
            version.push(ms_between(v.t_spawn, t));
            elect.push(ms_between(e.t_spawn, t1));
            ours_first.push(ms_between(g.t0, t2));
        }
    }
    ctx.res.etcdctl_version = version.clone();

    ctx.progress("etcd: floor (raw delete -> watch event) and round trips ...");
    let fprefix = fresh("etcd-floor");
    let mark = ctx.ours.mark();
    let (f, rr, w) = crate::zk::floor_samples(
        &mut ctx.ours,
        &format!("etcdfloor {ep} {fprefix} {}", p.floor),
    )
    .await?;
    ctx.res.etcd_floor = [f, rr, w];
    let (mut revoke_floor, mut revoke_rtt) = (Samples::new(), Samples::new());
    let mut idle_floor = Samples::new();
    for m in &ctx.ours.log[mark..] {
        match m {
            Msg::Sample(name, ns) if name == "revokefloor" => revoke_floor.push(*ns as f64 / 1e6),
            Msg::Sample(name, ns) if name == "revokertt" => revoke_rtt.push(*ns as f64 / 1e6),
            Msg::Sample(name, ns) if name == "revokeidlefloor" => idle_floor.push(*ns as f64 / 1e6),
            _ => {}
        }
    }
    ctx.res.etcd_revoke_floor = revoke_floor.clone();
    ctx.res.etcd_revoke_rtt = revoke_rtt.clone();
    ctx.res.etcd_revoke_idle_floor = idle_floor.clone();

    let total = p.warmup + p.etcd_graceful;
    ctx.progress(&format!(
        "etcd: graceful handover, queue of {}, {total} per side ...",
        p.group
    ));
    // Ours.
    let prefix = fresh("etcd-graceful");
    let from = ctx.ours.mark();
    let g = ctx
        .ours
        .add_etcd("g", p.group, &ep, &prefix, p.ttl, false)
        .await?;
    ctx.ours
        .next_leader(from, &g.members, LONG)
        .await
        .ok_or("ours: no etcd leader")?;
    ctx.ours.wait_joined(&g.members, LONG).await?;
    let mut members = g.members;
    let mut close = Samples::new();
    let mut after_close = Samples::new();
    // etcdctl.
    let cprefix = fresh("etcdctl-graceful");
    let obs = observer(&ep, &cprefix)?;
    let mut q: VecDeque<Ctl> = VecDeque::new();
    for k in 0..p.group {
        let mut c = Ctl::spawn(&ctx.env, &ep, &["elect", &cprefix, &format!("c{k}")])?;
        if k == 0 {
            c.line(LONG).await.ok_or("etcdctl never led")?;
        }
        q.push_back(c);
        queued(&obs, k + 1).await?;
    }
    for rep in 0..total {
        // Ours: the leader closes.
        let leaders = ctx.ours.leaders_in(&members);
        let [leader] = leaders.as_slice() else {
            return Err(format!("ours (etcd): expected one leader, saw {leaders:?}").into());
        };
        let leader = *leader;
        let rest: Vec<usize> = members.iter().copied().filter(|&i| i != leader).collect();
        tokio::time::sleep(IDLE_BEFORE_HANDOVER).await;
        let from = ctx.ours.mark();
        let t0 = ctx.ours.close(leader).await?;
        let (t1, _) = ctx
            .ours
            .next_leader(from, &rest, LONG)
            .await
            .ok_or("ours (etcd): no successor")?;
        let t2 = ctx.ours.wait_closed(leader, LONG).await?;
        let add = ctx
            .ours
            .add_etcd("g", 1, &ep, &prefix, p.ttl, false)
            .await?;
        ctx.ours.wait_joined(&add.members, LONG).await?;
        members = rest;
        members.extend(add.members);
        // etcdctl: SIGINT the leader (it resigns and exits); the next one prints.
        let mut old = q.pop_front().ok_or("etcdctl queue empty")?;
        let next = q.front_mut().ok_or("etcdctl queue empty")?;
        tokio::time::sleep(IDLE_BEFORE_HANDOVER).await;
        let c0 = old.sigint();
        let (c1, _) = next
            .line(LONG)
            .await
            .ok_or("etcdctl: the successor never printed")?;
        old.wait_exit(Duration::from_secs(10)).await;
        let c = Ctl::spawn(&ctx.env, &ep, &["elect", &cprefix, &format!("n{rep}")])?;
        q.push_back(c);
        queued(&obs, p.group).await?;
        if rep >= p.warmup {
            close.push(ms_between(t0, t2));
            after_close.push(ms_between(t2, t1));
            ctx.res.etcd_graceful[0].push(ms_between(t0, t1));
            ctx.res.etcd_graceful[1].push(ms_between(c0, c1));
        }
    }
    ctx.ours.close_all(LONG).await?;
    ctx.res.etcd_close = close.clone();
    ctx.res.etcd_after_close = after_close.clone();
    for c in q.iter() {
        c.sigint();
    }
    for mut c in q {
        c.wait_exit(Duration::from_secs(10)).await;
    }

    // Ours: crash handover (kill -9 of the leader's process; the lease expires).
    ctx.progress(&format!(
        "etcd: crash handover (kill -9, TTL {:?}), {} times ...",
        p.ttl, p.etcd_crash
    ));
    let mut overshoot = Samples::new();
    for rep in 0..p.etcd_crash {
        let prefix = fresh("etcd-crash");
        let mut victim = Driver::spawn(&ctx.env, Side::Ours, &format!("etcd-victim-{rep}")).await?;
        let gv = victim.add_etcd("v", 1, &ep, &prefix, p.ttl, true).await?;
        victim
            .next_leader(0, &gv.members, LONG)
            .await
            .ok_or("etcd victim never led")?;
        let gs = ctx
            .ours
            .add_etcd("s", 1, &ep, &prefix, p.ttl, false)
            .await?;
        ctx.ours.wait_joined(&gs.members, LONG).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.pump();
        let expiry = victim.log.iter().rev().find_map(|m| match m {
            Msg::Lease { at, .. } => Some(*at),
            _ => None,
        });
        let from = ctx.ours.mark();
        let t0 = victim.kill9();
        let got = ctx
            .ours
            .next_leader(from, &gs.members, p.ttl * 3 + LONG)
            .await;
        victim.reap().await;
        let (t1, _) = got.ok_or("ours (etcd): no successor after a crash")?;
        ctx.res.etcd_crash.push(ms_between(t0, t1));
        if let Some(e) = expiry {
            overshoot.push(ms_between(e, t1));
        }
        ctx.ours.close(gs.members[0]).await?;
        ctx.ours.wait_closed(gs.members[0], LONG).await?;
    }

    let r = &ctx.res;
    let mut s = Section::new("etcd: our election vs `etcdctl elect`");
    s.before.push(format!(
        "Graceful handover: a queue of {} participants on one prefix. Ours: the leader's \
         `close()` (revokes its lease, which deletes its key) -> the successor's `leader` \
         event, both in our driver process. etcdctl: {} `etcdctl elect` processes; SIGINT to \
         the leader (it resigns, deleting its key, and exits) -> the successor prints its key \
         (stdout read by the bench). All processes are started before the measured interval, \
         so no process start is inside it; the start overheads below are reported for \
         reference, and nothing is subtracted. Before each side's measured handover the bench \
         sends etcd nothing for {} ms, so both sides meet etcd equally idle (a write right \
         after other traffic is much faster: compare the two revoke floors).",
        p.group,
        p.group,
        IDLE_BEFORE_HANDOVER.as_millis()
    ));
    let mut t = Table::new(&["measurement", "n", "min", "median", "p95", "max"]);
    let mut row = vec!["succession graceful handover".to_string()];
    row.extend(r.etcd_graceful[0].cells());
    t.row(row);
    let mut row = vec!["etcdctl elect graceful handover".to_string()];
    row.extend(r.etcd_graceful[1].cells());
    t.row(row);
    let rr = |f: fn(&Samples) -> Option<f64>| {
        fmt_ratio(ratio(f(&r.etcd_graceful[0]), f(&r.etcd_graceful[1])))
    };
    t.row(vec![
        "ratio ours / etcdctl".into(),
        String::new(),
        rr(Samples::min),
        rr(Samples::median),
        rr(|s| s.percentile(95.0)),
        rr(Samples::max),
    ]);
    let [ef, er, ew] = &r.etcd_floor;
    let fm = ef.median().unwrap_or(0.0);
    let mut row = vec!["floor: delete -> watch event (raw etcd-client)".to_string()];
    row.extend(ef.cells());
    t.row(row);
    let mut row = vec!["floor: lease revoke -> watch event (raw etcd-client)".to_string()];
    row.extend(revoke_floor.cells());
    t.row(row);
    let mut row = vec![format!(
        "floor: lease revoke after {} ms idle -> watch event (raw etcd-client)",
        IDLE_BEFORE_HANDOVER.as_millis()
    )];
    row.extend(idle_floor.cells());
    t.row(row);
    let ifm = idle_floor.median().unwrap_or(0.0);
    let mut row =
        vec!["succession − idle revoke floor median (ours deletes by revoking)".to_string()];
    row.extend(r.etcd_graceful[0].minus(ifm).cells());
    t.row(row);
    let mut row = vec!["etcdctl − delete floor median (etcdctl deletes its key)".to_string()];
    row.extend(r.etcd_graceful[1].minus(fm).cells());
    t.row(row);
    let mut row = vec!["Range round trip (get)".to_string()];
    row.extend(er.cells());
    t.row(row);
    let mut row = vec!["Put round trip (a write: raft + WAL fsync)".to_string()];
    row.extend(ew.cells());
    t.row(row);
    let mut row = vec!["LeaseRevoke round trip".to_string()];
    row.extend(revoke_rtt.cells());
    t.row(row);
    let mut row = vec!["succession: the leader's `close()` returns".to_string()];
    row.extend(close.cells());
    t.row(row);
    let mut row = vec!["succession: successor leads − leader's `close()` returned".to_string()];
    row.extend(after_close.cells());
    t.row(row);
    s.tables.push(t);

    let mut t = Table::new(&[
        "overhead (not in the handover figures)",
        "n",
        "min",
        "median",
        "p95",
        "max",
    ]);
    let mut row = vec!["`etcdctl version`: spawn -> exit (process start)".to_string()];
    row.extend(version.cells());
    t.row(row);
    let mut row = vec!["`etcdctl elect`, no contention: spawn -> prints".to_string()];
    row.extend(elect.cells());
    t.row(row);
    let vm = version.median().unwrap_or(0.0);
    let mut row = vec!["  the same minus the `etcdctl version` median".to_string()];
    row.extend(elect.minus(vm).cells());
    t.row(row);
    let mut row = vec!["succession, no contention: join -> leader".to_string()];
    row.extend(ours_first.cells());
    t.row(row);
    s.tables.push(t);

    let ttl = p.ttl.as_secs_f64() * 1000.0;
    let mut t = Table::new(&[
        "crash handover (kill -9)",
        "n",
        "min",
        "median",
        "p95",
        "max",
    ]);
    let mut row = vec![format!(
        "succession (TTL {} s): kill -> successor",
        p.ttl.as_secs()
    )];
    row.extend(r.etcd_crash.cells());
    t.row(row);
    let mut row = vec!["  minus TTL".to_string()];
    row.extend(r.etcd_crash.minus(ttl).cells());
    t.row(row);
    let mut row = vec!["  successor minus the lease's earliest expiry".to_string()];
    row.extend(overshoot.cells());
    t.row(row);
    s.tables.push(t);
    s.after.push(format!(
        "A crashed leader's lease runs out between TTL − renew interval (ours renews every \
         TTL/3) and TTL after the kill; etcd's lessor checks for expired leases every 500 ms. \
         \"Earliest expiry\" is the last renewal the victim saw answered + TTL (printed by the \
         victim just before the kill; a renewal answered in the last 10 ms before the kill may \
         be missing, which would make that row an overestimate). The etcdctl crash handover \
         (its TTL is fixed at {} s) is in its own section below, measured once in the \
         background.",
        ETCDCTL_TTL.as_secs()
    ));
    ctx.publish(s);
    Ok(())
}

/// The etcdctl crash handover section (after the background task finished).
pub fn etcdctl_crash_section(ctx: &mut Ctx) {
    let mut s = Section::new("etcd: `etcdctl elect` crash handover");
    match ctx.res.etcdctl_crash {
        Some((ms, ttl)) => {
            s.before.push(format!(
                "Two `etcdctl elect` processes; the leader is killed with SIGKILL and its \
                 session lease (TTL {} s, etcdctl's fixed default; it renews every TTL/3) must \
                 expire. One sample, taken in the background during the other groups (its \
                 precision is not affected at this scale).",
                ttl / 1000.0
            ));
            let mut t = Table::new(&["measurement", "ms"]);
            t.row(vec![
                "etcdctl: kill -> successor prints".into(),
                fmt_ms(Some(ms)),
            ]);
            t.row(vec!["  minus TTL".into(), fmt_ms(Some(ms - ttl))]);
            s.tables.push(t);
        }
        None => s
            .before
            .push("Not measured (the background task failed; see stderr).".into()),
    }
    ctx.publish(s);
}

/// Why the etcd graceful figure is what it is.
pub fn graceful_why(r: &Results) -> String {
    let (o, c) = (r.etcd_graceful[0].median(), r.etcd_graceful[1].median());
    let Some(x) = ratio(o, c) else {
        return "not measured".into();
    };
    let idle = r.etcd_revoke_idle_floor.median();
    let what = format!(
        "Ours: `close()` publishes `Closed`, then sends one LeaseRevoke at once (the \
         participation task waits for its answer instead of revoking again) and returns when \
         etcd answers ({} ms); the successor watches the keys ahead of it on one stream with \
         its own key and the epoch record, and leads on the Delete event itself, without a read \
         ({} ms after `close()` returned; negative: before). etcdctl: SIGINT -> `Resign` (a \
         txn delete) -> the successor's `Campaign` re-reads the queue (a Get), then etcdctl \
         Gets its own key and prints. Floors: revoke -> event {} ms right after other \
         requests, {} ms after {} ms idle (how both sides meet etcd here); a LeaseRevoke round \
         trip is {} ms.",
        fmt_ms(r.etcd_close.median()),
        fmt_ms(r.etcd_after_close.median()),
        fmt_ms(r.etcd_revoke_floor.median()),
        fmt_ms(idle),
        IDLE_BEFORE_HANDOVER.as_millis(),
        fmt_ms(r.etcd_revoke_rtt.median()),
    );
    if x <= 0.5 {
        return what;
    }
    let half = c.map(|c| c / 2.0);
    let left = match (half, idle) {
        (Some(h), Some(f)) if h < f => format!(
            "0.5x etcdctl would be {} ms, below that floor itself: no client that deletes its \
             key with one write can reach it on this run's server.",
            fmt_ms(Some(h))
        ),
        (Some(h), Some(f)) => format!(
            "0.5x etcdctl would be {} ms, i.e. the idle floor + {} ms for everything else.",
            fmt_ms(Some(h)),
            fmt_ms(Some(h - f))
        ),
        _ => String::new(),
    };
    format!(
        "{what} What is left of ours is mostly that idle floor — etcd applying one write after \
         a pause and sending the event — with {} ms of our own steps on top (wake-ups in our \
         driver process, the revoke's send, the status publication). {left}",
        fmt_ms(o.zip(idle).map(|(o, f)| o - f)),
    )
}

/// Why the etcd crash figure is what it is.
pub fn crash_why(r: &Results, p: &Params) -> String {
    let ttl = p.ttl.as_secs_f64() * 1000.0;
    match r.etcd_crash.median() {
        Some(m) if m <= ttl + 100.0 => "The lease expires within TTL of the last renewal; etcd's \
             500 ms expiry check and the successor's one read add the rest."
            .into(),
        Some(_) => "etcd revokes expired leases from a loop that runs every 500 ms, so expiry \
             lands up to 500 ms after the lease's deadline; that server-side granularity, not \
             the client, decides whether TTL + 100 ms holds."
            .into(),
        None => "not measured".into(),
    }
}
