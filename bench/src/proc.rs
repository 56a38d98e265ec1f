//! The child processes the bench starts and talks to: participant drivers (ours: this
//! binary in `__driver` mode; Curator: `bench/java/BenchLatch.java` on a JVM), `etcdctl`,
//! and `javac`. Every child gets `PR_SET_PDEATHSIG(SIGKILL)` and `kill_on_drop`, so none
//! outlives the bench, also when it fails or is killed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::clock::now_ns;
use crate::Res;

/// The Curator driver's source, compiled at startup.
const BENCH_LATCH_JAVA: &str = include_str!("../java/BenchLatch.java");

/// The Curator driver of the `shared` group (E latches on one client), compiled with it.
const BENCH_SHARED_JAVA: &str = include_str!("../java/BenchShared.java");

/// Where things are: binaries, classpath, the run's temp dir (children's logs).
#[derive(Debug, Clone)]
pub struct Env {
    /// This run's temp dir (removed at the end of a successful run).
    pub tmp: PathBuf,
    /// This binary (for `__driver`).
    pub exe: PathBuf,
    /// `java`.
    pub java: PathBuf,
    /// Curator classpath plus the compiled driver's class dir.
    pub classpath: String,
    /// `etcdctl`.
    pub etcdctl: PathBuf,
}

impl Env {
    /// Locate everything and compile the Curator driver with `javac`.
    pub async fn prepare() -> Res<Env> {
        let tmp = std::env::temp_dir().join(format!("succession-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let java = succession_testkit::java_bin()?;
        let cp = succession_testkit::curator_classpath()?;
        let etcdctl = succession_testkit::etcdctl_bin()?;
        let exe = std::env::current_exe()?;
        let src = tmp.join("BenchLatch.java");
        std::fs::write(&src, BENCH_LATCH_JAVA)?;
        let src_shared = tmp.join("BenchShared.java");
        std::fs::write(&src_shared, BENCH_SHARED_JAVA)?;
        let classes = tmp.join("classes");
        std::fs::create_dir_all(&classes)?;
        let javac = java.with_file_name("javac");
        let out = command(&javac)
            .arg("-cp")
            .arg(&cp)
            .arg("-d")
            .arg(&classes)
            .arg(&src)
            .arg(&src_shared)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (install a JDK: scripts/install-deps)",
                    javac.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "javac failed on the Curator driver:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(Env {
            classpath: format!("{cp}:{}", classes.display()),
            tmp,
            exe,
            java,
            etcdctl,
        })
    }
}

/// A command whose process dies with the bench (`PR_SET_PDEATHSIG`) and on drop.
pub fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    c
}

/// Resident set size of a process, from `/proc/<pid>/status` (bytes).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Which implementation a driver hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// succession (this workspace).
    Ours,
    /// Apache Curator LeaderLatch 5.4.0.
    Curator,
}

impl Side {
    /// A display name.
    pub fn name(self) -> &'static str {
        match self {
            Side::Ours => "succession",
            Side::Curator => "Curator 5.4.0",
        }
    }
}

/// What a participant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// Its node/key is in the store (with the ZooKeeper session id when known).
    Joined(String),
    /// It became leader.
    Leader,
    /// It stopped being leader.
    NotLeader,
}

/// One line from a driver, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A participant event.
    Ev {
        /// When (ns).
        t: u64,
        /// Which participant.
        idx: usize,
        /// What.
        ev: Ev,
    },
    /// An `add` was received at `t`; participants `first..first+n`.
    Added {
        /// Receipt (ns).
        t: u64,
        /// First index.
        first: usize,
        /// How many.
        n: usize,
    },
    /// `close()` is about to be called.
    Closing {
        /// When (ns).
        t: u64,
        /// Which participant.
        idx: usize,
    },
    /// `close()` returned.
    Closed {
        /// When (ns).
        t: u64,
        /// Which participant.
        idx: usize,
    },
    /// Every participant closed.
    ClosedAll,
    /// Clock check answer.
    Pong(u64),
    /// Curator: how many latches lead.
    Leaders(usize),
    /// Raw watch floor sample (ns).
    Floor(u64),
    /// Read round trip (ns).
    Rtt(u64),
    /// Write round trip (ns).
    Wrtt(u64),
    /// End of the floor samples.
    FloorDone,
    /// An etcd participant's lease cannot expire before this instant (ns).
    Lease {
        /// Which participant.
        idx: usize,
        /// Instant (ns).
        at: u64,
    },
    /// A named sample (ns).
    Sample(String, u64),
    /// A batch of `shared`-mode events of one kind (`j` joined, `l` leader, `n` not
    /// leader): the latest stamp of the batch (ns) and the election indices, in order.
    Batch {
        /// `j`, `l` or `n`.
        kind: char,
        /// Latest stamp (ns).
        t: u64,
        /// Election indices.
        idx: Vec<usize>,
    },
    /// `shared` mode: the elections the process leads now.
    LeaderSet(Vec<usize>),
    /// `shared` mode: the distinct ZooKeeper session ids (hex) the process's elections use.
    Sessions(Vec<String>),
    /// A failure the driver reported.
    Err(String),
    /// Anything else.
    Other(String),
}

fn parse(line: &str) -> Msg {
    let w: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
    let parsed = match w.first().copied() {
        Some("ev") => match (n(1), n(2), w.get(3).copied()) {
            (Some(t), Some(idx), Some(kind)) => {
                let ev = match kind {
                    "joined" => Some(Ev::Joined(w.get(4).unwrap_or(&"-").to_string())),
                    "leader" => Some(Ev::Leader),
                    "notleader" => Some(Ev::NotLeader),
                    _ => None,
                };
                ev.map(|ev| Msg::Ev {
                    t,
                    idx: idx as usize,
                    ev,
                })
            }
            _ => None,
        },
        Some("added") => match (n(1), n(2), n(3)) {
            (Some(t), Some(first), Some(k)) => Some(Msg::Added {
                t,
                first: first as usize,
                n: k as usize,
            }),
            _ => None,
        },
        Some("closing") => n(1)
            .zip(n(2))
            .map(|(t, i)| Msg::Closing { t, idx: i as usize }),
        Some("closed") => n(1)
            .zip(n(2))
            .map(|(t, i)| Msg::Closed { t, idx: i as usize }),
        Some("closedall") => Some(Msg::ClosedAll),
        Some("pong") => n(1).map(Msg::Pong),
        Some("leaders") => n(1).map(|k| Msg::Leaders(k as usize)),
        Some("floor") => n(1).map(Msg::Floor),
        Some("rtt") => n(1).map(Msg::Rtt),
        Some("wrtt") => n(1).map(Msg::Wrtt),
        Some("floordone") => Some(Msg::FloorDone),
        Some("lease") => n(1).zip(n(2)).map(|(i, at)| Msg::Lease {
            idx: i as usize,
            at,
        }),
        Some("sample") => match (w.get(1), n(2)) {
            (Some(name), Some(ns)) => Some(Msg::Sample(name.to_string(), ns)),
            _ => None,
        },
        Some("b") => match (w.get(1).and_then(|k| k.chars().next()), n(2), w.get(3)) {
            (Some(kind), Some(t), Some(list)) => {
                list_of(list).map(|idx| Msg::Batch { kind, t, idx })
            }
            _ => None,
        },
        Some("leaderset") => w.get(2).and_then(|l| list_of(l)).map(Msg::LeaderSet),
        Some("sessions") => Some(Msg::Sessions(
            w.get(2)
                .filter(|l| **l != "-")
                .map(|l| l.split(',').map(|s| s.to_lowercase()).collect())
                .unwrap_or_default(),
        )),
        Some("err") => Some(Msg::Err(line.to_string())),
        _ => None,
    };
    parsed.unwrap_or_else(|| Msg::Other(line.to_string()))
}

/// A comma-separated list of indices (`-` = none).
fn list_of(s: &str) -> Option<Vec<usize>> {
    if s == "-" {
        return Some(Vec::new());
    }
    s.split(',').map(|x| x.parse::<usize>().ok()).collect()
}

/// A group of participants added by one `add` command.
#[derive(Debug, Clone)]
pub struct Group {
    /// When the driver received the command (ns).
    pub t0: u64,
    /// Their indices.
    pub members: Vec<usize>,
}

/// A running driver process (ours or Curator) and everything it said so far.
pub struct Driver {
    /// Which implementation it hosts.
    pub side: Side,
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<String>,
    /// Every message so far, in order.
    pub log: Vec<Msg>,
    /// Participants currently leading (per their events).
    pub leaders: BTreeSet<usize>,
    /// Participants that joined: when (ns), and their session id.
    pub joined: BTreeMap<usize, (u64, String)>,
    /// Participants closed.
    pub closed: BTreeSet<usize>,
}

impl Driver {
    /// Start a driver of `side`; `name` names its stderr log in the run's temp dir.
    pub async fn spawn(env: &Env, side: Side, name: &str) -> Res<Driver> {
        Driver::spawn_mode(env, side, name, false).await
    }

    /// Start a `shared`-group driver of `side` (E elections on one session: ours
    /// `__shared`, Curator `BenchShared`).
    pub async fn spawn_shared(env: &Env, side: Side, name: &str) -> Res<Driver> {
        Driver::spawn_mode(env, side, name, true).await
    }

    async fn spawn_mode(env: &Env, side: Side, name: &str, shared: bool) -> Res<Driver> {
        let log = std::fs::File::create(env.tmp.join(format!("{name}.stderr")))?;
        let mut cmd = match side {
            Side::Ours => {
                let mut c = command(&env.exe);
                c.arg(if shared { "__shared" } else { "__driver" });
                c
            }
            Side::Curator => {
                let mut c = command(&env.java);
                c.arg(succession_testkit::JVM_QUIET_LOGGING)
                    .arg("-cp")
                    .arg(&env.classpath)
                    .arg(if shared { "BenchShared" } else { "BenchLatch" });
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start the {} driver: {e}", side.name()))?;
        let stdout = child.stdout.take().ok_or("driver stdout")?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut d = Driver {
            side,
            name: name.to_string(),
            child,
            stdin,
            rx,
            log: Vec::new(),
            leaders: BTreeSet::new(),
            joined: BTreeMap::new(),
            closed: BTreeSet::new(),
        };
        d.clock_check().await?;
        Ok(d)
    }

    /// The driver's pid (None once it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The driver's resident set size now.
    pub fn rss(&self) -> Option<u64> {
        self.pid().and_then(rss_bytes)
    }

    /// Send one command line.
    pub async fn send(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("driver stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    fn ingest(&mut self, line: String) {
        let m = parse(&line);
        match &m {
            Msg::Ev { idx, ev, t } => match ev {
                Ev::Joined(sid) => {
                    self.joined.insert(*idx, (*t, sid.clone()));
                }
                Ev::Leader => {
                    self.leaders.insert(*idx);
                }
                Ev::NotLeader => {
                    self.leaders.remove(idx);
                }
            },
            Msg::Closed { idx, .. } => {
                self.leaders.remove(idx);
                self.closed.insert(*idx);
            }
            Msg::Err(e) => eprintln!("  [{}] {e}", self.name),
            _ => {}
        }
        self.log.push(m);
    }

    /// Take in every line already received, without waiting.
    pub fn pump(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.ingest(l);
        }
    }

    /// The position after the last message so far.
    pub fn mark(&mut self) -> usize {
        self.pump();
        self.log.len()
    }

    /// The first message at or after position `from` that `f` accepts, waiting up to
    /// `timeout` for it; None on timeout.
    pub async fn find<F: Fn(&Msg) -> bool>(
        &mut self,
        from: usize,
        timeout: Duration,
        f: F,
    ) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut i = from;
        loop {
            self.pump();
            while i < self.log.len() {
                if f(&self.log[i]) {
                    return Some(self.log[i].clone());
                }
                i += 1;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(l)) => self.ingest(l),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Like [`find`](Self::find), but a timeout is an error naming `what`.
    pub async fn wait<F: Fn(&Msg) -> bool>(
        &mut self,
        from: usize,
        what: &str,
        timeout: Duration,
        f: F,
    ) -> Res<Msg> {
        match self.find(from, timeout, f).await {
            Some(m) => Ok(m),
            None => Err(format!(
                "{} driver: no {what} within {timeout:?} (its stderr: {}/{}.stderr)",
                self.side.name(),
                std::env::temp_dir()
                    .join(format!("succession-bench-{}", std::process::id()))
                    .display(),
                self.name
            )
            .into()),
        }
    }

    /// `ping`: the driver's clock must be this process's CLOCK_MONOTONIC.
    async fn clock_check(&mut self) -> Res<()> {
        let before = now_ns();
        let from = self.mark();
        self.send("ping").await?;
        let timeout = Duration::from_secs(60);
        let Msg::Pong(t) = self
            .wait(from, "pong", timeout, |m| matches!(m, Msg::Pong(_)))
            .await?
        else {
            unreachable!()
        };
        let after = now_ns();
        if t < before || t > after {
            return Err(format!(
                "the {} driver's clock is not CLOCK_MONOTONIC (pong {t} outside [{before}, {after}]); \
                 cross-process timings would be wrong",
                self.side.name()
            )
            .into());
        }
        Ok(())
    }

    /// Add `n` ZooKeeper participants on `path` at once.
    pub async fn add_zk(
        &mut self,
        tag: &str,
        n: usize,
        connect: &str,
        path: &str,
        session: Duration,
    ) -> Res<Group> {
        let ms = session.as_millis();
        let line = match self.side {
            Side::Ours => format!("addzk {tag} {n} {connect} {path} {ms}"),
            Side::Curator => format!("add {tag} {n} {connect} {path} {ms}"),
        };
        self.add(&line).await
    }

    /// Add `n` etcd participants on `prefix` at once (ours only).
    pub async fn add_etcd(
        &mut self,
        tag: &str,
        n: usize,
        endpoint: &str,
        prefix: &str,
        ttl: Duration,
        lease_info: bool,
    ) -> Res<Group> {
        let line = format!(
            "addetcd {tag} {n} {endpoint} {prefix} {} {}",
            ttl.as_secs(),
            u8::from(lease_info)
        );
        self.add(&line).await
    }

    async fn add(&mut self, line: &str) -> Res<Group> {
        let from = self.mark();
        self.send(line).await?;
        let m = self
            .wait(from, "`added`", Duration::from_secs(120), |m| {
                matches!(m, Msg::Added { .. })
            })
            .await?;
        let Msg::Added { t, first, n } = m else {
            unreachable!()
        };
        Ok(Group {
            t0: t,
            members: (first..first + n).collect(),
        })
    }

    /// Wait until every member of `members` joined; returns the last join instant (ns).
    pub async fn wait_joined(&mut self, members: &[usize], timeout: Duration) -> Res<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.pump();
            let missing = members
                .iter()
                .filter(|i| !self.joined.contains_key(i))
                .count();
            if missing == 0 {
                return Ok(members
                    .iter()
                    .filter_map(|i| self.joined.get(i).map(|(t, _)| *t))
                    .max()
                    .unwrap_or(0));
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(l)) => self.ingest(l),
                Ok(None) | Err(_) => {
                    return Err(format!(
                        "{} driver: {missing} of {} participants did not join within {timeout:?}",
                        self.side.name(),
                        members.len()
                    )
                    .into())
                }
            }
        }
    }

    /// The first `leader` event of one of `members` at or after `from`: (ns, index).
    pub async fn next_leader(
        &mut self,
        from: usize,
        members: &[usize],
        timeout: Duration,
    ) -> Option<(u64, usize)> {
        let m = self
            .find(
                from,
                timeout,
                |m| matches!(m, Msg::Ev { idx, ev: Ev::Leader, .. } if members.contains(idx)),
            )
            .await?;
        match m {
            Msg::Ev { t, idx, .. } => Some((t, idx)),
            _ => None,
        }
    }

    /// The members currently leading.
    pub fn leaders_in(&mut self, members: &[usize]) -> Vec<usize> {
        self.pump();
        members
            .iter()
            .copied()
            .filter(|i| self.leaders.contains(i))
            .collect()
    }

    /// Ask participant `idx` to close; returns the `closing` instant (ns).
    pub async fn close(&mut self, idx: usize) -> Res<u64> {
        let from = self.mark();
        self.send(&format!("close {idx}")).await?;
        let m = self
            .wait(
                from,
                "`closing`",
                Duration::from_secs(30),
                |m| matches!(m, Msg::Closing { idx: i, .. } if *i == idx),
            )
            .await?;
        match m {
            Msg::Closing { t, .. } => Ok(t),
            _ => unreachable!(),
        }
    }

    /// Wait until participant `idx` finished closing; returns when `close()` returned (ns).
    pub async fn wait_closed(&mut self, idx: usize, timeout: Duration) -> Res<u64> {
        match self
            .wait(
                0,
                "`closed`",
                timeout,
                |m| matches!(m, Msg::Closed { idx: i, .. } if *i == idx),
            )
            .await?
        {
            Msg::Closed { t, .. } => Ok(t),
            _ => unreachable!(),
        }
    }

    /// Close every open participant and wait for it.
    pub async fn close_all(&mut self, timeout: Duration) -> Res<()> {
        let from = self.mark();
        self.send("closeall").await?;
        self.wait(from, "`closedall`", timeout, |m| {
            matches!(m, Msg::ClosedAll)
        })
        .await?;
        self.leaders.clear();
        Ok(())
    }

    /// SIGKILL the driver; returns the instant just before the signal (ns).
    pub fn kill9(&mut self) -> u64 {
        let t = now_ns();
        let _ = self.child.start_kill();
        t
    }

    /// Ask the driver to exit, and make sure it does.
    pub async fn quit(mut self) {
        let _ = self.send("quit").await;
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// Reap a killed driver.
    pub async fn reap(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A running `etcdctl` with its stdout lines, each stamped on receipt (ns).
pub struct Ctl {
    child: Child,
    rx: mpsc::UnboundedReceiver<(u64, String)>,
    /// The instant just before the spawn (ns).
    pub t_spawn: u64,
}

impl Ctl {
    /// Spawn `etcdctl --endpoints=<endpoint> ARGS`.
    pub fn spawn(env: &Env, endpoint: &str, args: &[&str]) -> Res<Ctl> {
        let t_spawn = now_ns();
        let mut child = command(&env.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.etcdctl.display()))?;
        let stdout = child.stdout.take().ok_or("etcdctl stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send((now_ns(), l)).is_err() {
                    return;
                }
            }
        });
        Ok(Ctl { child, rx, t_spawn })
    }

    /// The next line printed, with its receipt instant; None on timeout or exit.
    pub async fn line(&mut self, timeout: Duration) -> Option<(u64, String)> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// SIGINT (etcdctl elect resigns, then exits); returns the instant before the signal.
    pub fn sigint(&self) -> u64 {
        let t = now_ns();
        if let Some(pid) = self.child.id() {
            // SAFETY: our own child, not yet reaped (id() is Some).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        t
    }

    /// SIGKILL; returns the instant before the signal.
    pub fn kill9(&mut self) -> u64 {
        let t = now_ns();
        let _ = self.child.start_kill();
        t
    }

    /// Wait for the exit (killing it after `timeout`); returns the exit instant (ns).
    pub async fn wait_exit(&mut self, timeout: Duration) -> u64 {
        if tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_lines() {
        assert_eq!(
            parse("b l 123 4,5,6"),
            Msg::Batch {
                kind: 'l',
                t: 123,
                idx: vec![4, 5, 6]
            }
        );
        assert_eq!(parse("leaderset 2 1,9"), Msg::LeaderSet(vec![1, 9]));
        assert_eq!(parse("leaderset 0 -"), Msg::LeaderSet(vec![]));
        assert_eq!(
            parse("sessions 2 1A,2b"),
            Msg::Sessions(vec!["1a".into(), "2b".into()])
        );
        assert_eq!(parse("sessions 0 -"), Msg::Sessions(vec![]));
        assert!(matches!(parse("b l 1 x"), Msg::Other(_)));
        assert_eq!(parse("closing 7 0"), Msg::Closing { t: 7, idx: 0 });
    }
}
