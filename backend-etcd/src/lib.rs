//! succession backend for etcd (in progress).
