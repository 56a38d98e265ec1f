//! The history of a soak run: every participant's events and the nemesis's fault log, all
//! stamped with CLOCK_MONOTONIC nanoseconds (one clock for every process on the machine).

use std::fmt;

use succession_core::Term;

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the `succession` CLI stamps its events
/// with (`mono_ns`), so the runner's own records order with theirs.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// One election: a group of participants on their own path(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// Supervised participants: ZooKeeper primary, etcd fallback.
    Supervised,
    /// ZooKeeper-only participants.
    Zk,
    /// etcd-only participants.
    Etcd,
}

impl Group {
    /// Every group, in report order.
    pub const ALL: [Group; 3] = [Group::Supervised, Group::Zk, Group::Etcd];

    /// Short name, also the participant id prefix.
    pub fn name(self) -> &'static str {
        match self {
            Group::Supervised => "sup",
            Group::Zk => "zk",
            Group::Etcd => "etcd",
        }
    }

    /// Does this group use ZooKeeper?
    pub fn uses_zk(self) -> bool {
        matches!(self, Group::Supervised | Group::Zk)
    }

    /// Does this group use etcd?
    pub fn uses_etcd(self) -> bool {
        matches!(self, Group::Supervised | Group::Etcd)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// CLI `joined`: its node or key exists.
    Joined,
    /// CLI `elected` with its term and layer.
    Elected {
        /// The fencing token.
        term: Term,
        /// `zk` or `etcd`.
        layer: String,
    },
    /// CLI `revoked`: it no longer leads.
    Revoked {
        /// Why.
        reason: String,
    },
    /// CLI `failover` / `failback` (supervised).
    ModeChange {
        /// `failover` or `failback`.
        what: String,
        /// The new generation.
        generation: u64,
    },
    /// CLI `closed`: it left the election.
    Closed,
    /// Runner: the process exited (or was found gone); `status` as text.
    Exited {
        /// Exit status, e.g. `exit status: 0` or `signal: 9 (SIGKILL)`.
        status: String,
        /// True when the nemesis killed it (kill -9) or the runner stopped it.
        expected: bool,
    },
    /// Runner: SIGSTOP sent (the process can do nothing until `Resumed`).
    Paused,
    /// Runner: SIGCONT sent.
    Resumed,
    /// Any other CLI event (`health`, `health_listening`, ...), by name.
    Other(String),
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub at: u64,
    /// The participant id (`sup-1`, `zk-4`, ...).
    pub who: String,
    /// Its election.
    pub group: Group,
    /// What happened.
    pub kind: EventKind,
}

/// Reads one CLI JSON event line: `Ok(None)` for events without a `mono_ns` stamp.
pub fn parse_line(line: &str, group: Group) -> Result<Option<(Event, Option<String>)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON event ({e}): {line}"))?;
    let Some(at) = v.get("mono_ns").and_then(|x| x.as_u64()) else {
        return Ok(None);
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let who = s("id");
    let event = s("event");
    let mut health_addr = None;
    let kind = match event.as_str() {
        "joined" => EventKind::Joined,
        "elected" => {
            let term = s("term")
                .parse::<Term>()
                .map_err(|e| format!("bad term in {line}: {e}"))?;
            EventKind::Elected {
                term,
                layer: s("layer"),
            }
        }
        "revoked" => EventKind::Revoked {
            reason: s("reason"),
        },
        "failover" | "failback" => EventKind::ModeChange {
            what: event.clone(),
            generation: v.get("generation").and_then(|x| x.as_u64()).unwrap_or(0),
        },
        "closed" => EventKind::Closed,
        "health_listening" => {
            health_addr = Some(s("addr"));
            EventKind::Other(event)
        }
        _ => EventKind::Other(event),
    };
    Ok(Some((
        Event {
            at,
            who,
            group,
            kind,
        },
        health_addr,
    )))
}

/// The kinds of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 one ZooKeeper peer, restart it (same data) at heal.
    ZkNodeKill,
    /// kill -9 one etcd member, restart it (same data) at heal.
    EtcdMemberKill,
    /// Whole ZooKeeper ensemble killed, wiped, restarted empty at heal.
    ZkWipe,
    /// Whole etcd cluster killed, wiped, restarted empty (a new cluster) at heal.
    EtcdWipe,
    /// SIGSTOP one ZooKeeper peer, SIGCONT at heal.
    ZkFreeze,
    /// SIGSTOP one etcd member, SIGCONT at heal.
    EtcdFreeze,
    /// One participant's links to ZooKeeper cut or blackholed (ZooKeeper-only group).
    PartitionZk,
    /// One participant's links to etcd cut or blackholed (etcd-only group).
    PartitionEtcd,
    /// One supervised participant cut from both stores.
    PartitionBoth,
    /// Latency added to one participant's links to one store.
    DelayLink,
    /// kill -9 a participant; a new one starts at heal.
    KillParticipant,
    /// SIGTERM the leader of a group (graceful resign); a new one starts at heal.
    TermLeader,
    /// SIGSTOP a participant longer than its session timeout / TTL, SIGCONT at heal.
    PauseParticipant,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::ZkNodeKill,
        FaultKind::EtcdMemberKill,
        FaultKind::ZkWipe,
        FaultKind::EtcdWipe,
        FaultKind::ZkFreeze,
        FaultKind::EtcdFreeze,
        FaultKind::PartitionZk,
        FaultKind::PartitionEtcd,
        FaultKind::PartitionBoth,
        FaultKind::DelayLink,
        FaultKind::KillParticipant,
        FaultKind::TermLeader,
        FaultKind::PauseParticipant,
    ];

    /// Name used in the log and the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ZkNodeKill => "zk-node-kill9",
            FaultKind::EtcdMemberKill => "etcd-member-kill9",
            FaultKind::ZkWipe => "zk-ensemble-wipe",
            FaultKind::EtcdWipe => "etcd-cluster-wipe",
            FaultKind::ZkFreeze => "zk-node-sigstop",
            FaultKind::EtcdFreeze => "etcd-member-sigstop",
            FaultKind::PartitionZk => "partition-from-zk",
            FaultKind::PartitionEtcd => "partition-from-etcd",
            FaultKind::PartitionBoth => "partition-from-both",
            FaultKind::DelayLink => "delay-link",
            FaultKind::KillParticipant => "participant-kill9",
            FaultKind::TermLeader => "leader-sigterm",
            FaultKind::PauseParticipant => "participant-sigstop",
        }
    }

    /// The kind named `name` (as in [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The store a server fault hits (`None` for participant and link faults).
    pub fn server_store(self) -> Option<Group> {
        match self {
            FaultKind::ZkNodeKill | FaultKind::ZkWipe | FaultKind::ZkFreeze => Some(Group::Zk),
            FaultKind::EtcdMemberKill | FaultKind::EtcdWipe | FaultKind::EtcdFreeze => {
                Some(Group::Etcd)
            }
            _ => None,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The episode it belongs to (faults of one episode overlap).
    pub episode: usize,
    /// What.
    pub kind: FaultKind,
    /// On what, e.g. `zk peer 2`, `zk-3 (leader)`.
    pub target: String,
    /// The participant it hit, for participant faults.
    pub participant: Option<String>,
    /// The groups whose election it can disturb.
    pub groups: Vec<Group>,
    /// Injected at (CLOCK_MONOTONIC ns).
    pub start: u64,
    /// Healed at; `None` if the run ended first.
    pub heal: Option<u64>,
}

/// One nemesis episode: one fault or two overlapping ones, then a wait for recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// 0-based index.
    pub index: usize,
    /// First injection.
    pub start: u64,
    /// When its last fault healed (`None`: the run ended first).
    pub healed: Option<u64>,
    /// When the next episode started (or the run's end).
    pub until: u64,
}

/// Everything the checker judges.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Participant events and runner records, in any order (the checker sorts).
    pub events: Vec<Event>,
    /// The fault log.
    pub faults: Vec<Fault>,
    /// The episodes.
    pub episodes: Vec<Episode>,
    /// End of the judged run (before the final shutdown of participants).
    pub end: u64,
}
