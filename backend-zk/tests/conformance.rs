//! The shared conformance suite on a real ZooKeeper (standalone, from testkit), with its
//! fault half (outage, wipe, partition of the leader).
mod common;

mod conformance_on_zookeeper {
    succession_core::conformance_tests!(super::common::ZkFactory::on_shared_server().await);
}

/// The fault half of the suite: each scenario on a server of its own, each participant
/// behind its own proxy.
mod fault_conformance_on_zookeeper {
    succession_core::fault_conformance_tests!(super::common::ZkFaultFactory::new().await);
}
