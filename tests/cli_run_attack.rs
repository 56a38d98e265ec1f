//! Attacks on `succession run`'s promise: "CMD (and every process it starts) never runs
//! while another participant's CMD runs". Real ZooKeeper, the real binary, verdicts from
//! /proc (process liveness of processes tagged `CMD_TAG=<tag>-<id>`), never from log lines.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use succession_testkit::{shared_zk, unique_path, TcpProxy};
use tokio::process::{Child, Command};
use tokio::time::Instant;

mod common;

use common::{alive, ready, script, tag_entries, tagged, BIN};

/// One `succession run` process; its stdout goes where the test says.
struct Proc {
    child: Child,
}

impl Proc {
    fn start(args: &[String], stdout: Stdio, one_cpu: bool) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if one_cpu {
            // SAFETY: sched_setaffinity(2) on ourselves between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    Ok(())
                });
            }
        }
        Proc {
            child: cmd.spawn().expect("start succession"),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    async fn exit_code(&mut self, within: Duration) -> i32 {
        let st = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("did not exit within {within:?}"))
            .expect("wait");
        st.code().unwrap_or(-1)
    }
}

/// Alive and not a zombie.
fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Leaves nothing behind, pass or fail: resumes stopped processes, kills every tagged one.
struct Cleanup {
    tag: String,
    cont: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &p in &self.cont {
            // SAFETY: kill(2); p is a process this test started (a guard) or already gone.
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
        for p in tagged(&self.tag) {
            // SAFETY: kill(2) of a process carrying this test's tag.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Sample until `next`'s command has started; then none of the old tree may be alive.
/// `Err(pids)` = overlap (old processes alive after the newcomer's command started).
async fn overlap_when_next_starts(
    dir: &Path,
    next: &str,
    old_tag: &str,
    old: &[i32],
    within: Duration,
) -> Result<(), Vec<i32>> {
    let deadline = Instant::now() + within;
    let started = dir.join(format!("cmd.{next}"));
    loop {
        let next_started = started.exists();
        let old_alive: Vec<i32> = old
            .iter()
            .copied()
            .filter(|&p| alive(p))
            .chain(tagged(old_tag))
            .collect();
        if next_started {
            if old_alive.is_empty() {
                return Ok(());
            }
            let states: Vec<String> = old_alive
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .map(|s| {
                            s.rsplit(')')
                                .next()
                                .unwrap_or("")
                                .split_whitespace()
                                .next()
                                .unwrap_or("")
                                .to_string()
                        })
                        .unwrap_or_default()
                })
                .collect();
            eprintln!(
                "overlap: {next} started {:?} after the fault; old processes {old_alive:?} in states {states:?}",
                within.saturating_sub(deadline.saturating_duration_since(Instant::now()))
            );
            return Err(old_alive);
        }
        assert!(
            Instant::now() < deadline,
            "{next}'s command did not start within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn run_args(zk: &str, path: &str, id: &str, extra: &[&str], script: &str) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--zk", zk, "--path", path, "--id", id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend(["--", "sh", "-c", script].iter().map(|s| s.to_string()));
    v
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().to_path_buf();
    (d, p)
}

/// The guard process of a command: its parent, named `leader-guard`.
fn guard_of(cmd: i32) -> i32 {
    let g = ppid(cmd).expect("command's parent");
    let comm = std::fs::read_to_string(format!("/proc/{g}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "leader-guard",
        "parent of the command is the guard"
    );
    g
}

/// Start a follower and wait for its `joined` event (its place is held); the rest of its
/// stdout is drained in the background.
async fn start_joined(args: &[String]) -> Proc {
    let mut p = Proc::start(args, Stdio::piped(), false);
    let out = p.child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let mut tx = Some(tx);
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("\"event\":\"joined\"") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("joined within 30 s")
        .expect("joined event");
    p
}

/// ATTACK: SIGSTOP the guard (`leader-guard`) of the leader's command (a debugger attach,
/// a mistaken `kill -STOP`), then cut the leader's link. `run` itself is alive and not
/// paused, knows the command's process group, and knows the takeover bound; the promise
/// should hold. On main: `run` only asks the (stopped) guard to kill, and waits forever.
async fn stopped_guard_then_link_cut(stopped_for: Duration) {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.expect("proxy");
    let path = unique_path("atk-guardstop");
    let (_keep, dir) = tmp();
    let tag = format!("gstop{}x{}", stopped_for.as_secs(), std::process::id());
    let mut clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = script(&dir, &tag, "0");
    let st = ["--session-timeout", "2s", "--grace", "3s"];
    let mut a = Proc::start(
        &run_args(&proxy.addr(), &path, "a", &st, &sh),
        Stdio::null(),
        false,
    );
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&run_args(&zk.addr(), &path, "b", &st, &sh)).await;
    let guard = guard_of(cmd);
    clean.cont.push(guard);
    // SAFETY: kill(2) of a's guard, a process under this test.
    unsafe { libc::kill(guard, libc::SIGSTOP) };
    // A long stop fills the control socket with the owner's deadline renewals.
    tokio::time::sleep(stopped_for).await;
    proxy.cut();
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    // SAFETY: as above.
    unsafe { libc::kill(guard, libc::SIGCONT) };
    proxy.restore();
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    let ca = a.exit_code(Duration::from_secs(30)).await;
    let cb = b.exit_code(Duration::from_secs(30)).await;
    assert_eq!(
        verdict,
        Ok(()),
        "b's command started while a's processes still ran (a's guard stopped)"
    );
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes left");
    drop(clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_stopped_guard_then_link_cut() {
    stopped_guard_then_link_cut(Duration::ZERO).await;
}

/// The same after the guard was stopped for 40 s: `run`'s writes to the guard's control
/// socket (renewals every 50 ms) must never block `run` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "45 s; run with --ignored"]
async fn attack_long_stopped_guard_then_link_cut() {
    stopped_guard_then_link_cut(Duration::from_secs(40)).await;
}

/// A pipe whose write end goes to `run` as stdout and that the test can fill (through its
/// own, non-blocking open file description of the same pipe) so that `run` blocks on its
/// next event line, as it would behind a stuck log consumer.
struct StuckPipe {
    read: OwnedFd,
    write: Option<OwnedFd>,
    filler: std::fs::File,
}

impl StuckPipe {
    fn new() -> StuckPipe {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) into a local array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        use std::os::unix::fs::OpenOptionsExt;
        let filler = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
            .expect("reopen the pipe");
        StuckPipe {
            read,
            write: Some(write),
            filler,
        }
    }

    fn stdio(&mut self) -> Stdio {
        Stdio::from(self.write.take().expect("once"))
    }

    /// Fill the pipe until a write would block.
    fn fill(&mut self) {
        use std::io::Write;
        let chunk = [b' '; 4096];
        loop {
            match self.filler.write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("fill: {e}"),
            }
        }
    }

    /// Drain it once (lets a blocked writer go on).
    fn drain_in_background(self) {
        let fd = self.read;
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        });
    }
}

/// ATTACK: `run` on a 1-CPU host (container with --cpus=1 -> one tokio worker) whose
/// stdout goes to a log pipe that stalls (pipe full). The leader's link is cut: `run`
/// blocks writing its status event, so its runtime stops: no kill at the takeover bound,
/// while the session expires on the server and b is elected.
async fn stuck_stdout_then_link_cut(one_cpu: bool) -> Result<(), Vec<i32>> {
    let zk = shared_zk().await;
    let proxy = TcpProxy::start(&zk.addr()).await.expect("proxy");
    let path = unique_path("atk-stdout");
    let (_keep, dir) = tmp();
    let tag = format!("stdout{}{}", one_cpu as u8, std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = script(&dir, &tag, "0");
    let st = ["--session-timeout", "2s", "--grace", "3s"];
    let mut pipe = StuckPipe::new();
    let mut a = Proc::start(
        &run_args(&proxy.addr(), &path, "a", &st, &sh),
        pipe.stdio(),
        one_cpu,
    );
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&run_args(&zk.addr(), &path, "b", &st, &sh)).await;
    pipe.fill();
    proxy.cut();
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    eprintln!("stuck stdout (one cpu: {one_cpu}): {verdict:?}");
    pipe.drain_in_background();
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in std::fs::read_dir(format!("/proc/{}/task", a.pid())).unwrap() {
        let t = t.unwrap().path();
        eprintln!(
            "a task {:?}: {} {}",
            t,
            std::fs::read_to_string(t.join("comm"))
                .unwrap_or_default()
                .trim(),
            std::fs::read_to_string(t.join("wchan")).unwrap_or_default()
        );
    }
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    let ca = a.exit_code(Duration::from_secs(30)).await;
    let cb = b.exit_code(Duration::from_secs(30)).await;
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes left");
    drop(clean);
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_stuck_stdout_one_cpu_then_link_cut() {
    let v = stuck_stdout_then_link_cut(true).await;
    assert_eq!(
        v,
        Ok(()),
        "b's command started while a's processes still ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_stuck_stdout_two_cpus_then_link_cut() {
    let v = stuck_stdout_then_link_cut(false).await;
    assert_eq!(
        v,
        Ok(()),
        "b's command started while a's processes still ran"
    );
}

/// ATTACK: a slow link (proxy delay D each way), then a silent partition (blackhole). The
/// ZooKeeper backend counts "the driver still says connected" as contact, and the driver
/// notices silence only 0.4-0.45 T after its last receipt, which itself lags the server's
/// last hearing of us by up to D. The takeover bound (contact + T/2) can then fall after
/// the server's expiry (last heard + T). Repeated `ROUNDS` times with random phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_slow_link_then_blackhole() {
    let rounds: usize = std::env::var("ATTACK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut breaks = Vec::new();
    for round in 0..rounds {
        let zk = shared_zk().await;
        let proxy = TcpProxy::start(&zk.addr()).await.expect("proxy");
        let path = unique_path("atk-blackhole");
        let (_keep, dir) = tmp();
        let tag = format!("bh{round}x{}", std::process::id());
        let clean = Cleanup {
            tag: tag.clone(),
            cont: vec![],
        };
        let sh = script(&dir, &tag, "30");
        let st = ["--session-timeout", "5s", "--grace", "60s"];
        let mut a = Proc::start(
            &run_args(&proxy.addr(), &path, "a", &st, &sh),
            Stdio::null(),
            false,
        );
        let (cmd, gc) = ready(&dir, "a").await;
        let mut b = start_joined(&run_args(&zk.addr(), &path, "b", &st, &sh)).await;
        proxy.set_delay(Duration::from_millis(750));
        // Let the delayed ping cycle establish, at a varying phase.
        tokio::time::sleep(Duration::from_millis(3000 + 373 * round as u64)).await;
        proxy.blackhole();
        let t0 = Instant::now();
        let verdict = overlap_when_next_starts(
            &dir,
            "b",
            &format!("{tag}-a"),
            &[cmd, gc],
            Duration::from_secs(40),
        )
        .await;
        eprintln!(
            "round {round}: b started {:?} after the blackhole: {verdict:?}",
            t0.elapsed()
        );
        if let Err(p) = verdict {
            breaks.push((round, p));
        }
        proxy.set_delay(Duration::ZERO);
        proxy.restore();
        // kill -9 of both `run`s: their guards kill the trees (b's command would take its
        // whole 60 s grace on SIGTERM, its grandchild ignoring SIGTERM).
        a.signal(libc::SIGKILL);
        b.signal(libc::SIGKILL);
        let _ = a.exit_code(Duration::from_secs(10)).await;
        let _ = b.exit_code(Duration::from_secs(10)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tagged(&tag).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes left");
        drop(clean);
    }
    assert!(breaks.is_empty(), "overlaps: {breaks:?}");
}

/// ATTACK (README: a documented limit before the guard's own deadline): SIGSTOP of the
/// leader's `run` (not of its guard, not of the host). Its session expires and b is
/// elected; the guard, not paused, must have killed the tree by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_sigstop_of_run() {
    let zk = shared_zk().await;
    let path = unique_path("atk-runstop");
    let (_keep, dir) = tmp();
    let tag = format!("rstop{}", std::process::id());
    let sh = script(&dir, &tag, "0");
    let st = ["--session-timeout", "2s", "--grace", "3s"];
    let mut a = Proc::start(
        &run_args(&zk.addr(), &path, "a", &st, &sh),
        Stdio::null(),
        false,
    );
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![a.pid()],
    };
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&run_args(&zk.addr(), &path, "b", &st, &sh)).await;
    a.signal(libc::SIGSTOP);
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    a.signal(libc::SIGCONT);
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    let ca = a.exit_code(Duration::from_secs(40)).await;
    let cb = b.exit_code(Duration::from_secs(40)).await;
    assert_eq!(
        verdict,
        Ok(()),
        "b's command started while a's processes still ran (a's run stopped)"
    );
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes left");
    drop(clean);
}

/// ATTACK: SIGKILL of the guard alone (the OOM killer may pick it: right after the fork
/// its resident set is the whole of `run`'s). The command dies of its PDEATHSIG, but its
/// grandchild that left the group is re-parented to init; `run` then gives up its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_kill9_of_the_guard_alone() {
    let zk = shared_zk().await;
    let path = unique_path("atk-guardkill");
    let (_keep, dir) = tmp();
    let tag = format!("gkill{}", std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = script(&dir, &tag, "0");
    let st = ["--session-timeout", "2s", "--grace", "3s"];
    let mut a = Proc::start(
        &run_args(&zk.addr(), &path, "a", &st, &sh),
        Stdio::null(),
        false,
    );
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&run_args(&zk.addr(), &path, "b", &st, &sh)).await;
    let guard = guard_of(cmd);
    // SAFETY: kill(2) of a's guard, a process under this test.
    unsafe { libc::kill(guard, libc::SIGKILL) };
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    let ca = a.exit_code(Duration::from_secs(40)).await;
    let cb = b.exit_code(Duration::from_secs(40)).await;
    let left = tagged(&tag);
    drop(clean);
    assert_eq!(
        verdict,
        Ok(()),
        "b's command started while a's processes still ran (a's guard killed)"
    );
    assert_eq!(left, Vec::<i32>::new(), "processes left");
    eprintln!("exit codes after the guard's death: a {ca}, b {cb}");
}

/// Samples /proc every 2 ms for processes tagged `CMD_TAG=<prefix>...`; records every
/// sample where processes of two different command trees (different tags: participant id
/// and term) were alive at once.
/// Samples (when, the command trees alive then) with more than one tree alive.
type Overlaps = Vec<(Instant, Vec<String>)>;

fn monitor(
    prefix: String,
) -> (
    tokio::task::JoinHandle<Overlaps>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let h = tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let mut tags: Vec<String> = Vec::new();
            for (_, t) in tag_entries(&prefix) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            if tags.len() > 1 && bad.len() < 20 {
                bad.push((Instant::now(), tags));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bad
    });
    (h, stop)
}

/// ATTACK: supervised mode (ZooKeeper primary, etcd fallback). kill -9 of ZooKeeper under
/// the leader -> failover to etcd; ZooKeeper restarted -> failback. At no sample may two
/// command trees (different participant or term) be alive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_supervised_failover_and_failback() {
    let mut zk = succession_testkit::ZkServer::start()
        .await
        .expect("zookeeper");
    let etcd = succession_testkit::EtcdServer::start().await.expect("etcd");
    let path = unique_path("atk-sup");
    let (_keep, dir) = tmp();
    let tag = format!("sup{}", std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = format!(
        "export CMD_TAG={tag}-$SUCCESSION_ID-$SUCCESSION_TERM; \
         echo \"$SUCCESSION_ID $SUCCESSION_LAYER $SUCCESSION_TERM\" >> {d}/starts; \
         setsid sh -c 'trap \"\" TERM; exec sleep 1000' & \
         trap 'sleep 0.3; exit 0' TERM; sleep 1000 & wait",
        d = dir.display()
    );
    let args = |id: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--zk",
            &zk.addr(),
            "--path",
            &path,
            "--etcd",
            &etcd.endpoint(),
            "--prefix",
            &path,
            "--id",
            id,
            "--session-timeout",
            "2s",
            "--ttl",
            "2s",
            "--failback-after",
            "3s",
            "--grace",
            "3s",
            "--",
            "sh",
            "-c",
            &sh,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.shrink_to_fit();
        v
    };
    let (mon, mon_stop) = monitor(tag.clone());
    let starts = |dir: &Path| std::fs::read_to_string(dir.join("starts")).unwrap_or_default();
    let wait_starts = |n: usize, layer: &'static str| {
        let dir = dir.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let s = std::fs::read_to_string(dir.join("starts")).unwrap_or_default();
                let lines: Vec<&str> = s.lines().collect();
                if lines.len() >= n && lines.last().is_some_and(|l| l.contains(layer)) {
                    return;
                }
                assert!(Instant::now() < deadline, "no start on {layer}: {s}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut ps: Vec<Proc> = Vec::new();
    for id in ["a", "b", "c"] {
        ps.push(start_joined(&args(id)).await);
    }
    wait_starts(1, "").await;
    zk.kill().await.expect("kill zk");
    let n = starts(&dir).lines().count();
    wait_starts(n + 1, "etcd").await;
    zk.restart().await.expect("restart zk");
    let n = starts(&dir).lines().count();
    wait_starts(n + 1, "zk").await;
    for p in &ps {
        p.signal(libc::SIGTERM);
    }
    let mut codes = Vec::new();
    for p in &mut ps {
        codes.push(p.exit_code(Duration::from_secs(30)).await);
    }
    mon_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bad = mon.await.expect("monitor");
    let left = tagged(&tag);
    drop(clean);
    eprintln!("starts:\n{}", starts(&dir));
    assert!(bad.is_empty(), "two command trees alive at once: {bad:?}");
    assert_eq!(codes, vec![0, 0, 0]);
    assert_eq!(left, Vec::<i32>::new(), "processes left");
}

/// ATTACK: etcd alone, the leader's link slow (300 ms each way) then blackholed; the
/// command drains for 30 s after SIGTERM. The tree must die before b's command starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_etcd_slow_link_then_blackhole() {
    let etcd = succession_testkit::EtcdServer::start().await.expect("etcd");
    let proxy = TcpProxy::start(&etcd.endpoint()).await.expect("proxy");
    let path = unique_path("atk-etcd-bh");
    let (_keep, dir) = tmp();
    let tag = format!("ebh{}", std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = script(&dir, &tag, "30");
    let args = |ep: &str, id: &str| -> Vec<String> {
        [
            "run", "--etcd", ep, "--prefix", &path, "--id", id, "--ttl", "3s", "--grace", "60s",
            "--", "sh", "-c", &sh,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut a = Proc::start(&args(&proxy.endpoint(), "a"), Stdio::null(), false);
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&args(&etcd.endpoint(), "b")).await;
    proxy.set_delay(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.blackhole();
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    proxy.set_delay(Duration::ZERO);
    proxy.restore();
    let a_ran_on = a.child.try_wait().expect("try_wait").is_none();
    a.signal(libc::SIGKILL);
    b.signal(libc::SIGKILL);
    assert!(
        a_ran_on,
        "a lost leadership and waits for it again (it did not exit)"
    );
    let _ = a.exit_code(Duration::from_secs(10)).await;
    let _ = b.exit_code(Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tagged(&tag).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = tagged(&tag);
    drop(clean);
    assert_eq!(
        verdict,
        Ok(()),
        "b's command started while a's processes still ran"
    );
    assert_eq!(left, Vec::<i32>::new(), "processes left");
}

/// ATTACK: ZooKeeper itself fails under the leader: frozen past the session timeout then
/// thawed, or kill -9 and restarted (with its data, or wiped). Three participants; at no
/// sample may two command trees (participant and term) be alive at once, and a command
/// must run again afterwards.
async fn zk_server_fault(fault: &str) {
    let mut zk = succession_testkit::ZkServer::start()
        .await
        .expect("zookeeper");
    let path = unique_path("atk-zkfault");
    let (_keep, dir) = tmp();
    let tag = format!("zkf{fault}{}", std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = format!(
        "export CMD_TAG={tag}-$SUCCESSION_ID-$SUCCESSION_TERM; \
         echo \"$SUCCESSION_ID $SUCCESSION_TERM\" >> {d}/starts; \
         setsid sh -c 'trap \"\" TERM; exec sleep 1000' & \
         trap 'sleep 0.3; exit 0' TERM; sleep 1000 & wait",
        d = dir.display()
    );
    let args = |id: &str| {
        run_args(
            &zk.addr(),
            &path,
            id,
            &["--session-timeout", "2s", "--grace", "3s"],
            &sh,
        )
    };
    let (mon, mon_stop) = monitor(tag.clone());
    let count = |dir: &Path| {
        std::fs::read_to_string(dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let wait_count = |n: usize| {
        let dir = dir.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(&dir) < n {
                assert!(Instant::now() < deadline, "no new start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut ps: Vec<Proc> = Vec::new();
    for id in ["a", "b", "c"] {
        ps.push(start_joined(&args(id)).await);
    }
    wait_count(1).await;
    let n = count(&dir);
    let mut killed_at = None;
    match fault {
        "freeze" => {
            zk.freeze().expect("freeze");
            // The fault itself: frozen for longer than the session timeout.
            tokio::time::sleep(Duration::from_secs(4)).await;
            zk.thaw().expect("thaw");
        }
        "kill" => {
            zk.kill().await.expect("kill");
            zk.restart().await.expect("restart");
        }
        _ => {
            zk.kill().await.expect("kill");
            killed_at = Some(Instant::now());
            zk.wipe().expect("wipe");
            zk.restart().await.expect("restart");
        }
    }
    wait_count(n + 1).await;
    for p in &ps {
        p.signal(libc::SIGTERM);
    }
    let mut codes = Vec::new();
    for p in &mut ps {
        codes.push(p.exit_code(Duration::from_secs(30)).await);
    }
    mon_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bad = mon.await.expect("monitor");
    let left = tagged(&tag);
    drop(clean);
    let starts = std::fs::read_to_string(dir.join("starts")).unwrap_or_default();
    eprintln!("starts:\n{starts}");
    match killed_at {
        // A wiped ZooKeeper forgets every session at once: a new leader can be elected as
        // soon as it serves again, before the old leader can know (the documented store-
        // state limit; fence on terms). The old tree must still be gone by the old
        // leader's takeover bound: half the 2 s session after its last contact (+ 0.5 s
        // for sampling and a loaded machine).
        Some(k) => {
            let late: Vec<_> = bad
                .iter()
                .filter(|(at, _)| at.saturating_duration_since(k) > Duration::from_millis(1500))
                .collect();
            assert!(
                late.is_empty(),
                "two command trees alive past the takeover bound: {late:?}"
            );
        }
        None => assert!(bad.is_empty(), "two command trees alive at once: {bad:?}"),
    }
    let mut lines: Vec<&str> = starts.lines().collect();
    let all = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(
        lines.len(),
        all,
        "a grant's command was killed and started again (stale contact at the grant): {starts}"
    );
    assert_eq!(codes, vec![0, 0, 0]);
    assert_eq!(left, Vec::<i32>::new(), "processes left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_zk_frozen_past_the_session_then_thawed() {
    zk_server_fault("freeze").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_zk_kill9_and_restart() {
    zk_server_fault("kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_zk_kill9_wipe_and_restart() {
    zk_server_fault("wipe").await;
}

/// ATTACK: SIGTERM to the leader's `run` (its command drains 30 s, --grace 60 s: `run` keeps
/// its place meanwhile), then kill -9 of `run` in the middle of the drain. The guard must
/// kill the whole tree at once; b's command starts only after a's session expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_kill9_of_run_while_its_command_drains() {
    let zk = shared_zk().await;
    let path = unique_path("atk-drain-k9");
    let (_keep, dir) = tmp();
    let tag = format!("dk9{}", std::process::id());
    let clean = Cleanup {
        tag: tag.clone(),
        cont: vec![],
    };
    let sh = script(&dir, &tag, "30");
    let st = ["--session-timeout", "2s", "--grace", "60s"];
    let mut a = Proc::start(
        &run_args(&zk.addr(), &path, "a", &st, &sh),
        Stdio::null(),
        false,
    );
    let (cmd, gc) = ready(&dir, "a").await;
    let mut b = start_joined(&run_args(
        &zk.addr(),
        &path,
        "b",
        &["--session-timeout", "2s", "--grace", "3s"],
        &sh,
    ))
    .await;
    a.signal(libc::SIGTERM);
    // The drain has begun when the command's shell runs its trap (`sleep 30` as its child).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{cmd}/task/{cmd}/children")).unwrap_or_default();
        let draining = kids.split_whitespace().any(|k| {
            std::fs::read_to_string(format!("/proc/{k}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep\u{0}30"))
        });
        if draining {
            break;
        }
        assert!(Instant::now() < deadline, "the drain did not begin");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal(libc::SIGKILL);
    let verdict = overlap_when_next_starts(
        &dir,
        "b",
        &format!("{tag}-a"),
        &[cmd, gc],
        Duration::from_secs(30),
    )
    .await;
    let _ = a.exit_code(Duration::from_secs(10)).await;
    b.signal(libc::SIGTERM);
    let cb = b.exit_code(Duration::from_secs(30)).await;
    let left = tagged(&tag);
    drop(clean);
    assert_eq!(
        verdict,
        Ok(()),
        "b's command started while a's processes still ran"
    );
    assert_eq!(cb, 0);
    assert_eq!(left, Vec::<i32>::new(), "processes left");
}
