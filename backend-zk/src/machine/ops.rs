//! What the latch machine asks of ZooKeeper and what it gets back: plain data, no client.
//!
//! Each [`Op`] is one request (or one multi) of the real driver. Its executor maps it onto
//! zookeeper-client; the simulation onto [`crate::sim::SimZk`]. One session's answers and
//! watch events reach the machine in the order the server sent them (ZooKeeper delivers a
//! watch event before any later reply on the same connection).

/// The id the machine gives a request; its answer, and any watch it registered, carry it.
pub type ReqId = u64;

/// The parts of a node's stat the latch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    /// The session owning an ephemeral node (0: persistent).
    pub ephemeral_owner: i64,
    /// Creation time, in the server's wall-clock milliseconds.
    pub ctime: i64,
    /// The zxid of the last change.
    pub mzxid: i64,
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `exists` with a watch on the node (our own node). The watch is registered even when
    /// the node is missing (ZooKeeper's exists watch also fires on a creation).
    WatchNode(String),
    /// `exists` without a watch.
    Stat(String),
    /// `getChildren` (names only, no watch).
    Children(String),
    /// `create` an ephemeral sequential node: the path is `base` plus a 10-digit sequence
    /// from the parent's counter; `data` is the participant id.
    CreateSeq {
        /// Parent path, `/`, and the name before the sequence.
        base: String,
        /// The node's data.
        data: Vec<u8>,
    },
    /// `create` a container node (the latch path), its missing parents first
    /// (zookeeper-client's `mkdir`).
    Mkdir(String),
    /// `getData` with a watch (our predecessor).
    WatchData(String),
    /// `getData` without a watch (the leader's node).
    GetData(String),
    /// The claim, one multi: `check(node, -1)`; for each of `ahead`, `create(path/name)` and
    /// `delete(path/name)` (a no-op while the node is gone, NodeExists while it is there);
    /// `setData(path, data)`. Answered with the setData stat.
    Claim {
        /// Our node's full path.
        node: String,
        /// Names (under `path`) of the nodes asserted gone.
        ahead: Vec<String>,
        /// The latch path.
        path: String,
        /// The claiming node's name.
        data: Vec<u8>,
    },
    /// `delete` any version.
    Delete(String),
}

impl Op {
    /// Whether the op changes the store (a write the client may send late, see the driver).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::CreateSeq { .. } | Op::Mkdir(_) | Op::Claim { .. } | Op::Delete(_)
        )
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// For `WatchNode` and `Stat`.
    Stat(Option<NodeStat>),
    /// For `Children`.
    Children(Vec<String>),
    /// For `CreateSeq`: the sequence text appended to `base`, and the new node's stat.
    Created {
        /// The 10-digit sequence.
        seq: String,
        /// The node's stat.
        stat: NodeStat,
    },
    /// For `Mkdir` and `Delete`.
    Done,
    /// For `WatchData` and `GetData`.
    Data(Vec<u8>),
    /// For `Claim`: the stat of the latch path after the setData.
    Claimed(NodeStat),
}

/// A failed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZkErr {
    /// The node (or a parent) does not exist.
    NoNode,
    /// The node already exists.
    NodeExists,
    /// The connection broke before the answer (the request may or may not have been
    /// applied).
    ConnectionLoss,
    /// The session is gone (expired, or forgotten by a wipe).
    SessionExpired,
    /// Refused for good (authentication, ACL): leave the election with this kind of error
    /// and this message (what was refused, and what to do).
    Permanent(succession_core::ErrorKind, String),
    /// Anything else (temporary).
    Other(String),
    /// A multi failed at op `index` (0-based) with `error`; nothing of it was applied.
    Multi {
        /// The failing op's index.
        index: usize,
        /// Why it failed.
        error: Box<ZkErr>,
    },
}

impl std::fmt::Display for ZkErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZkErr::NoNode => f.write_str("no node"),
            ZkErr::NodeExists => f.write_str("node exists"),
            ZkErr::ConnectionLoss => f.write_str("connection loss"),
            ZkErr::SessionExpired => f.write_str("session expired"),
            ZkErr::Permanent(_, m) | ZkErr::Other(m) => f.write_str(m),
            ZkErr::Multi { index, error } => write!(f, "multi op {index}: {error}"),
        }
    }
}

/// What a one-shot watch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// The node was deleted.
    Deleted,
    /// The node was created or its data changed.
    Changed,
}
