//! The ONE place where etcd-client errors become [`succession_core::Error`]s.
//!
//! etcd-client reports most server refusals as a gRPC status whose code is not always
//! telling (e.g. "requested lease not found" comes back as `Unknown` from a txn but as
//! `NotFound` from a revoke), so the messages are looked at as well.

use std::future::Future;
use std::time::Duration;

use succession_core::text::Human;
use succession_core::{Error, ErrorKind};
use tonic::Code;

use crate::config::TlsSettings;

/// Map an etcd-client error raised while doing `op` (e.g. "grant a lease").
pub(crate) fn map(op: &str, e: etcd_client::Error) -> Error {
    map_in(op, e, None)
}

/// [`map`], knowing the connection's TLS settings (`None`: plain text or unknown), so that
/// a connection the server closes right after the TLS handshake (how etcd refuses a
/// missing or unaccepted client certificate with TLS 1.3) is explained.
pub(crate) fn map_in(op: &str, e: etcd_client::Error, tls: Option<&TlsSettings>) -> Error {
    let mut text = match &e {
        // tonic's Display of a status ends in the Rust Debug form of its source; say the
        // code and message, and the causes in words (below).
        etcd_client::Error::GRpcStatus(s) => format!(
            "grpc request error: {}: {}",
            s.code().description(),
            s.message()
        ),
        _ => e.to_string(),
    };
    // A transport error's Display is only "transport error": the cause (e.g. a TLS
    // failure) is in its source chain, which etcd-client does not expose as `source()`.
    if matches!(
        e,
        etcd_client::Error::TransportError(_)
            | etcd_client::Error::IoError(_)
            | etcd_client::Error::GRpcStatus(_)
    ) {
        for c in causes(&e) {
            if !text.contains(c.as_str()) {
                text = format!("{text}: {c}");
            }
        }
    }
    if let Some((kind, retryable, hint)) = tls_problem(&e, &text, tls) {
        return Error::new(kind, format!("etcd {op} failed: {text}; {hint}"))
            .with_retryable(retryable)
            .with_source(e);
    }
    let (kind, retryable, hint) = classify(&e);
    Error::new(kind, format!("etcd {op} failed: {text}{hint}"))
        .with_retryable(retryable)
        .with_source(e)
}

/// The texts of the causes of `e`, outermost first.
fn causes(e: &etcd_client::Error) -> Vec<String> {
    use std::error::Error as _;
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => t.source(),
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::IoError(io) => io.source(),
        _ => None,
    };
    let mut out = Vec::new();
    while let Some(c) = next {
        out.push(c.to_string());
        next = c.source();
    }
    out
}

/// A TLS or certificate problem, told by what rustls/tonic say (`text` is the error's text
/// with its causes). Certificate problems stay retryable `Connection` errors (a server's
/// certificate may be rotated); the hint says what to check. PEM that cannot be parsed is
/// `InvalidConfig`.
fn tls_problem(
    e: &etcd_client::Error,
    text: &str,
    tls: Option<&TlsSettings>,
) -> Option<(ErrorKind, bool, String)> {
    let t = text.to_ascii_lowercase();
    let t: String = t.chars().filter(|c| *c != '_').collect();
    let conn = |hint: String| Some((ErrorKind::Connection, true, hint));
    if t.contains("invalid peer certificate") || t.contains("invalidcertificate(") {
        let hint = if t.contains("unknownissuer") {
            "TLS certificate problem: the etcd server's certificate is not signed by the CA \
             given with tls_ca_pem; check the CA file (it must hold the CA that signed etcd's \
             --cert-file)"
        } else if t.contains("notvalidforname") || t.contains("not valid for name") {
            "TLS certificate problem: the etcd server's certificate does not name the host \
             connected to; check the server name (use an endpoint host the certificate names, \
             or set tls_domain_name to one of its names)"
        } else if t.contains("expired") || t.contains("notvalidyet") {
            "TLS certificate problem: the etcd server's certificate is expired or not yet \
             valid; check its dates and this machine's clock"
        } else {
            "TLS certificate problem: the etcd server's certificate was rejected; check the CA \
             file (tls_ca_pem) and the server name (tls_domain_name)"
        };
        return conn(hint.to_owned());
    }
    if t.contains("received fatal alert") || t.contains("alertreceived(") {
        let no_identity = tls.is_some_and(|t| t.identity_pem.is_none());
        let cert_alert = ["badcertificate", "unknownca", "certificaterequired"]
            .iter()
            .any(|a| t.contains(a));
        let hint = if t.contains("certificaterequired") || (cert_alert && no_identity) {
            "TLS certificate problem: the etcd server requires a client certificate \
             (--client-cert-auth); set tls_identity_pem(cert, key) with a certificate signed \
             by the CA in etcd's --trusted-ca-file"
        } else if t.contains("badcertificate")
            || t.contains("unknownca")
            || t.contains("certificateexpired")
            || t.contains("unsupportedcertificate")
        {
            "TLS certificate problem: the etcd server does not accept our client certificate; \
             check that tls_identity_pem holds a valid client certificate signed by the CA in \
             etcd's --trusted-ca-file"
        } else {
            "TLS handshake refused by the etcd server; check the certificates (tls_ca_pem, \
             tls_identity_pem) and that the endpoint serves TLS"
        };
        return conn(hint.to_owned());
    }
    if t.contains("http/2 was not negotiated") || t.contains("corrupt message") {
        return conn(
            "TLS handshake failed; check that the endpoint is an etcd client URL serving TLS \
             (https) and the certificates (tls_ca_pem, tls_identity_pem)"
                .to_owned(),
        );
    }
    if t.contains("error parsing tls certificate") || t.contains("private key") {
        return Some((
            ErrorKind::InvalidConfig,
            false,
            "a TLS certificate or key could not be parsed; check the PEM given with \
             tls_ca_pem / tls_identity_pem (the key must be PKCS#8, PKCS#1 or SEC1 PEM)"
                .to_owned(),
        ));
    }
    // TLS 1.3: the client's handshake completes before the server checks the client
    // certificate; a refused one closes the connection under the first request, which then
    // fails as cancelled ("connection closed") or with a broken pipe, nothing more said.
    let tls = tls?;
    let closed = matches!(e, etcd_client::Error::GRpcStatus(s)
            if matches!(s.code(), Code::Cancelled | Code::Unavailable | Code::Unknown))
        && ["connection closed", "broken pipe", "connection reset"]
            .iter()
            .any(|m| t.contains(m));
    if !closed {
        return None;
    }
    let hint = if tls.identity_pem.is_none() {
        "the server closed the TLS connection: if etcd requires client certificates \
         (--client-cert-auth), set tls_identity_pem(cert, key) with a client certificate \
         signed by the CA in etcd's --trusted-ca-file"
    } else {
        "the server closed the TLS connection: if this persists, check that the client \
         certificate (tls_identity_pem) is signed by the CA in etcd's --trusted-ca-file, valid \
         now, and allowed for client authentication"
    };
    conn(hint.to_owned())
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
/// streams), only by this. `tls`: the connection's TLS settings (see [`map_in`]).
pub(crate) async fn request_in<T, F>(
    op: &str,
    timeout: Duration,
    fut: F,
    tls: Option<&TlsSettings>,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| map_in(op, e, tls)),
        Err(_) => Err(Error::timeout(format!(
            "etcd {op} got no answer within {} (request timeout); retrying",
            Human(timeout)
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

    #[test]
    fn tls_failures_name_the_certificate_problem() {
        let tls = TlsSettings::default();
        let cases = [
            (
                status(Code::Unavailable, "invalid peer certificate: UnknownIssuer"),
                None,
                ErrorKind::Connection,
                "not signed by the CA given with tls_ca_pem",
            ),
            (
                status(
                    Code::Unavailable,
                    "invalid peer certificate: certificate not valid for name \"x\"",
                ),
                None,
                ErrorKind::Connection,
                "check the server name",
            ),
            (
                status(
                    Code::Unavailable,
                    "received fatal alert: CertificateRequired",
                ),
                None,
                ErrorKind::Connection,
                "requires a client certificate",
            ),
            (
                status(Code::Unavailable, "received fatal alert: BadCertificate"),
                None,
                ErrorKind::Connection,
                "does not accept our client certificate",
            ),
            (
                status(Code::Unknown, "received fatal alert: BadCertificate"),
                Some(&tls),
                ErrorKind::Connection,
                "requires a client certificate",
            ),
            (
                status(Code::Cancelled, "operation was canceled: connection closed"),
                Some(&tls),
                ErrorKind::Connection,
                "set tls_identity_pem",
            ),
            (
                status(
                    Code::Unknown,
                    "transport error: stream closed because of a broken pipe",
                ),
                Some(&tls),
                ErrorKind::Connection,
                "set tls_identity_pem",
            ),
        ];
        for (e, tls, kind, hint) in cases {
            let m = map_in("test", e, tls);
            assert_eq!(m.kind(), kind, "{m}");
            assert!(m.is_retryable(), "{m}");
            assert!(m.to_string().contains(hint), "{hint:?} not in {m}");
            assert!(m.to_string().contains("certificate"), "{m}");
        }
        // Without TLS a closed connection is an ordinary connection error.
        let m = map(
            "test",
            status(Code::Cancelled, "operation was canceled: connection closed"),
        );
        assert!(!m.to_string().contains("TLS"), "{m}");
        assert!(m.is_retryable());
    }

    #[tokio::test]
    async fn request_times_out_as_retryable_timeout() {
        let e = request_in::<(), _>(
            "get",
            Duration::from_millis(10),
            std::future::pending(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_retryable());
    }
}
