//! The shared conformance suite of succession-core, run on the etcd backend against the
//! shared real etcd of this test binary, with a fresh prefix per scenario.

mod common;

/// TTL of the conformance participants (seconds): short, so the crash scenario is quick.
const TTL_SECS: u64 = 2;

mod conformance {
    succession_core::conformance_tests!(super::common::EtcdFactory::new(super::TTL_SECS).await);
}

/// The fault half of the suite: each scenario on a server of its own, each participant
/// behind its own proxy.
mod fault_conformance {
    succession_core::fault_conformance_tests!(
        super::common::EtcdFaultFactory::new(super::TTL_SECS).await
    );
}
