//! A deterministic, in-memory ZooKeeper server for the simulation.
//!
//! [`SimZk`] interprets the latch machine's [`Op`]s with the ZooKeeper semantics the latch
//! relies on: zxids, sequence numbers from the parent's cversion, ephemeral and container
//! nodes, one-shot exists and data watches, the all-or-nothing claim multi, session expiry.
//! It is pure data: no clock, no threads, no randomness. Time comes in as `now_ms`; watch
//! events come out as [`Delivery`] lists for the caller to route to the sessions.
//!
//! Every committed transaction takes the next zxid: each successful write (a multi is one),
//! each session creation and each session close or expiry (`createSession` and
//! `closeSession` are transactions in ZooKeeper too), each node an operator or the container
//! reaper deletes. A failed write takes none (ZooKeeper logs an error transaction with a
//! zxid; nothing here can observe it).
//!
//! The deliveries of one call are in transaction order (a claim's creates and deletes, then
//! its setData; expired sessions by id, their nodes by path) and, for one event, in the
//! order the watches were registered.

use std::collections::{BTreeMap, BTreeSet};

use crate::machine::ops::{Answer, NodeStat, Op, ReqId, WatchEvent, ZkErr};

/// A session id: positive, never reused by one [`SimZk`], not even after [`SimZk::wipe`].
pub type SessionId = i64;

/// A watch event for one session: the request id that registered the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The session whose connection receives the event.
    pub session: SessionId,
    /// The request that registered the watch.
    pub id: ReqId,
    /// What happened to the node.
    pub event: WatchEvent,
}

/// One znode.
#[derive(Debug, Default, Clone)]
struct Node {
    data: Vec<u8>,
    /// The owning session of an ephemeral node, 0 for a persistent one.
    owner: i64,
    ctime: i64,
    /// The zxid of the creation or of the last setData.
    mzxid: i64,
    /// Creations plus deletions of direct children so far.
    cversion: i64,
    /// A container node (reaped once it had a child and has none left).
    container: bool,
}

impl Node {
    fn stat(&self) -> NodeStat {
        let (ephemeral_owner, ctime, mzxid) = (self.owner, self.ctime, self.mzxid);
        NodeStat {
            ephemeral_owner,
            ctime,
            mzxid,
        }
    }
}

/// A pending one-shot watch. Exists and data watches share one list (as in ZooKeeper's
/// `dataWatches`): both fire on a data change and a deletion, and only an exists watch can
/// be pending on a missing node (a data watch is registered on an existing node only and
/// fires when it goes), so "every watch on the path fires" is right for every event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    session: SessionId,
    path: String,
    id: ReqId,
}

/// The simulated ZooKeeper server: the node tree, the sessions, the pending watches.
#[derive(Debug, Default, Clone)]
pub struct SimZk {
    /// `/`, kept apart so that `Default` is a valid empty server.
    root: Node,
    /// Every other node by full path (an ancestor sorts before its descendants).
    nodes: BTreeMap<String, Node>,
    /// Live sessions: (last contact, timeout), in ms.
    sessions: BTreeMap<SessionId, (i64, i64)>,
    /// Pending watches, in registration order.
    watches: Vec<Watch>,
    /// The last committed transaction's zxid.
    zxid: i64,
    /// The last session id handed out (survives a wipe).
    last_session: SessionId,
    /// Path prefixes whose writes fail with NoAuth (the simulation's setting: survives a wipe).
    denied: BTreeSet<String>,
    /// The deliveries of the call under way (empty between calls).
    out: Vec<Delivery>,
}

fn other(m: &str) -> ZkErr {
    ZkErr::Other(m.to_owned())
}

/// Absolute, no trailing `/` (but `/` itself), no empty, `.` or `..` component, no NUL.
fn check_path(p: &str) -> Result<(), ZkErr> {
    let ok = p == "/"
        || (p.starts_with('/')
            && !p.contains('\0')
            && p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."));
    if ok {
        Ok(())
    } else {
        Err(other("bad path"))
    }
}

/// The parent of a valid path (`/` for `/`).
fn parent_of(p: &str) -> &str {
    match p.rfind('/') {
        Some(i) if i > 0 => &p[..i],
        _ => "/",
    }
}

/// A failed multi at sub-op `index`.
fn multi(index: usize, error: ZkErr) -> ZkErr {
    ZkErr::Multi {
        index,
        error: Box::new(error),
    }
}

impl SimZk {
    /// A fresh server: only `/` exists; no session, no watch, zxid 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a session (one transaction) whose last contact is `now_ms`.
    pub fn open_session(&mut self, now_ms: i64, timeout_ms: i64) -> SessionId {
        self.last_session += 1;
        self.sessions
            .insert(self.last_session, (now_ms, timeout_ms));
        self.zxid += 1;
        self.last_session
    }

    /// Whether session `s` is alive.
    pub fn knows(&self, s: SessionId) -> bool {
        self.sessions.contains_key(&s)
    }

    /// Any contact (request, ping) from `s` at `now_ms` renews its expiry (no-op if unknown).
    pub fn touch(&mut self, s: SessionId, now_ms: i64) {
        if let Some((last, _)) = self.sessions.get_mut(&s) {
            *last = now_ms.max(*last);
        }
    }

    /// Expires, by id, every session whose last contact + timeout <= `now_ms`: removes it and
    /// its watches, deletes its ephemeral nodes (firing watches). Returns the expired ids and
    /// the deliveries.
    pub fn expire_due(&mut self, now_ms: i64) -> (Vec<SessionId>, Vec<Delivery>) {
        let due: Vec<SessionId> = (self.sessions.iter())
            .filter(|(_, &(last, timeout))| last.saturating_add(timeout) <= now_ms)
            .map(|(&s, _)| s)
            .collect();
        self.end_sessions(&due);
        (due, self.take_out())
    }

    /// Closes session `s` now, with the same effect as its expiry (nothing if unknown).
    pub fn close_session(&mut self, s: SessionId) -> Vec<Delivery> {
        if !self.knows(s) {
            return Vec::new();
        }
        self.end_sessions(&[s]);
        self.take_out()
    }

    /// Removes the sessions and all their watches first (a dead session hears nothing),
    /// then, one transaction per session, deletes their ephemerals.
    fn end_sessions(&mut self, ended: &[SessionId]) {
        for s in ended {
            self.sessions.remove(s);
        }
        self.watches.retain(|w| !ended.contains(&w.session));
        for &s in ended {
            self.zxid += 1;
            let mine: Vec<String> = (self.nodes.iter())
                .filter(|(_, n)| n.owner == s)
                .map(|(p, _)| p.clone())
                .collect();
            for p in mine {
                self.remove(&p);
            }
        }
    }

    fn take_out(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.out)
    }

    /// Session `s` sends request `id` at `now_ms`: `Err(SessionExpired)` if `s` is unknown,
    /// else `s` is touched and `op` applied. Returns the answer and the watch events the op
    /// fired (for any session, `s` included).
    pub fn apply(
        &mut self,
        now_ms: i64,
        s: SessionId,
        id: ReqId,
        op: &Op,
    ) -> (Result<Answer, ZkErr>, Vec<Delivery>) {
        if !self.knows(s) {
            return (Err(ZkErr::SessionExpired), Vec::new());
        }
        self.touch(s, now_ms);
        let answer = self.exec(now_ms, s, id, op);
        (answer, self.take_out())
    }

    fn exec(&mut self, now: i64, s: SessionId, id: ReqId, op: &Op) -> Result<Answer, ZkErr> {
        match op {
            Op::WatchNode(p) => {
                check_path(p)?;
                let stat = self.stat(p);
                self.register(s, p, id);
                Ok(Answer::Stat(stat))
            }
            Op::Stat(p) => check_path(p).map(|()| Answer::Stat(self.stat(p))),
            Op::Children(p) => {
                check_path(p)?;
                self.node(p).ok_or(ZkErr::NoNode)?;
                Ok(Answer::Children(self.children(p)))
            }
            Op::CreateSeq { base, data } => {
                // ZooKeeper validates a sequential path with its suffix (`base` may end in `/`).
                let probe = format!("{base}{:010}", 0);
                check_path(&probe)?;
                let parent = self.node(parent_of(&probe)).ok_or(ZkErr::NoNode)?;
                let seq = format!("{:010}", parent.cversion);
                let path = format!("{base}{seq}");
                self.create_check(&path)?;
                let stat = self.create(&path, data, s, now, false);
                Ok(Answer::Created { seq, stat })
            }
            Op::Mkdir(p) => {
                check_path(p)?;
                // zookeeper-client's mkdir creates the missing parents first (each a
                // request of its own, with the same options).
                let mut missing = Vec::new();
                let mut at = parent_of(p);
                while at != "/" && self.node(at).is_none() {
                    missing.push(at.to_owned());
                    at = parent_of(at);
                }
                for anc in missing.iter().rev() {
                    self.create_check(anc)?;
                    self.create(anc, &[], 0, now, true);
                }
                self.create_check(p)?;
                self.create(p, &[], 0, now, true);
                Ok(Answer::Done)
            }
            Op::WatchData(p) | Op::GetData(p) => {
                check_path(p)?;
                let data = self.node(p).ok_or(ZkErr::NoNode)?.data.clone();
                if matches!(op, Op::WatchData(_)) {
                    self.register(s, p, id);
                }
                Ok(Answer::Data(data))
            }
            Op::Claim {
                node,
                ahead,
                path,
                data,
            } => self.claim(now, node, ahead, path, data),
            Op::Delete(p) => {
                check_path(p)?;
                if p == "/" {
                    return Err(other("bad path"));
                }
                // ZooKeeper's order: parent, ACL (on the parent), node, children.
                self.node(parent_of(p)).ok_or(ZkErr::NoNode)?;
                self.check_allowed(p)?;
                self.node(p).ok_or(ZkErr::NoNode)?;
                if self.has_children(p) {
                    return Err(other("NotEmpty"));
                }
                self.zxid += 1;
                self.remove(p);
                Ok(Answer::Done)
            }
        }
    }

    /// The claim multi: `check(node)`; `create` + `delete` of `path/name` for each of `ahead`;
    /// `setData(path, data)`. One transaction; on a failure nothing is applied and the error
    /// is `Multi { index, error }` (a denied write: `error` is `Permanent`).
    fn claim(
        &mut self,
        now: i64,
        node: &str,
        ahead: &[String],
        path: &str,
        data: &[u8],
    ) -> Result<Answer, ZkErr> {
        let sep = if path == "/" { "" } else { "/" };
        let transient: Vec<String> = ahead.iter().map(|n| format!("{path}{sep}{n}")).collect();
        // A malformed path is refused before anything is sent (as the client does).
        check_path(node)?;
        check_path(path)?;
        transient.iter().try_for_each(|t| check_path(t))?;
        // Dry run on the current state: each create + delete pair leaves the tree as it was
        // (but for cversions, which no check reads), so each op sees what it would in turn.
        self.node(node).ok_or_else(|| multi(0, ZkErr::NoNode))?;
        for (i, t) in transient.iter().enumerate() {
            self.create_check(t).map_err(|e| multi(1 + 2 * i, e))?;
        }
        let last = 1 + 2 * ahead.len();
        self.node(path).ok_or_else(|| multi(last, ZkErr::NoNode))?;
        self.check_allowed(path).map_err(|e| multi(last, e))?;
        // Commit, one zxid.
        self.zxid += 1;
        let zxid = self.zxid;
        for t in &transient {
            let node = Node {
                ctime: now,
                mzxid: zxid,
                ..Node::default()
            };
            self.insert(t, node);
            self.remove(t);
        }
        let target = self
            .node_mut(path)
            .ok_or_else(|| multi(last, ZkErr::NoNode))?;
        target.data = data.to_vec();
        target.mzxid = zxid;
        let stat = target.stat();
        self.fire(path, WatchEvent::Changed);
        Ok(Answer::Claimed(stat))
    }

    /// Forgets every node but `/`, every session, every watch; zxid restarts at 0 (and so do
    /// the sequence counters, the parents' cversions). Session ids keep increasing; denied
    /// prefixes stay.
    pub fn wipe(&mut self) {
        let (last_session, denied) = (self.last_session, std::mem::take(&mut self.denied));
        *self = SimZk {
            last_session,
            denied,
            ..SimZk::default()
        };
    }

    /// An operator deletes `path` and everything below it, deepest first, one transaction per
    /// node (no-op if missing; `/` itself stays).
    pub fn delete_tree(&mut self, path: &str) -> Vec<Delivery> {
        if check_path(path).is_err() || self.node(path).is_none() {
            return Vec::new();
        }
        let mut doomed: Vec<String> = self.below(path).cloned().collect();
        if path != "/" {
            doomed.insert(0, path.to_owned());
        }
        // Ascending order puts an ancestor before its descendants: delete in reverse.
        for p in doomed.iter().rev() {
            self.zxid += 1;
            self.remove(p);
        }
        self.take_out()
    }

    /// An operator deletes one node (no-op if missing, `/`, or it has children).
    pub fn delete_node(&mut self, path: &str) -> Vec<Delivery> {
        if self.nodes.contains_key(path) && !self.has_children(path) {
            self.zxid += 1;
            self.remove(path);
        }
        self.take_out()
    }

    /// One pass of ZooKeeper's ContainerManager: deletes (by path, one transaction each) every
    /// container node with no children that had a child once (cversion > 0). A container this
    /// empties goes on a later pass.
    pub fn reap_containers(&mut self) -> Vec<Delivery> {
        let doomed: Vec<String> = (self.nodes.iter())
            .filter(|(p, n)| n.container && n.cversion > 0 && !self.has_children(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.zxid += 1;
            self.remove(&p);
        }
        self.take_out()
    }

    /// Denies (or allows again) writes (`CreateSeq`, `Mkdir`, `Claim`, `Delete`) to paths
    /// starting with `path_prefix` (a plain string prefix): they fail with
    /// `Permanent(PermissionDenied, "NoAuth: not authorized to write <path>")`. Operator deletions and the
    /// container reaper are not affected.
    pub fn set_denied(&mut self, path_prefix: &str, denied: bool) {
        if denied {
            self.denied.insert(path_prefix.to_owned());
        } else {
            self.denied.remove(path_prefix);
        }
    }

    /// The names of `path`'s children, sorted (empty if `path` is missing).
    pub fn children(&self, path: &str) -> Vec<String> {
        if self.node(path).is_none() {
            return Vec::new();
        }
        let skip = if path == "/" { 1 } else { path.len() + 1 };
        (self.below(path))
            .map(|k| &k[skip..])
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect()
    }

    /// The ephemeral owner of an existing node (0: persistent); `None` if missing.
    pub fn owner(&self, path: &str) -> Option<i64> {
        self.node(path).map(|n| n.owner)
    }

    /// The data of an existing node.
    pub fn data(&self, path: &str) -> Option<Vec<u8>> {
        self.node(path).map(|n| n.data.clone())
    }

    /// The stat of an existing node.
    pub fn stat(&self, path: &str) -> Option<NodeStat> {
        self.node(path).map(Node::stat)
    }

    /// The cversion (creations plus deletions of direct children) of an existing node.
    pub fn cversion(&self, path: &str) -> Option<i64> {
        self.node(path).map(|n| n.cversion)
    }

    /// The live sessions, sorted.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// The last committed transaction's zxid (0 on a fresh or wiped server).
    pub fn zxid(&self) -> i64 {
        self.zxid
    }

    fn node(&self, p: &str) -> Option<&Node> {
        if p == "/" {
            Some(&self.root)
        } else {
            self.nodes.get(p)
        }
    }

    fn node_mut(&mut self, p: &str) -> Option<&mut Node> {
        if p == "/" {
            Some(&mut self.root)
        } else {
            self.nodes.get_mut(p)
        }
    }

    /// Every node strictly below an existing node `p`, in path order.
    fn below<'a>(&'a self, p: &str) -> impl Iterator<Item = &'a String> + 'a {
        let prefix = if p == "/" {
            p.to_owned()
        } else {
            format!("{p}/")
        };
        (self.nodes.range(prefix.clone()..))
            .map(|(k, _)| k)
            .take_while(move |k| k.starts_with(&prefix))
    }

    fn has_children(&self, p: &str) -> bool {
        self.below(p).next().is_some()
    }

    fn check_allowed(&self, path: &str) -> Result<(), ZkErr> {
        match self.denied.iter().any(|d| path.starts_with(d.as_str())) {
            true => Err(ZkErr::Permanent(
                succession_core::ErrorKind::PermissionDenied,
                format!("NoAuth: not authorized to write {path}"),
            )),
            false => Ok(()),
        }
    }

    /// Whether `path` may be created, in ZooKeeper's order: parent, ACL, existence, ephemeral
    /// parent.
    fn create_check(&self, path: &str) -> Result<(), ZkErr> {
        let parent = self.node(parent_of(path)).ok_or(ZkErr::NoNode)?;
        self.check_allowed(path)?;
        if self.node(path).is_some() {
            return Err(ZkErr::NodeExists);
        }
        match parent.owner {
            0 => Ok(()),
            _ => Err(other("NoChildrenForEphemerals")),
        }
    }

    /// Creates a checked node in a transaction of its own; returns its stat.
    fn create(
        &mut self,
        path: &str,
        data: &[u8],
        owner: i64,
        now: i64,
        container: bool,
    ) -> NodeStat {
        self.zxid += 1;
        let (data, mzxid) = (data.to_vec(), self.zxid);
        let node = Node {
            data,
            owner,
            ctime: now,
            mzxid,
            cversion: 0,
            container,
        };
        let stat = node.stat();
        self.insert(path, node);
        stat
    }

    /// Adds a node (its parent exists), bumps the parent's cversion, fires `Changed`.
    fn insert(&mut self, path: &str, node: Node) {
        if let Some(parent) = self.node_mut(parent_of(path)) {
            parent.cversion += 1;
        }
        self.nodes.insert(path.to_owned(), node);
        self.fire(path, WatchEvent::Changed);
    }

    /// Removes a node (it has no children), bumps the parent's cversion, fires `Deleted`.
    fn remove(&mut self, path: &str) {
        if self.nodes.remove(path).is_some() {
            if let Some(parent) = self.node_mut(parent_of(path)) {
                parent.cversion += 1;
            }
            self.fire(path, WatchEvent::Deleted);
        }
    }

    /// Registers a one-shot watch (once per session, path and request id).
    fn register(&mut self, session: SessionId, path: &str, id: ReqId) {
        let w = Watch {
            session,
            path: path.to_owned(),
            id,
        };
        if !self.watches.contains(&w) {
            self.watches.push(w);
        }
    }

    /// Fires and removes every watch on `path`, in registration order.
    fn fire(&mut self, path: &str, event: WatchEvent) {
        let out = &mut self.out;
        self.watches.retain(|w| {
            let hit = w.path == path;
            if hit {
                out.push(Delivery {
                    session: w.session,
                    id: w.id,
                    event,
                });
            }
            !hit
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WatchEvent::{Changed, Deleted};

    /// Applies `op` for `s` at time 0 as request `id`, expecting success.
    fn ok(z: &mut SimZk, s: SessionId, id: ReqId, op: Op) -> (Answer, Vec<Delivery>) {
        let (r, d) = z.apply(0, s, id, &op);
        (r.unwrap_or_else(|e| panic!("{op:?}: {e}")), d)
    }

    /// Applies `op` for `s`, expecting an error and no delivery.
    fn err(z: &mut SimZk, s: SessionId, op: Op) -> ZkErr {
        let (r, d) = z.apply(0, s, 0, &op);
        assert!(d.is_empty());
        r.expect_err("should fail")
    }

    /// Creates an ephemeral sequential node, returns its full path.
    fn seq(z: &mut SimZk, s: SessionId, base: &str) -> String {
        let op = Op::CreateSeq {
            base: base.into(),
            data: b"me".to_vec(),
        };
        match ok(z, s, 0, op).0 {
            Answer::Created { seq, .. } => format!("{base}{seq}"),
            a => panic!("{a:?}"),
        }
    }

    fn claim(node: &str, ahead: &[&str], path: &str) -> Op {
        let (node, path, data) = (node.into(), path.into(), b"leader".to_vec());
        let ahead = ahead.iter().map(|a| a.to_string()).collect();
        Op::Claim {
            node,
            ahead,
            path,
            data,
        }
    }

    fn d(session: SessionId, id: ReqId, event: WatchEvent) -> Delivery {
        Delivery { session, id, event }
    }

    fn multi_err(index: usize, error: ZkErr) -> ZkErr {
        ZkErr::Multi {
            index,
            error: Box::new(error),
        }
    }

    /// A server with session `s` (timeout 1000) and the container `/l`.
    fn setup() -> (SimZk, SessionId) {
        let mut z = SimZk::new();
        let s = z.open_session(0, 1000);
        ok(&mut z, s, 0, Op::Mkdir("/l".into()));
        (z, s)
    }

    #[test]
    fn sequence_numbers_come_from_the_parent_cversion() {
        let (mut z, s) = setup();
        assert_eq!(seq(&mut z, s, "/l/n-"), "/l/n-0000000000");
        let mine = seq(&mut z, s, "/l/n-");
        assert_eq!(mine, "/l/n-0000000001");
        ok(&mut z, s, 0, Op::Delete("/l/n-0000000000".into()));
        assert_eq!(seq(&mut z, s, "/l/"), "/l/0000000003");
        ok(&mut z, s, 0, claim(&mine, &["a", "b"], "/l")); // two pairs: cversion + 4
        assert_eq!(z.cversion("/l"), Some(8));
        assert_eq!(seq(&mut z, s, "/l/n-"), "/l/n-0000000008");
        let exists = Op::Mkdir("/l/0000000003".into());
        assert_eq!(err(&mut z, s, exists), ZkErr::NodeExists); // does not count
        assert_eq!(seq(&mut z, s, "/l/n-"), "/l/n-0000000009");
        let names = ["0000000003", "n-0000000001", "n-0000000008", "n-0000000009"];
        assert_eq!(z.children("/l"), names);
        assert_eq!(
            ok(&mut z, s, 0, Op::Children("/l".into())).0,
            Answer::Children(z.children("/l"))
        );
    }

    #[test]
    fn create_rules_and_stats() {
        let (mut z, s) = setup();
        let zxid = z.zxid();
        let op = Op::CreateSeq {
            base: "/l/n-".into(),
            data: b"id".to_vec(),
        };
        let stat = NodeStat {
            ephemeral_owner: s,
            ctime: 42,
            mzxid: zxid + 1,
        };
        let created = Answer::Created {
            seq: "0000000000".into(),
            stat,
        };
        assert_eq!(z.apply(42, s, 1, &op), (Ok(created), vec![]));
        assert_eq!(z.stat("/l/n-0000000000"), Some(stat));
        assert_eq!(z.data("/l/n-0000000000"), Some(b"id".to_vec()));
        assert_eq!((z.owner("/l"), z.owner("/x")), (Some(0), None));
        let under = Op::Mkdir("/l/n-0000000000/x".into());
        assert_eq!(err(&mut z, s, under), other("NoChildrenForEphemerals"));
        assert_eq!(err(&mut z, s, Op::Mkdir("/l".into())), ZkErr::NodeExists);
        assert_eq!(err(&mut z, s, Op::Delete("/l".into())), other("NotEmpty"));
        assert_eq!(err(&mut z, s, Op::Delete("/m".into())), ZkErr::NoNode);
        assert_eq!(err(&mut z, s, Op::Children("/m".into())), ZkErr::NoNode);
        assert_eq!(err(&mut z, s, Op::GetData("/m".into())), ZkErr::NoNode);
        assert_eq!(z.zxid(), zxid + 1, "failed writes take no zxid");
        // mkdir creates the missing parents (zookeeper-client's mkdir), one write each.
        ok(&mut z, s, 0, Op::Mkdir("/m/x".into()));
        assert!(z.stat("/m").is_some() && z.stat("/m/x").is_some());
        assert_eq!(z.zxid(), zxid + 3);
        let bad = other("bad path");
        for p in ["", "x", "/l/", "//l", "/l//x", "/l/./x", "/l/.."] {
            assert_eq!(err(&mut z, s, Op::Stat(p.into())), bad, "{p:?}");
            assert_eq!(err(&mut z, s, Op::Mkdir(p.into())), bad, "{p:?}");
            assert!(z.delete_tree(p).is_empty() && z.delete_node(p).is_empty());
            assert!(z.children(p).is_empty() && z.stat(p).is_none());
        }
        assert_eq!(err(&mut z, s, Op::Delete("/".into())), bad);
        assert_eq!(err(&mut z, s, claim("/l", &[""], "/l")), bad);
        assert_eq!(z.children("/"), ["l", "m"]);
    }

    #[test]
    fn watches_fire_once_in_registration_order() {
        let (mut z, a) = setup();
        let b = z.open_session(0, 1000);
        let node = seq(&mut z, a, "/l/n-");
        ok(&mut z, b, 7, Op::WatchNode(node.clone()));
        ok(&mut z, a, 3, Op::WatchData(node.clone()));
        ok(&mut z, b, 5, Op::WatchData(node.clone()));
        ok(&mut z, b, 5, Op::WatchData(node.clone())); // the same registration
        ok(&mut z, b, 9, Op::GetData(node.clone())); // no watch
        ok(&mut z, b, 9, Op::Stat(node.clone())); // no watch
        let (_, fired) = ok(&mut z, a, 1, Op::Delete(node.clone()));
        assert_eq!(
            fired,
            [d(b, 7, Deleted), d(a, 3, Deleted), d(b, 5, Deleted)]
        );
        assert!(ok(&mut z, a, 2, Op::Mkdir(node.clone())).1.is_empty());
        assert!(ok(&mut z, a, 2, Op::Delete(node)).1.is_empty());
    }

    #[test]
    fn an_exists_watch_fires_on_creation_a_missing_get_data_registers_nothing() {
        let (mut z, s) = setup();
        let answer = ok(&mut z, s, 4, Op::WatchNode("/l/x".into()));
        assert_eq!(answer, (Answer::Stat(None), vec![]));
        assert_eq!(err(&mut z, s, Op::WatchData("/l/y".into())), ZkErr::NoNode);
        assert_eq!(
            ok(&mut z, s, 0, Op::Mkdir("/l/x".into())).1,
            [d(s, 4, Changed)]
        );
        assert!(ok(&mut z, s, 0, Op::Mkdir("/l/y".into())).1.is_empty());
        assert!(ok(&mut z, s, 0, Op::Delete("/l/y".into())).1.is_empty());
        assert!(ok(&mut z, s, 0, Op::Delete("/l/x".into())).1.is_empty());
    }

    #[test]
    fn claim_is_all_or_nothing() {
        let (mut z, a) = setup();
        let b = z.open_session(0, 1000);
        let mine = seq(&mut z, a, "/l/n-");
        let other = seq(&mut z, b, "/l/n-");
        ok(&mut z, b, 11, Op::WatchData("/l".into()));
        ok(&mut z, b, 12, Op::WatchNode("/l/gone".into()));
        let (zxid, cversion, ctime) = (
            z.zxid(),
            z.cversion("/l").unwrap(),
            z.stat("/l").unwrap().ctime,
        );
        let missing = claim("/l/n-9", &["gone"], "/l");
        assert_eq!(err(&mut z, a, missing), multi_err(0, ZkErr::NoNode));
        let there = claim(&mine, &["gone", &other[3..], "x"], "/l");
        assert_eq!(err(&mut z, a, there), multi_err(3, ZkErr::NodeExists));
        let no_path = claim(&mine, &["gone", "x"], "/nope");
        assert_eq!(err(&mut z, a, no_path), multi_err(1, ZkErr::NoNode));
        let no_path = claim(&mine, &[], "/nope");
        assert_eq!(err(&mut z, a, no_path), multi_err(1, ZkErr::NoNode));
        assert_eq!((z.zxid(), z.cversion("/l").unwrap()), (zxid, cversion));
        assert_eq!((z.data("/l"), z.stat("/l/gone")), (Some(vec![]), None));

        let (answer, fired) = ok(&mut z, a, 1, claim(&mine, &["gone", "x"], "/l"));
        let stat = NodeStat {
            ephemeral_owner: 0,
            ctime,
            mzxid: zxid + 1,
        };
        assert_eq!((answer, z.zxid()), (Answer::Claimed(stat), zxid + 1));
        assert_eq!(z.data("/l"), Some(b"leader".to_vec()));
        assert_eq!(z.cversion("/l"), Some(cversion + 4));
        assert_eq!(z.children("/l").len(), 2);
        // Transaction order: the create of /l/gone, then the setData of /l.
        assert_eq!(fired, [d(b, 12, Changed), d(b, 11, Changed)]);
    }

    #[test]
    fn a_session_end_deletes_its_ephemerals() {
        let (mut z, a) = setup();
        let b = z.open_session(0, 1000);
        let c = z.open_session(0, 300);
        let node = seq(&mut z, a, "/l/n-");
        ok(&mut z, b, 8, Op::WatchNode(node.clone()));
        ok(&mut z, c, 9, Op::WatchNode(node.clone()));
        z.touch(a, 500);
        z.touch(b, 600);
        assert_eq!(z.expire_due(1499), (vec![c], vec![])); // c's watch went with it
        assert_eq!(z.expire_due(1500), (vec![a], vec![d(b, 8, Deleted)]));
        assert_eq!((z.stat(&node), z.sessions()), (None, vec![b]));
        assert!(!z.knows(a) && !z.knows(c));
        assert_eq!(err(&mut z, a, Op::Stat("/l".into())), ZkErr::SessionExpired);

        // A request renews a session; a close acts at once, in one transaction.
        let e = z.open_session(2000, 100);
        let node = seq(&mut z, e, "/l/n-");
        ok(&mut z, b, 10, Op::WatchData(node.clone()));
        assert!(z.apply(2090, e, 0, &Op::Stat(node)).0.is_ok());
        z.touch(b, 2090);
        assert!(z.expire_due(2150).0.is_empty());
        let zxid = z.zxid();
        assert_eq!(z.close_session(e), [d(b, 10, Deleted)]);
        assert_eq!(z.zxid(), zxid + 1);
        assert!(z.close_session(e).is_empty() && z.children("/l").is_empty());
    }

    #[test]
    fn wipe_restarts_zxid_but_not_session_ids() {
        let (mut z, a) = setup();
        seq(&mut z, a, "/l/n-");
        ok(&mut z, a, 1, Op::WatchNode("/x".into()));
        z.wipe();
        assert_eq!(
            (z.zxid(), z.children("/"), z.sessions()),
            (0, vec![], vec![])
        );
        let b = z.open_session(0, 1000);
        assert!(b > a && !z.knows(a));
        assert_eq!(z.zxid(), 1);
        ok(&mut z, b, 0, Op::Mkdir("/l".into()));
        assert_eq!(seq(&mut z, b, "/l/n-"), "/l/n-0000000000");
        assert!(ok(&mut z, b, 0, Op::Mkdir("/x".into())).1.is_empty());
    }

    #[test]
    fn containers_are_reaped_once_used_and_empty() {
        let (mut z, s) = setup();
        let b = z.open_session(0, 1000);
        for p in ["/m", "/m/c", "/m/c/d"] {
            ok(&mut z, s, 0, Op::Mkdir(p.into()));
        }
        seq(&mut z, b, "/m/c/d/n-");
        ok(&mut z, s, 4, Op::WatchNode("/m/c/d".into()));
        assert!(z.reap_containers().is_empty()); // /l never had a child, the rest have one
        z.close_session(b);
        assert_eq!(z.reap_containers(), [d(s, 4, Deleted)]);
        assert_eq!(z.children("/"), ["l", "m"]);
        z.reap_containers();
        z.reap_containers();
        assert_eq!(z.children("/"), ["l"]);
        // The operator's deletions.
        ok(&mut z, s, 0, Op::Mkdir("/l/a".into()));
        ok(&mut z, s, 5, Op::WatchNode("/l/a".into()));
        assert!(z.delete_node("/l").is_empty() && z.stat("/l").is_some());
        assert_eq!(z.delete_tree("/l"), [d(s, 5, Deleted)]);
        assert!(z.children("/").is_empty() && z.delete_tree("/l").is_empty());
    }

    #[test]
    fn denied_prefixes_refuse_writes() {
        let (mut z, s) = setup();
        let node = seq(&mut z, s, "/l/n-");
        z.set_denied("/l", true);
        let no = |p: &str| {
            ZkErr::Permanent(
                succession_core::ErrorKind::PermissionDenied,
                format!("NoAuth: not authorized to write {p}"),
            )
        };
        let op = Op::CreateSeq {
            base: "/l/n-".into(),
            data: vec![],
        };
        assert_eq!(err(&mut z, s, op), no("/l/n-0000000001"));
        assert_eq!(err(&mut z, s, Op::Mkdir("/l/x".into())), no("/l/x"));
        assert_eq!(err(&mut z, s, Op::Delete(node.clone())), no(&node));
        assert_eq!(
            err(&mut z, s, claim(&node, &[], "/l")),
            multi_err(1, no("/l"))
        );
        assert_eq!(
            err(&mut z, s, claim(&node, &["a"], "/l")),
            multi_err(1, no("/l/a"))
        );
        assert!(z.apply(0, s, 0, &Op::Children("/l".into())).0.is_ok());
        z.set_denied("/l", false);
        assert!(z.apply(0, s, 0, &claim(&node, &["a"], "/l")).0.is_ok());
    }
}
