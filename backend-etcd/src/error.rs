//! The ONE place where etcd-client errors become [`succession_core::Error`]s.
//!
//! etcd-client reports most server refusals as a gRPC status whose code is not always
//! telling (e.g. "requested lease not found" comes back as `Unknown` from a txn but as
//! `NotFound` from a revoke), so the messages are looked at as well.

use std::future::Future;
use std::time::Duration;

use succession_core::{Error, ErrorKind};
use tonic::Code;

/// Map an etcd-client error raised while doing `op` (e.g. "grant a lease").
pub(crate) fn map(op: &str, e: etcd_client::Error) -> Error {
    let text = e.to_string();
    let (kind, retryable, hint) = classify(&e);
    Error::new(kind, format!("etcd {op} failed: {text}{hint}"))
        .with_retryable(retryable)
        .with_source(e)
}

fn classify(e: &etcd_client::Error) -> (ErrorKind, bool, &'static str) {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => classify_status(s.code(), s.message()),
        E::TransportError(_) | E::IoError(_) => (
            ErrorKind::Connection,
            true,
            "; etcd is unreachable, retrying",
        ),
        E::LeaseKeepAliveError(m) | E::ElectError(m) | E::WatchError(m) => {
            if is_lease_gone(m) {
                (ErrorKind::SessionExpired, true, LEASE_GONE)
            } else {
                (
                    ErrorKind::Connection,
                    true,
                    "; the stream broke, reopening it",
                )
            }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) | E::InvalidMetadataValue(_) => {
            (
                ErrorKind::InvalidConfig,
                false,
                "; check the endpoints and credentials",
            )
        }
        _ => (ErrorKind::Backend, false, ""),
    }
}

const LEASE_GONE: &str =
    "; the lease is gone (expired, revoked or the store was wiped): a new lease is granted";

fn is_lease_gone(message: &str) -> bool {
    message.contains("lease not found")
}

fn classify_status(code: Code, message: &str) -> (ErrorKind, bool, &'static str) {
    let m = message.to_ascii_lowercase();
    if is_lease_gone(&m) {
        return (ErrorKind::SessionExpired, true, LEASE_GONE);
    }
    if m.contains("permission denied")
        || m.contains("authentication failed")
        || m.contains("user name is empty")
        || m.contains("invalid auth token")
    {
        return (
            ErrorKind::PermissionDenied,
            false,
            "; check the user, password and the user's role on this prefix",
        );
    }
    match code {
        Code::PermissionDenied | Code::Unauthenticated => (
            ErrorKind::PermissionDenied,
            false,
            "; check the user, password and the user's role on this prefix",
        ),
        Code::DeadlineExceeded => (ErrorKind::Timeout, true, ""),
        Code::Unavailable
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal => (ErrorKind::Connection, true, ""),
        // etcd reports "request timed out", "leader changed" and transport trouble as
        // Unknown; none of them is a semantic refusal, so trying again may help.
        Code::Unknown => (ErrorKind::Connection, true, ""),
        _ => (ErrorKind::Backend, false, ""),
    }
}

/// Whether an error says the lease does not exist (any more).
pub(crate) fn lease_gone(e: &Error) -> bool {
    e.kind() == ErrorKind::SessionExpired
}

/// Run one unary etcd request `fut` for `op`, failing with a retryable `Timeout` after
/// `timeout`. Requests are never cut by etcd-client's own timeout (that one also cuts
/// streams), only by this.
pub(crate) async fn request<T, F>(op: &str, timeout: Duration, fut: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| map(op, e)),
        Err(_) => Err(Error::timeout(format!(
            "etcd {op} got no answer within {timeout:?} (request timeout); retrying"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn errors_map_to_kinds() {
        let cases = [
            (
                status(Code::Unknown, "etcdserver: requested lease not found"),
                ErrorKind::SessionExpired,
                true,
            ),
            (
                status(Code::NotFound, "etcdserver: lease not found"),
                ErrorKind::SessionExpired,
                true,
            ),
            (
                etcd_client::Error::LeaseKeepAliveError("lease not found".into()),
                ErrorKind::SessionExpired,
                true,
            ),
            (
                etcd_client::Error::LeaseKeepAliveError("channel closed".into()),
                ErrorKind::Connection,
                true,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                status(Code::Unavailable, "etcdserver: no leader"),
                ErrorKind::Connection,
                true,
            ),
            (
                status(Code::Unknown, "etcdserver: request timed out"),
                ErrorKind::Connection,
                true,
            ),
            (
                status(Code::DeadlineExceeded, "context deadline exceeded"),
                ErrorKind::Timeout,
                true,
            ),
            (
                status(Code::InvalidArgument, "etcdserver: key is not provided"),
                ErrorKind::Backend,
                false,
            ),
            (
                etcd_client::Error::InvalidArgs("empty endpoints".into()),
                ErrorKind::InvalidConfig,
                false,
            ),
        ];
        for (e, kind, retry) in cases {
            let text = e.to_string();
            let m = map("test", e);
            assert_eq!(m.kind(), kind, "{text}");
            assert_eq!(m.is_retryable(), retry, "{text}");
            assert!(m.to_string().contains("etcd test failed"), "{m}");
        }
    }

    #[tokio::test]
    async fn request_times_out_as_retryable_timeout() {
        let e = request::<(), _>("get", Duration::from_millis(10), std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_retryable());
    }
}
