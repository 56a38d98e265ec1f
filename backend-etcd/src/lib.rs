#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod config;
mod conn;
mod election;
mod error;
mod lease;
pub mod machine;
mod observe;
mod read_batch;
mod record;
mod session;
#[cfg(feature = "sim")]
pub mod sim;
mod watch_hub;

pub use config::{
    EtcdConfig, EtcdConfigBuilder, EtcdSessionConfig, EtcdSessionConfigBuilder,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_TTL, MAX_TTL, MIN_TTL,
};
pub use election::{EtcdElection, LeaseInfo};
pub use observe::EtcdLeaderWatch;
pub use record::EtcdRecord;
pub use session::EtcdSession;

/// Compile-time proof that the public types can be shared across tasks.
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<EtcdElection>();
    is::<EtcdRecord>();
    is::<EtcdConfig>();
    is::<EtcdSession>();
    is::<EtcdSessionConfig>();
    let _: Option<Box<dyn succession_core::Election>> = None::<Box<EtcdElection>>.map(|e| e as _);
    let _: Option<Box<dyn succession_core::CasRecord>> = None::<Box<EtcdRecord>>.map(|e| e as _);
}
