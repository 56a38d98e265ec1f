//! Real etcd 3.4 servers: one [`EtcdServer`], or an [`EtcdCluster`] of members.

use crate::deps::etcd_bin;
use crate::error::{Error, Result};
use crate::process::{self, free_ports, random_u64, temp_dir, ServerProc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
const BIND_ATTEMPTS: usize = 5;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// GET `/health` on the etcd client port 127.0.0.1:`port` over a plain TCP connection;
/// `Ok(body)` when it contains `"health":"true"`, else `Err(what it said)`.
async fn probe_health(port: u16) -> std::result::Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(format!("GET /health: {e}")),
        Err(_) => return Err(format!("GET /health: no answer in {PROBE_TIMEOUT:?}")),
    };
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or(&text)
        .trim()
        .to_string();
    if body.replace(' ', "").contains("\"health\":\"true\"") {
        Ok(body)
    } else {
        Err(format!("GET /health answered {body:?}"))
    }
}

/// TLS for the client port of an etcd started by [`EtcdServer::start_tls`]: PEM files the
/// test made (e.g. with `rcgen`). Relative paths are taken from the current directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The server certificate (`--cert-file`); it must name 127.0.0.1 (an IP SAN) for
    /// clients that connect to [`EtcdServer::endpoint`].
    pub cert_pem_path: PathBuf,
    /// The server certificate's private key (`--key-file`).
    pub key_pem_path: PathBuf,
    /// When set, clients must present a certificate signed by this CA
    /// (`--client-cert-auth --trusted-ca-file`).
    pub client_ca_path: Option<PathBuf>,
}

impl EtcdTls {
    /// Absolute paths, each checked to be a readable file.
    fn resolved(&self) -> Result<EtcdTls> {
        let abs = |p: &Path, what: &str| -> Result<PathBuf> {
            let p = std::path::absolute(p).map_err(|e| Error::io(format!("resolve {what}"), e))?;
            std::fs::metadata(&p)
                .map_err(|e| Error::io(format!("read {what} {}", p.display()), e))?;
            Ok(p)
        };
        Ok(EtcdTls {
            cert_pem_path: abs(&self.cert_pem_path, "the etcd server certificate")?,
            key_pem_path: abs(&self.key_pem_path, "the etcd server key")?,
            client_ca_path: match &self.client_ca_path {
                Some(p) => Some(abs(p, "the etcd client CA")?),
                None => None,
            },
        })
    }
}

/// One etcd process: an [`EtcdServer`], or one member of an [`EtcdCluster`].
///
/// It keeps its ports and data across [`stop`](Self::stop)/[`kill`](Self::kill) and
/// [`restart`](Self::restart). Dropping it (also while unwinding from a panic) SIGKILLs and
/// reaps the process and removes its directory.
#[derive(Debug)]
pub struct EtcdMember {
    // Declared first: the process dies before its directory is removed.
    sp: ServerProc,
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    token: Mutex<String>,
    /// TLS on the client port; then `/health` is probed on the plain-HTTP metrics port.
    tls: Option<(EtcdTls, u16)>,
    etcd: PathBuf,
    data_dir: PathBuf,
    dir: tempfile::TempDir,
}

fn new_token() -> String {
    format!("succession-testkit-{:016x}", random_u64())
}

impl EtcdMember {
    fn create(
        etcd: &Path,
        name: String,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
        token: String,
    ) -> Result<EtcdMember> {
        let dir = temp_dir(&format!("etcd-{name}"))?;
        Ok(EtcdMember {
            sp: ServerProc::new(
                format!("etcd {name} (127.0.0.1:{client_port})"),
                dir.path().join("etcd.log"),
            ),
            name,
            client_port,
            peer_port,
            initial_cluster,
            token: Mutex::new(token),
            tls: None,
            etcd: etcd.to_path_buf(),
            data_dir: dir.path().join("data"),
            dir,
        })
    }

    async fn spawn(&self, banner: &str) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cmd = Command::new(&self.etcd);
        // etcd reads ETCD_* variables as flags: keep the caller's (e.g. ETCD_BIN) away from it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "info"]);
        if let Some((tls, metrics_port)) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_pem_path)
                .arg("--key-file")
                .arg(&tls.key_pem_path)
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{metrics_port}"));
            if let Some(ca) = &tls.client_ca_path {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ca);
            }
        }
        cmd.current_dir(self.dir.path());
        self.sp.launch(banner, cmd, &self.etcd).await
    }

    fn crashed(&self) -> Option<Error> {
        self.sp.crashed(30)
    }

    /// `"http://127.0.0.1:PORT"`, the client endpoint (`https://` when it serves TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Where `GET /health` is asked: the client port, or for a TLS server its plain-HTTP
    /// metrics port (`--listen-metrics-urls`), so readiness needs no TLS client.
    fn health_port(&self) -> u16 {
        match &self.tls {
            Some((_, metrics_port)) => *metrics_port,
            None => self.client_port,
        }
    }

    /// `"127.0.0.1:PORT"`, the client address without scheme (e.g. for a [`crate::TcpProxy`]).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The peer (raft) port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The member name (`--name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the running etcd, `None` when stopped (or crashed).
    pub fn pid(&self) -> Option<u32> {
        self.sp.proc.pid()
    }

    /// True while the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.sp.proc.is_running()
    }

    /// The data directory (`--data-dir`; absent after a wipe until the next start).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's stdout/stderr log (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.sp.log.path
    }

    /// Graceful stop: SIGTERM (plus SIGCONT if frozen), wait for the exit, SIGKILL after 10 s.
    /// Ok if already stopped.
    pub async fn stop(&mut self) -> Result<()> {
        self.sp.stop().await;
        Ok(())
    }

    /// SIGKILL (`kill -9`) and reap. Ok if already stopped.
    pub async fn kill(&mut self) -> Result<()> {
        self.sp.proc.kill_now();
        Ok(())
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn freeze(&self) -> Result<()> {
        self.sp.freeze()
    }

    /// SIGCONT: resume a frozen member.
    pub fn thaw(&self) -> Result<()> {
        self.sp.thaw()
    }

    /// Deletes the data dir; the member must be stopped, else [`Error::StillRunning`].
    /// A wiped single server restarts as a brand-new cluster (revision 1, no keys, no
    /// leases). In a cluster, wipe every member ([`EtcdCluster::wipe_all`]): a lone wiped
    /// member cannot rejoin the old cluster without a member remove/add.
    pub fn wipe(&mut self) -> Result<()> {
        self.sp.ensure_stopped("wipe")?;
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", self.data_dir.display()), e)),
        }
    }

    fn set_token(&self, token: String) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Starts again on the same ports and data dir and waits until `/health` is true (for a
    /// cluster member: until the cluster has a leader). A running member is stopped first.
    pub async fn restart(&mut self) -> Result<()> {
        self.sp.stop().await;
        self.spawn_again().await?;
        self.wait_ready(RESTART_TIMEOUT).await
    }

    /// Spawns the stopped process again, retrying briefly if a port is still taken.
    /// A process that exits at once is a [`Error::StartFailed`] with the log tail.
    async fn spawn_again(&self) -> Result<()> {
        let answers = || async { probe_health(self.health_port()).await.is_ok() };
        self.sp
            .respawn(
                || self.spawn("restart"),
                answers,
                Duration::from_millis(1000),
                30,
            )
            .await
    }

    /// Waits until `GET /health` answers `"health":"true"`. Fails early with the log tail if
    /// the process exits.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.crashed() {
                return Err(e);
            }
            if !self.sp.proc.has_child() {
                return Err(Error::NotRunning {
                    what: self.sp.what.clone(),
                    op: "wait until ready",
                });
            }
            let last = match probe_health(self.health_port()).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to be healthy", self.sp.what),
                    timeout,
                    detail: format!(
                        " (last probe: {last})\n--- tail of {} ---\n{}",
                        self.sp.log.path.display(),
                        self.sp.log.tail(30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True if `GET /health` says healthy right now.
    pub async fn is_healthy(&self) -> bool {
        self.sp.proc.is_running() && probe_health(self.health_port()).await.is_ok()
    }
}

/// One single-member etcd 3.4 server on 127.0.0.1 with free client and peer ports and a temp
/// data dir. Dropping it SIGKILLs and reaps the process and removes the temp dir.
#[derive(Debug)]
pub struct EtcdServer {
    member: EtcdMember,
}

impl EtcdServer {
    /// Starts a member on free ports with an empty data dir and waits until `/health` is
    /// true. Retries with other ports if a picked one was taken meanwhile. A missing binary
    /// is an [`Error::MissingDependency`].
    pub async fn start() -> Result<EtcdServer> {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), but the client port serves TLS with `tls`'s certificate
    /// (and, with [`EtcdTls::client_ca_path`], demands client certificates signed by that
    /// CA). [`endpoint`](Self::endpoint) is then `"https://127.0.0.1:PORT"`. Readiness is
    /// checked with `GET /health` on an extra plain-HTTP metrics port on 127.0.0.1. Peers
    /// stay plain HTTP. Missing certificate files are an [`Error::Io`].
    pub async fn start_tls(tls: EtcdTls) -> Result<EtcdServer> {
        let tls = tls.resolved()?;
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTls>) -> Result<EtcdServer> {
        let etcd = etcd_bin()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // client, peer (and the plain-HTTP metrics port of a TLS server)
            let ports = free_ports(if tls.is_some() { 3 } else { 2 })?;
            let name = "default".to_string();
            let cluster = format!("{name}=http://127.0.0.1:{}", ports[1]);
            let mut member =
                EtcdMember::create(&etcd, name, ports[0], ports[1], cluster, new_token())?;
            member.tls = tls.clone().map(|t| (t, ports[2]));
            member.spawn("start").await?;
            match member.wait_ready(START_TIMEOUT).await {
                Ok(()) => return Ok(EtcdServer { member }),
                Err(_) if attempt < BIND_ATTEMPTS && member.sp.log.port_taken() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `"http://127.0.0.1:PORT"`, the client endpoint (`"https://…"` for
    /// [`start_tls`](Self::start_tls)).
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// `"127.0.0.1:PORT"`, the client address without scheme.
    pub fn addr(&self) -> String {
        self.member.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.member.port()
    }

    /// The pid of the running etcd, `None` when stopped.
    pub fn pid(&self) -> Option<u32> {
        self.member.pid()
    }

    /// True while the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.member.is_running()
    }

    /// Graceful stop: SIGTERM, wait for the exit, SIGKILL after 10 s. Ok if already stopped.
    pub async fn stop(&mut self) -> Result<()> {
        self.member.stop().await
    }

    /// SIGKILL and reap. Ok if already stopped.
    pub async fn kill(&mut self) -> Result<()> {
        self.member.kill().await
    }

    /// SIGSTOP the server.
    pub fn freeze(&self) -> Result<()> {
        self.member.freeze()
    }

    /// SIGCONT the server.
    pub fn thaw(&self) -> Result<()> {
        self.member.thaw()
    }

    /// Deletes the data dir (the server must be stopped): the next restart is a brand-new
    /// cluster (new cluster token, revision 1, no keys, no leases).
    pub fn wipe(&mut self) -> Result<()> {
        self.member.wipe()?;
        self.member.set_token(new_token());
        Ok(())
    }

    /// Starts again on the same ports and data dir and waits until healthy (a running
    /// server is stopped gracefully first).
    pub async fn restart(&mut self) -> Result<()> {
        self.member.restart().await
    }

    /// Waits until `GET /health` answers `"health":"true"`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.member.wait_ready(timeout).await
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.member.data_dir()
    }

    /// The server's stdout/stderr log.
    pub fn log_path(&self) -> &Path {
        self.member.log_path()
    }

    /// The underlying process handle.
    pub fn member(&mut self) -> &mut EtcdMember {
        &mut self.member
    }

    /// SIGKILL, reap and remove the temp dir (for statics that are never dropped).
    pub(crate) fn shutdown_for_exit(&self) {
        self.member.sp.proc.kill_now();
        let _ = std::fs::remove_dir_all(self.member.dir.path());
    }
}

/// `n` etcd members on loopback forming one cluster. Dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `n` members (3 is the usual) and waits until every one is healthy.
    pub async fn start(n: usize) -> Result<EtcdCluster> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "an etcd cluster needs n >= 1".into(),
            ));
        }
        let etcd = etcd_bin()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(2 * n)?;
            let token = new_token();
            let initial_cluster = (0..n)
                .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::with_capacity(n);
            for i in 0..n {
                members.push(EtcdMember::create(
                    &etcd,
                    format!("m{i}"),
                    ports[2 * i],
                    ports[2 * i + 1],
                    initial_cluster.clone(),
                    token.clone(),
                )?);
            }
            let cluster = EtcdCluster { members };
            for m in &cluster.members {
                m.spawn("start").await?;
            }
            match cluster.wait_healthy_inner(START_TIMEOUT, true).await {
                Ok(()) => return Ok(cluster),
                Err(_)
                    if attempt < BIND_ATTEMPTS
                        && cluster.members.iter().any(|m| m.sp.log.port_taken()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every member's client endpoint (stopped members included).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a cluster without members (never, `start(0)` is refused).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i` (0-based, named `m{i}`). Panics if `i >= len()`.
    pub fn member(&mut self, i: usize) -> &mut EtcdMember {
        &mut self.members[i]
    }

    /// All members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Waits until every RUNNING member answers `/health` true (stopped members are skipped;
    /// a member is only healthy while the cluster has a leader).
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        self.wait_healthy_inner(timeout, false).await
    }

    async fn wait_healthy_inner(&self, timeout: Duration, starting: bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut states = Vec::new();
            let mut ok = true;
            let mut running = 0;
            for m in &self.members {
                if starting {
                    if let Some(e) = m.crashed() {
                        return Err(e);
                    }
                }
                if !m.sp.proc.has_child() {
                    states.push(format!("{}: stopped", m.name));
                    continue;
                }
                running += 1;
                match probe_health(m.health_port()).await {
                    Ok(_) => states.push(format!("{}: healthy", m.name)),
                    Err(e) => {
                        ok = false;
                        states.push(format!("{}: {e}", m.name));
                    }
                }
            }
            if ok && running > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails: String = self
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "\n--- tail of {} ---\n{}",
                            m.sp.log.path.display(),
                            m.sp.log.tail(10)
                        )
                    })
                    .collect();
                return Err(Error::Timeout {
                    what: format!("{running} running etcd members to be healthy"),
                    timeout,
                    detail: format!(" ({}){tails}", states.join("; ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every running member gracefully (all at once; SIGKILL after 10 s).
    pub async fn stop_all(&mut self) -> Result<()> {
        process::stop_all(self.members.iter().map(|m| &m.sp)).await;
        Ok(())
    }

    /// SIGKILLs and reaps every member.
    pub async fn kill_all(&mut self) -> Result<()> {
        process::kill_all(self.members.iter().map(|m| &m.sp));
        Ok(())
    }

    /// Wipes every member (all must be stopped, checked first); the next
    /// [`restart_all`](Self::restart_all) bootstraps a brand-new cluster.
    pub async fn wipe_all(&mut self) -> Result<()> {
        process::ensure_all_stopped(self.members.iter().map(|m| &m.sp), "wipe_all")?;
        let token = new_token();
        for m in &mut self.members {
            m.wipe()?;
            m.set_token(token.clone());
        }
        Ok(())
    }

    /// Starts every member again (running ones are stopped first) and waits until all are
    /// healthy.
    pub async fn restart_all(&mut self) -> Result<()> {
        self.stop_all().await?;
        for m in &self.members {
            m.spawn("restart").await?;
        }
        // Members wait for each other (quorum), so no per-member readiness here.
        self.wait_healthy_inner(RESTART_TIMEOUT, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_tls_with_a_missing_certificate_is_an_io_error_naming_it() {
        let tls = EtcdTls {
            cert_pem_path: PathBuf::from("/nonexistent/server.pem"),
            key_pem_path: PathBuf::from("/nonexistent/server-key.pem"),
            client_ca_path: None,
        };
        let e = EtcdServer::start_tls(tls).await.unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/server.pem"), "{e}");
    }
}
