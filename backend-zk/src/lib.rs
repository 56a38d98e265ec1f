#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod config;
mod error;
mod latch;
pub mod machine;
mod names;
mod observe;
mod session;
#[cfg(feature = "sim")]
pub mod sim;
mod standing;

pub use config::{
    ConnectionPolicy, NodeAcl, ZkConfig, ZkConfigBuilder, ZkSessionConfig, ZkSessionConfigBuilder,
    DEFAULT_CONNECTION_TIMEOUT, DEFAULT_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT, MIN_SESSION_TIMEOUT,
};
pub use latch::ZkElection;
pub use observe::ZkLeaderWatch;
pub use session::ZkSession;
