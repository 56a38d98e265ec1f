//! `succession::process` on the in-memory backend: the guard stops a command's whole tree
//! (including a grandchild that left the process group and ignores SIGTERM), caps the grace
//! at the takeover bound once leadership is lost, and kills the tree when its handle is
//! dropped. Process liveness is read from /proc.

use std::time::Duration;

use succession::memory::MemoryStore;
use succession::process::{kill_deadline, run_while_leading, GuardedChild, LeaderCommand, Outcome};
use succession::{Election, ElectionExt};
use tokio::time::Instant;

fn alive(pid: i32) -> bool {
    succession_testkit::process_alive(pid as u32)
}

/// A command that ignores SIGTERM and starts a grandchild in its own session that ignores
/// it too; the grandchild's pid is written to `gc`.
fn stubborn(gc: &std::path::Path) -> LeaderCommand {
    LeaderCommand::new("sh").arg("-c").arg(format!(
        "trap '' TERM; setsid sh -c 'trap \"\" TERM; echo $$ > {gc}; exec sleep 1000' & \
         while true; do sleep 0.05; done",
        gc = gc.display()
    ))
}

async fn pid_in(p: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", p.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn leader(
    store: &MemoryStore,
    id: &str,
) -> (succession::memory::MemoryElection, succession::Leadership) {
    let e = store.election(id).expect("election");
    e.join().await.expect("join");
    let l = e
        .wait_for_leadership(Duration::from_secs(5))
        .await
        .expect("leads");
    (e, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_whole_tree_after_the_grace_and_reaps_it() {
    let store = MemoryStore::new();
    let (e, lead) = leader(&store, "a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gc_file = dir.path().join("gc");
    let child = GuardedChild::spawn(&stubborn(&gc_file)).expect("spawn");
    let cmd = child.pid() as i32;
    let gc = pid_in(&gc_file).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn({
        let lead = lead.clone();
        async move {
            let e: &dyn Election = &e;
            let out = child
                .until_lost(e, &lead, Duration::from_millis(300), async {
                    let _ = rx.await;
                })
                .await;
            (out, e.is_leader())
        }
    });
    tx.send(()).expect("cancel");
    let (out, still_leader) = run.await.expect("task");
    assert!(still_leader, "a voluntary stop happens while leading");
    match out.expect("stopped") {
        Outcome::Cancelled(st) => {
            assert!(st.killed, "SIGTERM was ignored, so SIGKILL after the grace");
            assert!(
                st.took >= Duration::from_millis(300),
                "the full grace while leading: {st:?}"
            );
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(!alive(cmd), "the command is gone");
    assert!(!alive(gc), "the grandchild that left the group is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_caps_the_grace_at_the_takeover_bound() {
    let store = MemoryStore::with_session_timeout(Duration::from_millis(800));
    let (e, lead) = leader(&store, "a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gc_file = dir.path().join("gc");
    let cmd = stubborn(&gc_file);
    let run = tokio::spawn(async move {
        let out = run_while_leading(
            &e,
            &lead,
            &cmd,
            Duration::from_secs(60),
            std::future::pending(),
        )
        .await;
        let bound = e.takeover_bound();
        (out, bound)
    });
    let gc = pid_in(&gc_file).await;
    let cut = Instant::now();
    // The store becomes unreachable: the leader is Suspended and its contact stops.
    store.set_available(false);
    let (out, bound) = run.await.expect("task");
    let took = cut.elapsed();
    let bound = bound.expect("contact was had");
    match out.expect("stopped") {
        Outcome::LeadershipLost(st) => assert!(st.killed, "{st:?}"),
        other => panic!("expected LeadershipLost, got {other:?}"),
    }
    assert!(!alive(gc), "the grandchild is gone");
    assert!(
        Instant::now() < Instant::from_std(bound),
        "the tree was gone before the takeover bound"
    );
    assert!(
        took < Duration::from_secs(10),
        "killed at the bound (~0.7 s), not after the 60 s grace: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_the_whole_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gc_file = dir.path().join("gc");
    let child = GuardedChild::spawn(&stubborn(&gc_file)).expect("spawn");
    let cmd = child.pid() as i32;
    let gc = pid_in(&gc_file).await;
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(cmd) || alive(gc) {
        assert!(
            Instant::now() < deadline,
            "tree still alive 10 s after the drop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_deadline_is_the_grace_while_leading_and_the_bound_after() {
    let store = MemoryStore::with_session_timeout(Duration::from_secs(1));
    let (e, _lead) = leader(&store, "a").await;
    let grace = Duration::from_secs(30);
    let before = Instant::now();
    let d = kill_deadline(&e, grace);
    assert!(d >= before + grace, "leading: the full grace");
    store.set_available(false);
    e.wait_for_status(Duration::from_secs(5), |s| !s.is_leader())
        .await
        .expect("loses leadership");
    let d = kill_deadline(&e, grace);
    let bound = Instant::from_std(e.takeover_bound().expect("bound"));
    assert!(
        d < before + Duration::from_secs(2),
        "capped by the 1 s contact bound"
    );
    assert!(
        d <= bound - succession::process::STOP_MARGIN,
        "margin kept before the bound"
    );
}
