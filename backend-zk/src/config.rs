//! [`ZkConfig`]: what a ZooKeeper latch participant needs, validated before anything connects.

use std::fmt;
use std::time::Duration;

use succession_core::{validate, Error, Result};

/// The smallest session timeout accepted (ZooKeeper's default minimum is 2 x tickTime; with
/// the common tickTime of 2 s that is 4 s, with tickTime 500 ms it is 1 s).
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest session timeout accepted (ZooKeeper's default maximum is 20 x tickTime).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Default session timeout.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Default connection timeout (how long one connection attempt may take).
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// What a leader does while its connection is in doubt (ZooKeeper `Disconnected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConnectionPolicy {
    /// Drop leadership the moment the connection is in doubt and take it back (with a new
    /// term) once reconnected, if our node is still first. Curator's standard policy. Safe:
    /// the leader never acts while another may have been elected.
    #[default]
    Standard,
    /// Keep leading through short connection blips: leadership is dropped only when the
    /// connection has been lost for a quarter of the session timeout (or the session ends).
    /// The server expires a silent session one session timeout after it last heard from us,
    /// and the client notices a silent connection at most 2/3 of the session timeout after
    /// that, so a quarter leaves a margin before any successor can be elected. A connection
    /// the client claims while ZooKeeper answers nothing (a reconnect cut off mid-handshake)
    /// is in doubt too: from the last contact, once the contact probe has gone unanswered
    /// for the client's connection timeout plus one probe interval (at most half the
    /// session timeout).
    Session,
}

/// The ACL for the nodes this participant creates (the latch path's parents, and its own
/// node). Default: [`NodeAcl::Open`] without authentication, [`NodeAcl::CreatorAllOthersRead`]
/// when [`digest_auth`](ZkConfigBuilder::digest_auth) or SASL (`sasl_digest_md5`, feature
/// `sasl`) is set. The creator ACLs use ZooKeeper's `auth` scheme: the server replaces it
/// with every identity the session authenticated (`digest:<user>:<hash>`, `sasl:<user>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeAcl {
    /// Anyone may do anything (ZooKeeper's `OPEN_ACL_UNSAFE`, Curator's default).
    Open,
    /// Clients with the creator's authentication have all rights; everyone else may read
    /// (observers can see the leader, nobody else can delete or forge a participant node).
    CreatorAllOthersRead,
    /// Only clients with the creator's authentication have any rights (needs auth).
    CreatorAll,
}

/// Configuration of one ZooKeeper session, shared by every election on it (see
/// [`ZkSession`](crate::ZkSession)). Build with [`ZkSessionConfig::builder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct ZkSessionConfig {
    /// Connect string: `host:port[,host:port...]` (a chroot suffix is moved to `chroot`).
    pub connect: String,
    /// Requested session timeout (the server may clamp it to 2..20 x tickTime).
    pub session_timeout: Duration,
    /// How long one connection attempt may take.
    pub connection_timeout: Duration,
    /// What a leader does while the connection is in doubt.
    pub connection_policy: ConnectionPolicy,
    /// The ACL of the nodes we create.
    pub acl: NodeAcl,
    /// Authentication `(scheme, credentials)` added to every session, e.g. `("digest", b"user:pass")`.
    pub(crate) auth: Option<Box<(String, Vec<u8>)>>,
    /// SASL DIGEST-MD5 `(user, password)` for every session (feature `sasl`).
    pub(crate) sasl: Option<Box<(String, String)>>,
    /// Optional chroot: every path (the latch paths too) is relative to it. Created if missing.
    pub chroot: Option<String>,
}

/// Configuration of one ZooKeeper latch participant: the settings of its own session (see
/// [`ZkConfig::session_config`]) plus the latch path and the participant id. Build with
/// [`ZkConfig::builder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct ZkConfig {
    /// Connect string: `host:port[,host:port...]`, optionally followed by a chroot path.
    pub connect: String,
    /// The latch path (the parent of the participants' nodes), e.g. `/services/app/leader`.
    pub path: String,
    /// This participant's id (stored as its node's data, Curator-compatible).
    pub id: String,
    /// Requested session timeout (the server may clamp it to 2..20 x tickTime).
    pub session_timeout: Duration,
    /// How long one connection attempt may take.
    pub connection_timeout: Duration,
    /// What a leader does while the connection is in doubt.
    pub connection_policy: ConnectionPolicy,
    /// The ACL of the nodes we create.
    pub acl: NodeAcl,
    /// Authentication `(scheme, credentials)` added to every session, e.g. `("digest", b"user:pass")`.
    pub(crate) auth: Option<Box<(String, Vec<u8>)>>,
    /// SASL DIGEST-MD5 `(user, password)` for every session (feature `sasl`).
    pub(crate) sasl: Option<Box<(String, String)>>,
    /// Optional chroot: every path (the latch path too) is relative to it. Created if missing.
    pub chroot: Option<String>,
}

fn debug_secrets(
    d: &mut fmt::DebugStruct<'_, '_>,
    auth: &Option<Box<(String, Vec<u8>)>>,
    sasl: &Option<Box<(String, String)>>,
) {
    d.field(
        "auth",
        &auth
            .as_deref()
            .map(|(scheme, _)| format!("{scheme}:<redacted>")),
    )
    .field(
        "sasl",
        &sasl
            .as_deref()
            .map(|(user, _)| format!("DIGEST-MD5 {user}:<redacted>")),
    );
}

impl fmt::Debug for ZkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ZkConfig");
        d.field("connect", &self.connect)
            .field("path", &self.path)
            .field("id", &self.id)
            .field("session_timeout", &self.session_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("chroot", &self.chroot)
            .field("connection_policy", &self.connection_policy)
            .field("acl", &self.acl);
        debug_secrets(&mut d, &self.auth, &self.sasl);
        d.finish()
    }
}

impl fmt::Debug for ZkSessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ZkSessionConfig");
        d.field("connect", &self.connect)
            .field("session_timeout", &self.session_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("chroot", &self.chroot)
            .field("connection_policy", &self.connection_policy)
            .field("acl", &self.acl);
        debug_secrets(&mut d, &self.auth, &self.sasl);
        d.finish()
    }
}

impl ZkSessionConfig {
    /// Start a session configuration. Defaults: session timeout
    /// [`DEFAULT_SESSION_TIMEOUT`], connection timeout [`DEFAULT_CONNECTION_TIMEOUT`],
    /// [`ConnectionPolicy::Standard`], no auth and [`NodeAcl::Open`] (with auth:
    /// [`NodeAcl::CreatorAllOthersRead`]).
    pub fn builder(connect: impl Into<String>) -> ZkSessionConfigBuilder {
        ZkSessionConfigBuilder {
            cfg: ZkSessionConfig {
                connect: connect.into(),
                session_timeout: DEFAULT_SESSION_TIMEOUT,
                connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
                connection_policy: ConnectionPolicy::Standard,
                acl: NodeAcl::Open,
                auth: None,
                sasl: None,
                chroot: None,
            },
            acl: None,
        }
    }

    /// The connect string with the chroot, as given to the client.
    pub(crate) fn connect_string(&self) -> String {
        match &self.chroot {
            Some(c) => format!("{}{c}", self.connect),
            None => self.connect.clone(),
        }
    }

    /// The configuration of a participant on this session at `path` with `id`, validated
    /// like [`ZkConfigBuilder::build`] (one rule for both).
    pub(crate) fn participant(&self, path: &str, id: &str) -> Result<ZkConfig> {
        validate_latch(path, id)?;
        let s = self.clone();
        Ok(ZkConfig {
            connect: s.connect,
            path: path.to_owned(),
            id: id.to_owned(),
            session_timeout: s.session_timeout,
            connection_timeout: s.connection_timeout,
            connection_policy: s.connection_policy,
            acl: s.acl,
            auth: s.auth,
            sasl: s.sasl,
            chroot: s.chroot,
        })
    }
}

impl ZkConfig {
    /// The connect string with the chroot, as given to the client.
    #[cfg(test)]
    pub(crate) fn connect_string(&self) -> String {
        self.session_config().connect_string()
    }

    /// The session part of this configuration (what the participant's own
    /// [`ZkSession`](crate::ZkSession) is built from).
    pub fn session_config(&self) -> ZkSessionConfig {
        ZkSessionConfig {
            connect: self.connect.clone(),
            session_timeout: self.session_timeout,
            connection_timeout: self.connection_timeout,
            connection_policy: self.connection_policy,
            acl: self.acl,
            auth: self.auth.clone(),
            sasl: self.sasl.clone(),
            chroot: self.chroot.clone(),
        }
    }

    /// Start a configuration: connect string, latch path, participant id. Defaults:
    /// session timeout [`DEFAULT_SESSION_TIMEOUT`], connection timeout
    /// [`DEFAULT_CONNECTION_TIMEOUT`], [`ConnectionPolicy::Standard`], no auth and
    /// [`NodeAcl::Open`] (with auth: [`NodeAcl::CreatorAllOthersRead`]).
    pub fn builder(
        connect: impl Into<String>,
        path: impl Into<String>,
        id: impl Into<String>,
    ) -> ZkConfigBuilder {
        ZkConfigBuilder {
            session: ZkSessionConfig::builder(connect),
            path: path.into(),
            id: id.into(),
        }
    }
}

/// Builder of [`ZkSessionConfig`]; [`build`](ZkSessionConfigBuilder::build) validates
/// everything.
#[derive(Debug, Clone)]
pub struct ZkSessionConfigBuilder {
    cfg: ZkSessionConfig,
    /// The ACL asked for; None: by authentication (see [`ZkSessionConfigBuilder::acl`]).
    acl: Option<NodeAcl>,
}

/// Builder of [`ZkConfig`]: the session settings (the same methods and validation as
/// [`ZkSessionConfigBuilder`]) plus the latch path and id; [`build`](ZkConfigBuilder::build)
/// validates everything.
#[derive(Debug, Clone)]
pub struct ZkConfigBuilder {
    session: ZkSessionConfigBuilder,
    path: String,
    id: String,
}

/// The builder methods shared by [`ZkSessionConfigBuilder`] and [`ZkConfigBuilder`] (one
/// text, one behaviour): `$b` is how to reach the session builder from `self`.
macro_rules! session_setters {
    ($($f:ident)?) => {
        /// Requested session timeout (1 s ..= 120 s).
        pub fn session_timeout(mut self, d: Duration) -> Self {
            self$(.$f)?.cfg.session_timeout = d;
            self
        }

        /// How long one connection attempt may take.
        pub fn connection_timeout(mut self, d: Duration) -> Self {
            self$(.$f)?.cfg.connection_timeout = d;
            self
        }

        /// What a leader does while the connection is in doubt.
        pub fn connection_policy(mut self, p: ConnectionPolicy) -> Self {
            self$(.$f)?.cfg.connection_policy = p;
            self
        }

        /// The ACL of the nodes we create. Default: [`NodeAcl::Open`] without authentication,
        /// [`NodeAcl::CreatorAllOthersRead`] with [`digest_auth`](Self::digest_auth) or SASL.
        pub fn acl(mut self, acl: NodeAcl) -> Self {
            self$(.$f)?.acl = Some(acl);
            self
        }

        /// Run inside a chroot (e.g. `/tenant-a`): latch paths are then relative to it. The
        /// chroot node is created (persistent) when missing. Same as a `/chroot` suffix on the
        /// connect string; give one or the other.
        pub fn chroot(mut self, chroot: impl Into<String>) -> Self {
            self$(.$f)?.cfg.chroot = Some(chroot.into());
            self
        }

        /// Digest authentication (`user:password`), added to every session.
        pub fn digest_auth(mut self, user: &str, password: &str) -> Self {
            self$(.$f)?.cfg.auth =
                Some(Box::new(("digest".into(), format!("{user}:{password}").into_bytes())));
            self
        }

        /// SASL authentication with the DIGEST-MD5 mechanism (feature `sasl`; pure Rust, through
        /// zookeeper-client's `sasl-digest-md5`), done by every session when it connects.
        ///
        /// The server needs, in zoo.cfg:
        ///
        /// ```text
        /// authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider
        /// ```
        ///
        /// and a JAAS file passed to its JVM with `-Djava.security.auth.login.config=/path/jaas.conf`
        /// (e.g. in `SERVER_JVMFLAGS`), whose `Server` section names the users:
        ///
        /// ```text
        /// Server {
        ///   org.apache.zookeeper.server.auth.DigestLoginModule required
        ///   user_scheduler="the-password";
        /// };
        /// ```
        ///
        /// Nodes we create then belong to `sasl:<user>` (default ACL
        /// [`NodeAcl::CreatorAllOthersRead`]). A wrong password or an unknown user is refused
        /// when the session connects (but see ZOOKEEPER-4839 in the crate docs on unknown users): `join` fails with
        /// [`ErrorKind::PermissionDenied`](succession_core::ErrorKind::PermissionDenied), not
        /// retryable, and the participant leaves the election (the password never appears in
        /// errors or `Debug` output). A server without the SASL provider ignores the login and
        /// the session stays unauthenticated: with a creator ACL `join` then fails with
        /// [`ErrorKind::InvalidConfig`](succession_core::ErrorKind::InvalidConfig) naming the
        /// server set-up; with [`NodeAcl::Open`] it runs unauthenticated.
        ///
        /// May be combined with [`digest_auth`](Self::digest_auth): the session then holds both
        /// identities and our nodes name both. An empty `user` is refused by
        /// [`build`](Self::build).
        #[cfg(feature = "sasl")]
        pub fn sasl_digest_md5(mut self, user: &str, password: &str) -> Self {
            self$(.$f)?.cfg.sasl = Some(Box::new((user.to_owned(), password.to_owned())));
            self
        }
    };
}

impl ZkSessionConfigBuilder {
    session_setters!();

    /// Validate and build.
    pub fn build(self) -> Result<ZkSessionConfig> {
        let mut c = self.cfg;
        let authenticated = c.auth.is_some() || c.sasl.is_some();
        c.acl = self.acl.unwrap_or(if authenticated {
            NodeAcl::CreatorAllOthersRead
        } else {
            NodeAcl::Open
        });
        validate_connect(&c.connect)?;
        if let Some(i) = c.connect.find('/') {
            if c.chroot.is_some() {
                return Err(Error::invalid_config(
                    "a chroot is given twice (in the connect string and with chroot()); keep one",
                ));
            }
            c.chroot = Some(c.connect[i..].to_owned());
            c.connect.truncate(i);
        }
        if let Some(chroot) = &c.chroot {
            validate::store_path(chroot, "chroot")?;
        }
        validate::duration(
            c.session_timeout,
            "session timeout",
            Some(MIN_SESSION_TIMEOUT),
            Some(MAX_SESSION_TIMEOUT),
        )?;
        validate::duration(
            c.connection_timeout,
            "connection timeout",
            Some(Duration::from_millis(10)),
            Some(MAX_SESSION_TIMEOUT),
        )?;
        if c.acl != NodeAcl::Open && !authenticated {
            return Err(Error::invalid_config(format!(
                "NodeAcl::{:?} needs authentication; add digest_auth(user, password) (or SASL) or use NodeAcl::Open",
                c.acl
            )));
        }
        if let Some((user, _)) = c.sasl.as_deref() {
            if user.is_empty() {
                return Err(Error::invalid_config(
                    "sasl_digest_md5 needs a non-empty user name; call sasl_digest_md5(\"user\", \"password\")",
                ));
            }
        }
        if let Some((_, cred)) = c.auth.as_deref() {
            let text = String::from_utf8_lossy(cred);
            match text.split_once(':') {
                Some((user, _)) if !user.is_empty() => {}
                _ => {
                    return Err(Error::invalid_config(
                        "digest_auth needs a non-empty user name; call digest_auth(\"user\", \"password\")",
                    ))
                }
            }
        }
        Ok(c)
    }
}

impl ZkConfigBuilder {
    session_setters!(session);

    /// Validate and build.
    pub fn build(self) -> Result<ZkConfig> {
        let session = self.session.build()?;
        session.participant(&self.path, &self.id)
    }
}

/// A latch path and a participant id.
fn validate_latch(path: &str, id: &str) -> Result<()> {
    validate::store_path(path, "latch path")?;
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err(Error::invalid_config(format!(
            "latch path {path:?} is under /zookeeper, which ZooKeeper reserves; choose another path"
        )));
    }
    validate::participant_id(id)
}

/// `host:port[,host:port...][/chroot]`.
fn validate_connect(connect: &str) -> Result<()> {
    if connect.trim().is_empty() {
        return Err(Error::invalid_config(
            "ZooKeeper connect string is empty; give host:port[,host:port...], e.g. 127.0.0.1:2181",
        ));
    }
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    if let Some(chroot) = chroot {
        validate::store_path(chroot, "chroot in the connect string")?;
    }
    for host in hosts.split(',') {
        let bad = |why: &str| {
            Error::invalid_config(format!(
                "ZooKeeper server {host:?} in {connect:?} {why}; write each server as host:port, e.g. 127.0.0.1:2181"
            ))
        };
        let (h, p) = host.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if h.is_empty() || h.contains(char::is_whitespace) {
            return Err(bad("has no host name"));
        }
        match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("has no valid port (1-65535)")),
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use succession_core::ErrorKind;

    fn build(connect: &str, path: &str, id: &str) -> Result<ZkConfig> {
        ZkConfig::builder(connect, path, id).build()
    }

    #[test]
    fn good_config_builds_with_documented_defaults() {
        let c = build("127.0.0.1:2181,127.0.0.2:2181/chroot", "/app/leader", "n1").unwrap();
        assert_eq!(c.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(c.chroot.as_deref(), Some("/chroot"));
        assert_eq!(c.connect_string(), "127.0.0.1:2181,127.0.0.2:2181/chroot");
        let e = ZkConfig::builder("127.0.0.1:1/a", "/x", "n")
            .chroot("/b")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = ZkConfig::builder("127.0.0.1:1", "/x", "n")
            .chroot("b")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("chroot"), "{e}");
        assert_eq!(c.connection_policy, ConnectionPolicy::Standard);
    }

    #[test]
    fn bad_config_is_refused_with_what_to_do() {
        let cases = [
            ("", "/a", "n", "empty"),
            ("127.0.0.1", "/a", "n", "no port"),
            ("127.0.0.1:0", "/a", "n", "valid port"),
            ("127.0.0.1:x", "/a", "n", "valid port"),
            (":2181", "/a", "n", "no host"),
            ("127.0.0.1:2181/", "/a", "n", "chroot"),
            ("127.0.0.1:2181", "a", "n", "relative"),
            ("127.0.0.1:2181", "/a/", "n", "trailing"),
            ("127.0.0.1:2181", "/zookeeper/x", "n", "reserves"),
            ("127.0.0.1:2181", "/a", "", "non-empty"),
        ];
        for (connect, path, id, hint) in cases {
            let e = build(connect, path, id).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{connect} {path} {id}");
            assert!(e.to_string().contains(hint), "{e} should mention {hint}");
        }
        let e = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .session_timeout(Duration::from_millis(100))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("at least 1s"), "{e}");
        let e = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .session_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("zero"), "{e}");
        let e = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .acl(NodeAcl::CreatorAll)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("digest_auth"), "{e}");
        let e = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .digest_auth("", "pw")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("user name"), "{e}");
        let c = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .digest_auth("u", "pw")
            .build()
            .unwrap();
        assert_eq!(
            c.acl,
            NodeAcl::CreatorAllOthersRead,
            "auth defaults to creator-all, others read"
        );
    }

    #[test]
    fn session_config_shares_the_validation_and_participants_on_it_are_checked() {
        let e = ZkSessionConfig::builder("127.0.0.1").build().unwrap_err();
        assert!(e.to_string().contains("no port"), "{e}");
        let e = ZkSessionConfig::builder("127.0.0.1:1")
            .session_timeout(Duration::from_millis(100))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("at least 1s"), "{e}");
        let s = ZkSessionConfig::builder("127.0.0.1:1/tenant")
            .digest_auth("u", "s3cret")
            .build()
            .unwrap();
        assert_eq!(s.chroot.as_deref(), Some("/tenant"));
        assert_eq!(s.acl, NodeAcl::CreatorAllOthersRead);
        assert!(!format!("{s:?}").contains("s3cret"));
        for (path, id, hint) in [
            ("a", "n", "relative"),
            ("/zookeeper/x", "n", "reserves"),
            ("/a", "", "non-empty"),
        ] {
            let e = s.participant(path, id).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(hint), "{e} should mention {hint}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        let c = s.participant("/a/b", "n1").unwrap();
        assert_eq!((c.path.as_str(), c.id.as_str()), ("/a/b", "n1"));
        assert_eq!(c.session_config().connect_string(), "127.0.0.1:1/tenant");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let c = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .digest_auth("user", "s3cret")
            .build()
            .unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("redacted"));
        #[cfg(feature = "sasl")]
        {
            let both = ZkConfig::builder("127.0.0.1:1", "/a", "n")
                .digest_auth("user", "s3cret")
                .sasl_digest_md5("svc", "sasl-s3cret")
                .build()
                .expect("digest and SASL together are allowed");
            let s = format!(
                "{both:?} {:?}",
                ZkConfig::builder("127.0.0.1:1", "/a", "n").sasl_digest_md5("svc", "sasl-s3cret")
            );
            assert!(!s.contains("s3cret"), "{s}");
            assert!(s.contains("DIGEST-MD5 svc:<redacted>"), "{s}");
        }
    }

    #[cfg(feature = "sasl")]
    #[test]
    fn sasl_defaults_to_creator_acl_refuses_an_empty_user_and_hides_the_password() {
        let c = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .sasl_digest_md5("svc", "s3cret-sasl")
            .build()
            .unwrap();
        assert_eq!(c.acl, NodeAcl::CreatorAllOthersRead);
        let s = format!("{c:?}");
        assert!(
            !s.contains("s3cret-sasl") && s.contains("DIGEST-MD5 svc:<redacted>"),
            "{s}"
        );
        let e = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .sasl_digest_md5("", "pw")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("sasl_digest_md5"), "{e}");
        let open = ZkConfig::builder("127.0.0.1:1", "/a", "n")
            .sasl_digest_md5("svc", "pw")
            .acl(NodeAcl::Open)
            .build()
            .unwrap();
        assert_eq!(open.acl, NodeAcl::Open, "an explicit ACL wins");
    }
}
