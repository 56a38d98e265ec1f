//! Deterministic simulation of etcd election participants over a simulated etcd (feature
//! `sim`).
//!
//! The machines simulated are the production
//! [`CampaignMachine`](crate::machine::CampaignMachine)s, each in a simulated process with
//! one connection, one lease and one watch stream on a simulated server ([`SimEtcd`]):
//! revisions, txns, leases expiring on the lessor's 500 ms tick, watches (synced and
//! catching up) and compaction, a wipe that forgets keys, leases and revisions. A seed
//! decides every network delay (answers and watch responses on separate streams, so either
//! may overtake the other), every executor delay and every fault (partitions, outages and
//! wipes, operator deletes of the leader's key or of the whole election, operator lease
//! revokes, process pauses beyond the TTL, crashes and restarts, refused requests,
//! compactions, resigns and closes, clock drift of ±4 %). The
//! [`Timeline`](succession_core::sim::Timeline) checker judges what the participants
//! published; at the end the store is checked too (one key per live participant, under its
//! lease, nothing else).
//!
//! The lease keeper (a session's, in `lease.rs`) is modelled in the world.
//!
//! `SUCCESSION_SIM_SEEDS=N` runs N schedules per test; `SUCCESSION_SIM_SEED=S` replays one
//! with its trace.
mod store;
mod world;

pub use store::*;
pub use world::*;
