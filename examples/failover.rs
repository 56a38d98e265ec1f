//! Three supervised participants (ZooKeeper primary, etcd fallback) on real servers that
//! this example starts itself (testkit; run `scripts/install-deps` once), then the seed
//! scenario live:
//!
//! 1. ZooKeeper is wiped and restarted empty: leadership comes back (path repair);
//! 2. ZooKeeper goes down for good: failover to etcd;
//! 3. ZooKeeper comes back: failback.
//!
//! `cargo run --example failover --features zk,etcd`
use std::sync::Arc;
use std::time::{Duration, Instant};

use succession::etcd::{EtcdConfig, EtcdElection};
use succession::zk::{ZkConfig, ZkElection};
use succession::{Election, ElectionExt, Supervisor, SupervisorEvent};
use succession_testkit::{EtcdServer, ZkServer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SESSION: Duration = Duration::from_secs(2);

fn participant(zk: &str, etcd: &str, id: &str) -> Res<Arc<Supervisor>> {
    let path = "/demo/failover/leader";
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
            .ttl(Duration::from_secs(3))
            .build()?,
    )?;
    // Records next to the etcd prefix, the session timeout and layer names from the pair.
    Ok(Arc::new(
        succession::supervised::builder(Arc::new(primary), Arc::new(fallback))?
            .failover_after(Duration::from_secs(3))
            .failback_after(Duration::from_secs(4))
            .check_interval(Duration::from_millis(250))
            .build()?,
    ))
}

/// Wait until one participant leads, at most `within`; returns its index.
async fn leader(nodes: &[Arc<Supervisor>], within: Duration) -> Res<usize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(i) = nodes.iter().position(|n| n.is_leader()) {
            return Ok(i);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no leader within {within:?}").into());
        }
        let mut rxs: Vec<_> = nodes.iter().map(|n| n.status()).collect();
        let waits = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
        let _ = tokio::time::timeout_at(deadline, futures_select(waits)).await;
    }
}

async fn futures_select<F: std::future::Future + Unpin>(futs: impl Iterator<Item = F>) {
    let futs: Vec<F> = futs.collect();
    let _ = futures::future::select_all(futs).await;
}

#[tokio::main]
async fn main() -> Res<()> {
    let t0 = Instant::now();
    let say = move |msg: &str| println!("[{:>7.0} ms] {msg}", t0.elapsed().as_secs_f64() * 1e3);

    say("starting ZooKeeper and etcd on 127.0.0.1 (testkit) ...");
    let mut zk = ZkServer::start().await?;
    let etcd = EtcdServer::start().await?;
    say(&format!(
        "ZooKeeper at {}, etcd at {}",
        zk.addr(),
        etcd.endpoint()
    ));

    let nodes: Vec<Arc<Supervisor>> = (0..3)
        .map(|i| participant(&zk.addr(), &etcd.endpoint(), &format!("node-{i}")))
        .collect::<Res<_>>()?;
    for n in &nodes {
        let mut events = n.events();
        let id = n.id().to_owned();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                let line = match &ev {
                    SupervisorEvent::LeadershipGained { layer, term } => {
                        format!("{id}: ELECTED through {} (term {term})", layer.name)
                    }
                    SupervisorEvent::LeadershipLost { reason, .. } => {
                        format!("{id}: revoked ({reason})")
                    }
                    SupervisorEvent::Failover {
                        generation, reason, ..
                    } => {
                        format!(
                            "{id}: sees FAILOVER zk -> etcd (generation {generation}): {reason}"
                        )
                    }
                    SupervisorEvent::Failback {
                        generation, reason, ..
                    } => {
                        format!(
                            "{id}: sees FAILBACK etcd -> zk (generation {generation}): {reason}"
                        )
                    }
                    SupervisorEvent::LayerHealth {
                        layer,
                        level,
                        reason,
                    } => {
                        format!("{id}: {} is {level} ({reason})", layer.name)
                    }
                    _ => continue,
                };
                println!("[{:>7.0} ms]   {line}", t0.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    for n in &nodes {
        n.join().await?;
    }
    let i = leader(&nodes, Duration::from_secs(20)).await?;
    say(&format!("== {} leads", nodes[i].id()));

    say("== 1. ZooKeeper is wiped and restarted EMPTY (Curator 5.4-5.7.1 never recovers here)");
    zk.stop().await?;
    zk.wipe()?;
    zk.restart().await?;
    let back = Instant::now();
    for n in &nodes {
        n.wait_for_status(Duration::from_secs(30), |s| {
            !s.is_leader() || s.health.level == succession::HealthLevel::Healthy
        })
        .await?;
    }
    let i = leader(&nodes, Duration::from_secs(30)).await?;
    say(&format!(
        "== {} leads again, {:.0} ms after ZooKeeper answered",
        nodes[i].id(),
        back.elapsed().as_secs_f64() * 1e3
    ));

    say("== 2. ZooKeeper goes down for good");
    zk.stop().await?;
    let down = Instant::now();
    let deadline = Duration::from_secs(40);
    loop {
        let i = leader(&nodes, deadline).await?;
        if nodes[i]
            .mode()
            .is_some_and(|m| m.layer == succession::supervisor::Layer::Fallback)
        {
            say(&format!(
                "== {} leads through etcd, {:.1} s after ZooKeeper went down",
                nodes[i].id(),
                down.elapsed().as_secs_f64()
            ));
            break;
        }
        nodes[i]
            .wait_for_status(deadline, |s| !s.is_leader())
            .await?;
    }

    say("== 3. ZooKeeper comes back");
    zk.restart().await?;
    let up = Instant::now();
    loop {
        let i = leader(&nodes, deadline).await?;
        if nodes[i]
            .mode()
            .is_some_and(|m| m.layer == succession::supervisor::Layer::Primary)
        {
            say(&format!(
                "== {} leads through ZooKeeper again, {:.1} s after it came back",
                nodes[i].id(),
                up.elapsed().as_secs_f64()
            ));
            break;
        }
        nodes[i]
            .wait_for_status(deadline, |s| !s.is_leader())
            .await?;
    }

    for n in &nodes {
        n.close().await?;
    }
    say("closed; servers stop with the example");
    Ok(())
}
