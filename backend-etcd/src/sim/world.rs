//! The simulated world: etcd election participants (the production [`CampaignMachine`]) in
//! processes, each with one connection, one lease and its keeper, one watch stream to one
//! [`SimEtcd`], a network with delays, and seeded faults; the [`Timeline`] checker judges
//! what they published.
//!
//! The lease keeper is modelled here after `lease.rs` (the session does it for all its
//! elections): it grants a lease, renews it every TTL/3, records `expires = send time of
//! the newest answered renewal + TTL` and `drop_at = expires - max(TTL/6, 300 ms)` by the
//! process's own (drifting) clock, demotes the leader and reports a doubt when `drop_at`
//! passes or the connection breaks, and a loss when etcd says the lease is gone (then it
//! grants a new one). A `Leader` publication is checked against it, as the registry lock
//! does in production.

use std::collections::VecDeque;
use std::time::Duration;

use succession_core::sim::{fmt_vt, net_delay, next_wire, Host, Queue, Rng, Timeline, Vt};
pub use succession_core::sim::{Outcome, Summary};

use super::store::{Delivery, SimEtcd};
use crate::machine::ops::{Answer, EtcdErr, Op, ReqId, WatchNote};
use crate::machine::{Activity, Bugs, CampaignMachine, Command, Effect, Input, Layout, LeaseInput};

const MS: Vt = 1_000;
const SEC: Vt = 1_000_000;
/// The election prefix every participant joins.
pub const PREFIX: &str = "/sim/election";
/// The wall clock of the simulated machines at virtual time 0 (milliseconds since 1970).
const WALL_BASE_MS: u64 = 1_700_000_000_000;

/// Which faults a schedule may draw (each on or off).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Cut one process from etcd for a while (its connection dies; it notices late).
    pub partitions: bool,
    /// Stop etcd and restart it with its data (leases get a fresh TTL).
    pub outages: bool,
    /// Stop etcd and restart it empty (keys, leases and revisions forgotten).
    pub wipes: bool,
    /// An operator deletes the leader's key.
    pub key_deletes: bool,
    /// An operator deletes the whole election (epoch record and every key).
    pub prefix_deletes: bool,
    /// An operator revokes the leader's lease.
    pub lease_revokes: bool,
    /// Stop a process (no thread runs, no renewal) for up to 4 x the TTL.
    pub pauses: bool,
    /// Kill a process; it restarts later with a new lease.
    pub crashes: bool,
    /// etcd refuses our requests on the prefix for a while (a role change).
    pub auth_refused: bool,
    /// etcd compacts its history (watchers from an older revision are cancelled).
    pub compactions: bool,
    /// A participant resigns and joins again, or closes and is replaced by a new one.
    pub churn: bool,
}

impl Faults {
    /// Every fault.
    pub fn all() -> Faults {
        Faults {
            partitions: true,
            outages: true,
            wipes: true,
            key_deletes: true,
            prefix_deletes: true,
            lease_revokes: true,
            pauses: true,
            crashes: true,
            auth_refused: true,
            compactions: true,
            churn: true,
        }
    }

    /// No fault.
    pub fn none() -> Faults {
        Faults {
            partitions: false,
            outages: false,
            wipes: false,
            key_deletes: false,
            prefix_deletes: false,
            lease_revokes: false,
            pauses: false,
            crashes: false,
            auth_refused: false,
            compactions: false,
            churn: false,
        }
    }
}

/// One simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Participant processes.
    pub participants: usize,
    /// The lease TTL.
    pub ttl: Vt,
    /// The request timeout (also how long a watcher's acknowledgement may take).
    pub request_timeout: Vt,
    /// Faults drawn.
    pub faults: Faults,
    /// How long faults are drawn for (then everything heals and liveness is judged).
    pub fault_time: Vt,
    /// Mean time between faults.
    pub fault_gap: Vt,
    /// Bugs planted in every machine (and, for `suspended_leader_kept`, in the keeper's
    /// demotion of leaders too: the rule lives in both).
    pub bugs: Bugs,
    /// Keep a readable trace.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            participants: 3,
            ttl: 4 * SEC,
            request_timeout: SEC,
            faults: Faults::all(),
            fault_time: 40 * SEC,
            fault_gap: 2 * SEC,
            bugs: Bugs::default(),
            trace: false,
        }
    }
}

/// Run `seeds`; the first failing one is returned as `Err` with its description.
pub fn explore(cfg: &SimConfig, seeds: &[u64]) -> Result<Summary, String> {
    succession_core::sim::explore(seeds, |seed, trace| {
        let mut c = cfg.clone();
        c.trace |= trace;
        run(seed, &c)
    })
}

/// Run one schedule.
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    let mut w = World::new(seed, cfg);
    w.run();
    w.finish()
}

#[derive(Debug)]
enum Ev {
    /// Process `p` runs its inbox.
    Run(usize),
    /// Something reaches etcd over connection `wire` of `p`.
    Arrive(usize, u64, Up),
    /// A message from etcd reaches `p` over connection `wire`.
    Deliver(usize, u64, Down),
    /// An effect of `p` (run) is carried out.
    Exec(usize, u64, Effect),
    /// `p`'s lease grant on connection `wire` is given up if unanswered.
    GrantDeadline(usize, u64),
    /// Request `id` of `p` on connection `wire` times out if unanswered.
    Deadline(usize, u64, ReqId),
    /// `p`'s keeper renews (life, token).
    Renew(usize, u64, u64),
    /// `p`'s keeper checks `drop_at` (life).
    DropAt(usize, u64),
    /// `p`'s client notices that connection `wire` is dead.
    Notice(usize, u64),
    /// `p`'s client connects again.
    Reconnect(usize),
    /// `p`'s machine timer (run, token).
    Timer(usize, u64, u64),
    /// etcd's lessor loop.
    Tick,
    /// Draw the next fault.
    Fault,
    /// End a fault.
    Heal(Heal),
}

#[derive(Debug)]
enum Up {
    Request(ReqId, Op),
    Watch(ReqId, String, Option<i64>),
    Unwatch(ReqId),
    Grant(i64, Vt),
    Renew(i64, Vt),
    Revoke(i64),
}

#[derive(Debug)]
enum Down {
    Answer(ReqId, Result<Answer, EtcdErr>),
    Note(WatchNote),
    Granted(i64, Vt, Result<(), EtcdErr>),
    Renewed(i64, Vt, Result<(), EtcdErr>),
}

#[derive(Debug)]
enum Heal {
    Partition(usize),
    Server(bool),
    Resume(usize, u64),
    Restart(usize, u64),
    Auth,
    Join(usize, u64),
}

/// The lease keeper of one process (see the module docs).
#[derive(Debug, Default)]
struct Keeper {
    lease: Option<i64>,
    granting: bool,
    /// Virtual instants (converted from the process's clock).
    last_renewal: Vt,
    expires: Vt,
    drop_at: Vt,
    stream_ok: bool,
    /// What the machine was told: None (nothing yet), Some(true) safe, Some(false) doubt.
    told_safe: Option<bool>,
    renew_token: u64,
}

struct Proc {
    m: CampaignMachine,
    /// Incremented with each new process: its keeper's timers and heals of an earlier one
    /// are dropped.
    life: u64,
    /// Incremented with each new machine (a join after a resign): effects and timers of an
    /// earlier one are dropped.
    run: u64,
    crashed: bool,
    paused: bool,
    /// Its clock, inbox and executor pace.
    host: Host<Input>,
    connected: bool,
    /// The current connection (and watch stream); messages of another are lost.
    wire: u64,
    /// Cut from etcd (no connection can be made).
    cut: bool,
    /// A connection that died (everything on it is lost until the client notices).
    broken: Option<u64>,
    /// Requests sent on the current connection and not answered.
    inflight: Vec<ReqId>,
    /// What reached the process while it was paused.
    held: VecDeque<Down>,
    out_clock: Vt,
    /// Answers and watch responses travel on different gRPC streams: each in order,
    /// not with each other.
    answer_clock: Vt,
    note_clock: Vt,
    keeper: Keeper,
    /// Whether it takes part (false between a resign and the next join, after a close).
    want: bool,
    /// Closed for good: the lease is revoked once the machine is done.
    closing: bool,
    leading: bool,
    reconnecting: bool,
}

struct World<'c> {
    cfg: &'c SimConfig,
    rng: Rng,
    q: Queue<Ev>,
    etcd: SimEtcd,
    server_up: bool,
    procs: Vec<Proc>,
    timeline: Timeline,
    trace: Vec<String>,
    faults: usize,
    seed: u64,
    fault_end: Vt,
    next_seed: u64,
    auth_denied: bool,
    /// When the last fault healed.
    quiet: Vt,
}

impl<'c> World<'c> {
    fn new(seed: u64, cfg: &'c SimConfig) -> World<'c> {
        let mut rng = Rng::new(seed);
        let n = cfg.participants;
        let names = (0..n).map(|i| format!("p{i}")).collect();
        let mut w = World {
            cfg,
            q: Queue::new(),
            etcd: SimEtcd::new(),
            server_up: true,
            procs: Vec::new(),
            timeline: Timeline::new(names),
            trace: Vec::new(),
            faults: 0,
            seed,
            fault_end: cfg.fault_time,
            next_seed: rng.next_u64(),
            auth_denied: false,
            quiet: 0,
            rng,
        };
        for p in 0..n {
            let proc = w.new_proc(p, 0);
            w.procs.push(proc);
            w.q.at(w.rng.range(0, 50 * MS), Ev::Reconnect(p));
            w.q.at(w.rng.range(0, 100 * MS), Ev::Heal(Heal::Join(p, 0)));
        }
        w.q.at(100 * MS, Ev::Tick);
        if cfg.fault_time > 0 {
            let first = w.rng.range(SEC, SEC + cfg.fault_gap);
            w.q.at(first, Ev::Fault);
        }
        w
    }

    fn machine(&mut self, p: usize) -> CampaignMachine {
        self.next_seed = self.next_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut m = CampaignMachine::new(
            PREFIX,
            0,
            &format!("p{p}"),
            Duration::from_micros(self.cfg.ttl),
            Duration::from_micros(self.cfg.request_timeout),
            self.next_seed,
        );
        m.bugs = self.cfg.bugs;
        m
    }

    fn new_proc(&mut self, p: usize, life: u64) -> Proc {
        let m = self.machine(p);
        let host = Host::new(&mut self.rng);
        Proc {
            m,
            life,
            run: 0,
            crashed: false,
            paused: false,
            host,
            connected: false,
            wire: next_wire(),
            cut: false,
            broken: None,
            inflight: Vec::new(),
            held: VecDeque::new(),
            out_clock: 0,
            answer_clock: 0,
            note_clock: 0,
            keeper: Keeper::default(),
            want: false,
            closing: false,
            leading: false,
            reconnecting: false,
        }
    }

    fn log(&mut self, s: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{} {}", fmt_vt(self.q.now()), s());
            self.trace.push(line);
        }
    }

    fn ttl(&self) -> Vt {
        self.cfg.ttl
    }

    /// How long a leader may take to learn that its key was taken from outside (deleted,
    /// its lease revoked, the cluster wiped): one watch message and a read, or, cut off,
    /// its keeper's `drop_at` (at most a TTL after the last answered renewal), with drift
    /// and executor delays.
    fn revoke_bound(&self) -> Vt {
        self.ttl() * 105 / 100 + 200 * MS
    }

    /// Once faults stop, a leader within: a crashed leader's lease expires (TTL plus the
    /// lessor's tick), a lost lease is replaced, a failed step backs off at most 2 s;
    /// 2 x TTL + 5 s covers them with room.
    fn liveness_bound(&self) -> Vt {
        2 * self.ttl() + 5 * SEC
    }

    /// A duration measured by `p`'s clock, in virtual time.
    fn local(&self, p: usize, d: Vt) -> Vt {
        self.procs[p].host.local(d)
    }

    fn now_of(&self, p: usize) -> std::time::Instant {
        self.instant_of(p, self.q.now())
    }

    fn instant_of(&self, p: usize, vt: Vt) -> std::time::Instant {
        self.procs[p].host.instant(vt)
    }

    fn net_delay(&mut self) -> Vt {
        net_delay(&mut self.rng)
    }

    fn run(&mut self) {
        // The last heal comes at most 4 x TTL after the faults stop (a pause); then liveness
        // is judged over its bound, with a second to spare.
        let end = self.fault_end + 4 * self.ttl() + self.liveness_bound() + SEC;
        while let Some(ev) = self.q.pop_until(end) {
            self.event(ev);
        }
    }

    fn alive(&self, p: usize, wire: u64) -> bool {
        let pr = &self.procs[p];
        pr.wire == wire && !pr.crashed && pr.connected && pr.broken != Some(wire)
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Run(p) => self.run_inbox(p),
            Ev::Arrive(p, wire, up) => self.arrive(p, wire, up),
            Ev::Deliver(p, wire, down) => {
                if self.alive(p, wire) {
                    if self.procs[p].paused {
                        // Read when the process runs again.
                        self.procs[p].held.push_back(down);
                    } else {
                        self.deliver(p, down);
                    }
                }
            }
            Ev::Exec(p, run, fx) => {
                if self.procs[p].run == run && !self.procs[p].crashed {
                    self.exec(p, fx);
                }
            }
            Ev::Deadline(p, wire, id) => {
                let pr = &mut self.procs[p];
                if pr.wire == wire && pr.inflight.contains(&id) {
                    pr.inflight.retain(|&i| i != id);
                    let e = EtcdErr::Transient("request timed out".into());
                    self.push(p, Input::Answer(id, Err(e)));
                }
            }
            Ev::GrantDeadline(p, wire) => {
                let pr = &mut self.procs[p];
                if pr.wire == wire && pr.keeper.granting && !pr.crashed {
                    pr.keeper.granting = false;
                    let d = self.rng.range(100 * MS, 500 * MS);
                    self.q.after(d, Ev::Reconnect(p));
                }
            }
            // A paused process's timers fire when it runs again (see `Heal::Resume`).
            Ev::Renew(p, life, token) => {
                let pr = &self.procs[p];
                if pr.life == life && !pr.crashed && pr.keeper.renew_token == token && !pr.paused {
                    self.renew(p);
                }
            }
            Ev::DropAt(p, life) => {
                let pr = &self.procs[p];
                if pr.life == life && !pr.crashed && !pr.paused {
                    self.keeper_check(p);
                }
            }
            Ev::Notice(p, wire) => {
                let pr = &self.procs[p];
                if pr.wire == wire && pr.connected && !pr.crashed && !pr.paused {
                    self.drop_wire(p);
                }
            }
            Ev::Reconnect(p) => self.reconnect(p),
            Ev::Timer(p, run, token) => {
                let pr = &self.procs[p];
                if pr.run == run && pr.host.timer_token == token && !pr.crashed {
                    self.push(p, Input::Timer);
                }
            }
            Ev::Tick => {
                let now = self.q.now();
                if self.server_up {
                    let (gone, ds) = self.etcd.expire_due((now / MS) as i64);
                    for l in gone {
                        self.log(|| format!("etcd: lease {l:x} expired"));
                    }
                    self.deliver_all(ds);
                }
                self.q.after(100 * MS, Ev::Tick);
            }
            Ev::Fault => self.fault(),
            Ev::Heal(h) => self.heal(h),
        }
    }

    /// Queue an input for `p` and run it when the process can.
    fn push(&mut self, p: usize, input: Input) {
        self.procs[p].host.inbox.push_back(input);
        let at = self.procs[p].host.busy_until.max(self.q.now());
        self.q.at(at, Ev::Run(p));
    }

    /// Run `input` before anything queued (what the executor feeds at once).
    fn push_front(&mut self, p: usize, input: Input) {
        self.procs[p].host.inbox.push_front(input);
        let at = self.procs[p].host.busy_until.max(self.q.now());
        self.q.at(at, Ev::Run(p));
    }

    fn run_inbox(&mut self, p: usize) {
        let now = self.q.now();
        if self.procs[p].crashed || self.procs[p].paused || now < self.procs[p].host.busy_until {
            return;
        }
        let Some(input) = self.procs[p].host.inbox.pop_front() else {
            return;
        };
        if self.cfg.trace {
            let line = format!("p{p} <- {}", short_input(&input));
            self.log(|| line);
        }
        // The executor syncs the role the status cell (or the keeper) may have demoted.
        if self.procs[p].m.role().is_leader() && !self.procs[p].leading {
            self.procs[p].m.set_role(succession_core::Role::Suspended);
        }
        let pr = &mut self.procs[p];
        let run = pr.run;
        let out = pr.host.step(&mut pr.m, now, input, &mut self.rng);
        for (at, e) in out.effects {
            self.q.at(at, Ev::Exec(p, run, e));
        }
        if let Some((at, token)) = out.timer {
            self.q.at(at, Ev::Timer(p, run, token));
        }
        if let Some(at) = out.again {
            self.q.at(at, Ev::Run(p));
        }
    }

    fn lease_safe(&self, p: usize, lease: i64) -> bool {
        let k = &self.procs[p].keeper;
        k.lease == Some(lease) && k.stream_ok && self.q.now() < k.drop_at
    }

    fn exec(&mut self, p: usize, e: Effect) {
        let now = self.q.now();
        match e {
            Effect::Publish {
                role,
                health,
                reason,
            } => {
                if let Some(role) = role {
                    self.log(|| format!("p{p} publishes {role:?} ({health:?}: {reason})"));
                    if !role.is_leader() && self.procs[p].leading {
                        self.procs[p].leading = false;
                        self.timeline.publish(p, now, None);
                    }
                } else if health == succession_core::HealthLevel::Unhealthy && self.procs[p].leading
                {
                    // The status cell never shows an unhealthy leader: it demotes it.
                    self.log(|| format!("p{p} unhealthy ({reason}): the cell demotes it"));
                    self.procs[p].leading = false;
                    self.timeline.publish(p, now, None);
                }
            }
            Effect::PublishLeader {
                lease,
                term,
                reason,
                ..
            } => {
                if self.lease_safe(p, lease) {
                    self.log(|| format!("p{p} publishes LEADER {term} ({reason})"));
                    self.procs[p].leading = true;
                    self.timeline.publish(p, now, Some(term));
                } else {
                    self.log(|| format!("p{p} leader refused (lease not safe)"));
                    // The executor feeds the refusal, then the lease's state, at once.
                    let state = self.lease_state(p, true);
                    if let Some(s) = state {
                        self.push_front(p, Input::Lease(s));
                    }
                    self.push_front(p, Input::LeaderRefused);
                }
            }
            Effect::Pace => {
                // A slot is free at once (one election per process).
                self.push_front(p, Input::Paced);
            }
            Effect::Request { id, op } => self.send_request(p, id, op),
            Effect::Watch { id, key, start } => {
                let pr = &self.procs[p];
                if !pr.connected {
                    let e = WatchNote::Ended("not connected".into());
                    self.push(p, Input::Watch(e));
                } else {
                    self.up(p, Up::Watch(id, key, start));
                }
            }
            Effect::Unwatch(id) => {
                if self.procs[p].connected {
                    self.up(p, Up::Unwatch(id));
                }
            }
            Effect::Refused(kind, msg) => self.log(|| format!("p{p} refused {kind:?}: {msg}")),
            Effect::Progress | Effect::SawEpoch(_) => {}
            Effect::LeaseLost { lease, why } => {
                self.log(|| format!("p{p} lease {lease:x} lost: {why}"));
                if self.procs[p].keeper.lease == Some(lease) {
                    self.demote(p);
                    self.lease_gone(p);
                }
            }
            Effect::Done(r) => self.log(|| format!("p{p} stop done: {r:?}")),
            Effect::Exit => {
                self.log(|| format!("p{p} machine exited"));
                if self.procs[p].closing {
                    // A private session revokes its lease (its key goes with it).
                    if let Some(l) = self.procs[p].keeper.lease.take() {
                        if self.procs[p].connected {
                            self.up(p, Up::Revoke(l));
                        }
                    }
                }
            }
        }
    }

    /// Send `up` to etcd on `p`'s connection (lost if it is dead).
    fn up(&mut self, p: usize, up: Up) {
        let pr = &self.procs[p];
        if pr.broken == Some(pr.wire) || !self.server_up || !pr.connected {
            return;
        }
        let at = (self.q.now() + self.net_delay()).max(self.procs[p].out_clock);
        self.procs[p].out_clock = at;
        let wire = self.procs[p].wire;
        self.q.at(at, Ev::Arrive(p, wire, up));
    }

    fn send_request(&mut self, p: usize, id: ReqId, op: Op) {
        self.log(|| format!("p{p} -> #{id} {}", short_op(&op)));
        if !self.procs[p].connected {
            // No connection: etcd-client fails at once.
            let e = EtcdErr::Transient("not connected".into());
            self.push(p, Input::Answer(id, Err(e)));
            return;
        }
        self.procs[p].inflight.push(id);
        let wire = self.procs[p].wire;
        let timeout = self.local(p, self.cfg.request_timeout);
        self.q.after(timeout, Ev::Deadline(p, wire, id));
        self.up(p, Up::Request(id, op));
    }

    fn arrive(&mut self, p: usize, wire: u64, up: Up) {
        let now = self.q.now();
        if self.procs[p].wire != wire || self.procs[p].broken == Some(wire) || !self.server_up {
            return;
        }
        let now_ms = (now / MS) as i64;
        match up {
            Up::Request(id, op) => {
                let wall = WALL_BASE_MS + now / MS;
                let (r, ds) = self.etcd.apply(&op, wall);
                if !matches!(op, Op::ReadQueue { .. }) {
                    let line = format!("etcd: #{id} of p{p}: {}", short_result(&r));
                    self.log(|| line);
                }
                self.deliver_all(ds);
                self.down(p, wire, Down::Answer(id, r));
            }
            Up::Watch(id, key, start) => {
                let ds = self.etcd.watch(wire, id, &key, start);
                self.deliver_all(ds);
            }
            Up::Unwatch(id) => self.etcd.cancel_watch(wire, id),
            Up::Grant(id, sent) => {
                let r = self.etcd.grant(id, (self.ttl() / MS) as i64, now_ms);
                self.down(p, wire, Down::Granted(id, sent, r));
            }
            Up::Renew(id, sent) => {
                let r = self.etcd.renew(id, now_ms).map(|_| ());
                self.down(p, wire, Down::Renewed(id, sent, r));
            }
            Up::Revoke(id) => {
                self.log(|| format!("etcd: lease {id:x} revoked by p{p}"));
                let ds = self.etcd.revoke(id);
                self.deliver_all(ds);
            }
        }
    }

    fn down(&mut self, p: usize, wire: u64, down: Down) {
        let now = self.q.now();
        let d = self.net_delay();
        let pr = &mut self.procs[p];
        let clock = match down {
            Down::Note(_) => &mut pr.note_clock,
            _ => &mut pr.answer_clock,
        };
        let at = (now + d).max(*clock);
        *clock = at;
        self.q.at(at, Ev::Deliver(p, wire, down));
    }

    fn deliver_all(&mut self, ds: Vec<Delivery>) {
        for d in ds {
            let Some(p) = self.procs.iter().position(|pr| pr.wire == d.stream) else {
                continue;
            };
            if self.alive(p, d.stream) && self.server_up {
                self.down(p, d.stream, Down::Note(d.note));
            }
        }
    }

    fn deliver(&mut self, p: usize, down: Down) {
        match down {
            Down::Answer(id, r) => {
                let pr = &mut self.procs[p];
                if pr.inflight.contains(&id) {
                    pr.inflight.retain(|&i| i != id);
                    self.push(p, Input::Answer(id, r));
                }
            }
            Down::Note(n) => self.push(p, Input::Watch(n)),
            Down::Granted(id, sent, r) => {
                self.procs[p].keeper.granting = false;
                match r {
                    Ok(()) => {
                        self.log(|| format!("p{p} keeper: lease {id:x} granted"));
                        let k = &mut self.procs[p].keeper;
                        k.lease = Some(id);
                        k.stream_ok = true;
                        k.told_safe = None;
                        self.renewed(p, sent);
                        self.push(p, Input::Lease(LeaseInput::Granted { id }));
                        self.procs[p].keeper.told_safe = Some(true);
                        self.schedule_renew(p);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let input = LeaseInput::GrantFailed(
                            succession_core::ErrorKind::Backend,
                            msg.as_str().into(),
                        );
                        self.push(p, Input::Lease(input));
                        let d = self.rng.range(100 * MS, 500 * MS);
                        self.q.after(d, Ev::Reconnect(p));
                    }
                }
            }
            Down::Renewed(id, sent, r) => {
                if self.procs[p].keeper.lease != Some(id) {
                    return;
                }
                match r {
                    Ok(()) => {
                        self.procs[p].keeper.stream_ok = true;
                        self.renewed(p, sent);
                        self.keeper_check(p);
                    }
                    Err(e) => {
                        self.log(|| format!("p{p} keeper: lease {id:x} gone ({e})"));
                        self.demote(p);
                        self.push(p, Input::Lease(LeaseInput::Lost(e.to_string().into())));
                        self.lease_gone(p);
                    }
                }
            }
        }
    }

    /// A renewal (or the grant) sent at `sent` was answered.
    fn renewed(&mut self, p: usize, sent: Vt) {
        let ttl = self.local(p, self.ttl());
        let margin = self.local(p, (self.ttl() / 6).max(300 * MS));
        let k = &mut self.procs[p].keeper;
        if sent >= k.last_renewal || k.expires == 0 {
            k.last_renewal = sent;
            k.expires = sent + ttl;
            k.drop_at = k.expires - margin;
        }
        let (life, at) = (self.procs[p].life, self.procs[p].keeper.drop_at);
        self.q.at(at, Ev::DropAt(p, life));
    }

    fn schedule_renew(&mut self, p: usize) {
        let iv = self.local(p, self.ttl() / 3);
        let k = &mut self.procs[p].keeper;
        k.renew_token += 1;
        let (life, token) = (self.procs[p].life, self.procs[p].keeper.renew_token);
        self.q.after(iv, Ev::Renew(p, life, token));
    }

    fn renew(&mut self, p: usize) {
        if let Some(id) = self.procs[p].keeper.lease {
            if self.procs[p].connected {
                let sent = self.q.now();
                self.up(p, Up::Renew(id, sent));
            }
            self.schedule_renew(p);
        }
    }

    /// The keeper's verdict on its lease: demote and report a doubt when `drop_at` passed
    /// or the stream broke; report recovery.
    fn keeper_check(&mut self, p: usize) {
        if let Some(s) = self.lease_state(p, false) {
            if matches!(s, LeaseInput::Doubt { .. }) {
                self.log(|| format!("p{p} keeper: lease in doubt"));
                self.demote(p);
            }
            self.push(p, Input::Lease(s));
        }
    }

    /// What the machine should hear about the lease (`force`: even if told already).
    fn lease_state(&mut self, p: usize, force: bool) -> Option<LeaseInput> {
        let k = &self.procs[p].keeper;
        let lease = k.lease?;
        let safe = self.lease_safe(p, lease);
        if !force && k.told_safe == Some(safe) {
            return None;
        }
        let expires = self.instant_of(p, k.expires);
        let reason = if k.stream_ok {
            "no lease renewal answered in time; stepped down before the lease can expire"
        } else {
            "lease keep-alive stream broke; not leading until a renewal is answered"
        };
        self.procs[p].keeper.told_safe = Some(safe);
        Some(if safe {
            LeaseInput::Safe
        } else {
            LeaseInput::Doubt {
                reason: reason.into(),
                expires,
            }
        })
    }

    /// The keeper demotes a leader itself before it reports a doubt or a loss.
    fn demote(&mut self, p: usize) {
        if self.procs[p].leading && !self.cfg.bugs.suspended_leader_kept {
            let now = self.q.now();
            self.log(|| format!("p{p} keeper demotes the leader"));
            self.procs[p].leading = false;
            self.timeline.publish(p, now, None);
        }
    }

    /// The lease is gone: forget it and grant a new one.
    fn lease_gone(&mut self, p: usize) {
        let k = &mut self.procs[p].keeper;
        k.lease = None;
        k.told_safe = None;
        k.renew_token += 1;
        k.expires = 0;
        k.last_renewal = 0;
        self.grant(p);
    }

    fn grant(&mut self, p: usize) {
        let pr = &self.procs[p];
        if pr.keeper.granting || pr.keeper.lease.is_some() || !pr.connected || pr.closing {
            return;
        }
        let id = (self.rng.next_u64() >> 2) as i64 | 1;
        self.procs[p].keeper.granting = true;
        let sent = self.q.now();
        self.log(|| format!("p{p} keeper: granting lease {id:x}"));
        self.up(p, Up::Grant(id, sent));
        // An unanswered grant is given up after the request timeout.
        let wire = self.procs[p].wire;
        let t = self.local(p, self.cfg.request_timeout);
        self.q.after(t, Ev::GrantDeadline(p, wire));
    }

    /// `p`'s client finds its connection dead.
    fn drop_wire(&mut self, p: usize) {
        let pr = &mut self.procs[p];
        if pr.keeper.granting {
            pr.keeper.granting = false;
        }
        let old = pr.wire;
        pr.connected = false;
        pr.wire = next_wire();
        let failed = std::mem::take(&mut pr.inflight);
        self.etcd.drop_stream(old);
        self.log(|| format!("p{p} client: connection lost"));
        for id in failed {
            let e = EtcdErr::Transient("connection lost".into());
            self.push(p, Input::Answer(id, Err(e)));
        }
        self.push(
            p,
            Input::Watch(WatchNote::Ended("the watch stream broke".into())),
        );
        self.procs[p].keeper.stream_ok = false;
        self.keeper_check(p);
        if !self.procs[p].reconnecting {
            self.procs[p].reconnecting = true;
            let d = self.rng.range(10 * MS, 200 * MS);
            self.q.after(d, Ev::Reconnect(p));
        }
    }

    fn reconnect(&mut self, p: usize) {
        let pr = &self.procs[p];
        if pr.crashed || pr.connected {
            self.procs[p].reconnecting = false;
            if self.procs[p].connected && !self.procs[p].crashed {
                self.grant(p);
            }
            return;
        }
        if pr.paused || pr.cut || !self.server_up {
            let d = self.rng.range(100 * MS, 300 * MS);
            self.q.after(d, Ev::Reconnect(p));
            return;
        }
        let pr = &mut self.procs[p];
        pr.reconnecting = false;
        pr.connected = true;
        pr.wire = next_wire();
        self.log(|| format!("p{p} client: connected"));
        if self.procs[p].keeper.lease.is_some() {
            // A new keep-alive stream: renew at once.
            self.renew(p);
        } else {
            self.grant(p);
        }
    }

    fn join(&mut self, p: usize) {
        self.procs[p].want = true;
        self.push(p, Input::Command(Command::Join));
        if let Some(id) = self.procs[p].keeper.lease {
            self.push(p, Input::Lease(LeaseInput::Granted { id }));
            self.procs[p].keeper.told_safe = Some(true);
            self.keeper_check(p);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Partition,
    Outage,
    Wipe,
    KeyDelete,
    PrefixDelete,
    LeaseRevoke,
    Pause,
    Crash,
    Auth,
    Compaction,
    Churn,
}

impl World<'_> {
    fn heal_at(&mut self, at: Vt, h: Heal) {
        self.quiet = self.quiet.max(at);
        self.q.at(at, Ev::Heal(h));
    }

    fn leader(&self) -> Option<usize> {
        (0..self.procs.len()).find(|&i| self.procs[i].leading)
    }

    fn fault(&mut self) {
        let now = self.q.now();
        if now >= self.fault_end {
            return;
        }
        let f = self.cfg.faults;
        let kinds: Vec<Kind> = [
            (f.partitions, Kind::Partition),
            (f.outages, Kind::Outage),
            (f.wipes, Kind::Wipe),
            (f.key_deletes, Kind::KeyDelete),
            (f.prefix_deletes, Kind::PrefixDelete),
            (f.lease_revokes, Kind::LeaseRevoke),
            (f.pauses, Kind::Pause),
            (f.crashes, Kind::Crash),
            (f.auth_refused, Kind::Auth),
            (f.compactions, Kind::Compaction),
            (f.churn, Kind::Churn),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        let gap = self.cfg.fault_gap;
        let next = self.rng.range(gap / 2, gap * 3 / 2);
        self.q.after(next, Ev::Fault);
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.rng.below(kinds.len())];
        let t = self.ttl();
        let n = self.procs.len();
        let p = self.rng.below(n);
        self.faults += 1;
        self.quiet = self.quiet.max(now);
        let bound = self.revoke_bound();
        match kind {
            Kind::Partition => {
                if self.procs[p].cut {
                    return;
                }
                self.log(|| format!("FAULT partition p{p}"));
                let pr = &mut self.procs[p];
                pr.cut = true;
                pr.broken = Some(pr.wire);
                // The client notices when a request or the keep-alive times out.
                let wire = pr.wire;
                let d = self
                    .rng
                    .range(self.cfg.request_timeout / 2, 2 * self.cfg.request_timeout);
                self.q.after(d, Ev::Notice(p, wire));
                let d = self.rng.range(t / 10, t * 5 / 2);
                self.heal_at(now + d, Heal::Partition(p));
            }
            Kind::Outage | Kind::Wipe => {
                if !self.server_up {
                    return;
                }
                let wipe = kind == Kind::Wipe;
                self.log(|| format!("FAULT etcd {}", if wipe { "wiped" } else { "outage" }));
                self.server_up = false;
                for i in 0..n {
                    let wire = self.procs[i].wire;
                    // The server's process ends: every live connection is reset, and the
                    // client notices at once; one already cut off notices by itself.
                    if self.procs[i].connected && self.procs[i].broken != Some(wire) {
                        let d = self.rng.range(100, 2 * MS);
                        self.q.after(d, Ev::Notice(i, wire));
                    }
                    self.procs[i].broken = Some(wire);
                    if wipe {
                        self.timeline.revoke(i, now, bound);
                    }
                }
                let d = self.rng.range(t / 5, t * 3);
                self.heal_at(now + d, Heal::Server(wipe));
            }
            Kind::KeyDelete => {
                if let (true, Some(l)) = (self.server_up, self.leader()) {
                    if let Some(key) = self.procs[l].m.key() {
                        self.log(|| format!("FAULT operator deletes p{l}'s key"));
                        self.timeline.revoke(l, now, bound);
                        let ds = self.etcd.delete_key(&key);
                        self.deliver_all(ds);
                    }
                }
            }
            Kind::PrefixDelete => {
                if self.server_up {
                    self.log(|| "FAULT operator deletes the election".into());
                    for i in 0..n {
                        self.timeline.revoke(i, now, bound);
                    }
                    let ds = self.etcd.delete_prefix(PREFIX);
                    self.deliver_all(ds);
                }
            }
            Kind::LeaseRevoke => {
                if let (true, Some(l)) = (self.server_up, self.leader()) {
                    if let Some(id) = self.procs[l].keeper.lease {
                        self.log(|| format!("FAULT operator revokes p{l}'s lease"));
                        self.timeline.revoke(l, now, bound);
                        let ds = self.etcd.revoke(id);
                        self.deliver_all(ds);
                    }
                }
            }
            Kind::Pause => {
                let pr = &self.procs[p];
                if pr.paused || pr.crashed {
                    return;
                }
                self.log(|| format!("FAULT pause p{p}"));
                self.procs[p].paused = true;
                self.timeline.pause(p, now);
                let d = self.rng.range(t / 10, t * 4);
                let life = self.procs[p].life;
                self.heal_at(now + d, Heal::Resume(p, life));
            }
            Kind::Crash => {
                let pr = &self.procs[p];
                if pr.crashed || pr.paused {
                    return;
                }
                self.log(|| format!("FAULT crash p{p}"));
                let pr = &mut self.procs[p];
                pr.crashed = true;
                pr.leading = false;
                self.timeline.crash(p, now);
                let d = self.rng.range(t / 10, t * 2);
                let life = self.procs[p].life;
                self.heal_at(now + d, Heal::Restart(p, life));
            }
            Kind::Auth => {
                if self.auth_denied {
                    return;
                }
                self.log(|| "FAULT etcd refuses our requests".into());
                self.auth_denied = true;
                self.etcd.set_denied(PREFIX, true);
                let d = self.rng.range(t / 5, t * 2);
                self.heal_at(now + d, Heal::Auth);
            }
            Kind::Compaction => {
                if self.server_up {
                    let rev = self.etcd.revision();
                    self.log(|| format!("FAULT etcd compacts at {rev}"));
                    self.etcd.compact(rev);
                }
            }
            Kind::Churn => {
                let pr = &self.procs[p];
                if pr.crashed || pr.paused || !pr.want || pr.closing || pr.m.exited() {
                    return;
                }
                let life = pr.life;
                if self.rng.chance(500) {
                    // Resigned on a session that lives on: the key is deleted, the lease
                    // kept; a new participant joins on it later.
                    self.log(|| format!("CHURN p{p} resigns"));
                    self.procs[p].want = false;
                    let delete_by = Some(
                        self.now_of(p) + Duration::from_micros(self.cfg.request_timeout.max(t)),
                    );
                    let stop = Command::Stop {
                        reason: "resigned",
                        delete_by,
                    };
                    self.push(p, Input::Command(stop));
                    let d = self.rng.range(10 * MS, t);
                    self.heal_at(now + d, Heal::Join(p, life));
                } else {
                    // Closed with its private session (the lease is revoked) and replaced
                    // by a new participant.
                    self.log(|| format!("CHURN p{p} closes"));
                    self.procs[p].want = false;
                    self.procs[p].closing = true;
                    let stop = Command::Stop {
                        reason: "closed",
                        delete_by: None,
                    };
                    self.push(p, Input::Command(stop));
                    let d = self.rng.range(t / 2, t * 2);
                    self.heal_at(now + d, Heal::Restart(p, life));
                }
            }
        }
    }

    fn heal(&mut self, h: Heal) {
        let now = self.q.now();
        match h {
            Heal::Partition(p) => {
                self.log(|| format!("HEAL partition p{p}"));
                self.procs[p].cut = false;
            }
            Heal::Server(wipe) => {
                self.log(|| format!("HEAL etcd back{}", if wipe { " EMPTY" } else { "" }));
                self.server_up = true;
                if wipe {
                    self.etcd.wipe();
                    if self.auth_denied {
                        self.etcd.set_denied(PREFIX, true);
                    }
                } else {
                    // A restarted etcd gives every lease a fresh TTL.
                    for l in self.etcd.lease_ids() {
                        let _ = self.etcd.renew(l, (now / MS) as i64);
                    }
                }
            }
            Heal::Resume(p, life) => {
                if self.procs[p].life != life || !self.procs[p].paused {
                    return;
                }
                self.log(|| format!("HEAL resume p{p}"));
                self.procs[p].paused = false;
                self.timeline.resume(p, now);
                // Its timers fire late, at once: the keeper's first (it demotes a leader
                // whose lease is in doubt), then what arrived meanwhile is read.
                self.keeper_check(p);
                let pr = &self.procs[p];
                if pr.connected && pr.broken == Some(pr.wire) {
                    self.drop_wire(p);
                }
                while let Some(d) = self.procs[p].held.pop_front() {
                    self.deliver(p, d);
                }
                if self.procs[p].connected && self.procs[p].keeper.lease.is_some() {
                    self.renew(p);
                }
                self.q.at(now, Ev::Run(p));
            }
            Heal::Restart(p, life) => {
                if self.procs[p].life != life {
                    return;
                }
                if !self.procs[p].crashed && !self.procs[p].m.exited() {
                    // A closing participant is replaced once its close is done.
                    self.heal_at(now + 100 * MS, Heal::Restart(p, life));
                    return;
                }
                self.log(|| format!("HEAL restart p{p} (new participant, new lease)"));
                if self.procs[p].paused {
                    self.timeline.resume(p, now);
                }
                // The old process's lease (unless revoked) lives on until it expires, and
                // its key with it: a ghost the others wait out.
                let fresh = self.new_proc(p, life + 1);
                self.procs[p] = fresh;
                self.procs[p].reconnecting = true;
                self.q.at(now, Ev::Reconnect(p));
                self.join(p);
            }
            Heal::Auth => {
                self.log(|| "HEAL etcd accepts our requests again".into());
                self.auth_denied = false;
                self.etcd.set_denied(PREFIX, false);
            }
            Heal::Join(p, life) => {
                let pr = &self.procs[p];
                if pr.life != life || pr.crashed || pr.want {
                    return;
                }
                if pr.host.busy_until > now {
                    // The executor is still carrying out the last effects (the stop's
                    // result among them): the handle's join waits for the task's end.
                    let at = pr.host.busy_until;
                    self.heal_at(at, Heal::Join(p, life));
                    return;
                }
                if pr.m.exited() {
                    // A resigned participant's run is over: a new one joins.
                    let m = self.machine(p);
                    let pr = &mut self.procs[p];
                    pr.m = m;
                    pr.run += 1;
                    pr.leading = false;
                    pr.host.inbox.clear();
                    pr.inflight.clear();
                } else if pr.m.activity() != Activity::Idle {
                    // Still stopping: try again shortly.
                    self.heal_at(now + 100 * MS, Heal::Join(p, life));
                    return;
                }
                self.log(|| format!("p{p} joins"));
                self.join(p);
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let end = self.q.now();
        // A participant resumed from a pause may lead on its stale grant until its keeper
        // runs: a few executor steps.
        let fence = (200 * MS, 0);
        let liveness = Some((self.quiet, self.liveness_bound()));
        let report = self.timeline.check(end, fence, liveness);
        let mut store = Vec::new();
        let range = Layout::new(PREFIX).range;
        let keys = self.etcd.keys(&range);
        let mut owned = 0;
        for (p, pr) in self.procs.iter().enumerate() {
            if pr.crashed || pr.m.exited() || !pr.want {
                continue;
            }
            let role = pr.m.role().clone();
            if !role.is_joined() {
                store.push(format!(
                    "p{p} is not in the election at the end (role {role:?}, {:?})",
                    pr.m.activity()
                ));
            }
            let mine = keys
                .iter()
                .filter(|(_, _, _, lease)| Some(*lease) == pr.keeper.lease)
                .count();
            owned += mine;
            if mine != 1 {
                store.push(format!(
                    "p{p} holds {mine} keys at the end (lease {:?})",
                    pr.keeper.lease.map(|l| format!("{l:x}"))
                ));
            }
        }
        if keys.len() != owned {
            let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
            store.push(format!(
                "{} keys in the election at the end, {owned} of live participants: {names:?}",
                keys.len()
            ));
        }
        Outcome {
            seed: self.seed,
            report,
            store,
            faults: self.faults,
            trace: std::mem::take(&mut self.trace),
            replay: format!(
                "SUCCESSION_SIM_SEED={} cargo test -p succession-etcd --features sim --test sim_election -- --nocapture",
                self.seed
            ),
        }
    }
}

fn short_op(op: &Op) -> String {
    let tail = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    match op {
        Op::EnsureEpoch { at_least, .. } => format!("ensure epoch (>= {at_least})"),
        Op::Campaign { key, .. } => format!("campaign {}", tail(key)),
        Op::ReadQueue { below, .. } => format!("read queue below {below}"),
        Op::DeleteKey { key, .. } => format!("delete {}", tail(key)),
    }
}

fn short_result(r: &Result<Answer, EtcdErr>) -> String {
    match r {
        Ok(Answer::Queue {
            rev, ahead, more, ..
        }) => format!("queue at {rev}: ahead {ahead:?} more {more}"),
        Ok(a) => format!("{a:?}"),
        Err(e) => format!("ERR {e}"),
    }
}

fn short_input(i: &Input) -> String {
    match i {
        Input::Answer(id, r) => format!("#{id} {}", short_result(r)),
        other => format!("{other:?}"),
    }
}
