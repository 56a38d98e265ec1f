//! The one error type of succession: a kind, a message that says what to do, an optional
//! source, and whether retrying can help.

use std::fmt;

/// Convenience alias used across succession.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarse enough to match on. New kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value was refused before anything was contacted. Fix the value.
    InvalidConfig,
    /// The store could not be reached or the connection broke. Usually temporary.
    Connection,
    /// The store ended our session (ZooKeeper session expired, etcd lease gone).
    SessionExpired,
    /// The operation needs leadership and this participant does not lead (or lost it).
    NotLeader,
    /// The election handle was closed; build a new one.
    Closed,
    /// The operation did not finish within its deadline.
    Timeout,
    /// The store refused us: authentication failed or an ACL forbids the operation.
    PermissionDenied,
    /// The store answered with something we did not expect; see the source.
    Backend,
}

impl ErrorKind {
    /// A short, stable name for the kind (used in Display and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid config",
            ErrorKind::Connection => "connection",
            ErrorKind::SessionExpired => "session expired",
            ErrorKind::NotLeader => "not leader",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Backend => "backend",
        }
    }

    /// Whether errors of this kind are retryable unless stated otherwise.
    fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::SessionExpired | ErrorKind::Timeout
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every succession operation.
///
/// `Display` prints `<kind>: <message>`; the message says what to do about it. Use
/// [`Error::kind`] to match and [`Error::is_retryable`] to decide whether trying again can help.
#[derive(thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable);
        if let Some(s) = &self.source {
            d.field("source", &format_args!("{s}"));
        }
        d.finish()
    }
}

impl Error {
    /// A new error of `kind`; retryability defaults from the kind (connection, session
    /// expired and timeout are retryable).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retryable: kind.default_retryable(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Override whether retrying can help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Shorthand for an [`ErrorKind::InvalidConfig`] error.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidConfig, message)
    }

    /// Shorthand for an [`ErrorKind::Closed`] error.
    pub fn closed(what: &str) -> Self {
        Error::new(
            ErrorKind::Closed,
            format!("{what} is closed; create a new election handle to take part again"),
        )
    }

    /// Shorthand for an [`ErrorKind::Timeout`] error.
    pub fn timeout(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, what)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the kind prefix).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying the same operation again may succeed (temporary), or not (permanent).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_default_to_expected_retryability() {
        assert!(Error::new(ErrorKind::Connection, "x").is_retryable());
        assert!(Error::timeout("x").is_retryable());
        assert!(!Error::invalid_config("x").is_retryable());
        assert!(!Error::closed("election").is_retryable());
        assert!(!Error::new(ErrorKind::Backend, "x").is_retryable());
        assert!(Error::new(ErrorKind::Backend, "x")
            .with_retryable(true)
            .is_retryable());
    }

    #[test]
    fn display_names_kind_and_message_and_keeps_source() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Connection, "cannot reach 127.0.0.1:1").with_source(io);
        assert_eq!(e.to_string(), "connection: cannot reach 127.0.0.1:1");
        let src = std::error::Error::source(&e).expect("source kept");
        assert_eq!(src.to_string(), "boom");
    }
}
