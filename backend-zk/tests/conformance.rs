//! The shared conformance suite on a real ZooKeeper (standalone, from testkit).
mod common;

mod conformance_on_zookeeper {
    succession_core::conformance_tests!(super::common::ZkFactory::on_shared_server().await);
}
