//! `succession run`: the command never outlives leadership. Real servers, the real binary,
//! and a command whose work is a grandchild that left the process group (`setsid`) and
//! ignores SIGTERM. Every verdict samples process liveness in /proc, not log lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use succession_testkit::{shared_zk, unique_path, EtcdServer, TcpProxy, ZkServer};
use tokio::time::Instant;

mod common;

use common::{alive, field, ready, run_to_end, script, tagged, Cli};

/// Sample until participant `next`'s command has started; at every sample after it has,
/// none of `old`'s command processes may be alive. Returns when `next` started.
async fn next_starts_only_after_old_is_gone(dir: &Path, next: &str, old_tag: &str, old: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let started = dir.join(format!("cmd.{next}"));
    loop {
        // Check the newcomer first: a process of the old tree seen alive AFTER the
        // newcomer's command was seen started is an overlap.
        let next_started = started.exists();
        let old_alive: Vec<i32> = old
            .iter()
            .copied()
            .filter(|&p| alive(p))
            .chain(tagged(old_tag))
            .collect();
        if next_started {
            assert!(
                old_alive.is_empty(),
                "{next}'s command started while the old leader's processes {old_alive:?} still ran"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{next}'s command did not start within 40s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn run_args<'a>(
    zk: &'a str,
    path: &'a str,
    id: &'a str,
    extra: &[&'a str],
    script: &'a str,
) -> Vec<&'a str> {
    let mut v = vec![
        "run",
        "--zk",
        zk,
        "--path",
        path,
        "--id",
        id,
        "--session-timeout",
        "2s",
    ];
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--", "sh", "-c", script]);
    v
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().to_path_buf();
    (d, p)
}

/// The leader's link to ZooKeeper is cut. Its command drains for 4.5 s after SIGTERM and
/// its grandchild ignores SIGTERM; --grace is 30 s. The whole tree must be gone before the
/// next leader's command starts (the kill comes at the takeover bound, not after --grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_link_cut_kills_the_whole_slow_draining_tree_before_the_next_leader_starts() {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.expect("proxy");
    let path = unique_path("run-cut");
    let (_keep, dir) = tmp();
    let tag = format!("cut{}", std::process::id());
    let sh = script(&dir, &tag, "4.5");
    let pa = proxy.addr();
    let mut a = Cli::start(&run_args(&pa, &path, "a", &["--grace", "30s"], &sh));
    a.until("started").await;
    let (cmd, gc) = ready(&dir, "a").await;
    let zka = zk.addr();
    let mut b = Cli::start(&run_args(&zka, &path, "b", &["--grace", "30s"], &sh));
    b.until("joined").await;
    assert!(alive(cmd) && alive(gc), "a's command runs while a leads");

    proxy.cut();
    next_starts_only_after_old_is_gone(&dir, "b", &format!("{tag}-a"), &[cmd, gc]).await;
    let stopped = a.until("stopped").await;
    assert_eq!(field(&stopped, "killed"), Some("true"), "{stopped}");
    assert_eq!(
        field(&stopped, "reason"),
        Some("leadership lost"),
        "{stopped}"
    );

    proxy.restore();
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    assert_eq!(a.exit_code().await, 0);
    assert_eq!(b.exit_code().await, 0);
    for id in ["a", "b"] {
        assert_eq!(
            tagged(&format!("{tag}-{id}")),
            Vec::<i32>::new(),
            "{id}'s processes left"
        );
    }
}

/// `kill -9` of the leader's `run`: the guard kills the command's whole tree (including
/// the grandchild that left the group) before another participant's command starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_kill9_of_run_kills_its_whole_tree_before_the_next_leader_starts() {
    let zk = shared_zk().await;
    let path = unique_path("run-kill9");
    let (_keep, dir) = tmp();
    let tag = format!("k9{}", std::process::id());
    let sh = script(&dir, &tag, "0");
    let zka = zk.addr();
    let mut a = Cli::start(&run_args(&zka, &path, "a", &[], &sh));
    a.until("started").await;
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = Cli::start(&run_args(&zka, &path, "b", &[], &sh));
    b.until("joined").await;

    a.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    next_starts_only_after_old_is_gone(&dir, "b", &format!("{tag}-a"), &[cmd, gc]).await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "b waited for a's session to expire (2 s); a fast start means a's place was freed early"
    );
    b.signal(libc::SIGTERM);
    assert_eq!(b.exit_code().await, 0);
    assert!(tagged(&format!("{tag}-b")).is_empty());
}

/// SIGTERM to every `run` at once: all exit 0 and no process of any command is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sigterm_to_every_participant_leaves_no_process_of_any_command() {
    let zk = shared_zk().await;
    let path = unique_path("run-all-term");
    let (_keep, dir) = tmp();
    let tag = format!("all{}", std::process::id());
    let sh = script(&dir, &tag, "0.2");
    let zka = zk.addr();
    let ids = ["p1", "p2", "p3"];
    let mut ps: Vec<Cli> = ids
        .iter()
        .map(|id| Cli::start(&run_args(&zka, &path, id, &["--grace", "3s"], &sh)))
        .collect();
    for p in &mut ps {
        p.until("joined").await;
    }
    // Wait for whoever leads to have its tree up.
    let leader = loop {
        if let Some(id) = ids
            .iter()
            .find(|id| dir.join(format!("ready.{id}")).exists())
        {
            break *id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (cmd, gc) = ready(&dir, leader).await;
    for p in &ps {
        p.signal(libc::SIGTERM);
    }
    for p in &mut ps {
        assert_eq!(p.exit_code().await, 0);
    }
    assert!(!alive(cmd) && !alive(gc), "the leader's tree is gone");
    for id in ids {
        assert_eq!(
            tagged(&format!("{tag}-{id}")),
            Vec::<i32>::new(),
            "processes of {id}'s command left"
        );
    }
}

/// `args` (with `--startup-timeout 2s`) against a frozen store: exit 2 naming the flag,
/// within 2 s + EXIT_BOUND.
async fn startup_times_out(args: &[&str], store: &str) {
    let t0 = Instant::now();
    let out = run_to_end(args, &[]).await;
    let took = t0.elapsed();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--startup-timeout"), "{}", out.stderr);
    assert!(
        took <= Duration::from_secs(2) + EXIT_BOUND,
        "startup timeout 2s with {store} frozen took {took:?}"
    );
}

/// Bound on exiting after SIGTERM once the command is gone: the close bound (2 s) plus
/// 0.5 s for the last events, plus 1.5 s of slack for a loaded machine.
const EXIT_BOUND: Duration = Duration::from_millis(4000);

/// Leader with a frozen store (SIGSTOP): SIGTERM still stops the command and exits 0
/// within EXIT_BOUND; `--startup-timeout` is honoured against the frozen store.
async fn frozen_store_checks(store: &str, addr: &str, freeze: impl Fn(), thaw: impl Fn()) {
    let (_keep, dir) = tmp();
    let tag = format!("frz{store}{}", std::process::id());
    let sh = script(&dir, &tag, "0");
    let path = unique_path("run-frozen");
    let (flag, key) = match store {
        "zk" => ("--zk", "--path"),
        _ => ("--etcd", "--prefix"),
    };
    let args = |id: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            flag,
            addr,
            key,
            &path,
            "--id",
            id,
            "--session-timeout",
            "2s",
            "--ttl",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(["--", "sh", "-c", &sh].iter().map(|s| s.to_string()));
        v
    };
    let a_args = args("a", &[]);
    let mut a = Cli::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    a.until("started").await;
    let (cmd, gc) = ready(&dir, "a").await;

    freeze();
    a.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let code = a.exit_code().await;
    let took = t0.elapsed();
    assert_eq!(code, 0, "SIGTERM with {store} frozen exits 0");
    assert!(
        took <= EXIT_BOUND,
        "exit took {took:?} with {store} frozen (bound {EXIT_BOUND:?})"
    );
    assert!(!alive(cmd) && !alive(gc));

    // Startup against the frozen store: refused after --startup-timeout, not later.
    let b_args = args("b", &["--startup-timeout", "2s"]);
    startup_times_out(
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        store,
    )
    .await;
    assert!(!dir.join("cmd.b").exists(), "b never ran its command");
    thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_zookeeper_frozen_exits_0_on_sigterm_and_honours_the_startup_timeout() {
    let zk = ZkServer::start()
        .await
        .expect("zookeeper (run scripts/install-deps)");
    frozen_store_checks(
        "zk",
        &zk.addr(),
        || zk.freeze().expect("freeze"),
        || zk.thaw().expect("thaw"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_etcd_frozen_exits_0_on_sigterm_and_honours_the_startup_timeout() {
    let etcd = EtcdServer::start()
        .await
        .expect("etcd (run scripts/install-deps)");
    frozen_store_checks(
        "etcd",
        &etcd.endpoint(),
        || etcd.freeze().expect("freeze"),
        || etcd.thaw().expect("thaw"),
    )
    .await;

    // Supervised, ZooKeeper healthy, etcd (the mode record's store) frozen: the mode cannot
    // be read, so joining cannot finish; --startup-timeout still ends it.
    let zk = shared_zk().await;
    let path = unique_path("run-frozen-sup");
    etcd.freeze().expect("freeze");
    let (zka, etcda) = (zk.addr(), etcd.endpoint());
    startup_times_out(
        &[
            "run",
            "--zk",
            &zka,
            "--path",
            &path,
            "--etcd",
            &etcda,
            "--prefix",
            &path,
            "--id",
            "s",
            "--session-timeout",
            "2s",
            "--ttl",
            "2s",
            "--startup-timeout",
            "2s",
            "--",
            "true",
        ],
        "supervised, etcd",
    )
    .await;
    etcd.thaw().expect("thaw");
}
