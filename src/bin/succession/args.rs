//! Command-line flags, environment variables and the TOML config file, resolved into one
//! validated [`Settings`].
//!
//! Every value is checked here, before anything is contacted, and every refusal is one line
//! that names the flag (or config key) and says what to write instead. Secrets (passwords,
//! the ZooKeeper digest) are never taken as plain flag values (`ps` would show them): they
//! come from the environment, from a file, or from the config file, and they are kept in a
//! [`Secret`] whose `Debug` is `<hidden>`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Leader election from the command line: join an election on ZooKeeper, etcd, or both
/// (ZooKeeper primary with etcd fallback), print one JSON event per line on stdout.
#[derive(Debug, Parser)]
#[command(name = "succession", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the election and print every event (joined, elected, revoked, health,
    /// failover, failback, closed) as a JSON line until SIGINT/SIGTERM.
    Campaign(Common),
    /// Watch the election without taking part: print a `leader` event on every change of
    /// leader or term, driven by the store's watches.
    Observe(ObserveArgs),
    /// Run CMD, and every process it starts, only while this participant leads: on loss,
    /// SIGTERM to its whole process tree, SIGKILL after --grace or before another
    /// participant can be elected, whichever comes first; the tree also dies if `run` dies.
    Run(RunArgs),
    /// Print a shell completion script for bash, zsh or fish on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, e.g. `succession man > succession.1`.
    Man,
}

/// `succession completions <SHELL>`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Shells `succession completions` knows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// Flags shared by every subcommand. Each can also come from the environment variable shown,
/// or from the TOML file given with --config (flags and environment win over the file).
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// TOML file with any of: zk, path, etcd, prefix, id, session_timeout, ttl,
    /// failover_after, failback_after, startup_timeout, health_addr, health_tolerance,
    /// strict_mode_lease, zk_digest, zk_digest_file, zk_sasl_user, zk_sasl_password,
    /// zk_sasl_password_file, etcd_user, etcd_password, etcd_password_file, etcd_ca,
    /// etcd_cert, etcd_key, etcd_server_name. Keep it private when it holds a secret.
    #[arg(long, env = "SUCCESSION_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ZooKeeper servers (the primary when --etcd is also given).
    #[arg(long, env = "SUCCESSION_ZK", value_name = "HOST:PORT[,HOST:PORT...]")]
    pub zk: Option<String>,
    /// The ZooKeeper latch path, e.g. /services/app/leader.
    #[arg(long, env = "SUCCESSION_PATH", value_name = "/PATH")]
    pub path: Option<String>,
    /// etcd endpoints (the fallback when --zk is also given); https://... with --etcd-ca.
    #[arg(long, env = "SUCCESSION_ETCD", value_name = "URL[,URL...]")]
    pub etcd: Option<String>,
    /// The etcd election prefix, e.g. /services/app/leader.
    #[arg(long, env = "SUCCESSION_PREFIX", value_name = "/PREFIX")]
    pub prefix: Option<String>,
    /// This participant's id [default: HOSTNAME-PID].
    #[arg(long, env = "SUCCESSION_ID", allow_hyphen_values = true)]
    pub id: Option<String>,
    /// ZooKeeper session timeout, e.g. 6s [default: 6s].
    #[arg(
        long,
        env = "SUCCESSION_SESSION_TIMEOUT",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub session_timeout: Option<String>,
    /// etcd lease TTL, whole seconds, at least 2s, e.g. 10s [default: 10s].
    #[arg(
        long,
        env = "SUCCESSION_TTL",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub ttl: Option<String>,
    /// Supervised mode: an etcd-layer leader acts this long after ZooKeeper went bad for
    /// everyone (the failover is written one takeover delay earlier) [default: 2 x session
    /// timeout; at least the session timeout plus the takeover delay, refused otherwise with
    /// the minimum].
    #[arg(
        long,
        env = "SUCCESSION_FAILOVER_AFTER",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub failover_after: Option<String>,
    /// Supervised mode: a ZooKeeper-layer leader acts this long after ZooKeeper is healthy
    /// again (the failback is written one takeover delay earlier) [default: 30s].
    #[arg(
        long,
        env = "SUCCESSION_FAILBACK_AFTER",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub failback_after: Option<String>,
    /// Supervised mode, the safety choice. Off (default): a ZooKeeper leader keeps leading
    /// while it cannot read the mode record in etcd, so an etcd outage never costs ZooKeeper
    /// leadership; but a leader cut off from etcd alone, while the others fail over, leads
    /// next to the etcd leader (two leaders; their terms still order them for fencing).
    /// On: a ZooKeeper leader that cannot confirm the mode record in etcd within the mode
    /// lease steps down, so there are never two leaders, at the price that an etcd outage
    /// also stops ZooKeeper leadership.
    #[arg(long, env = "SUCCESSION_STRICT_MODE_LEASE")]
    pub strict_mode_lease: bool,
    /// Give up (exit 2) when the election cannot be joined this long after start
    /// [default: 15s].
    #[arg(
        long,
        env = "SUCCESSION_STARTUP_TIMEOUT",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub startup_timeout: Option<String>,
    /// Serve GET /healthz (liveness: 503 when this node believes it leads but lost contact
    /// with its store beyond the safe bound), /metrics (Prometheus) and /status (JSON) on
    /// this address, e.g. 127.0.0.1:9090 (port 0 picks a free port; the bound address is
    /// printed as a `health_listening` event). Not served by default.
    #[arg(long, env = "SUCCESSION_HEALTH_ADDR", value_name = "IP:PORT")]
    pub health_addr: Option<String>,
    /// Extra time past the safe bound before /healthz fails [default: 1s].
    #[arg(
        long,
        env = "SUCCESSION_HEALTH_TOLERANCE",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_tolerance: Option<String>,

    /// ZooKeeper digest authentication: a file holding `user:password` (one line). Or set
    /// SUCCESSION_ZK_DIGEST. Our nodes then belong to that identity (others may read).
    #[arg(
        long,
        env = "SUCCESSION_ZK_DIGEST_FILE",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub zk_digest_file: Option<PathBuf>,
    /// ZooKeeper SASL DIGEST-MD5 user name; the password comes from SUCCESSION_ZK_SASL_PASSWORD
    /// or --zk-sasl-password-file.
    #[arg(
        long,
        env = "SUCCESSION_ZK_SASL_USER",
        value_name = "USER",
        help_heading = "Authentication and TLS"
    )]
    pub zk_sasl_user: Option<String>,
    /// A file holding the ZooKeeper SASL password (one line). Or set SUCCESSION_ZK_SASL_PASSWORD.
    #[arg(
        long,
        env = "SUCCESSION_ZK_SASL_PASSWORD_FILE",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub zk_sasl_password_file: Option<PathBuf>,
    /// etcd user name (etcd auth); the password comes from SUCCESSION_ETCD_PASSWORD or
    /// --etcd-password-file.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_USER",
        value_name = "USER",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_user: Option<String>,
    /// A file holding the etcd password (one line). Or set SUCCESSION_ETCD_PASSWORD.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// etcd TLS: PEM file of the CA that signed the etcd server certificate. Turns
    /// host:port endpoints into https://.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_CA",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_ca: Option<PathBuf>,
    /// etcd TLS client certificate (PEM), for servers with --client-cert-auth; needs
    /// --etcd-key.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_CERT",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_KEY",
        value_name = "FILE",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_key: Option<PathBuf>,
    /// The name to check in the etcd server certificate instead of each endpoint's host.
    #[arg(
        long,
        env = "SUCCESSION_ETCD_SERVER_NAME",
        value_name = "NAME",
        help_heading = "Authentication and TLS"
    )]
    pub etcd_server_name: Option<String>,
}

/// `succession observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Store, auth and timing flags.
    #[command(flatten)]
    pub common: Common,
    /// Fallback re-read of the leader this often, in case a watch was lost (changes are
    /// reported from the store's watches as they happen) [default: 10s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub interval: Option<String>,
}

/// `succession run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Store, auth and timing flags.
    #[command(flatten)]
    pub common: Common,
    /// After SIGTERM, wait this long before SIGKILL [default: 5s]. Once leadership is lost it
    /// is capped by the election's takeover bound (the earliest instant another participant
    /// could be elected, less 100 ms).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub grace: Option<String>,
    /// Restart CMD when it exits while we still lead (instead of resigning and exiting).
    #[arg(long)]
    pub restart: bool,
    /// The command to run while leading, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl ObserveArgs {
    /// The fallback re-read interval, checked.
    pub fn interval(&self) -> Result<Duration, String> {
        positive("--interval", self.interval.as_deref(), "10s")
            .map(|d| d.unwrap_or(Duration::from_secs(10)))
    }
}

impl RunArgs {
    /// The grace period, checked.
    pub fn grace(&self) -> Result<Duration, String> {
        positive("--grace", self.grace.as_deref(), "5s")
            .map(|d| d.unwrap_or(Duration::from_secs(5)))
    }
}

/// The secret flags that do not exist because `ps` would show their value, with the
/// environment variable and the file flag to use instead.
const PLAIN_SECRET_FLAGS: [(&str, &str, &str); 3] = [
    (
        "--etcd-password",
        "SUCCESSION_ETCD_PASSWORD",
        "--etcd-password-file",
    ),
    ("--zk-digest", "SUCCESSION_ZK_DIGEST", "--zk-digest-file"),
    (
        "--zk-sasl-password",
        "SUCCESSION_ZK_SASL_PASSWORD",
        "--zk-sasl-password-file",
    ),
];

/// Refuse a secret given as a plain flag (`--etcd-password x`, `--etcd-password=x`) before
/// clap sees it, with one line naming the alternatives and never the value. Arguments after
/// `--` (the command of `run`) are not looked at.
pub fn refuse_plain_secrets(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(), String> {
    for a in args.into_iter().skip(1) {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        for (flag, env, file_flag) in PLAIN_SECRET_FLAGS {
            if a == flag || a.starts_with(&format!("{flag}=")) {
                return Err(format!(
                    "{flag} would show the secret to anyone running ps; set {env} or give a file with {file_flag} instead"
                ));
            }
        }
    }
    Ok(())
}

/// Parse a duration (`5s`, `300ms`, `1m30s`, `2h`) given for `what` (a flag or config
/// key); negative, zero and malformed values are refused with one line naming `what` and
/// an example.
pub fn parse_duration(what: &str, raw: &str, example: &str) -> Result<Duration, String> {
    let s = raw.trim();
    if let Some(rest) = s.strip_prefix('-') {
        if humantime::parse_duration(rest.trim()).is_ok() {
            return Err(format!(
                "{what}: {s} is negative; give a positive duration such as {example}"
            ));
        }
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!(
            "{what}: {s} is zero; give a positive duration such as {example}"
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{what}: '{s}' is not a duration ({e}); write e.g. {example}, 300ms or 1m30s"
        )),
    }
}

fn positive(what: &str, raw: Option<&str>, example: &str) -> Result<Option<Duration>, String> {
    raw.map(|r| parse_duration(what, r, example)).transpose()
}

/// A password or other secret. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

/// The TOML config file. `Debug` is not derived: it may hold secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    zk: Option<String>,
    path: Option<String>,
    etcd: Option<String>,
    prefix: Option<String>,
    id: Option<String>,
    session_timeout: Option<String>,
    ttl: Option<String>,
    failover_after: Option<String>,
    failback_after: Option<String>,
    startup_timeout: Option<String>,
    health_addr: Option<String>,
    health_tolerance: Option<String>,
    strict_mode_lease: Option<bool>,
    zk_digest: Option<String>,
    zk_digest_file: Option<PathBuf>,
    zk_sasl_user: Option<String>,
    zk_sasl_password: Option<String>,
    zk_sasl_password_file: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password: Option<String>,
    etcd_password_file: Option<PathBuf>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_server_name: Option<String>,
}

/// Which store(s) to use.
#[derive(Debug, Clone)]
pub enum Backend {
    /// ZooKeeper alone.
    Zk {
        /// Connect string.
        connect: String,
        /// Latch path.
        path: String,
    },
    /// etcd alone.
    Etcd {
        /// Endpoints.
        endpoints: Vec<String>,
        /// Election prefix.
        prefix: String,
    },
    /// ZooKeeper primary, etcd fallback.
    Supervised {
        /// ZooKeeper connect string.
        connect: String,
        /// Latch path.
        path: String,
        /// etcd endpoints.
        endpoints: Vec<String>,
        /// etcd election prefix.
        prefix: String,
    },
}

/// In words, for the lines a user reads: `/services/app/leader on ZooKeeper 127.0.0.1:2181`.
impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Zk { connect, path } => write!(f, "{path} on ZooKeeper {connect}"),
            Backend::Etcd { endpoints, prefix } => {
                write!(f, "{prefix} on etcd {}", endpoints.join(","))
            }
            Backend::Supervised {
                connect,
                path,
                endpoints,
                prefix,
            } => write!(
                f,
                "{path} on ZooKeeper {connect} (primary) with fallback {prefix} on etcd {}",
                endpoints.join(",")
            ),
        }
    }
}

/// Credentials and TLS material, read and checked. `Debug` hides every secret.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// ZooKeeper digest `(user, password)`.
    pub zk_digest: Option<(String, Secret)>,
    /// ZooKeeper SASL DIGEST-MD5 `(user, password)`.
    pub zk_sasl: Option<(String, Secret)>,
    /// etcd `(user, password)`.
    pub etcd_credentials: Option<(String, Secret)>,
    /// etcd TLS.
    pub etcd_tls: Option<EtcdTls>,
}

/// etcd TLS material (PEM contents).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Secret)>,
    /// Name checked in the server certificate.
    pub server_name: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<hidden>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Everything resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The store(s).
    pub backend: Backend,
    /// Our participant id.
    pub id: String,
    /// ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// etcd lease TTL.
    pub ttl: Duration,
    /// Supervisor: failover delay.
    pub failover_after: Duration,
    /// Supervisor: failback delay.
    pub failback_after: Duration,
    /// Supervisor: hold primary leaders to the mode lease.
    pub strict_mode_lease: bool,
    /// Give up joining after this long.
    pub startup_timeout: Duration,
    /// Where to serve /healthz, /metrics, /status.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Extra time before /healthz fails.
    pub health_tolerance: Duration,
    /// Credentials and TLS.
    pub auth: Auth,
}

/// Reads a secret file: its first line, without the line ending. Never echoes the content.
fn read_secret_file(flag: &str, p: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(format!(
            "{flag} {} is empty; put the secret on its first line",
            p.display()
        ));
    }
    Ok(Secret(line))
}

/// A secret from the environment variable `var`, if set (an empty value counts as unset).
fn env_secret(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret)
}

fn read_pem(flag: &str, p: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(format!(
            "{flag} {} is not a PEM file (no -----BEGIN line); give the PEM certificate or key",
            p.display()
        ));
    }
    Ok(bytes)
}

/// A secret from, in order: the `--<flag>-file` flag (or its env), the env variable, the
/// config file's `<key>_file`, the config file's `<key>`.
fn secret(
    file_flag: &str,
    file_from_flag: &Option<PathBuf>,
    env: &str,
    key_file: (&str, &Option<PathBuf>),
    key: &Option<String>,
) -> Result<Option<Secret>, String> {
    if let Some(p) = file_from_flag {
        return read_secret_file(file_flag, p).map(Some);
    }
    if let Some(s) = env_secret(env) {
        return Ok(Some(s));
    }
    if let Some(p) = key_file.1 {
        return read_secret_file(&format!("config file: {}", key_file.0), p).map(Some);
    }
    Ok(key.clone().filter(|k| !k.is_empty()).map(Secret))
}

impl Common {
    /// Merge flags/env with the config file and defaults; refuse incomplete input.
    pub fn resolve(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| config_error(p, &text, &e))?
            }
            None => FileConfig::default(),
        };
        let cfg_name = self
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or(file.clone());
        let dur = |flag: &Option<String>,
                   file: &Option<String>,
                   name: &str,
                   example: &str|
         -> Result<Option<Duration>, String> {
            match (flag, file) {
                (Some(d), _) => {
                    parse_duration(&format!("--{}", name.replace('_', "-")), d, example).map(Some)
                }
                (None, Some(s)) => {
                    parse_duration(&format!("config file {cfg_name}: {name}"), s, example).map(Some)
                }
                (None, None) => Ok(None),
            }
        };
        let zk = pick(&self.zk, &file.zk);
        let path = pick(&self.path, &file.path);
        let etcd = pick(&self.etcd, &file.etcd);
        let prefix = pick(&self.prefix, &file.prefix);
        let endpoints = |e: String| -> Vec<String> {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let backend = match (zk, path, etcd, prefix) {
            (Some(connect), Some(path), None, None) => Backend::Zk { connect, path },
            (None, None, Some(e), Some(prefix)) => Backend::Etcd { endpoints: endpoints(e), prefix },
            (Some(connect), Some(path), Some(e), Some(prefix)) => {
                Backend::Supervised { connect, path, endpoints: endpoints(e), prefix }
            }
            (Some(_), None, _, _) => return Err("--zk needs --path (the latch path, e.g. --path /services/app/leader)".into()),
            (None, Some(_), _, _) => return Err("--path needs --zk (the ZooKeeper servers, e.g. --zk 127.0.0.1:2181)".into()),
            (_, _, Some(_), None) => return Err("--etcd needs --prefix (the election prefix, e.g. --prefix /services/app/leader)".into()),
            (_, _, None, Some(_)) => return Err("--prefix needs --etcd (the etcd endpoints, e.g. --etcd http://127.0.0.1:2379)".into()),
            (None, None, None, None) => return Err(
                "no store given: use --zk HOST:PORT --path /x (ZooKeeper), --etcd URL --prefix /x (etcd), or both (ZooKeeper primary, etcd fallback)".into(),
            ),
        };
        match &backend {
            Backend::Zk { path, .. } => check_path("--path", path)?,
            Backend::Etcd { prefix, .. } => check_path("--prefix", prefix)?,
            Backend::Supervised { path, prefix, .. } => {
                check_path("--path", path)?;
                check_path("--prefix", prefix)?;
            }
        }
        if let Backend::Etcd { endpoints, .. } | Backend::Supervised { endpoints, .. } = &backend {
            if endpoints.is_empty() {
                return Err(
                    "--etcd is empty; give the etcd endpoints, e.g. --etcd http://127.0.0.1:2379"
                        .into(),
                );
            }
        }
        let id = match pick(&self.id, &file.id) {
            Some(id) => id,
            None => format!("{}-{}", hostname(), std::process::id()),
        };
        if id.trim().is_empty() {
            return Err("--id is empty; give this participant a non-empty id such as web-1".into());
        }
        succession::validate::participant_id(&id).map_err(|e| format!("--id: {}", e.message()))?;
        let session_timeout = dur(
            &self.session_timeout,
            &file.session_timeout,
            "session_timeout",
            "6s",
        )?
        .unwrap_or(Duration::from_secs(6));
        let ttl = dur(&self.ttl, &file.ttl, "ttl", "10s")?.unwrap_or(Duration::from_secs(10));
        if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(2) {
            let what = match &self.ttl {
                Some(_) => "--ttl".to_string(),
                None => format!("config file {cfg_name}: ttl"),
            };
            return Err(format!(
                "{what}: {} is not whole seconds of at least 2s (etcd leases are whole seconds); give e.g. 10s",
                humantime::format_duration(ttl)
            ));
        }
        let failover_after = dur(
            &self.failover_after,
            &file.failover_after,
            "failover_after",
            "12s",
        )?
        .unwrap_or(session_timeout * 2);
        let failback_after = dur(
            &self.failback_after,
            &file.failback_after,
            "failback_after",
            "30s",
        )?
        .unwrap_or(Duration::from_secs(30));
        let startup_timeout = dur(
            &self.startup_timeout,
            &file.startup_timeout,
            "startup_timeout",
            "15s",
        )?
        .unwrap_or(Duration::from_secs(15));
        let health_addr = match pick(&self.health_addr, &file.health_addr) {
            Some(a) => Some(a.trim().parse::<std::net::SocketAddr>().map_err(|e| {
                format!("--health-addr \"{a}\" is not IP:PORT ({e}); write e.g. 127.0.0.1:9090 or 0.0.0.0:9090")
            })?),
            None => None,
        };
        let health_tolerance = dur(
            &self.health_tolerance,
            &file.health_tolerance,
            "health_tolerance",
            "1s",
        )?
        .unwrap_or(Duration::from_secs(1));
        let strict_mode_lease = self.strict_mode_lease || file.strict_mode_lease.unwrap_or(false);
        if strict_mode_lease && !matches!(backend, Backend::Supervised { .. }) {
            return Err(
                "--strict-mode-lease applies to supervised mode only; give both --zk/--path and --etcd/--prefix, or drop it"
                    .into(),
            );
        }
        let auth = self.auth(&file, &backend)?;
        Ok(Settings {
            backend,
            id,
            session_timeout,
            ttl,
            failover_after,
            failback_after,
            strict_mode_lease,
            startup_timeout,
            health_addr,
            health_tolerance,
            auth,
        })
    }

    fn auth(&self, file: &FileConfig, backend: &Backend) -> Result<Auth, String> {
        let uses_zk = matches!(backend, Backend::Zk { .. } | Backend::Supervised { .. });
        let uses_etcd = matches!(backend, Backend::Etcd { .. } | Backend::Supervised { .. });
        let mut auth = Auth::default();

        let digest = secret(
            "--zk-digest-file",
            &self.zk_digest_file,
            "SUCCESSION_ZK_DIGEST",
            ("zk_digest_file", &file.zk_digest_file),
            &file.zk_digest,
        )?;
        if let Some(d) = digest {
            match d.expose().split_once(':') {
                Some((user, pw)) if !user.trim().is_empty() && !pw.is_empty() => {
                    auth.zk_digest = Some((user.to_string(), Secret(pw.to_string())));
                }
                _ => {
                    return Err("the ZooKeeper digest (SUCCESSION_ZK_DIGEST, --zk-digest-file or zk_digest) must be user:password with both parts non-empty".into())
                }
            }
        }

        let sasl_user = self.zk_sasl_user.clone().or(file.zk_sasl_user.clone());
        let sasl_pw = secret(
            "--zk-sasl-password-file",
            &self.zk_sasl_password_file,
            "SUCCESSION_ZK_SASL_PASSWORD",
            ("zk_sasl_password_file", &file.zk_sasl_password_file),
            &file.zk_sasl_password,
        )?;
        match (sasl_user, sasl_pw) {
            (Some(u), Some(p)) => {
                if u.trim().is_empty() {
                    return Err("--zk-sasl-user is empty; give the SASL user name".into());
                }
                auth.zk_sasl = Some((u, p));
            }
            (Some(_), None) => return Err("--zk-sasl-user needs a password: set SUCCESSION_ZK_SASL_PASSWORD or give --zk-sasl-password-file".into()),
            (None, Some(_)) => return Err("a ZooKeeper SASL password was given without --zk-sasl-user; add the user name".into()),
            (None, None) => {}
        }

        let etcd_user = self.etcd_user.clone().or(file.etcd_user.clone());
        let etcd_pw = secret(
            "--etcd-password-file",
            &self.etcd_password_file,
            "SUCCESSION_ETCD_PASSWORD",
            ("etcd_password_file", &file.etcd_password_file),
            &file.etcd_password,
        )?;
        match (etcd_user, etcd_pw) {
            (Some(u), Some(p)) => {
                if u.trim().is_empty() {
                    return Err("--etcd-user is empty; give the etcd user name".into());
                }
                auth.etcd_credentials = Some((u, p));
            }
            (Some(_), None) => return Err("--etcd-user needs a password: set SUCCESSION_ETCD_PASSWORD or give --etcd-password-file".into()),
            (None, Some(_)) => return Err("an etcd password was given without --etcd-user; add the user name".into()),
            (None, None) => {}
        }

        let ca = self.etcd_ca.clone().or(file.etcd_ca.clone());
        let cert = self.etcd_cert.clone().or(file.etcd_cert.clone());
        let key = self.etcd_key.clone().or(file.etcd_key.clone());
        let server_name = self
            .etcd_server_name
            .clone()
            .or(file.etcd_server_name.clone());
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                read_pem("--etcd-cert", &c)?,
                Secret(
                    String::from_utf8(read_pem("--etcd-key", &k)?)
                        .map_err(|_| format!("--etcd-key {} is not UTF-8 PEM", k.display()))?,
                ),
            )),
            (Some(_), None) => {
                return Err(
                    "--etcd-cert needs --etcd-key (the client certificate's private key)".into(),
                )
            }
            (None, Some(_)) => {
                return Err("--etcd-key needs --etcd-cert (the client certificate)".into())
            }
            (None, None) => None,
        };
        match ca {
            Some(ca) => {
                auth.etcd_tls = Some(EtcdTls {
                    ca_pem: read_pem("--etcd-ca", &ca)?,
                    identity,
                    server_name,
                });
            }
            None if identity.is_some() => {
                return Err("--etcd-cert needs --etcd-ca (the CA that signed the etcd server certificate)".into())
            }
            None if server_name.is_some() => {
                return Err("--etcd-server-name needs --etcd-ca (the CA that signed the etcd server certificate)".into())
            }
            None => {}
        }
        if !uses_zk && (auth.zk_digest.is_some() || auth.zk_sasl.is_some()) {
            return Err(
                "ZooKeeper authentication was given without --zk; add --zk and --path, or drop it"
                    .into(),
            );
        }
        if !uses_etcd && (auth.etcd_credentials.is_some() || auth.etcd_tls.is_some()) {
            return Err(
                "etcd authentication or TLS was given without --etcd; add --etcd and --prefix, or drop it"
                    .into(),
            );
        }
        Ok(auth)
    }
}

/// Config keys whose values are secrets: an error about them never quotes the value.
const SECRET_KEYS: [&str; 3] = ["zk_digest", "zk_sasl_password", "etcd_password"];

/// A TOML error as one line; when it is about a secret's line, without toml's message
/// (which may quote the value).
fn config_error(p: &Path, text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|sp| text[..sp.start.min(text.len())].matches('\n').count());
    let key = line
        .and_then(|n| text.lines().nth(n))
        .and_then(|l| l.split('=').next())
        .map(str::trim)
        .filter(|k| SECRET_KEYS.contains(k));
    match (key, line) {
        (Some(k), Some(n)) => format!(
            "config file {}: line {}: the value of {k} is not valid; write it as a quoted string, e.g. {k} = \"...\"",
            p.display(),
            n + 1
        ),
        _ => format!(
            "config file {}: {}",
            p.display(),
            e.message().replace('\n', " ")
        ),
    }
}

fn check_path(flag: &str, p: &str) -> Result<(), String> {
    succession::validate::store_path(p, flag).map_err(|e| e.message().to_string())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let s = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !s.is_empty() {
            return s;
        }
    }
    "host".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_refused_with_the_flag_and_the_rule() {
        let e = parse_duration("--session-timeout", "-1s", "6s").unwrap_err();
        assert_eq!(
            e,
            "--session-timeout: -1s is negative; give a positive duration such as 6s"
        );
        let e = parse_duration("--ttl", "0s", "10s").unwrap_err();
        assert_eq!(e, "--ttl: 0s is zero; give a positive duration such as 10s");
        let e = parse_duration("--grace", "soon", "5s").unwrap_err();
        assert!(e.starts_with("--grace: 'soon' is not a duration"), "{e}");
        assert_eq!(
            parse_duration("--grace", "1m30s", "5s"),
            Ok(Duration::from_secs(90))
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "<hidden>");
        let a = Auth {
            etcd_credentials: Some(("root".into(), s.clone())),
            zk_digest: Some(("u".into(), s.clone())),
            zk_sasl: Some(("u".into(), s)),
            etcd_tls: Some(EtcdTls {
                ca_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
                identity: Some((vec![], Secret("KEY".into()))),
                server_name: None,
            }),
        };
        let d = format!("{a:?}");
        assert!(!d.contains("hunter2") && !d.contains("KEY"), "{d}");
    }
}
