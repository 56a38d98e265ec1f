#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub use succession_core::*;

/// The ZooKeeper latch backend (feature `zk`): [`zk::ZkElection`], [`zk::ZkConfig`].
#[cfg(feature = "zk")]
pub mod zk {
    pub use succession_zk::*;
}

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub mod etcd {
    pub use succession_etcd::*;
}
