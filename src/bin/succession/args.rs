//! Command-line flags, environment variables and the TOML config file, resolved into one
//! validated [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Leader election from the command line: join an election on ZooKeeper, etcd, or both
/// (ZooKeeper primary with etcd fallback), print one JSON event per line on stdout.
#[derive(Debug, Parser)]
#[command(name = "succession", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the election and print every event (joined, elected, revoked, health,
    /// failover, failback, closed) as a JSON line until SIGINT/SIGTERM.
    Campaign(Common),
    /// Watch the election without taking part: print a `leader` event on every change.
    Observe(ObserveArgs),
    /// Run CMD only while this participant leads (SIGTERM on loss, SIGKILL after --grace).
    Run(RunArgs),
}

/// Flags shared by every subcommand. Each can also come from the environment variable shown,
/// or from the TOML file given with --config (flags and environment win over the file).
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// TOML file with any of: zk, path, etcd, prefix, id, session_timeout, ttl,
    /// failover_after, failback_after, startup_timeout, health_addr, health_tolerance.
    #[arg(long, env = "SUCCESSION_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ZooKeeper servers (the primary when --etcd is also given).
    #[arg(long, env = "SUCCESSION_ZK", value_name = "HOST:PORT[,HOST:PORT...]")]
    pub zk: Option<String>,
    /// The ZooKeeper latch path, e.g. /services/app/leader.
    #[arg(long, env = "SUCCESSION_PATH", value_name = "/PATH")]
    pub path: Option<String>,
    /// etcd endpoints (the fallback when --zk is also given).
    #[arg(long, env = "SUCCESSION_ETCD", value_name = "URL[,URL...]")]
    pub etcd: Option<String>,
    /// The etcd election prefix, e.g. /services/app/leader.
    #[arg(long, env = "SUCCESSION_PREFIX", value_name = "/PREFIX")]
    pub prefix: Option<String>,
    /// This participant's id [default: HOSTNAME-PID].
    #[arg(long, env = "SUCCESSION_ID")]
    pub id: Option<String>,
    /// ZooKeeper session timeout, e.g. 6s [default: 6s].
    #[arg(long, env = "SUCCESSION_SESSION_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    pub session_timeout: Option<Duration>,
    /// etcd lease TTL, whole seconds, e.g. 10s [default: 10s].
    #[arg(long, env = "SUCCESSION_TTL", value_parser = duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Supervised mode: fail over to etcd after ZooKeeper stayed unhealthy this long
    /// [default: 2 x session timeout].
    #[arg(long, env = "SUCCESSION_FAILOVER_AFTER", value_parser = duration, value_name = "DURATION")]
    pub failover_after: Option<Duration>,
    /// Supervised mode: fail back after ZooKeeper stayed healthy this long [default: 30s].
    #[arg(long, env = "SUCCESSION_FAILBACK_AFTER", value_parser = duration, value_name = "DURATION")]
    pub failback_after: Option<Duration>,
    /// Give up (exit 2) when the election cannot be joined this long after start
    /// [default: 15s].
    #[arg(long, env = "SUCCESSION_STARTUP_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    pub startup_timeout: Option<Duration>,
    /// Serve GET /healthz (liveness: 503 when this node believes it leads but lost contact
    /// with its store beyond the safe bound), /metrics (Prometheus) and /status (JSON) on
    /// this address, e.g. 127.0.0.1:9090 (port 0 picks a free port; the bound address is
    /// printed as a `health_listening` event). Not served by default.
    #[arg(long, env = "SUCCESSION_HEALTH_ADDR", value_name = "IP:PORT")]
    pub health_addr: Option<String>,
    /// Extra time past the safe bound before /healthz fails [default: 1s].
    #[arg(long, env = "SUCCESSION_HEALTH_TOLERANCE", value_parser = duration, value_name = "DURATION")]
    pub health_tolerance: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub common: Common,
    /// How often to read the leader [default: 250ms].
    #[arg(long, value_parser = duration, default_value = "250ms", value_name = "DURATION")]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// After SIGTERM on loss of leadership, wait this long before SIGKILL.
    #[arg(long, value_parser = duration, default_value = "5s", value_name = "DURATION")]
    pub grace: Duration,
    /// Restart CMD when it exits while we still lead (instead of resigning and exiting).
    #[arg(long)]
    pub restart: bool,
    /// The command to run while leading, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `5s`, `300ms`, `1m30s`, `2h`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 5s, 300ms or 1m30s"))
}

/// The TOML config file.
#[derive(Debug, Default, Deserialize)]
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
}

/// Which store(s) to use.
#[derive(Debug, Clone)]
pub enum Backend {
    Zk {
        connect: String,
        path: String,
    },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
    Supervised {
        connect: String,
        path: String,
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// Everything resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: Backend,
    pub id: String,
    pub session_timeout: Duration,
    pub ttl: Duration,
    pub failover_after: Duration,
    pub failback_after: Duration,
    pub startup_timeout: Duration,
    pub health_addr: Option<std::net::SocketAddr>,
    pub health_tolerance: Duration,
}

impl Common {
    /// Merge flags/env with the config file and defaults; refuse incomplete input.
    pub fn resolve(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("config file {}: {}", p.display(), e.message()))?
            }
            None => FileConfig::default(),
        };
        let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or(file.clone());
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   name: &str|
         -> Result<Option<Duration>, String> {
            match (flag, file) {
                (Some(d), _) => Ok(Some(d)),
                (None, Some(s)) => duration(s)
                    .map(Some)
                    .map_err(|e| format!("config file: {name}: {e}")),
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
        let id = match pick(&self.id, &file.id) {
            Some(id) => id,
            None => format!("{}-{}", hostname(), std::process::id()),
        };
        let session_timeout = dur(
            self.session_timeout,
            &file.session_timeout,
            "session_timeout",
        )?
        .unwrap_or(Duration::from_secs(6));
        let ttl = dur(self.ttl, &file.ttl, "ttl")?.unwrap_or(Duration::from_secs(10));
        let failover_after = dur(self.failover_after, &file.failover_after, "failover_after")?
            .unwrap_or(session_timeout * 2);
        let failback_after = dur(self.failback_after, &file.failback_after, "failback_after")?
            .unwrap_or(Duration::from_secs(30));
        let startup_timeout = dur(
            self.startup_timeout,
            &file.startup_timeout,
            "startup_timeout",
        )?
        .unwrap_or(Duration::from_secs(15));
        if startup_timeout.is_zero() {
            return Err("--startup-timeout is zero; give a positive duration such as 15s".into());
        }
        let health_addr = match pick(&self.health_addr, &file.health_addr) {
            Some(a) => Some(a.trim().parse::<std::net::SocketAddr>().map_err(|e| {
                format!("--health-addr {a:?} is not IP:PORT ({e}); write e.g. 127.0.0.1:9090 or 0.0.0.0:9090")
            })?),
            None => None,
        };
        let health_tolerance = dur(
            self.health_tolerance,
            &file.health_tolerance,
            "health_tolerance",
        )?
        .unwrap_or(Duration::from_secs(1));
        Ok(Settings {
            backend,
            id,
            session_timeout,
            ttl,
            failover_after,
            failback_after,
            startup_timeout,
            health_addr,
            health_tolerance,
        })
    }
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
