//! # succession-core
//!
//! The backend-neutral contract of [succession](https://docs.rs/succession): the
//! [`Election`] trait, its [`Status`] stream, [`Term`] fencing tokens, the [`Error`] type,
//! the in-memory backend ([`memory`]) and, behind feature `conformance`, the shared
//! conformance suite and [`LeadershipChecker`](conformance::LeadershipChecker) every
//! backend is tested with.
//!
//! Backends (ZooKeeper, etcd) live in their own crates and depend only on this one.
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod election;
mod error;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod participant;
mod record;
#[cfg(feature = "sim")]
pub mod sim;
mod status;
pub mod supervisor;
mod term;
pub mod text;
pub mod validate;

#[cfg(feature = "conformance")]
mod checker;
#[cfg(feature = "conformance")]
pub mod conformance;

pub use election::{Election, ElectionExt, Leadership, Participant};
pub use error::{Error, ErrorKind, Result};
pub use record::{CasOutcome, CasRecord, Versioned};
pub use status::{
    Contact, Health, HealthLevel, LeadershipHistory, LeadershipSpan, Role, Status, StatusCell,
};
pub use supervisor::{Supervisor, SupervisorBuilder, SupervisorEvent};
pub use term::Term;

/// Re-exported so backends and users name the same `async_trait`.
pub use async_trait::async_trait;
