//! The supervisor: ZooKeeper killed -> a leader through etcd; ZooKeeper back -> failback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use succession_core::supervisor::Layer;
use succession_core::{Election, Supervisor, SupervisorEvent};
use succession_etcd::{EtcdConfig, EtcdElection};
use succession_zk::{ZkConfig, ZkElection};

use crate::clock::{ms_between, now_ns};
use crate::report::{Section, Table, Verdict};
use crate::stats::{fmt_ms, Samples};
use crate::zk::serving_after;
use crate::{fresh, Ctx, Res, Results};

const SESSION: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(3);
const FAILOVER_AFTER: Duration = Duration::from_secs(3);
const FAILBACK_AFTER: Duration = Duration::from_secs(4);
const CHECK: Duration = Duration::from_millis(250);

/// (instant ns, participant, layer gained).
type Gains = Arc<Mutex<Vec<(u64, usize, Layer)>>>;

fn participant(zk: &str, etcd: &str, path: &str, id: &str) -> Res<Supervisor> {
    let primary = ZkElection::new(
        ZkConfig::builder(zk, path, id)
            .session_timeout(SESSION)
            .build()?,
    )?;
    let fallback = EtcdElection::new(
        EtcdConfig::builder()
            .endpoint(etcd)
            .prefix(path)
            .id(id)
            .ttl(TTL)
            .build()?,
    )?;
    Ok(
        succession::supervised::builder(Arc::new(primary), Arc::new(fallback))?
            .failover_after(FAILOVER_AFTER)
            .failback_after(FAILBACK_AFTER)
            .check_interval(CHECK)
            .build()?,
    )
}

async fn gained(gains: &Gains, after: u64, layer: Layer, timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let hit = gains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(t, _, l)| *t >= after && *l == layer)
            .map(|(t, _, _)| *t);
        if hit.is_some() {
            return hit;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Failover and failback cycles with three supervised participants.
pub async fn run(ctx: &mut Ctx) -> Res<()> {
    let reps = ctx.p.sup;
    ctx.progress(&format!(
        "supervisor: ZooKeeper killed -> etcd leader -> ZooKeeper back -> failback, {reps} cycle(s) ..."
    ));
    let (zk, etcd) = (ctx.zk.addr(), ctx.etcd.endpoint());
    let port = ctx.zk.port();
    let mut takeover = Duration::ZERO;
    for rep in 0..reps {
        let path = fresh("sup");
        let gains: Gains = Arc::new(Mutex::new(Vec::new()));
        let mut nodes = Vec::new();
        for i in 0..3 {
            let s = Arc::new(participant(&zk, &etcd, &path, &format!("node-{i}"))?);
            takeover = s.timings().takeover_delay;
            let mut rx = s.events();
            let g = gains.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(SupervisorEvent::LeadershipGained { layer, .. }) => {
                            let t = now_ns();
                            g.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((t, i, layer.layer));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            });
            nodes.push(s);
        }
        for n in &nodes {
            n.join().await?;
        }
        gained(&gains, 0, Layer::Primary, Duration::from_secs(60))
            .await
            .ok_or("supervisor: no leader through ZooKeeper at start")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t_kill = now_ns();
        ctx.zk.kill().await?;
        let t_fo = gained(&gains, t_kill, Layer::Fallback, Duration::from_secs(60))
            .await
            .ok_or("supervisor: no leader through etcd within 60 s of the ZooKeeper kill")?;
        ctx.res.sup_failover.push(ms_between(t_kill, t_fo));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let poll = tokio::spawn(serving_after(port, Duration::from_secs(120)));
        ctx.zk.restart().await?;
        let t_ans = poll
            .await?
            .ok_or("ZooKeeper did not answer after the restart")?;
        let t_fb = gained(&gains, t_ans, Layer::Primary, Duration::from_secs(90))
            .await
            .ok_or("supervisor: no failback within 90 s of ZooKeeper answering")?;
        ctx.res.sup_failback.push(ms_between(t_ans, t_fb));
        for n in &nodes {
            if tokio::time::timeout(Duration::from_secs(30), n.close())
                .await
                .is_err()
            {
                eprintln!("  supervisor node close timed out (rep {rep})");
            }
        }
    }
    let fo = FAILOVER_AFTER.as_secs_f64() * 1000.0;
    let fb = FAILBACK_AFTER.as_secs_f64() * 1000.0;
    ctx.res.sup_params = Some((fo, fb));
    let r = &ctx.res;
    let mut s = Section::new("Supervisor: failover to etcd and failback");
    s.before.push(format!(
        "Three supervised participants (ZooKeeper primary with session timeout {} s, etcd \
         fallback with TTL {} s, `failover_after` {} s, `failback_after` {} s, \
         `check_interval` {} ms, so the takeover delay G after a mode change is {} ms), all in \
         the bench process, fresh path and prefix per cycle. Failover: ZooKeeper is killed \
         with SIGKILL (and stays down) -> the first `LeadershipGained` through etcd. Failback: \
         ZooKeeper restarted with its data -> from the moment it answers `srvr` (as in the \
         outage group) to the first `LeadershipGained` through ZooKeeper.",
        SESSION.as_secs(),
        TTL.as_secs(),
        FAILOVER_AFTER.as_secs(),
        FAILBACK_AFTER.as_secs(),
        CHECK.as_millis(),
        takeover.as_millis()
    ));
    let mut t = Table::new(&["measurement", "n", "min", "median", "p95", "max"]);
    let rows: [(&str, &Samples, f64); 4] = [
        (
            "failover: ZooKeeper killed -> etcd leader",
            &r.sup_failover,
            0.0,
        ),
        ("  minus failover_after", &r.sup_failover, fo),
        (
            "failback: ZooKeeper answers -> ZooKeeper leader",
            &r.sup_failback,
            0.0,
        ),
        ("  minus failback_after", &r.sup_failback, fb),
    ];
    for (name, x, by) in rows {
        let mut row = vec![name.to_string()];
        row.extend(x.minus(by).cells());
        t.row(row);
    }
    s.tables.push(t);
    s.after.push(format!(
        "What the rest is made of (README timings): after `failover_after` of an unhealthy \
         primary the decision is taken at the next check (≤ {} ms), the compare-and-swap of \
         the mode record, then every participant waits the takeover delay G ({} ms) before \
         leading under the new generation; failback is the same after `failback_after` of a \
         healthy primary, plus the ZooKeeper reconnect.",
        CHECK.as_millis(),
        takeover.as_millis()
    ));
    ctx.publish(s);
    Ok(())
}

/// A reading of the supervisor figures (no numeric target in the issue).
pub fn verdict(r: &Results) -> Option<Verdict> {
    let (fo, fb) = r.sup_params?;
    Some(Verdict {
        target: "supervisor failover / failback (no numeric target; reported)".into(),
        measured: format!(
            "failover {} ms total = failover_after + {} ms; failback {} ms after ZooKeeper answers = failback_after + {} ms",
            fmt_ms(r.sup_failover.median()),
            fmt_ms(r.sup_failover.median().map(|m| m - fo)),
            fmt_ms(r.sup_failback.median()),
            fmt_ms(r.sup_failback.median().map(|m| m - fb)),
        ),
        met: None,
        why: "Beyond the configured delays: up to one `check_interval` until the decision, \
              the mode record's compare-and-swap, and the takeover delay G that keeps two \
              generations from leading at once (both shrink with `check_interval`); for \
              failback also the time until the ZooKeeper layer is healthy again after the \
              server answers (its sessions expired during the outage, so it reconnects with \
              backoff and rejoins)."
            .into(),
    })
}
