//! Three participants on the in-memory backend: no servers needed.
//!
//! `cargo run --example quickstart`
//!
//! Shows the whole contract in a minute: join, one leader with a fencing term, a worker
//! that runs only while leading, handover on resign, handover when the leader's link is
//! lost (session expiry), and a store wipe that every participant survives.
use std::sync::Arc;
use std::time::{Duration, Instant};

use succession::memory::{MemoryElection, MemoryStore};
use succession::{Election, ElectionExt, Role};

#[tokio::main]
async fn main() -> succession::Result<()> {
    let t0 = Instant::now();
    let log = move |msg: String| println!("[{:>6.0} ms] {msg}", t0.elapsed().as_secs_f64() * 1e3);

    let store = MemoryStore::with_session_timeout(Duration::from_millis(500));
    let nodes: Vec<Arc<MemoryElection>> = vec![
        Arc::new(store.election("scheduler-a")?),
        Arc::new(store.election("scheduler-b")?),
        Arc::new(store.election("scheduler-c")?),
    ];

    // Print every role change of every participant.
    for n in &nodes {
        let mut rx = n.status();
        let id = n.id().to_owned();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                log(format!("{id:<12} {} ({})", s.role, s.reason));
                if s.role == Role::Closed {
                    return;
                }
            }
        });
    }

    for n in &nodes {
        n.join().await?;
    }
    let lead = nodes[0].wait_for_leadership(Duration::from_secs(1)).await?;
    log(format!(
        "{} leads with fencing term {}",
        nodes[0].id(),
        lead.term()
    ));

    // Work that must only run while leading: cancelled the moment leadership is lost.
    let worker = {
        let n = nodes[0].clone();
        tokio::spawn(async move {
            n.run_while_leader(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    nodes[0].resign().await?; // stops leading first, then leaves the queue
    let outcome = worker.await.expect("worker task");
    log(format!(
        "worker of {} stopped: {}",
        nodes[0].id(),
        outcome.unwrap_err()
    ));

    let b = nodes[1].wait_for_leadership(Duration::from_secs(1)).await?;
    log(format!(
        "{} leads with term {} (> {})",
        nodes[1].id(),
        b.term(),
        lead.term()
    ));

    log("the store wipes everything (like a ZooKeeper ensemble coming back empty)".into());
    store.wipe();
    let mut leader = None;
    for n in &nodes[1..] {
        if let Some(l) = n.leadership() {
            leader = Some((n.id().to_owned(), l.term()));
        }
    }
    let (who, term) = leader.expect("someone leads again at once");
    log(format!(
        "{who} leads again after the wipe, term {term} (> {})",
        b.term()
    ));

    log(format!(
        "{} loses its link to the store (its session expires after 500 ms)",
        nodes[1].id()
    ));
    nodes[1].suspend();
    let c = nodes[2].wait_for_leadership(Duration::from_secs(2)).await?;
    log(format!(
        "{} leads with term {} (> {term})",
        nodes[2].id(),
        c.term()
    ));
    nodes[1].resume();

    for n in &nodes {
        n.close().await?;
    }
    log(format!("closed; the store holds {:?}", store.entries()));
    Ok(())
}
