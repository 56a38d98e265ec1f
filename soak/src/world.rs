//! The system under test: a 3-node ZooKeeper ensemble, a 3-member etcd cluster (testkit),
//! and `succession campaign` processes, each behind its own [`TcpProxy`] per server so the
//! nemesis can partition or slow one participant's link to one store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use succession_core::Term;
use succession_testkit::{etcdctl_bin, four_letter_word, EtcdCluster, TcpProxy, ZkEnsemble};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

use crate::checker::{Violation, ViolationKind};
use crate::history::{mono_ns, parse_line, Event, EventKind, Fault, FaultKind, Group};
use crate::nemesis::Planned;
use crate::rng::Rng;

/// Participant timings, passed to the CLI.
#[derive(Debug, Clone)]
pub struct Timings {
    /// `--session-timeout`.
    pub session_timeout: Duration,
    /// `--ttl`.
    pub ttl: Duration,
    /// `--failover-after`.
    pub failover_after: Duration,
    /// `--failback-after`.
    pub failback_after: Duration,
}

/// How the world is built.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// The `succession` binary.
    pub bin: PathBuf,
    /// Unique per run: names the store paths (`/soak-<tag>/...`).
    pub tag: String,
    /// Participants per group.
    pub sizes: HashMap<Group, usize>,
    /// Participant timings.
    pub timings: Timings,
    /// Where participants' stderr goes.
    pub log_dir: PathBuf,
    /// Run supervised participants with `--strict-mode-lease`.
    pub strict: bool,
}

/// What the participants' reader tasks and the runner share.
#[derive(Debug, Default)]
struct Shared {
    events: Vec<Event>,
    /// Who leads now, per participant: (group, term, since).
    leaders: HashMap<String, (Group, Term, u64)>,
    paused: HashSet<String>,
    expected_exit: HashSet<String>,
    alive: HashSet<String>,
    health_addr: HashMap<String, String>,
    problems: Vec<String>,
}

/// One participant process.
#[derive(Debug)]
struct Participant {
    id: String,
    group: Group,
    pid: u32,
    zk: Vec<TcpProxy>,
    etcd: Vec<TcpProxy>,
    task: tokio::task::JoinHandle<()>,
}

/// A fault being held, with what it needs to heal.
#[derive(Debug)]
pub struct Active {
    /// Index into the fault log.
    pub log: usize,
    plan: Planned,
    node: usize,
    participant: Option<String>,
}

/// Servers, proxies, participants, and the history being recorded.
pub struct World {
    cfg: WorldConfig,
    zk: ZkEnsemble,
    etcd: EtcdCluster,
    parts: Vec<Participant>,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    next_id: HashMap<Group, usize>,
    /// The nemesis's fault log.
    pub faults: Vec<Fault>,
    /// Violations found by the runner's own probes (health, exit, leftovers).
    pub violations: Vec<Violation>,
    /// Every pid the run started (participants and servers), for the final check.
    pub pids: Vec<u32>,
    /// Notes for the report (skipped faults, retries).
    pub notes: Vec<String>,
}

/// One retry after a failed restart (a port briefly still taken, a slow JVM).
macro_rules! twice {
    ($e:expr) => {
        match $e.await {
            Ok(()) => Ok(()),
            Err(first) => $e
                .await
                .map_err(|e| format!("restart failed twice: {first}; then {e}")),
        }
    };
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// Starts the ensemble and the cluster (concurrently) and the participants.
    pub async fn start(cfg: WorldConfig) -> Result<World, String> {
        let (zk, etcd) = tokio::join!(ZkEnsemble::start(3), EtcdCluster::start(3));
        let zk = zk.map_err(|e| format!("ZooKeeper ensemble: {e}"))?;
        let etcd = etcd.map_err(|e| format!("etcd cluster: {e}"))?;
        let mut w = World {
            cfg,
            zk,
            etcd,
            parts: Vec::new(),
            shared: Arc::default(),
            notify: Arc::new(Notify::new()),
            next_id: HashMap::new(),
            faults: Vec::new(),
            violations: Vec::new(),
            pids: Vec::new(),
            notes: Vec::new(),
        };
        w.record_server_pids();
        for g in Group::ALL {
            for _ in 0..w.cfg.sizes.get(&g).copied().unwrap_or(0) {
                w.spawn(g).await?;
            }
        }
        Ok(w)
    }

    fn record_server_pids(&mut self) {
        let mut pids: Vec<u32> = self.zk.nodes().iter().filter_map(|n| n.pid()).collect();
        pids.extend(self.etcd.members().iter().filter_map(|m| m.pid()));
        for p in pids {
            if !self.pids.contains(&p) {
                self.pids.push(p);
            }
        }
    }

    /// The ZooKeeper latch path / etcd prefix of a group.
    pub fn path(&self, g: Group) -> String {
        format!("/soak-{}/{}", self.cfg.tag, g.name())
    }

    /// Starts one more participant in `g`.
    pub async fn spawn(&mut self, g: Group) -> Result<String, String> {
        let n = self.next_id.entry(g).or_insert(0);
        *n += 1;
        let id = format!("{}-{}", g.name(), n);
        let mut zk = Vec::new();
        let mut etcd = Vec::new();
        if g.uses_zk() {
            for node in self.zk.nodes() {
                zk.push(
                    TcpProxy::start(&node.addr())
                        .await
                        .map_err(|e| format!("proxy: {e}"))?,
                );
            }
        }
        if g.uses_etcd() {
            for m in self.etcd.members() {
                etcd.push(
                    TcpProxy::start(&m.addr())
                        .await
                        .map_err(|e| format!("proxy: {e}"))?,
                );
            }
        }
        let t = &self.cfg.timings;
        let mut cmd = tokio::process::Command::new(&self.cfg.bin);
        cmd.arg("campaign").args(["--id", &id]);
        if g.uses_zk() {
            let connect: Vec<String> = zk.iter().map(TcpProxy::addr).collect();
            cmd.args(["--zk", &connect.join(","), "--path", &self.path(g)]);
        }
        if g.uses_etcd() {
            let eps: Vec<String> = etcd.iter().map(TcpProxy::endpoint).collect();
            cmd.args(["--etcd", &eps.join(","), "--prefix", &self.path(g)]);
        }
        let d = |d: Duration| format!("{}ms", d.as_millis());
        cmd.args(["--session-timeout", &d(t.session_timeout)])
            .args(["--ttl", &d(t.ttl)])
            .args(["--health-addr", "127.0.0.1:0"])
            .args(["--startup-timeout", "120s"]);
        if g == Group::Supervised {
            cmd.args(["--failover-after", &d(t.failover_after)])
                .args(["--failback-after", &d(t.failback_after)]);
            if self.cfg.strict {
                cmd.arg("--strict-mode-lease");
            }
        }
        let log = std::fs::File::create(self.cfg.log_dir.join(format!("{id}.stderr")))
            .map_err(|e| format!("participant log: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, setpgid, _exit) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the runner, even if it is killed with SIGKILL.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                // Own process group: a ^C on the runner's terminal reaches the runner only,
                // which then kills its participants by pid.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.cfg.bin.display()))?;
        let pid = child.id().unwrap_or(0);
        self.pids.push(pid);
        let stdout = child.stdout.take().expect("piped stdout");
        lock(&self.shared).alive.insert(id.clone());
        let shared = self.shared.clone();
        let notify = self.notify.clone();
        let who = id.clone();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                record_line(&shared, &notify, &who, g, &line);
            }
            let status = child.wait().await;
            let mut s = lock(&shared);
            s.alive.remove(&who);
            s.leaders.remove(&who);
            s.paused.remove(&who);
            let expected = s.expected_exit.contains(&who);
            s.events.push(Event {
                at: mono_ns(),
                who: who.clone(),
                group: g,
                kind: EventKind::Exited {
                    status: match status {
                        Ok(st) => st.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    },
                    expected,
                },
            });
            drop(s);
            notify.notify_waiters();
        });
        self.parts.push(Participant {
            id: id.clone(),
            group: g,
            pid,
            zk,
            etcd,
            task,
        });
        Ok(id)
    }

    /// A copy of the events recorded so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared).events.clone()
    }

    /// Lines the runner could not read (reported, not judged).
    pub fn problems(&self) -> Vec<String> {
        lock(&self.shared).problems.clone()
    }

    fn alive_in(&self, g: Group) -> Vec<String> {
        let s = lock(&self.shared);
        self.parts
            .iter()
            .filter(|p| p.group == g && s.alive.contains(&p.id) && !s.paused.contains(&p.id))
            .map(|p| p.id.clone())
            .collect()
    }

    fn leader_of(&self, g: Group) -> Option<String> {
        let s = lock(&self.shared);
        s.leaders
            .iter()
            .filter(|(who, (grp, _, _))| *grp == g && !s.paused.contains(*who))
            .map(|(who, _)| who.clone())
            .next()
    }

    fn part(&self, id: &str) -> Option<&Participant> {
        self.parts.iter().find(|p| p.id == id)
    }

    fn runner_event(&self, who: &str, group: Group, kind: EventKind) {
        lock(&self.shared).events.push(Event {
            at: mono_ns(),
            who: who.to_string(),
            group,
            kind,
        });
        self.notify.notify_waiters();
    }

    /// Sends `sig` to a participant that is still running (by its pid, never by name).
    fn signal(&self, id: &str, sig: libc::c_int) -> bool {
        let Some(p) = self.part(id) else {
            return false;
        };
        if !lock(&self.shared).alive.contains(id) || p.pid == 0 {
            return false;
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
        unsafe { libc::kill(p.pid as libc::pid_t, sig) == 0 }
    }

    /// True when every group has a leader (not paused) that has led for `stable`.
    fn all_led(&self, stable: Duration) -> bool {
        let now = mono_ns();
        let s = lock(&self.shared);
        Group::ALL.iter().all(|g| {
            self.cfg.sizes.get(g).copied().unwrap_or(0) == 0
                || s.leaders.iter().any(|(who, (grp, _, since))| {
                    grp == g
                        && !s.paused.contains(who)
                        && now.saturating_sub(*since) >= stable.as_nanos() as u64
                })
        })
    }

    /// Waits (bounded) until every group has a stable leader; false on timeout.
    pub async fn wait_all_led(&self, stable: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.all_led(stable) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // A leader becomes stable with time alone: re-check at least every 100 ms.
            let step = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    /// Probes `/healthz` of every running, unpaused participant; a non-200 after retries
    /// for `patience` is an `Unhealthy` violation.
    pub async fn probe_health(&mut self, patience: Duration) {
        let ids: Vec<(String, Group)> = {
            let s = lock(&self.shared);
            self.parts
                .iter()
                .filter(|p| s.alive.contains(&p.id) && !s.paused.contains(&p.id))
                .map(|p| (p.id.clone(), p.group))
                .collect()
        };
        for (id, g) in ids {
            let deadline = Instant::now() + patience;
            let mut last = String::new();
            let ok = loop {
                let addr = lock(&self.shared).health_addr.get(&id).cloned();
                match addr {
                    Some(a) => match healthz(&a).await {
                        Ok(200) => break true,
                        Ok(code) => last = format!("HTTP {code}"),
                        Err(e) => last = e,
                    },
                    None => last = "no health_listening event".into(),
                }
                if !lock(&self.shared).alive.contains(&id) {
                    // It exited meanwhile: the crash check reports it.
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if !ok {
                self.violations.push(Violation {
                    kind: ViolationKind::Unhealthy,
                    group: Some(g),
                    at: mono_ns(),
                    detail: format!("{id}: /healthz not 200 for {patience:?}: {last}"),
                });
            }
        }
    }

    /// Injects one planned fault of `episode`; `None` if it had no target.
    pub async fn inject(
        &mut self,
        episode: usize,
        plan: &Planned,
        taken: &mut HashSet<String>,
        rng: &mut Rng,
    ) -> Result<Option<Active>, String> {
        let node = plan.node % 3;
        let mut participant = None;
        let target;
        match plan.kind {
            FaultKind::ZkNodeKill => {
                self.zk.node(node).kill().await.map_err(|e| e.to_string())?;
                target = format!("zk peer {}", node + 1);
            }
            FaultKind::EtcdMemberKill => {
                self.etcd
                    .member(node)
                    .kill()
                    .await
                    .map_err(|e| e.to_string())?;
                target = format!("etcd member m{node}");
            }
            FaultKind::ZkWipe => {
                self.zk.kill_all().await.map_err(|e| e.to_string())?;
                self.zk.wipe_all().await.map_err(|e| e.to_string())?;
                target = "zk ensemble".into();
            }
            FaultKind::EtcdWipe => {
                self.etcd.kill_all().await.map_err(|e| e.to_string())?;
                self.etcd.wipe_all().await.map_err(|e| e.to_string())?;
                target = "etcd cluster".into();
            }
            FaultKind::ZkFreeze => {
                self.zk.node(node).freeze().map_err(|e| e.to_string())?;
                target = format!("zk peer {}", node + 1);
            }
            FaultKind::EtcdFreeze => {
                self.etcd.member(node).freeze().map_err(|e| e.to_string())?;
                target = format!("etcd member m{node}");
            }
            _ => {
                let g = plan.group.expect("participant faults name a group");
                let leader = self.leader_of(g).filter(|l| !taken.contains(l));
                let candidates: Vec<String> = self
                    .alive_in(g)
                    .into_iter()
                    .filter(|id| !taken.contains(id))
                    .collect();
                let pick = match (plan.at_leader, leader) {
                    (true, Some(l)) => Some(l),
                    _ if candidates.is_empty() => None,
                    _ => Some(rng.pick(&candidates).clone()),
                };
                let Some(id) = pick else {
                    self.notes.push(format!(
                        "episode {episode}: {} skipped (no live participant in {g})",
                        plan.kind
                    ));
                    return Ok(None);
                };
                taken.insert(id.clone());
                let is_leader = self.leader_of(g).as_deref() == Some(id.as_str());
                let p = self.part(&id).expect("known participant");
                match plan.kind {
                    FaultKind::PartitionZk
                    | FaultKind::PartitionEtcd
                    | FaultKind::PartitionBoth => {
                        let links: Vec<&TcpProxy> = match plan.kind {
                            FaultKind::PartitionZk => p.zk.iter().collect(),
                            FaultKind::PartitionEtcd => p.etcd.iter().collect(),
                            _ => p.zk.iter().chain(p.etcd.iter()).collect(),
                        };
                        for l in links {
                            if plan.cut {
                                l.cut()
                            } else {
                                l.blackhole()
                            }
                        }
                    }
                    FaultKind::DelayLink => {
                        let links = if plan.delay_store == Group::Zk && !p.zk.is_empty() {
                            &p.zk
                        } else if !p.etcd.is_empty() {
                            &p.etcd
                        } else {
                            &p.zk
                        };
                        for l in links {
                            l.set_delay(plan.delay);
                        }
                    }
                    FaultKind::KillParticipant => {
                        lock(&self.shared).expected_exit.insert(id.clone());
                        self.signal(&id, libc::SIGKILL);
                        self.runner_event(
                            &id,
                            g,
                            EventKind::Exited {
                                status: "SIGKILL sent by the nemesis".into(),
                                expected: true,
                            },
                        );
                    }
                    FaultKind::TermLeader => {
                        lock(&self.shared).expected_exit.insert(id.clone());
                        self.signal(&id, libc::SIGTERM);
                    }
                    FaultKind::PauseParticipant => {
                        lock(&self.shared).paused.insert(id.clone());
                        self.signal(&id, libc::SIGSTOP);
                        self.runner_event(&id, g, EventKind::Paused);
                    }
                    _ => unreachable!("server faults handled above"),
                }
                target = format!(
                    "{id}{}{}",
                    if is_leader { " (leader)" } else { "" },
                    match plan.kind {
                        FaultKind::PartitionZk
                        | FaultKind::PartitionEtcd
                        | FaultKind::PartitionBoth =>
                            if plan.cut { ", cut" } else { ", blackhole" }.to_string(),
                        FaultKind::DelayLink => format!(
                            ", {} links +{} ms",
                            plan.delay_store.name(),
                            plan.delay.as_millis()
                        ),
                        _ => String::new(),
                    }
                );
                participant = Some(id);
            }
        }
        let groups = match plan.kind.server_store() {
            Some(Group::Zk) => vec![Group::Supervised, Group::Zk],
            Some(_) => vec![Group::Supervised, Group::Etcd],
            None => vec![plan.group.expect("participant faults name a group")],
        };
        self.faults.push(Fault {
            episode,
            kind: plan.kind,
            target,
            participant: participant.clone(),
            groups,
            start: mono_ns(),
            heal: None,
        });
        Ok(Some(Active {
            log: self.faults.len() - 1,
            plan: plan.clone(),
            node,
            participant,
        }))
    }

    /// Heals an active fault (restarts, thaws, restores links, starts a replacement).
    pub async fn heal(&mut self, a: Active) -> Result<(), String> {
        let node = a.node;
        match a.plan.kind {
            FaultKind::ZkNodeKill => twice!(self.zk.node(node).restart())?,
            FaultKind::EtcdMemberKill => twice!(self.etcd.member(node).restart())?,
            FaultKind::ZkWipe => twice!(self.zk.restart_all())?,
            FaultKind::EtcdWipe => twice!(self.etcd.restart_all())?,
            FaultKind::ZkFreeze => self.zk.node(node).thaw().map_err(|e| e.to_string())?,
            FaultKind::EtcdFreeze => self.etcd.member(node).thaw().map_err(|e| e.to_string())?,
            FaultKind::PartitionZk
            | FaultKind::PartitionEtcd
            | FaultKind::PartitionBoth
            | FaultKind::DelayLink => {
                if let Some(p) = a.participant.as_deref().and_then(|id| self.part(id)) {
                    for l in p.zk.iter().chain(p.etcd.iter()) {
                        l.set_delay(Duration::ZERO);
                        l.restore();
                    }
                }
            }
            FaultKind::KillParticipant | FaultKind::TermLeader => {
                let id = a.participant.clone().unwrap_or_default();
                let g = a.plan.group.expect("participant faults name a group");
                if a.plan.kind == FaultKind::TermLeader {
                    // A graceful exit is part of the contract: bounded wait, else stuck.
                    if !self.wait_exit(&id, Duration::from_secs(15)).await {
                        self.violations.push(Violation {
                            kind: ViolationKind::Stuck,
                            group: Some(g),
                            at: mono_ns(),
                            detail: format!("{id} did not exit within 15 s of SIGTERM"),
                        });
                        self.signal(&id, libc::SIGKILL);
                    }
                }
                self.release(&id);
                let new = self.spawn(g).await?;
                self.faults[a.log]
                    .target
                    .push_str(&format!("; replaced by {new}"));
            }
            FaultKind::PauseParticipant => {
                if let Some(id) = a.participant.as_deref() {
                    let g = a.plan.group.expect("participant faults name a group");
                    self.runner_event(id, g, EventKind::Resumed);
                    lock(&self.shared).paused.remove(id);
                    self.signal(id, libc::SIGCONT);
                }
            }
        }
        if a.plan.kind.server_store().is_some() {
            self.record_server_pids();
        }
        self.faults[a.log].heal = Some(mono_ns());
        Ok(())
    }

    /// Drops an exited participant's proxies.
    fn release(&mut self, id: &str) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.id == id) {
            if !lock(&self.shared).alive.contains(id) {
                p.zk.clear();
                p.etcd.clear();
            }
        }
    }

    async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if !lock(&self.shared).alive.contains(id) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    /// SIGTERMs every participant (resuming paused ones first) and waits for each to exit;
    /// one that does not within `timeout` is a `Stuck` violation and gets SIGKILL.
    pub async fn stop_participants(&mut self, timeout: Duration) {
        let ids: Vec<(String, Group)> =
            self.parts.iter().map(|p| (p.id.clone(), p.group)).collect();
        for (id, g) in &ids {
            let was_paused = lock(&self.shared).paused.remove(id);
            if was_paused {
                self.runner_event(id, *g, EventKind::Resumed);
                self.signal(id, libc::SIGCONT);
            }
            lock(&self.shared).expected_exit.insert(id.clone());
            self.signal(id, libc::SIGTERM);
        }
        for (id, g) in &ids {
            if !self.wait_exit(id, timeout).await {
                self.violations.push(Violation {
                    kind: ViolationKind::Stuck,
                    group: Some(*g),
                    at: mono_ns(),
                    detail: format!("{id} did not exit within {timeout:?} of SIGTERM"),
                });
                self.signal(id, libc::SIGKILL);
                self.wait_exit(id, Duration::from_secs(5)).await;
            }
        }
        for p in &mut self.parts {
            let _ = (&mut p.task).await;
            p.zk.clear();
            p.etcd.clear();
        }
    }

    /// Reads the stores directly: ephemeral nodes under our paths (ZooKeeper `dump` on the
    /// leader), keys under the election prefixes, and leases (etcd). Empty when clean.
    pub async fn leftovers(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let root = format!("/soak-{}/", self.cfg.tag);
        let leader = self
            .zk
            .leader()
            .ok_or("no ZooKeeper leader to read the ephemeral nodes from")?;
        let port = self.zk.nodes()[leader].port();
        let dump = four_letter_word(port, "dump", Duration::from_secs(5))
            .await
            .map_err(|e| format!("zk dump: {e}"))?;
        for line in dump.lines() {
            let l = line.trim();
            if l.starts_with(&root) {
                out.push(format!("zk ephemeral node {l}"));
            }
        }
        let eps = self.etcd.endpoints().join(",");
        for g in [Group::Supervised, Group::Etcd] {
            let keys = etcdctl(
                &eps,
                &[
                    "get",
                    "--prefix",
                    "--keys-only",
                    &format!("{}/", self.path(g)),
                ],
            )
            .await?;
            for k in keys.lines().filter(|l| !l.trim().is_empty()) {
                out.push(format!("etcd key {k}"));
            }
        }
        let leases = etcdctl(&eps, &["lease", "list"]).await?;
        for l in leases.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            out.push(format!("etcd lease {}", l.trim()));
        }
        Ok(out)
    }

    /// Waits (bounded) until [`leftovers`](Self::leftovers) is empty; returns what is left.
    pub async fn wait_clean(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = match self.leftovers().await {
                Ok(l) => l,
                Err(e) => vec![format!("could not read the stores: {e}")],
            };
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn record_line(shared: &Mutex<Shared>, notify: &Notify, who: &str, g: Group, line: &str) {
    let mut s = lock(shared);
    match parse_line(line, g) {
        Ok(Some((e, addr))) => {
            if e.who != who {
                s.problems
                    .push(format!("{who}: event with id {:?}: {line}", e.who));
            }
            match &e.kind {
                EventKind::Elected { term, .. } => {
                    s.leaders.insert(who.to_string(), (g, *term, e.at));
                }
                EventKind::Revoked { .. } | EventKind::Closed => {
                    s.leaders.remove(who);
                }
                _ => {}
            }
            if let Some(a) = addr {
                s.health_addr.insert(who.to_string(), a);
            }
            s.events.push(e);
        }
        Ok(None) => s
            .problems
            .push(format!("{who}: event without mono_ns: {line}")),
        Err(e) => s.problems.push(format!("{who}: {e}")),
    }
    drop(s);
    notify.notify_waiters();
}

/// `GET /healthz` -> the HTTP status code.
async fn healthz(addr: &str) -> Result<u16, String> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(3), go)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}

/// Runs etcdctl (v3 API) against `endpoints`; its stdout.
async fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String, String> {
    let bin = etcdctl_bin().map_err(|e| e.to_string())?;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=5s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("etcdctl {args:?}: no answer within 10 s"))?
    .map_err(|e| format!("etcdctl {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "etcdctl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for World {
    /// Kills every participant still running (by pid) and aborts the readers (whose
    /// `kill_on_drop` children are then killed too); testkit's handles kill the servers.
    fn drop(&mut self) {
        let alive: Vec<String> = lock(&self.shared).alive.iter().cloned().collect();
        for id in alive {
            self.signal(&id, libc::SIGKILL);
        }
        for p in &self.parts {
            p.task.abort();
        }
    }
}
