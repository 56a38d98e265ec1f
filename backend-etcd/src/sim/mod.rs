//! Deterministic simulation of etcd election participants over a simulated etcd (feature
//! `sim`).
mod store;

pub use store::*;
