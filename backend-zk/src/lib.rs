//! succession backend for zk (in progress).
