//! A leader's work in a child process, stopped with its whole tree when leadership is lost.
//!
//! `cargo run --example leader_process --features process` (Linux; no servers needed: the
//! in-memory backend stands in for ZooKeeper or etcd, the process handling is the same).
//!
//! Two participants. The leader starts a worker (`sh` that starts a `sleep` in its own
//! session, the kind of grandchild a plain `kill` of the child misses) with its fencing
//! term in the environment. Then the leader's link to the store is lost: its worker tree is
//! stopped (SIGTERM, then SIGKILL at the takeover bound, long before the 30 s grace) before
//! the other participant can lead and start its own worker.
use std::sync::Arc;
use std::time::{Duration, Instant};

use succession::memory::{MemoryElection, MemoryStore};
use succession::process::{GuardedChild, LeaderCommand, Outcome};
use succession::{Election, ElectionExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let log = move |msg: String| println!("[{:>6.0} ms] {msg}", t0.elapsed().as_secs_f64() * 1e3);

    let store = MemoryStore::with_session_timeout(Duration::from_secs(1));
    let a = Arc::new(store.election("worker-a")?);
    let b = Arc::new(store.election("worker-b")?);
    a.join().await?;
    b.join().await?;

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for node in [a.clone(), b.clone()] {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            lead_with_a_worker(node, shutdown, log).await;
        }));
    }
    // Let worker-a's worker run a moment, then cut worker-a off from the store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    log("worker-a loses its link to the store".into());
    a.suspend();
    // worker-b leads once worker-a's place expires; give it a moment, then finish.
    b.wait_for_leadership(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Shut down in order: stop the workers first (full grace: we still lead), then leave.
    log("shutting down".into());
    shutdown.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// Wait for leadership, run the worker while leading, report how it was stopped.
async fn lead_with_a_worker(
    node: Arc<MemoryElection>,
    shutdown: Arc<tokio::sync::Notify>,
    log: impl Fn(String),
) {
    let leadership = tokio::select! {
        l = node.wait_for_leadership(Duration::from_secs(30)) => match l {
            Ok(l) => l,
            Err(_) => return,
        },
        _ = shutdown.notified() => return,
    };
    let term = leadership.term();
    let cmd = LeaderCommand::new("sh")
        .arg("-c")
        .arg("setsid sleep 1000 & wait")
        .env("FENCING_TERM", term.to_string());
    let child = match GuardedChild::spawn(&cmd) {
        Ok(c) => c,
        Err(e) => return log(format!("{}: cannot start the worker: {e}", node.id())),
    };
    log(format!(
        "{} leads (term {term}); worker pid {}",
        node.id(),
        child.pid()
    ));
    // Stop on loss of leadership (SIGKILL at the takeover bound at the latest), or on
    // shutdown (the full grace).
    let grace = Duration::from_secs(30);
    match child
        .until_lost(&*node, &leadership, grace, shutdown.notified())
        .await
    {
        Ok(Outcome::LeadershipLost(st)) => log(format!(
            "{}: leadership lost; worker tree gone after {:?} (SIGKILL needed: {})",
            node.id(),
            st.took,
            st.killed
        )),
        Ok(Outcome::Cancelled(st)) => log(format!(
            "{}: shutdown; worker tree gone after {:?}",
            node.id(),
            st.took
        )),
        Ok(other) => log(format!("{}: {other:?}", node.id())),
        Err(e) => log(format!("{}: stopping the worker: {e}", node.id())),
    }
}
