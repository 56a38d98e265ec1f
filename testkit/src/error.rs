//! The error type of the testkit.

use std::path::PathBuf;
use std::time::Duration;

/// The result type of every fallible testkit call.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while starting, driving or inspecting a test server.
///
/// `Debug` prints the same text as `Display`, so a test's `.unwrap()` shows the whole
/// message (what is missing, "run scripts/install-deps", the server log's tail).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary or jar the testkit needs is not installed (or an override points nowhere).
    #[error("{what} not found: {detail}; run scripts/install-deps")]
    MissingDependency {
        /// The missing thing, e.g. "etcd binary" or "/usr/share/java/zookeeper.jar".
        what: String,
        /// Where it was looked for.
        detail: String,
    },
    /// A server process exited (or could not be spawned) before it became ready.
    #[error("{what} failed to start: {reason}\n--- tail of {} ---\n{log_tail}", log.display())]
    StartFailed {
        /// Which server, e.g. "ZooKeeper on 127.0.0.1:21811".
        what: String,
        /// Why, e.g. the exit status.
        reason: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A condition was not reached in time.
    #[error("timed out after {timeout:?} waiting for {what}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// Extra context (last observed state and/or a log tail), may be empty.
        detail: String,
    },
    /// The operation needs the server stopped, but it runs.
    #[error("{what} is running: {op} needs it stopped first (call stop() or kill())")]
    StillRunning {
        /// Which server.
        what: String,
        /// The refused operation.
        op: &'static str,
    },
    /// The operation needs a running server, but it is stopped.
    #[error("{what} is not running: cannot {op}")]
    NotRunning {
        /// Which server.
        what: String,
        /// The refused operation.
        op: &'static str,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server answered something the testkit does not understand.
    #[error("unexpected reply from {what}: {reply:?}")]
    Protocol {
        /// Which server / command.
        what: String,
        /// The reply.
        reply: String,
    },
    /// A caller passed an unusable argument (e.g. an ensemble of 0 nodes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
