//! [`EtcdConfig`] and its builder: every value is checked before anything is contacted.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use succession_core::text::Human;
use succession_core::{validate, Error, Result};

/// Default lease TTL: 10 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default timeout for establishing a connection to one endpoint: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout for one unary etcd request (get, txn, grant, revoke): 5 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest lease TTL accepted: 2 s (etcd's own minimum with default settings is
/// about 1.5 s, rounded up to whole seconds).
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// The longest lease TTL accepted (etcd's `MaxLeaseTTL`).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// Everything an [`EtcdElection`](crate::EtcdElection) (or an [`EtcdRecord`](crate::EtcdRecord))
/// needs to know. Build it with [`EtcdConfig::builder`].
///
/// `Debug` never shows the password or TLS key material.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) id: String,
    pub(crate) ttl: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    /// `Some` exactly when the endpoints are `https://` (only possible with feature `tls`).
    /// Shared: every election of a session holds a copy of its configuration.
    pub(crate) tls: Option<Arc<TlsSettings>>,
}

/// The TLS settings of a configuration. `Debug` shows sizes and presence, never PEM data.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// PEM of the CA(s) that signed the etcd server certificate.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate (chain) and its private key.
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name checked in the server certificate instead of the endpoint's host.
    pub(crate) domain_name: Option<String>,
}

impl TlsSettings {
    fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.identity_pem.is_none() && self.domain_name.is_none()
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tls")
            .field(
                "ca",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|ca| format!("<{} bytes>", ca.len())),
            )
            .field("identity", &self.identity_pem.as_ref().map(|_| "<hidden>"))
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

/// `Debug` with the password hidden, for the config and its builder (same field names).
macro_rules! debug_hiding_password {
    ($t:ident) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("endpoints", &self.endpoints)
                    .field("prefix", &self.prefix)
                    .field("id", &self.id)
                    .field("ttl", &self.ttl)
                    .field("connect_timeout", &self.connect_timeout)
                    .field("request_timeout", &self.request_timeout)
                    .field("user", &self.user)
                    .field("password", &self.password.as_ref().map(|_| "<hidden>"))
                    .field("tls", &self.tls)
                    .finish()
            }
        }
    };
}

debug_hiding_password!(EtcdConfig);

/// `Debug` with the password hidden, for the session config and its builder.
macro_rules! debug_session_hiding_password {
    ($t:ident) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("endpoints", &self.endpoints)
                    .field("ttl", &self.ttl)
                    .field("connect_timeout", &self.connect_timeout)
                    .field("request_timeout", &self.request_timeout)
                    .field("user", &self.user)
                    .field("password", &self.password.as_ref().map(|_| "<hidden>"))
                    .field("tls", &self.tls)
                    .finish()
            }
        }
    };
}

/// What an [`EtcdSession`](crate::EtcdSession) needs: an [`EtcdConfig`] without prefix and
/// id (endpoints, lease TTL, timeouts, credentials, TLS). Build it with
/// [`EtcdSessionConfig::builder`]; the values are checked exactly as for [`EtcdConfig`].
///
/// `Debug` never shows the password or TLS key material.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdSessionConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) ttl: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls: Option<Arc<TlsSettings>>,
}

debug_session_hiding_password!(EtcdSessionConfig);

impl EtcdSessionConfig {
    /// A builder with the defaults: no endpoint (required), TTL [`DEFAULT_TTL`], connect
    /// timeout [`DEFAULT_CONNECT_TIMEOUT`], request timeout [`DEFAULT_REQUEST_TIMEOUT`], no
    /// credentials.
    pub fn builder() -> EtcdSessionConfigBuilder {
        EtcdSessionConfigBuilder::default()
    }

    /// The etcd client endpoints, normalized as in [`EtcdConfig::endpoints`].
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The lease TTL (whole seconds, at least [`MIN_TTL`]).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The timeout for establishing a connection to one endpoint.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The timeout of one unary request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The user name, when authentication is configured.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True when the connection to etcd uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// How often the lease is renewed: TTL / 3.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// The safety margin by which leadership is dropped BEFORE the server could expire the
    /// lease: `max(TTL / 6, 300 ms)`.
    pub fn safety_margin(&self) -> Duration {
        (self.ttl / 6).max(Duration::from_millis(300))
    }

    /// The configuration of one election on this session: `prefix` and `id` checked as by
    /// [`EtcdConfigBuilder::build`].
    pub(crate) fn election_config(&self, prefix: &str, id: &str) -> Result<EtcdConfig> {
        check_prefix_and_id(prefix, id)?;
        Ok(EtcdConfig::from_parts(
            self.clone(),
            prefix.to_owned(),
            id.to_owned(),
        ))
    }
}

impl EtcdConfig {
    /// A builder with the defaults: no endpoint, no prefix, no id (all three required),
    /// TTL [`DEFAULT_TTL`], connect timeout [`DEFAULT_CONNECT_TIMEOUT`], request timeout
    /// [`DEFAULT_REQUEST_TIMEOUT`], no credentials.
    pub fn builder() -> EtcdConfigBuilder {
        EtcdConfigBuilder::default()
    }

    /// The etcd client endpoints, normalized to `http://host:port` (or `https://host:port`
    /// when TLS is configured).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The election prefix, e.g. `/services/scheduler/leader`. Candidate keys are
    /// `<prefix>/<lease id in hex>`; the epoch record is the key `<prefix>` itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This participant's id (the value of its candidate key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease TTL (whole seconds, at least [`MIN_TTL`]).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The timeout for establishing a connection to one endpoint.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The timeout of one unary request. Streams (watches, lease keep-alives) are not cut by
    /// it; the lease keeper has its own deadlines.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The user name, when authentication is configured.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True when the connection to etcd uses TLS (`https://` endpoints; feature `tls`).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The name checked in the server certificate when set with
    /// [`EtcdConfigBuilder::tls_domain_name`] (otherwise each endpoint's host is checked).
    pub fn tls_domain_name(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.domain_name.as_deref())
    }

    /// How often the lease is renewed: TTL / 3.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// The safety margin by which leadership is dropped BEFORE the server could expire the
    /// lease: `max(TTL / 6, 300 ms)`. See the crate docs ("Lease safety margin").
    pub fn safety_margin(&self) -> Duration {
        (self.ttl / 6).max(Duration::from_millis(300))
    }

    /// The session part (everything but prefix and id).
    pub(crate) fn session(&self) -> EtcdSessionConfig {
        EtcdSessionConfig {
            endpoints: self.endpoints.clone(),
            ttl: self.ttl,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            user: self.user.clone(),
            password: self.password.clone(),
            tls: self.tls.clone(),
        }
    }

    pub(crate) fn from_parts(s: EtcdSessionConfig, prefix: String, id: String) -> EtcdConfig {
        EtcdConfig {
            endpoints: s.endpoints,
            prefix,
            id,
            ttl: s.ttl,
            connect_timeout: s.connect_timeout,
            request_timeout: s.request_timeout,
            user: s.user,
            password: s.password,
            tls: s.tls,
        }
    }
}

fn check_prefix_and_id(prefix: &str, id: &str) -> Result<()> {
    validate::store_path(prefix, "etcd prefix")?;
    validate::participant_id(id)
}

/// Builds an [`EtcdSessionConfig`]; [`build`](EtcdSessionConfigBuilder::build) checks every
/// value (the same checks as [`EtcdConfigBuilder::build`], which uses this builder).
#[derive(Clone, Default)]
pub struct EtcdSessionConfigBuilder {
    endpoints: Vec<String>,
    ttl: Option<Duration>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    user: Option<String>,
    password: Option<String>,
    tls: TlsSettings,
}

debug_session_hiding_password!(EtcdSessionConfigBuilder);

/// Whether this build can talk TLS to etcd (cargo feature `tls`).
const TLS_BUILT_IN: bool = cfg!(feature = "tls");

const ENABLE_TLS: &str = "enable the `tls` feature of succession-etcd (or of succession), e.g. \
     succession-etcd = { version = \"0.1\", features = [\"tls\"] }";

impl EtcdSessionConfigBuilder {
    /// Add one endpoint (`http://127.0.0.1:2379` or `127.0.0.1:2379`). Required: at least one.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Add several endpoints (members of one cluster; requests are balanced over them).
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// The lease TTL: whole seconds, at least 2 s. Default 10 s. Leadership is dropped at
    /// the latest `TTL - max(TTL/6, 300 ms)` after the last answered renewal was sent;
    /// a crashed leader is replaced within about TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The connect timeout per endpoint. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The timeout of one unary request. Default 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Authenticate as `user` with `password` (etcd auth). Default: no authentication.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// TLS: the PEM of the CA certificate(s) that signed the etcd server's certificate
    /// (e.g. the contents of etcd's `--trusted-ca-file`, or `ca.pem`). Required for
    /// `https://` endpoints; endpoints given as `host:port` then become `https://`.
    /// Needs the cargo feature `tls` (without it, [`build`](Self::build) refuses TLS
    /// settings and says so).
    pub fn tls_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pem = Some(ca_pem.into());
        self
    }

    /// TLS client certificate authentication (etcd's `--client-cert-auth`): the client
    /// certificate (chain) and its private key, both PEM. Optional; needs
    /// [`tls_ca_pem`](Self::tls_ca_pem) and the cargo feature `tls`.
    pub fn tls_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity_pem = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// TLS: the name to check in the server certificate instead of each endpoint's host
    /// (e.g. `etcd.internal` when connecting by IP to a server whose certificate names only
    /// its DNS name). Optional; needs [`tls_ca_pem`](Self::tls_ca_pem) and the cargo
    /// feature `tls`.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls.domain_name = Some(name.into());
        self
    }

    /// Check every value and build the configuration.
    ///
    /// Errors ([`InvalidConfig`](succession_core::ErrorKind::InvalidConfig)): no endpoint or
    /// a malformed one, a TTL that
    /// is zero, below 2 s or not whole seconds, zero timeouts, an empty user name; TLS
    /// settings or `https://` endpoints without the `tls` feature, `https://` without a CA,
    /// `http://` and `https://` endpoints mixed, PEM data that is not PEM.
    pub fn build(self) -> Result<EtcdSessionConfig> {
        if self.endpoints.is_empty() {
            return Err(Error::invalid_config(
                "no etcd endpoint given; add one with .endpoint(\"http://127.0.0.1:2379\")",
            ));
        }
        let mut parsed = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            parsed.push(parse_endpoint(e)?);
        }
        let tls = check_tls(&self.endpoints, &parsed, self.tls)?.map(Arc::new);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = parsed
            .iter()
            .map(|(_, host_port)| format!("{scheme}://{host_port}"))
            .collect();
        let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
        validate::duration(ttl, "etcd lease TTL", Some(MIN_TTL), Some(MAX_TTL))?;
        if ttl.subsec_nanos() != 0 {
            return Err(Error::invalid_config(format!(
                "etcd lease TTL is {}, but etcd leases are whole seconds; use e.g. {}",
                Human(ttl),
                Human(Duration::from_secs(ttl.as_secs().max(2)))
            )));
        }
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        validate::duration(connect_timeout, "etcd connect timeout", None, None)?;
        let request_timeout = self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        validate::duration(request_timeout, "etcd request timeout", None, None)?;
        if let Some(user) = &self.user {
            if user.trim().is_empty() {
                return Err(Error::invalid_config(
                    "etcd user name is empty; give the user name for .credentials(user, password)",
                ));
            }
        }
        Ok(EtcdSessionConfig {
            endpoints,
            ttl,
            connect_timeout,
            request_timeout,
            user: self.user,
            password: self.password,
            tls,
        })
    }
}

/// Builds an [`EtcdConfig`]; [`build`](EtcdConfigBuilder::build) checks every value.
#[derive(Clone, Default)]
pub struct EtcdConfigBuilder {
    session: EtcdSessionConfigBuilder,
    prefix: Option<String>,
    id: Option<String>,
}

impl fmt::Debug for EtcdConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfigBuilder")
            .field("prefix", &self.prefix)
            .field("id", &self.id)
            .field("session", &self.session)
            .finish()
    }
}

impl EtcdConfigBuilder {
    /// Add one endpoint (`http://127.0.0.1:2379` or `127.0.0.1:2379`). Required: at least one.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.session = self.session.endpoint(endpoint);
        self
    }

    /// Add several endpoints (members of one cluster; requests are balanced over them).
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.session = self.session.endpoints(endpoints);
        self
    }

    /// The lease TTL: whole seconds, at least 2 s. Default 10 s. Leadership is dropped at
    /// the latest `TTL - max(TTL/6, 300 ms)` after the last answered renewal was sent;
    /// a crashed leader is replaced within about TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.session = self.session.ttl(ttl);
        self
    }

    /// The connect timeout per endpoint. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.session = self.session.connect_timeout(timeout);
        self
    }

    /// The timeout of one unary request. Default 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.session = self.session.request_timeout(timeout);
        self
    }

    /// Authenticate as `user` with `password` (etcd auth). Default: no authentication.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.session = self.session.credentials(user, password);
        self
    }

    /// TLS: the PEM of the CA certificate(s) that signed the etcd server's certificate
    /// (e.g. the contents of etcd's `--trusted-ca-file`, or `ca.pem`). Required for
    /// `https://` endpoints; endpoints given as `host:port` then become `https://`.
    /// Needs the cargo feature `tls` (without it, [`build`](Self::build) refuses TLS
    /// settings and says so).
    pub fn tls_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.session = self.session.tls_ca_pem(ca_pem);
        self
    }

    /// TLS client certificate authentication (etcd's `--client-cert-auth`): the client
    /// certificate (chain) and its private key, both PEM. Optional; needs
    /// [`tls_ca_pem`](Self::tls_ca_pem) and the cargo feature `tls`.
    pub fn tls_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.session = self.session.tls_identity_pem(cert_pem, key_pem);
        self
    }

    /// TLS: the name to check in the server certificate instead of each endpoint's host
    /// (e.g. `etcd.internal` when connecting by IP to a server whose certificate names only
    /// its DNS name). Optional; needs [`tls_ca_pem`](Self::tls_ca_pem) and the cargo
    /// feature `tls`.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.session = self.session.tls_domain_name(name);
        self
    }

    /// The election prefix: absolute, no trailing slash (e.g. `/services/scheduler/leader`).
    /// Required. Do not nest elections (`/a` and `/a/b`): as in Go's `concurrency.Election`,
    /// an election's range `<prefix>/` would contain the other one's keys.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// This participant's id, shown to others as the leader's id. Required, not blank.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Check every value and build the configuration.
    ///
    /// Errors ([`InvalidConfig`](succession_core::ErrorKind::InvalidConfig)): those of
    /// [`EtcdSessionConfigBuilder::build`], and a missing, relative or trailing-slash prefix,
    /// a blank id.
    pub fn build(self) -> Result<EtcdConfig> {
        let session = self.session.build()?;
        let prefix = self.prefix.ok_or_else(|| {
            Error::invalid_config(
                "no etcd prefix given; set one with .prefix(\"/services/my-app/leader\")",
            )
        })?;
        let id = self.id.ok_or_else(|| {
            Error::invalid_config(
                "no participant id given; set one with .id(\"hostname-pid\") (non-empty)",
            )
        })?;
        check_prefix_and_id(&prefix, &id)?;
        Ok(EtcdConfig::from_parts(session, prefix, id))
    }
}

/// The scheme an endpoint was given with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    /// `host:port`: `https` when TLS is configured, else `http`.
    Bare,
}

/// Check the TLS settings against the endpoints' schemes and this build's features.
/// `Some` when the connection uses TLS.
fn check_tls(
    raw: &[String],
    parsed: &[(Scheme, String)],
    tls: TlsSettings,
) -> Result<Option<TlsSettings>> {
    let https = parsed.iter().position(|(s, _)| *s == Scheme::Https);
    let http = parsed.iter().position(|(s, _)| *s == Scheme::Http);
    if https.is_none() && tls.is_empty() {
        return Ok(None);
    }
    if !TLS_BUILT_IN {
        let what = match https {
            Some(i) => format!("etcd endpoint {:?} uses TLS (https)", raw[i]),
            None => "TLS settings (tls_ca_pem / tls_identity_pem / tls_domain_name) are given"
                .to_owned(),
        };
        return Err(Error::invalid_config(format!(
            "{what}, but this build of succession-etcd has no TLS support; {ENABLE_TLS}"
        )));
    }
    if let (Some(s), Some(p)) = (https, http) {
        return Err(Error::invalid_config(format!(
            "etcd endpoints mix TLS and plain text: {:?} is https, {:?} is http; \
             all members of one cluster are reached the same way, use https:// for all",
            raw[s], raw[p]
        )));
    }
    if let Some(p) = http {
        return Err(Error::invalid_config(format!(
            "TLS settings are given, but etcd endpoint {:?} is plain http; \
             use https://HOST:PORT (or HOST:PORT) with TLS",
            raw[p]
        )));
    }
    let Some(ca) = &tls.ca_pem else {
        let what = match https {
            Some(i) => format!("etcd endpoint {:?} uses TLS (https)", raw[i]),
            None => "TLS client settings are given".to_owned(),
        };
        return Err(Error::invalid_config(format!(
            "{what}, but no CA is given to check the server certificate; \
             set .tls_ca_pem(<PEM of the CA that signed the etcd server certificate>)"
        )));
    };
    check_pem(ca, "CERTIFICATE", "the TLS CA (tls_ca_pem)")?;
    if let Some((cert, key)) = &tls.identity_pem {
        check_pem(
            cert,
            "CERTIFICATE",
            "the TLS client certificate (tls_identity_pem)",
        )?;
        check_pem(key, "PRIVATE KEY", "the TLS client key (tls_identity_pem)")?;
    }
    if let Some(name) = &tls.domain_name {
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_config(format!(
                "TLS domain name {name:?} is blank or contains whitespace; give the DNS name \
                 (or IP address) the etcd server certificate names, e.g. \"etcd.internal\""
            )));
        }
    }
    Ok(Some(tls))
}

/// A sanity check (not a parse) that `pem` is PEM holding a `-----BEGIN …{label}-----` block.
fn check_pem(pem: &[u8], label: &str, what: &str) -> Result<()> {
    if pem.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::invalid_config(format!(
            "{what} is empty; pass the contents of the PEM file, not its path"
        )));
    }
    let text = String::from_utf8_lossy(pem);
    let has_block = text.split("-----BEGIN ").skip(1).any(|rest| {
        rest.split_once("-----")
            .is_some_and(|(header, _)| header.ends_with(label))
    });
    if !has_block {
        return Err(Error::invalid_config(format!(
            "{what} is not PEM with a \"-----BEGIN …{label}-----\" block ({} bytes); \
             pass the contents of the PEM file (not its path, not DER)",
            pem.len()
        )));
    }
    Ok(())
}

/// Check one endpoint and split it into its scheme and `host:port`.
fn parse_endpoint(raw: &str) -> Result<(Scheme, String)> {
    let bad = |why: &str| {
        Error::invalid_config(format!(
            "etcd endpoint {raw:?} is malformed ({why}); use http://HOST:PORT such as http://127.0.0.1:2379 (https:// with TLS)"
        ))
    };
    let e = raw.trim();
    if e.is_empty() {
        return Err(bad("empty"));
    }
    let (scheme, rest) = match e.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((scheme, _)) => {
            return Err(bad(&format!("unsupported scheme {scheme:?}")));
        }
        None => (Scheme::Bare, e),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(bad("it has a path; give only host and port"));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("no port after the IPv6 address"))?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(':') && !rest.starts_with('[') {
        return Err(bad("IPv6 addresses go in brackets, e.g. http://[::1]:2379"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad(&format!("port {port:?} is not a number in 1..=65535"))),
    }
    Ok((scheme, rest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use succession_core::ErrorKind;

    fn base() -> EtcdConfigBuilder {
        EtcdConfig::builder()
            .endpoint("127.0.0.1:2379")
            .prefix("/svc/leader")
            .id("a")
    }

    #[test]
    fn defaults_and_normalized_endpoints() {
        let c = base().endpoint("http://[::1]:2380/").build().unwrap();
        assert_eq!(
            c.endpoints(),
            ["http://127.0.0.1:2379", "http://[::1]:2380"]
        );
        assert_eq!(c.ttl(), DEFAULT_TTL);
        assert_eq!(
            c.renew_interval(),
            Duration::from_millis(3333) + Duration::from_nanos(333_333)
        );
        assert_eq!(c.safety_margin(), Duration::from_secs(10) / 6);
        let short = base().ttl(Duration::from_secs(2)).build().unwrap();
        assert_eq!(short.safety_margin(), Duration::from_secs(2) / 6);
        assert!(short.safety_margin() >= Duration::from_millis(300));
    }

    #[test]
    fn bad_values_are_refused_with_a_hint() {
        let cases: Vec<(EtcdConfigBuilder, &str)> = vec![
            (
                EtcdConfig::builder().prefix("/a").id("a"),
                "no etcd endpoint",
            ),
            (base().endpoint("localhost"), "no port"),
            (base().endpoint("http://h:99999"), "1..=65535"),
            (base().endpoint("http://h:1/x"), "path"),
            (base().endpoint("ftp://h:1"), "scheme"),
            (base().endpoint("https://h:1"), "TLS"),
            (base().endpoint("::1:2379"), "brackets"),
            (base().endpoint(""), "empty"),
            (base().prefix("svc"), "relative"),
            (base().prefix("/svc/"), "trailing"),
            (base().id("  "), "non-empty"),
            (base().ttl(Duration::ZERO), "zero"),
            (base().ttl(Duration::from_secs(1)), "at least 2s"),
            (base().ttl(Duration::from_millis(2500)), "whole seconds"),
            (
                base().connect_timeout(Duration::ZERO),
                "connect timeout is zero",
            ),
            (
                base().request_timeout(Duration::ZERO),
                "request timeout is zero",
            ),
            (base().credentials("", "pw"), "user name is empty"),
        ];
        for (b, hint) in cases {
            let e = b.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(hint), "{hint:?} not in {e}");
        }
        let e = EtcdConfig::builder()
            .endpoint("h:1")
            .id("a")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("no etcd prefix"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let b = base().credentials("root", "s3cret");
        assert!(!format!("{b:?}").contains("s3cret"));
        let c = b.build().unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<hidden>") && dbg.contains("root"), "{dbg}");
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nQ0FTRUNSRVQ=\n-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nQ0VSVFNFQ1JFVA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nS0VZU0VDUkVU\n-----END PRIVATE KEY-----\n";

    fn tls_base() -> EtcdConfigBuilder {
        EtcdConfig::builder()
            .endpoint("https://127.0.0.1:2379")
            .prefix("/svc/leader")
            .id("a")
            .tls_ca_pem(CA)
    }

    #[test]
    fn debug_never_shows_tls_key_material() {
        let b = tls_base()
            .tls_identity_pem(CERT, KEY)
            .tls_domain_name("etcd.internal");
        let dbg = format!("{b:?}");
        for secret in ["S0VZU0VDUkVU", "Q0VSVFNFQ1JFVA", "Q0FTRUNSRVQ", "BEGIN"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains(&format!("<{} bytes>", CA.len())), "{dbg}");
        assert!(dbg.contains("identity: Some(\"<hidden>\")"), "{dbg}");
        #[cfg(feature = "tls")]
        {
            let c = b.build().unwrap();
            let dbg = format!("{c:?}");
            for secret in ["S0VZU0VDUkVU", "Q0VSVFNFQ1JFVA", "Q0FTRUNSRVQ", "BEGIN"] {
                assert!(!dbg.contains(secret), "{secret} in {dbg}");
            }
            assert!(
                dbg.contains(&format!(
                    "tls: Some(tls {{ ca: Some(\"<{} bytes>\"), identity: Some(\"<hidden>\"), \
                     domain_name: Some(\"etcd.internal\") }})",
                    CA.len()
                )),
                "{dbg}"
            );
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_tls_is_refused_with_a_hint() {
        let cases = [
            (base().endpoint("https://h:1"), "\"https://h:1\" uses TLS"),
            (base().tls_ca_pem(CA), "TLS settings"),
            (base().tls_domain_name("x"), "TLS settings"),
            (tls_base(), "uses TLS"),
        ];
        for (b, hint) in cases {
            let e = b.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            let text = e.to_string();
            assert!(text.contains(hint), "{hint:?} not in {text}");
            assert!(text.contains("enable the `tls` feature"), "{text}");
        }
        assert!(!base().build().unwrap().uses_tls());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_endpoints_and_settings_are_checked() {
        let c = tls_base()
            .endpoint("127.0.0.1:2380")
            .tls_identity_pem(CERT, KEY)
            .build()
            .unwrap();
        assert!(c.uses_tls());
        assert_eq!(
            c.endpoints(),
            ["https://127.0.0.1:2379", "https://127.0.0.1:2380"]
        );
        assert_eq!(c.tls_domain_name(), None);
        let c = base()
            .tls_ca_pem(CA)
            .tls_domain_name("etcd")
            .build()
            .unwrap();
        assert_eq!(c.endpoints(), ["https://127.0.0.1:2379"]);
        assert_eq!(c.tls_domain_name(), Some("etcd"));
        assert!(!base().build().unwrap().uses_tls());

        let cases: Vec<(EtcdConfigBuilder, &str)> = vec![
            (tls_base().endpoint("http://h:1"), "mix TLS and plain text"),
            (base().endpoint("https://h:1"), "no CA is given"),
            (
                tls_base().endpoints(["h:1", "http://h:2", "https://h:3"]),
                "mix TLS and plain text",
            ),
            (
                base().tls_ca_pem(CA).endpoint("http://h:1"),
                "is plain http",
            ),
            (
                EtcdConfig::builder()
                    .endpoint("https://h:1")
                    .prefix("/a")
                    .id("a"),
                "\"https://h:1\" uses TLS (https), but no CA is given",
            ),
            (base().tls_identity_pem(CERT, KEY), "no CA is given"),
            (tls_base().tls_ca_pem(""), "TLS CA (tls_ca_pem) is empty"),
            (tls_base().tls_ca_pem("/etc/ca.pem"), "is not PEM"),
            (tls_base().tls_ca_pem(KEY), "is not PEM"),
            (
                tls_base().tls_identity_pem(KEY, CERT),
                "client certificate (tls_identity_pem) is not PEM",
            ),
            (
                tls_base().tls_identity_pem(CERT, " \n"),
                "client key (tls_identity_pem) is empty",
            ),
            (tls_base().tls_domain_name(" "), "TLS domain name"),
        ];
        for (b, hint) in cases {
            let e = b.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(hint), "{hint:?} not in {e}");
        }
    }
}
