//! succession facade (see README).
#![deny(missing_docs)]
pub use succession_core::*;
