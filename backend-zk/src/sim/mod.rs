//! Deterministic simulation of latch participants over a simulated ZooKeeper (feature
//! `sim`).
//!
//! The machines simulated are the production [`LatchMachine`](crate::machine::LatchMachine)s,
//! each in a simulated process with one session on a simulated server ([`SimZk`]):
//! ephemeral sequential nodes, one-shot watches delivered before later replies, multi,
//! session expiry, container reaping, a wipe that forgets sessions, nodes and zxids. A seed
//! decides every network delay, every executor delay and every fault (partitions, server
//! outages and wipes, operator deletes of the path or of the leader's node, process pauses
//! beyond the session timeout, crashes and restarts, refused writes, resigns and closes,
//! clock drift of ±4 %). The [`Timeline`](succession_core::sim::Timeline) checker judges
//! what the participants published; at the end the store is checked too (one node per live
//! participant, nothing else).
//!
//! What a session does for all its elections (noticing a dead connection, the grace of
//! [`ConnectionPolicy::Session`](crate::ConnectionPolicy::Session), replacing an expired
//! session) is modelled here in the world, after `session.rs`.
//!
//! `SUCCESSION_SIM_SEEDS=N` runs N schedules per test; `SUCCESSION_SIM_SEED=S` replays one
//! with its trace.
mod store;
mod world;

pub use store::*;
pub use world::*;
