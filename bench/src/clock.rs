//! One clock for every process of the bench: `CLOCK_MONOTONIC`, in nanoseconds.
//!
//! Rust's `Instant` and Java's `System.nanoTime()` both read `CLOCK_MONOTONIC` on Linux, so
//! instants stamped by the Curator driver (a JVM), by our driver (a child process) and by
//! the orchestrating process can be subtracted from each other. `main` checks this at start
//! with a `ping` to every driver kind.

use std::time::Instant;

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` (past or future) on the [`now_ns`] scale.
pub fn instant_ns(at: Instant) -> u64 {
    let (now, ns) = (Instant::now(), now_ns());
    if at <= now {
        ns.saturating_sub(now.duration_since(at).as_nanos() as u64)
    } else {
        ns + at.duration_since(now).as_nanos() as u64
    }
}

/// Milliseconds between two [`now_ns`] stamps (negative when `b` is before `a`).
pub fn ms_between(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e6
}
