//! The simulated world: latch participants (the production [`LatchMachine`]) in processes,
//! each with one ZooKeeper session on one [`SimZk`] server, a network with delays, and
//! seeded faults; the [`Timeline`] checker judges what they published.

use std::time::Duration;

use succession_core::sim::{fmt_vt, net_delay, next_wire, Host, Queue, Rng, Timeline, Vt};
pub use succession_core::sim::{Outcome, Summary};

use super::store::{Delivery, SessionId, SimZk};
use crate::machine::ops::{Answer, Op, ReqId, WatchEvent, ZkErr};
use crate::machine::{Bugs, Command, Effect, Input, LatchMachine, SessionInput};

const MS: Vt = 1_000;
const SEC: Vt = 1_000_000;
/// The latch path every participant joins.
pub const PATH: &str = "/sim/latch";

/// How the session treats a connection in doubt (see [`crate::ConnectionPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Leaders step down as soon as the client notices the connection is in doubt.
    Standard,
    /// Leaders keep leading until a quarter of the session timeout after the last contact.
    Session,
}

/// Which faults a schedule may draw (each on or off).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Cut one process from the server for a while.
    pub partitions: bool,
    /// Stop the server and restart it with its data.
    pub outages: bool,
    /// Stop the server and restart it empty (sessions, nodes and zxids forgotten).
    pub wipes: bool,
    /// An operator deletes the latch path with everything below it.
    pub path_deletes: bool,
    /// An operator deletes the leader's node.
    pub node_deletes: bool,
    /// Stop a process (no thread runs, no ping) for up to 4 x the session timeout.
    pub pauses: bool,
    /// Kill a process; it restarts later with a new session.
    pub crashes: bool,
    /// The server refuses our writes for a while (an ACL or credential change): the
    /// participant leaves with a permanent error and is joined again afterwards.
    pub auth_refused: bool,
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
            path_deletes: true,
            node_deletes: true,
            pauses: true,
            crashes: true,
            auth_refused: true,
            churn: true,
        }
    }

    /// No fault.
    pub fn none() -> Faults {
        Faults {
            partitions: false,
            outages: false,
            wipes: false,
            path_deletes: false,
            node_deletes: false,
            pauses: false,
            crashes: false,
            auth_refused: false,
            churn: false,
        }
    }
}

/// One simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Participant processes.
    pub participants: usize,
    /// The session timeout.
    pub session_timeout: Vt,
    /// The connection policy.
    pub policy: Policy,
    /// Faults drawn.
    pub faults: Faults,
    /// How long faults are drawn for (then everything heals and liveness is judged).
    pub fault_time: Vt,
    /// Mean time between faults.
    pub fault_gap: Vt,
    /// Bugs planted in every machine.
    pub bugs: Bugs,
    /// Keep a readable trace.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            participants: 3,
            session_timeout: 4 * SEC,
            policy: Policy::Standard,
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
    /// A request reaches the server over connection `wire` of `p`.
    Arrive(usize, u64, ReqId, Op),
    /// A message from the server reaches `p` over connection `wire`.
    Deliver(usize, u64, Msg),
    /// An effect of `p` (incarnation) is carried out.
    Exec(usize, u64, Effect),
    /// `p`'s client pings.
    Ping(usize, u64),
    /// `p`'s client notices that connection `wire` is dead.
    Notice(usize, u64),
    /// The grace of the Session policy for the doubt that began with connection `wire` ends.
    Grace(usize, u64),
    /// `p`'s client tries to reconnect.
    Reconnect(usize),
    /// `p`'s machine timer (incarnation, token).
    Timer(usize, u64, u64),
    /// The server checks session expiry and reaps containers.
    Tick,
    /// Draw the next fault.
    Fault,
    /// End a fault.
    Heal(Heal),
}

#[derive(Debug)]
enum Heal {
    Partition(usize),
    Server(bool),
    Resume(usize, u64),
    Restart(usize, u64),
    Auth,
    Join(usize),
}

#[derive(Debug, Clone)]
enum Msg {
    Answer(ReqId, Result<Answer, ZkErr>),
    Watch(ReqId, WatchEvent),
}

/// What the process's session currently says (what `publish_leader` checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Connected,
    Doubt,
    Lost,
}

struct Proc {
    m: LatchMachine,
    /// Incremented on each restart: effects and timers of an earlier life are dropped.
    life: u64,
    crashed: bool,
    paused: bool,
    /// Its clock, inbox and executor pace.
    host: Host<Input>,
    session: Option<SessionId>,
    generation: u64,
    epoch: u64,
    view: View,
    /// The client believes it is connected on `wire`.
    connected: bool,
    /// The current connection; messages of another are lost.
    wire: u64,
    /// Cut from the server (no connection can be made).
    cut: bool,
    /// A connection that died (everything on it is lost until the client notices).
    broken: Option<u64>,
    /// Whether the server said the last session was expired (its nodes are gone).
    last_gone: bool,
    last_contact: Vt,
    /// Requests sent on the current connection and not answered.
    inflight: Vec<ReqId>,
    /// Watch events held for a disconnected session (delivered at the reconnect).
    held: Vec<(ReqId, WatchEvent)>,
    out_clock: Vt,
    in_clock: Vt,
    /// Whether it wants to take part (re-joined after a fatal or churn).
    want: bool,
    leading: bool,
    reconnecting: bool,
}

struct World<'c> {
    cfg: &'c SimConfig,
    rng: Rng,
    q: Queue<Ev>,
    zk: SimZk,
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
            zk: SimZk::new(),
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
            let proc = w.new_proc(p);
            w.procs.push(proc);
            w.q.at(w.rng.range(0, 50 * MS), Ev::Reconnect(p));
            w.q.at(w.rng.range(0, 100 * MS), Ev::Heal(Heal::Join(p)));
        }
        w.q.at(50 * MS, Ev::Tick);
        if cfg.fault_time > 0 {
            let first = w.rng.range(SEC, SEC + cfg.fault_gap);
            w.q.at(first, Ev::Fault);
        }
        w
    }

    fn new_proc(&mut self, p: usize) -> Proc {
        self.next_seed = self.next_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut m = LatchMachine::new(PATH, &format!("p{p}"), self.next_seed);
        m.bugs = self.cfg.bugs;
        let host = Host::new(&mut self.rng);
        Proc {
            m,
            life: 0,
            crashed: false,
            paused: false,
            host,
            session: None,
            generation: 0,
            epoch: 0,
            view: View::Lost,
            connected: false,
            wire: next_wire(),
            cut: false,
            broken: None,
            last_gone: false,
            last_contact: 0,
            inflight: Vec::new(),
            held: Vec::new(),
            out_clock: 0,
            in_clock: 0,
            want: true,
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

    /// How long a leader may take to learn that its node was deleted from outside: one
    /// message, or (cut off) noticing the dead connection first: the client's silence
    /// detection (2/5 T) after a ping interval (T/3), with drift and executor delays.
    fn revoke_bound(&self) -> Vt {
        let t = self.timeout();
        (t * 2 / 5 + t / 3) * 105 / 100 + 100 * MS
    }

    /// Once faults stop, a leader within: a ghost node of a crashed process goes when its
    /// session expires (T), a client gives its session up at 1.4 x T of silence, a repair
    /// backs off at most 2 s; 2 x T + 5 s covers them with room.
    fn liveness_bound(&self) -> Vt {
        2 * self.timeout() + 5 * SEC
    }

    fn timeout(&self) -> Vt {
        self.cfg.session_timeout
    }

    /// A duration measured by `p`'s clock, in virtual time.
    fn local(&self, p: usize, d: Vt) -> Vt {
        self.procs[p].host.local(d)
    }

    fn net_delay(&mut self) -> Vt {
        net_delay(&mut self.rng)
    }

    fn run(&mut self) {
        // The last heal comes at most 4 x T after the faults stop (a pause); then liveness
        // is judged over its bound, with a second to spare.
        let t = self.timeout();
        let end = self.fault_end + 4 * t + self.liveness_bound() + SEC;
        while let Some(ev) = self.q.pop_until(end) {
            self.event(ev);
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Run(p) => self.run_inbox(p),
            Ev::Arrive(p, wire, id, op) => self.arrive(p, wire, id, op),
            Ev::Deliver(p, wire, msg) => {
                let pr = &mut self.procs[p];
                if pr.wire != wire || pr.crashed || !pr.connected || pr.broken == Some(wire) {
                    return;
                }
                pr.last_contact = self.q.now();
                let input = match msg {
                    Msg::Answer(id, r) => {
                        pr.inflight.retain(|&i| i != id);
                        Input::Answer(id, r)
                    }
                    Msg::Watch(id, ev) => Input::Watch(id, ev),
                };
                self.push(p, input);
            }
            Ev::Exec(p, life, fx) => {
                if self.procs[p].life == life && !self.procs[p].crashed {
                    self.exec(p, fx);
                }
            }
            Ev::Ping(p, wire) => {
                let now = self.q.now();
                let pr = &self.procs[p];
                if pr.wire != wire || !pr.connected || pr.crashed {
                    return;
                }
                if !pr.paused && pr.broken != Some(wire) && self.server_up {
                    if let Some(s) = pr.session {
                        if self.zk.knows(s) {
                            self.zk.touch(s, (now / MS) as i64);
                            self.procs[p].last_contact = now;
                        } else {
                            // The server ended the session: it closes the connection.
                            self.drop_wire(p, true);
                            return;
                        }
                    }
                }
                let iv = self.local(p, self.timeout() / 3);
                self.q.after(iv, Ev::Ping(p, wire));
                // Silence longer than the client's detection: it notices.
                let silent = now.saturating_sub(self.procs[p].last_contact);
                if silent >= self.local(p, self.timeout() * 2 / 5) && !self.procs[p].paused {
                    self.q.after(0, Ev::Notice(p, wire));
                }
            }
            Ev::Notice(p, wire) => {
                if self.procs[p].wire == wire && self.procs[p].connected && !self.procs[p].crashed {
                    if self.procs[p].paused {
                        self.q.after(MS, Ev::Notice(p, wire));
                    } else {
                        self.drop_wire(p, false);
                    }
                }
            }
            Ev::Grace(p, wire) => {
                let pr = &self.procs[p];
                if pr.wire == wire && !pr.connected && pr.view == View::Doubt && !pr.crashed {
                    self.push(p, Input::Session(SessionInput::Doubt { leaders_too: true }));
                }
            }
            Ev::Reconnect(p) => self.reconnect(p),
            Ev::Timer(p, life, token) => {
                let pr = &self.procs[p];
                if pr.life == life && pr.host.timer_token == token && !pr.crashed {
                    self.push(p, Input::Timer);
                }
            }
            Ev::Tick => {
                let now = self.q.now();
                if self.server_up {
                    let (gone, ds) = self.zk.expire_due((now / MS) as i64);
                    for s in gone {
                        self.log(|| format!("server: session {s:x} expired"));
                    }
                    self.deliver_all(ds);
                    let ds = self.zk.reap_containers();
                    self.deliver_all(ds);
                }
                self.q.after(50 * MS, Ev::Tick);
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
        let life = pr.life;
        let out = pr.host.step(&mut pr.m, now, input, &mut self.rng);
        for (at, e) in out.effects {
            self.q.at(at, Ev::Exec(p, life, e));
        }
        if let Some((at, token)) = out.timer {
            self.q.at(at, Ev::Timer(p, life, token));
        }
        if let Some(at) = out.again {
            self.q.at(at, Ev::Run(p));
        }
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
                generation,
                term,
                reason,
            } => {
                let pr = &self.procs[p];
                if pr.generation == generation && pr.view == View::Connected {
                    self.log(|| format!("p{p} publishes LEADER {term} ({reason})"));
                    self.procs[p].leading = true;
                    self.timeline.publish(p, now, Some(term));
                } else {
                    self.log(|| format!("p{p} leader refused (session changed)"));
                    self.procs[p].host.inbox.push_front(Input::LeaderRefused);
                    let at = self.procs[p].host.busy_until.max(now);
                    self.q.at(at, Ev::Run(p));
                }
            }
            Effect::Request { id, op } => self.send(p, id, op),
            Effect::Pace => {
                // A slot is free at once (one election per process).
                self.procs[p].host.inbox.push_front(Input::Paced);
                let at = self.procs[p].host.busy_until.max(now);
                self.q.at(at, Ev::Run(p));
            }
            Effect::Fatal(kind, msg) => {
                self.log(|| format!("p{p} fatal {kind:?}: {msg}"));
                // Joined again once the refusal is lifted.
                self.procs[p].want = false;
            }
            Effect::Done(cmd, r) => self.log(|| format!("p{p} {cmd:?} done: {r:?}")),
            Effect::Repair(cause) => self.log(|| format!("p{p} repair: {cause}")),
            Effect::Handover(_) => {}
            Effect::Exit => {
                // Its private session is closed with it (its nodes go); a session that
                // cannot be reached expires instead.
                self.log(|| format!("p{p} exited; closing its session"));
                let pr = &self.procs[p];
                if let (true, Some(s)) = (
                    pr.connected && pr.broken != Some(pr.wire) && self.server_up,
                    pr.session,
                ) {
                    let ds = self.zk.close_session(s);
                    self.deliver_all(ds);
                }
                let pr = &mut self.procs[p];
                pr.connected = false;
                pr.wire = next_wire();
            }
        }
    }

    fn send(&mut self, p: usize, id: ReqId, op: Op) {
        let now = self.q.now();
        self.log(|| format!("p{p} -> #{id} {}", short_op(&op)));
        let pr = &self.procs[p];
        if pr.m.generation() != pr.generation {
            // Sent on the client of a session that was replaced meanwhile: it is dead.
            self.push(p, Input::Answer(id, Err(ZkErr::SessionExpired)));
            return;
        }
        if !pr.connected {
            // A disconnected client fails the request at once.
            self.push(p, Input::Answer(id, Err(ZkErr::ConnectionLoss)));
            return;
        }
        let dead = pr.broken == Some(pr.wire) || !self.server_up;
        self.procs[p].inflight.push(id);
        if dead {
            // Sent into a dead link: failed when the client notices.
            return;
        }
        let at = (now + self.net_delay()).max(self.procs[p].out_clock);
        self.procs[p].out_clock = at;
        let wire = self.procs[p].wire;
        self.q.at(at, Ev::Arrive(p, wire, id, op));
    }

    fn arrive(&mut self, p: usize, wire: u64, id: ReqId, op: Op) {
        let now = self.q.now();
        if self.procs[p].wire != wire || self.procs[p].broken == Some(wire) || !self.server_up {
            return;
        }
        let Some(s) = self.procs[p].session else {
            return;
        };
        let (r, ds) = self.zk.apply((now / MS) as i64, s, id, &op);
        if matches!(
            op,
            Op::CreateSeq { .. } | Op::Mkdir(_) | Op::Claim { .. } | Op::Delete(_)
        ) {
            let line = format!("server: #{id} of p{p}: {}", short_result(&r));
            self.log(|| line);
        }
        // Watch events caused by this request go out before its answer.
        self.deliver_all(ds);
        self.send_to(p, wire, Msg::Answer(id, r));
    }

    fn send_to(&mut self, p: usize, wire: u64, msg: Msg) {
        let at = (self.q.now() + self.net_delay()).max(self.procs[p].in_clock);
        self.procs[p].in_clock = at;
        self.q.at(at, Ev::Deliver(p, wire, msg));
    }

    fn deliver_all(&mut self, ds: Vec<Delivery>) {
        for d in ds {
            let Some(p) = self
                .procs
                .iter()
                .position(|pr| pr.session == Some(d.session))
            else {
                continue;
            };
            let pr = &self.procs[p];
            if pr.connected && pr.broken != Some(pr.wire) && self.server_up {
                let wire = pr.wire;
                self.send_to(p, wire, Msg::Watch(d.id, d.event));
            } else {
                // Re-sent by the server when the client reconnects (setWatches).
                self.procs[p].held.push((d.id, d.event));
            }
        }
    }

    /// `p`'s client finds its connection dead (`closed`: the server closed it).
    fn drop_wire(&mut self, p: usize, closed: bool) {
        let now = self.q.now();
        let pr = &mut self.procs[p];
        pr.connected = false;
        pr.wire = next_wire();
        let failed = std::mem::take(&mut pr.inflight);
        let since = pr.last_contact;
        self.log(|| {
            format!(
                "p{p} client: connection lost{}",
                if closed { " (closed by server)" } else { "" }
            )
        });
        for id in failed {
            self.push(p, Input::Answer(id, Err(ZkErr::ConnectionLoss)));
        }
        let t = self.timeout();
        let leaders_too = match self.cfg.policy {
            Policy::Standard => true,
            Policy::Session => now.saturating_sub(since) >= self.local(p, t / 4),
        };
        self.procs[p].view = View::Doubt;
        self.push(p, Input::Session(SessionInput::Doubt { leaders_too }));
        if !leaders_too {
            let at = since + self.local(p, t / 4);
            let wire = self.procs[p].wire;
            self.q.at(at, Ev::Grace(p, wire));
        }
        if !self.procs[p].reconnecting {
            self.procs[p].reconnecting = true;
            let d = self.rng.range(10 * MS, 200 * MS);
            self.q.after(d, Ev::Reconnect(p));
        }
    }

    fn reconnect(&mut self, p: usize) {
        let now = self.q.now();
        let t = self.timeout();
        let pr = &self.procs[p];
        if pr.crashed || pr.connected || pr.m.exited() {
            self.procs[p].reconnecting = false;
            return;
        }
        if pr.paused || pr.cut || !self.server_up {
            // The client gives up on the session at its own deadline (1.4 x T after its
            // last receipt) and the session task starts a new one.
            if pr.session.is_some()
                && now.saturating_sub(pr.last_contact) > self.local(p, t * 14 / 10)
                && pr.view != View::Lost
            {
                self.log(|| format!("p{p} client: session given up"));
                self.procs[p].session = None;
                self.procs[p].view = View::Lost;
                self.procs[p].held.clear();
                self.push(p, Input::Session(SessionInput::Lost));
                self.procs[p].last_gone = false;
            }
            let d = self.rng.range(100 * MS, 300 * MS);
            self.q.after(d, Ev::Reconnect(p));
            return;
        }
        self.procs[p].reconnecting = false;
        let now_ms = (now / MS) as i64;
        let resumed = match self.procs[p].session {
            Some(s) if self.zk.knows(s) => {
                self.zk.touch(s, now_ms);
                true
            }
            Some(_) => {
                self.log(|| format!("p{p} client: session expired (server says)"));
                self.procs[p].held.clear();
                self.push(p, Input::Session(SessionInput::Lost));
                self.procs[p].last_gone = true;
                false
            }
            None => false,
        };
        let pr = &mut self.procs[p];
        pr.connected = true;
        pr.wire = next_wire();
        pr.last_contact = now;
        pr.view = View::Connected;
        let wire = pr.wire;
        if !resumed {
            let s = self.zk.open_session(now_ms, (t / MS) as i64);
            let pr = &mut self.procs[p];
            let prev_gone = pr.last_gone || pr.generation == 0;
            pr.last_gone = false;
            pr.session = Some(s);
            pr.generation += 1;
            pr.epoch += 1;
            let input = SessionInput::Connected {
                generation: pr.generation,
                epoch: pr.epoch,
                session_id: s,
                timeout: Duration::from_micros(t),
                prev_gone,
            };
            self.log(|| format!("p{p} client: new session {s:x}"));
            self.push(p, Input::Session(input));
        } else {
            let pr = &mut self.procs[p];
            let input = SessionInput::Connected {
                generation: pr.generation,
                epoch: pr.epoch,
                session_id: pr.session.unwrap_or(0),
                timeout: Duration::from_micros(t),
                prev_gone: false,
            };
            let held = std::mem::take(&mut pr.held);
            self.log(|| format!("p{p} client: reconnected"));
            self.push(p, Input::Session(input));
            for (id, ev) in held {
                self.send_to(p, wire, Msg::Watch(id, ev));
            }
        }
        let iv = self.local(p, t / 3);
        self.q.after(iv, Ev::Ping(p, wire));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Partition,
    Outage,
    Wipe,
    PathDelete,
    NodeDelete,
    Pause,
    Crash,
    Auth,
    Churn,
}

impl World<'_> {
    fn heal_at(&mut self, at: Vt, h: Heal) {
        self.quiet = self.quiet.max(at);
        self.q.at(at, Ev::Heal(h));
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
            (f.path_deletes, Kind::PathDelete),
            (f.node_deletes, Kind::NodeDelete),
            (f.pauses, Kind::Pause),
            (f.crashes, Kind::Crash),
            (f.auth_refused, Kind::Auth),
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
        let t = self.timeout();
        let n = self.procs.len();
        let p = self.rng.below(n);
        self.faults += 1;
        self.quiet = self.quiet.max(now);
        match kind {
            Kind::Partition => {
                if self.procs[p].cut {
                    return;
                }
                self.log(|| format!("FAULT partition p{p}"));
                let pr = &mut self.procs[p];
                pr.cut = true;
                pr.broken = Some(pr.wire);
                let d = self.rng.range(t / 10, t * 5 / 2);
                self.heal_at(now + d, Heal::Partition(p));
            }
            Kind::Outage | Kind::Wipe => {
                if !self.server_up {
                    return;
                }
                let wipe = kind == Kind::Wipe;
                self.log(|| format!("FAULT server {}", if wipe { "wiped" } else { "outage" }));
                self.server_up = false;
                let bound = self.revoke_bound();
                for i in 0..n {
                    let wire = self.procs[i].wire;
                    // The server's process ends: every live connection is reset, and the
                    // client notices at once; one already cut off notices by its silence.
                    if self.procs[i].connected && self.procs[i].broken != Some(wire) {
                        let d = self.rng.range(100, 2 * MS);
                        self.q.after(d, Ev::Notice(i, wire));
                    }
                    self.procs[i].broken = Some(wire);
                    // A wipe takes every place from outside (a claim under way too), like
                    // an operator's delete.
                    if wipe {
                        self.timeline.revoke(i, now, bound);
                    }
                }
                let d = self.rng.range(t / 5, t * 3);
                self.heal_at(now + d, Heal::Server(wipe));
            }
            Kind::PathDelete => {
                if self.server_up {
                    self.log(|| "FAULT operator deletes the latch path".into());
                    // Every place is taken, a claim under way too.
                    let b = self.revoke_bound();
                    for i in 0..n {
                        self.timeline.revoke(i, now, b);
                    }
                    let ds = self.zk.delete_tree(PATH);
                    self.deliver_all(ds);
                }
            }
            Kind::NodeDelete => {
                let leader = (0..n).find(|&i| self.procs[i].leading);
                if let (true, Some(l)) = (self.server_up, leader) {
                    if let Some(node) = self.procs[l].m.node().map(str::to_owned) {
                        self.log(|| format!("FAULT operator deletes p{l}'s node"));
                        let b = self.revoke_bound();
                        self.timeline.revoke(l, now, b);
                        let ds = self.zk.delete_node(&node);
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
                self.log(|| "FAULT the server refuses our writes".into());
                self.auth_denied = true;
                self.zk.set_denied("/sim", true);
                let d = self.rng.range(t / 5, t * 2);
                self.heal_at(now + d, Heal::Auth);
            }
            Kind::Churn => {
                let pr = &self.procs[p];
                if pr.crashed || pr.paused || !pr.want {
                    return;
                }
                if self.rng.chance(500) {
                    self.log(|| format!("CHURN p{p} resigns"));
                    self.procs[p].want = false;
                    self.push(p, Input::Command(Command::Resign));
                    let d = self.rng.range(10 * MS, t);
                    self.heal_at(now + d, Heal::Join(p));
                } else {
                    // Closed (a close during a repair, too) and replaced by a new participant.
                    self.log(|| format!("CHURN p{p} closes"));
                    self.procs[p].want = false;
                    self.push(p, Input::Command(Command::Close));
                    let d = self.rng.range(t / 2, t * 2);
                    let life = self.procs[p].life;
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
                self.log(|| format!("HEAL server back{}", if wipe { " EMPTY" } else { "" }));
                self.server_up = true;
                if wipe {
                    self.zk.wipe();
                    if self.auth_denied {
                        self.zk.set_denied("/sim", true);
                    }
                } else {
                    // A restarted server gives every session a fresh timeout.
                    for s in self.zk.sessions() {
                        self.zk.touch(s, (now / MS) as i64);
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
                let pr = &self.procs[p];
                let silent = now.saturating_sub(pr.last_contact);
                if pr.connected && pr.session.is_some_and(|s| !self.zk.knows(s)) && self.server_up {
                    // Expired while paused: the server closed the connection.
                    self.drop_wire(p, true);
                } else if pr.connected && silent >= self.local(p, self.timeout() * 2 / 5) {
                    // The client's timers fire late, at once: its silence detection too.
                    self.drop_wire(p, false);
                }
                self.q.at(now, Ev::Run(p));
            }
            Heal::Restart(p, life) => {
                if self.procs[p].life != life {
                    // Meant for a process that was replaced meanwhile.
                    return;
                }
                if !self.procs[p].crashed && !self.procs[p].m.exited() {
                    // A closing participant is replaced once its close is done.
                    if !self.procs[p].want {
                        self.heal_at(now + 100 * MS, Heal::Restart(p, life));
                    }
                    return;
                }
                self.log(|| format!("HEAL restart p{p} (new participant, new session)"));
                if self.procs[p].paused {
                    self.timeline.resume(p, now);
                }
                // The old process's session (unless it was closed) lives on until it
                // expires, and its node with it: a ghost the others wait out.
                let mut fresh = self.new_proc(p);
                fresh.life = life + 1;
                self.procs[p] = fresh;
                self.q.at(now, Ev::Reconnect(p));
                self.procs[p].reconnecting = true;
                self.push(p, Input::Command(Command::Join));
            }
            Heal::Auth => {
                self.log(|| "HEAL the server accepts our writes again".into());
                self.auth_denied = false;
                self.zk.set_denied("/sim", false);
                for p in 0..self.procs.len() {
                    if !self.procs[p].want && !self.procs[p].crashed && !self.procs[p].m.exited() {
                        self.procs[p].want = true;
                        self.push(p, Input::Command(Command::Join));
                    }
                }
            }
            Heal::Join(p) => {
                if !self.procs[p].crashed && !self.procs[p].m.exited() {
                    self.procs[p].want = true;
                    self.push(p, Input::Command(Command::Join));
                }
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let end = self.q.now();
        // A participant resumed from a pause may lead on its stale grant until it handles
        // what happened meanwhile: a few executor steps.
        let fence = (200 * MS, 0);
        let liveness = Some((self.quiet, self.liveness_bound()));
        let report = self.timeline.check(end, fence, liveness);
        let mut store = Vec::new();
        let kids = self.zk.children(PATH);
        let mut owned = 0;
        for (p, pr) in self.procs.iter().enumerate() {
            if pr.crashed || pr.m.exited() || !pr.want {
                continue;
            }
            let role = pr.m.role().clone();
            if !role.is_joined() {
                store.push(format!(
                    "p{p} is not in the election at the end (role {role:?})"
                ));
            }
            let mine = kids
                .iter()
                .filter(|k| self.zk.owner(&format!("{PATH}/{k}")) == pr.session)
                .count();
            owned += mine;
            if mine != 1 {
                store.push(format!(
                    "p{p} holds {mine} nodes at the end (session {:?})",
                    pr.session
                ));
            }
        }
        if kids.len() != owned {
            store.push(format!(
                "{} nodes in the latch at the end, {owned} of live participants: {kids:?}",
                kids.len()
            ));
        }
        Outcome {
            seed: self.seed,
            report,
            store,
            faults: self.faults,
            trace: std::mem::take(&mut self.trace),
            replay: format!(
                "SUCCESSION_SIM_SEED={} cargo test -p succession-zk --features sim --test sim_latch -- --nocapture",
                self.seed
            ),
        }
    }
}

fn short_op(op: &Op) -> String {
    let tail = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    match op {
        Op::WatchNode(p) => format!("exists+watch {}", tail(p)),
        Op::Stat(p) => format!("exists {}", tail(p)),
        Op::Children(p) => format!("children {p}"),
        Op::CreateSeq { base, .. } => format!("create {}", tail(base)),
        Op::Mkdir(p) => format!("mkdir {p}"),
        Op::WatchData(p) => format!("get+watch {}", tail(p)),
        Op::GetData(p) => format!("get {}", tail(p)),
        Op::Claim { node, ahead, .. } => format!("claim {} ahead {ahead:?}", tail(node)),
        Op::Delete(p) => format!("delete {}", tail(p)),
    }
}

fn short_result(r: &Result<Answer, ZkErr>) -> String {
    match r {
        Ok(Answer::Children(c)) => format!("{} children", c.len()),
        Ok(Answer::Created { seq, .. }) => format!("created {seq}"),
        Ok(Answer::Claimed(st)) => format!("claimed zxid {}", st.mzxid),
        Ok(a) => format!("{a:?}"),
        Err(e) => format!("ERR {e}"),
    }
}

fn short_input(i: &Input) -> String {
    match i {
        Input::Answer(id, r) => format!("#{id} {}", short_result(r)),
        Input::Watch(id, ev) => format!("watch #{id} {ev:?}"),
        other => format!("{other:?}"),
    }
}
