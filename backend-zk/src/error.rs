//! The one place where ZooKeeper client errors become succession errors.

use succession_core::{Error, ErrorKind};
use zookeeper_client as zk;

/// Map a ZooKeeper error from operation `op` (e.g. "create latch node /a/_c_..") to a
/// succession [`Error`] with a kind, retryability and a message that says what to do.
pub(crate) fn map(e: zk::Error, op: &str) -> Error {
    use zk::Error as Z;
    let (kind, retryable, hint) = match &e {
        Z::NoAuth => (
            ErrorKind::PermissionDenied,
            false,
            "ZooKeeper refused it: not authorized; check the credentials (digest_auth or sasl_digest_md5) and the ACL of the latch path",
        ),
        Z::AuthFailed => (
            ErrorKind::PermissionDenied,
            false,
            "ZooKeeper rejected the credentials; fix digest_auth or sasl_digest_md5 (user, password; for SASL also the server's JAAS users)",
        ),
        Z::InvalidAcl => (
            ErrorKind::InvalidConfig,
            false,
            "ZooKeeper refused the ACL: NodeAcl::CreatorAllOthersRead (the default with credentials) and CreatorAll need a session the server authenticated; for sasl_digest_md5 the server needs authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider and a JAAS Server section, or use NodeAcl::Open",
        ),
        Z::SessionExpired | Z::ClientClosed => (
            ErrorKind::SessionExpired,
            true,
            "the ZooKeeper session ended; a new one is being set up",
        ),
        Z::ConnectionLoss | Z::Timeout | Z::NoHosts | Z::Throttled | Z::Custom(_) => (
            ErrorKind::Connection,
            true,
            "ZooKeeper is unreachable or slow; retrying",
        ),
        Z::BadArguments(_) | Z::Unimplemented | Z::NoChildrenForEphemerals => {
            (ErrorKind::Backend, false, "ZooKeeper refused the request")
        }
        _ => (ErrorKind::Backend, true, "unexpected ZooKeeper answer; retrying"),
    };
    Error::new(kind, format!("{op}: {e}: {hint}"))
        .with_retryable(retryable)
        .with_source(e)
}

/// Whether a ZooKeeper error means the session is gone for good (build a new client).
pub(crate) fn session_gone(e: &zk::Error) -> bool {
    matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed)
}

/// Whether a ZooKeeper error is a permanent refusal (no point retrying).
pub(crate) fn permanent(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::NoAuth
            | zk::Error::AuthFailed
            | zk::Error::InvalidAcl
            | zk::Error::BadArguments(_)
            | zk::Error::NoChildrenForEphemerals
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_kinds_with_retryability() {
        let e = map(zk::Error::NoAuth, "create");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("ACL"), "{e}");
        assert_eq!(
            map(zk::Error::ConnectionLoss, "x").kind(),
            ErrorKind::Connection
        );
        assert!(map(zk::Error::ConnectionLoss, "x").is_retryable());
        assert_eq!(
            map(zk::Error::SessionExpired, "x").kind(),
            ErrorKind::SessionExpired
        );
        assert!(session_gone(&zk::Error::ClientClosed));
        assert!(permanent(&zk::Error::NoAuth));
        assert!(!permanent(&zk::Error::NoNode));
        let e = map(zk::Error::InvalidAcl, "create");
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("SASLAuthenticationProvider"), "{e}");
    }
}
