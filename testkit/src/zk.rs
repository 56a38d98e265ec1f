//! Real ZooKeeper 3.8 servers: one standalone [`ZkServer`], or a [`ZkEnsemble`] of quorum peers.

use crate::deps::{java_bin, zk_classpath};
use crate::error::{Error, Result};
use crate::process::{self, empty_dir, free_ports, temp_dir, ServerProc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `start()` waits for a fresh server or ensemble to serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `restart()` waits for the server to serve again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts when a picked port turns out to be taken by someone else.
const BIND_ATTEMPTS: usize = 5;
/// Per-command timeout of a four-letter-word probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The server's tick. Session timeouts are allowed from `minSessionTimeout` (1 s) to
/// `maxSessionTimeout` (30 s), both set explicitly in zoo.cfg.
pub const ZK_TICK_MS: u64 = 500;

/// Sends a four-letter word (`ruok`, `srvr`, `stat`, `mntr`, ...) to a ZooKeeper server on
/// 127.0.0.1:`port` and returns its whole answer.
pub async fn four_letter_word(port: u16, cmd: &str, timeout: Duration) -> Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(cmd.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| Error::io(format!("`{cmd}` to 127.0.0.1:{port}"), e)),
        Err(_) => Err(Error::Timeout {
            what: format!("an answer to `{cmd}` from 127.0.0.1:{port}"),
            timeout,
            detail: String::new(),
        }),
    }
}

fn four_letter_word_blocking(port: u16, cmd: &str, timeout: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// What `srvr` says about a serving server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Srvr {
    zxid: u64,
    mode: String,
}

fn parse_srvr(text: &str) -> std::result::Result<Option<Srvr>, String> {
    if !text.contains("Zxid:") {
        // e.g. "This ZooKeeper instance is not currently serving requests"
        return Ok(None);
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let zxid_text = field("Zxid:").ok_or_else(|| text.to_string())?;
    let zxid = u64::from_str_radix(zxid_text.trim_start_matches("0x"), 16)
        .map_err(|_| text.to_string())?;
    let mode = field("Mode:").ok_or_else(|| text.to_string())?;
    Ok(Some(Srvr { zxid, mode }))
}

/// `Ok(srvr)` when the server answers `ruok` with `imok` AND `srvr` says it serves.
async fn probe_serving(port: u16) -> std::result::Result<Srvr, String> {
    let ruok = four_letter_word(port, "ruok", PROBE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if ruok.trim() != "imok" {
        return Err(format!("ruok answered {ruok:?}"));
    }
    let srvr = four_letter_word(port, "srvr", PROBE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match parse_srvr(&srvr) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(format!("srvr answered {:?}", srvr.trim())),
        Err(t) => Err(format!("unparsable srvr answer {t:?}")),
    }
}

/// The JAAS file of a server that accepts SASL DIGEST-MD5 logins of `users`. Names must be
/// non-empty `[A-Za-z0-9_.-]` (they become option keys `user_<name>`), passwords must not
/// contain `"`, `\` or line breaks (they are written as quoted JAAS values); anything else is
/// an [`Error::InvalidArgument`], never a broken file.
fn jaas_server_section(users: &[(&str, &str)]) -> Result<String> {
    let mut text =
        String::from("Server {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n");
    for (name, password) in users {
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(Error::InvalidArgument(format!(
                "SASL user name {name:?} must be non-empty and use only A-Z a-z 0-9 _ . -"
            )));
        }
        if password.contains(['"', '\\', '\n', '\r']) {
            return Err(Error::InvalidArgument(format!(
                "the SASL password of user {name:?} must not contain a quote, a backslash or a line break"
            )));
        }
        text.push_str(&format!("  user_{name}=\"{password}\"\n"));
    }
    text.push_str("  ;\n};\n");
    Ok(text)
}

/// A quorum peer's ports, for the `server.N=` lines.
#[derive(Debug, Clone, Copy)]
struct Peer {
    id: u32,
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
}

/// One ZooKeeper server process (a standalone server, or one peer of a [`ZkEnsemble`]).
///
/// It keeps its port and data across [`stop`](Self::stop)/[`kill`](Self::kill) and
/// [`restart`](Self::restart). Dropping it (also while unwinding from a panic) SIGKILLs and
/// reaps the process and removes its directory.
#[derive(Debug)]
pub struct ZkNode {
    // Declared first: the process dies before its directory is removed.
    sp: ServerProc,
    id: u32,
    client_port: u16,
    peer: Option<Peer>,
    java: PathBuf,
    classpath: String,
    /// Extra JVM flags (e.g. the JAAS file for SASL).
    jvm_flags: Vec<String>,
    data_dir: PathBuf,
    txn_log_dir: PathBuf,
    cfg_path: PathBuf,
    dir: tempfile::TempDir,
}

impl ZkNode {
    fn create(
        java: &Path,
        classpath: &str,
        client_port: u16,
        me: Option<Peer>,
        peers: &[Peer],
    ) -> Result<ZkNode> {
        let dir = temp_dir(&format!("zk{}", me.map(|p| p.id).unwrap_or(0)))?;
        let data_dir = dir.path().join("data");
        let txn_log_dir = dir.path().join("txnlog");
        let cfg_path = dir.path().join("zoo.cfg");
        let mut cfg = format!(
            "# written by succession-testkit\n\
             tickTime={ZK_TICK_MS}\n\
             initLimit=20\n\
             syncLimit=10\n\
             minSessionTimeout=1000\n\
             maxSessionTimeout=30000\n\
             dataDir={}\n\
             dataLogDir={}\n\
             clientPort={client_port}\n\
             clientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n\
             preAllocSize=1024\n\
             forceSync=no\n\
             autopurge.purgeInterval=0\n",
            data_dir.display(),
            txn_log_dir.display()
        );
        for p in peers {
            cfg.push_str(&format!(
                "server.{}=127.0.0.1:{}:{}\n",
                p.id, p.quorum_port, p.election_port
            ));
        }
        std::fs::write(&cfg_path, cfg)
            .map_err(|e| Error::io(format!("write {}", cfg_path.display()), e))?;
        let what = match me {
            Some(p) => format!("ZooKeeper peer {} (127.0.0.1:{client_port})", p.id),
            None => format!("ZooKeeper 127.0.0.1:{client_port}"),
        };
        let node = ZkNode {
            sp: ServerProc::new(what, dir.path().join("zookeeper.log")),
            id: me.map(|p| p.id).unwrap_or(0),
            client_port,
            peer: me,
            java: java.to_path_buf(),
            classpath: classpath.to_string(),
            jvm_flags: Vec::new(),
            data_dir,
            txn_log_dir,
            cfg_path,
            dir,
        };
        node.prepare_dirs()?;
        Ok(node)
    }

    /// Accept SASL DIGEST-MD5 logins of `users` (`(name, password)`): a JAAS `Server`
    /// section (passed with `-Djava.security.auth.login.config`) and the SASL
    /// authentication provider in zoo.cfg.
    fn enable_sasl(&mut self, users: &[(&str, &str)]) -> Result<()> {
        let jaas = self.dir.path().join("jaas.conf");
        std::fs::write(&jaas, jaas_server_section(users)?)
            .map_err(|e| Error::io(format!("write {}", jaas.display()), e))?;
        let mut cfg = std::fs::read_to_string(&self.cfg_path)
            .map_err(|e| Error::io(format!("read {}", self.cfg_path.display()), e))?;
        cfg.push_str(
            "authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n",
        );
        std::fs::write(&self.cfg_path, cfg)
            .map_err(|e| Error::io(format!("write {}", self.cfg_path.display()), e))?;
        self.jvm_flags.push(format!(
            "-Djava.security.auth.login.config={}",
            jaas.display()
        ));
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<()> {
        empty_dir(&self.data_dir)?;
        empty_dir(&self.txn_log_dir)?;
        if self.peer.is_some() {
            let myid = self.data_dir.join("myid");
            std::fs::write(&myid, format!("{}\n", self.id))
                .map_err(|e| Error::io(format!("write {}", myid.display()), e))?;
        }
        Ok(())
    }

    async fn spawn(&self, banner: &str) -> Result<()> {
        let conf_dir = self.cfg_path.parent().unwrap_or(Path::new("/"));
        let mut cmd = Command::new(&self.java);
        cmd.args([
            "-Xms16m",
            "-Xmx192m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.snapshot.trust.empty=true",
            "-Dzookeeper.jmx.log4j.disable=true",
            crate::deps::JVM_QUIET_LOGGING,
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        ])
        .args(&self.jvm_flags)
        .arg("-cp")
        .arg(format!("{}:{}", self.classpath, conf_dir.display()))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(&self.cfg_path)
        .current_dir(conf_dir);
        self.sp.launch(banner, cmd, &self.java).await
    }

    /// The start failure of a process that exited on its own, if it did.
    fn crashed(&self) -> Option<Error> {
        self.sp.crashed(40)
    }

    /// `"127.0.0.1:PORT"`, the client address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The server's `myid` (1-based) in an ensemble, 0 for a standalone server.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The pid of the running JVM, `None` when stopped (or crashed).
    pub fn pid(&self) -> Option<u32> {
        self.sp.proc.pid()
    }

    /// True while the process runs (it may still be frozen or not serving).
    pub fn is_running(&self) -> bool {
        self.sp.proc.is_running()
    }

    /// The data directory (snapshots, `myid`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The transaction log directory (`dataLogDir`).
    pub fn txn_log_dir(&self) -> &Path {
        &self.txn_log_dir
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

    /// SIGCONT: resume a frozen server.
    pub fn thaw(&self) -> Result<()> {
        self.sp.thaw()
    }

    /// Empties the data dir and the transaction log dir (keeping `myid`): the next
    /// [`restart`](Self::restart) comes back with an empty tree and zxid 0. The server must be
    /// stopped, else [`Error::StillRunning`].
    pub fn wipe(&mut self) -> Result<()> {
        self.sp.ensure_stopped("wipe")?;
        self.prepare_dirs()
    }

    /// Starts the server again on the same port and data dir and waits until it serves
    /// (for an ensemble peer: until it has joined a quorum). A running server is stopped
    /// gracefully first.
    pub async fn restart(&mut self) -> Result<()> {
        self.sp.stop().await;
        self.spawn_again().await?;
        self.wait_ready(RESTART_TIMEOUT).await
    }

    /// Spawns the stopped process again, retrying briefly if the port is still taken.
    /// A process that exits at once is a [`Error::StartFailed`] with the log tail.
    async fn spawn_again(&self) -> Result<()> {
        let answers = || async {
            four_letter_word(self.client_port, "ruok", Duration::from_millis(300))
                .await
                .is_ok()
        };
        self.sp
            .respawn(
                || self.spawn("restart"),
                answers,
                Duration::from_millis(1500),
                40,
            )
            .await
    }

    /// Waits until the server answers `ruok` with `imok` AND `srvr` says it serves
    /// (has a zxid and a mode). Fails early with the log tail if the process exits.
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
            let last = match probe_serving(self.client_port).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to serve", self.sp.what),
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

    fn srvr_blocking(&self) -> Result<Option<Srvr>> {
        if !self.sp.proc.is_running() {
            return Ok(None);
        }
        match four_letter_word_blocking(self.client_port, "srvr", Duration::from_secs(1)) {
            Ok(text) => parse_srvr(&text).map_err(|reply| Error::Protocol {
                what: format!("`srvr` to {}", self.sp.what),
                reply,
            }),
            Err(_) => Ok(None),
        }
    }

    /// The server's last zxid from `srvr` (`Zxid: 0x..`); `None` when it is stopped, frozen or
    /// not serving. Blocks up to ~1 s.
    pub fn last_zxid(&self) -> Result<Option<u64>> {
        Ok(self.srvr_blocking()?.map(|s| s.zxid))
    }

    /// The server's mode from `srvr`: `"leader"`, `"follower"` or `"standalone"`; `None` when
    /// it is stopped, frozen or not serving. Blocks up to ~1 s.
    pub fn mode(&self) -> Result<Option<String>> {
        Ok(self.srvr_blocking()?.map(|s| s.mode))
    }
}

/// One standalone ZooKeeper 3.8 server on 127.0.0.1 with a free port and a temp data dir.
///
/// `tickTime=500`, sessions from 1 s to 30 s, four-letter words enabled, no admin server.
/// Dropping it SIGKILLs and reaps the JVM and removes the temp dir.
#[derive(Debug)]
pub struct ZkServer {
    node: ZkNode,
}

impl ZkServer {
    /// Starts a server on a free port with an empty temp data dir and waits until it serves
    /// (`ruok` -> `imok` and `srvr` answers). Retries with another port if the picked one was
    /// taken meanwhile. A missing java/jar is an [`Error::MissingDependency`].
    pub async fn start() -> Result<ZkServer> {
        Self::start_with_sasl(&[]).await
    }

    /// Like [`start`](Self::start), and the server accepts SASL DIGEST-MD5 logins of
    /// `users` (`(name, password)` pairs) besides anonymous and digest clients; nodes
    /// created by a SASL client can carry `sasl:<name>` ACLs. No users: plain [`start`](Self::start).
    ///
    /// The server gets `authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider`
    /// in its zoo.cfg and `-Djava.security.auth.login.config=<its temp dir>/jaas.conf`, a JAAS
    /// file with one `Server` section (`org.apache.zookeeper.server.auth.DigestLoginModule
    /// required user_<name>="<password>" ...;`). A name that is not `[A-Za-z0-9_.-]+` or a
    /// password with a quote, backslash or line break is an [`Error::InvalidArgument`], before
    /// anything starts. SASL stays optional: clients without it are served as usual.
    pub async fn start_with_sasl(users: &[(&str, &str)]) -> Result<ZkServer> {
        if !users.is_empty() {
            jaas_server_section(users)?;
        }
        let java = java_bin()?;
        let cp = zk_classpath()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_ports(1)?[0];
            let mut node = ZkNode::create(&java, &cp, port, None, &[])?;
            if !users.is_empty() {
                node.enable_sasl(users)?;
            }
            node.spawn("start").await?;
            match node.wait_ready(START_TIMEOUT).await {
                Ok(()) => return Ok(ZkServer { node }),
                Err(_) if attempt < BIND_ATTEMPTS && node.sp.log.port_taken() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `"127.0.0.1:PORT"`, the connect string for a client.
    pub fn addr(&self) -> String {
        self.node.addr()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// The pid of the running JVM, `None` when stopped.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// True while the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// Graceful stop: SIGTERM, wait for the exit, SIGKILL after 10 s. Ok if already stopped.
    pub async fn stop(&mut self) -> Result<()> {
        self.node.stop().await
    }

    /// SIGKILL and reap. Ok if already stopped.
    pub async fn kill(&mut self) -> Result<()> {
        self.node.kill().await
    }

    /// SIGSTOP the server.
    pub fn freeze(&self) -> Result<()> {
        self.node.freeze()
    }

    /// SIGCONT the server.
    pub fn thaw(&self) -> Result<()> {
        self.node.thaw()
    }

    /// Empties the data and transaction log dirs; the server must be stopped.
    pub fn wipe(&mut self) -> Result<()> {
        self.node.wipe()
    }

    /// Starts again on the same port and data dir and waits until it serves (a running
    /// server is stopped gracefully first).
    pub async fn restart(&mut self) -> Result<()> {
        self.node.restart().await
    }

    /// Waits until `ruok` -> `imok` and `srvr` says it serves.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.node.wait_ready(timeout).await
    }

    /// The last zxid from `srvr`; `None` when not answering.
    pub fn last_zxid(&self) -> Result<Option<u64>> {
        self.node.last_zxid()
    }

    /// `"standalone"` while serving; `None` when not answering.
    pub fn mode(&self) -> Result<Option<String>> {
        self.node.mode()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.node.data_dir()
    }

    /// The server's stdout/stderr log.
    pub fn log_path(&self) -> &Path {
        self.node.log_path()
    }

    /// The underlying process handle.
    pub fn node(&mut self) -> &mut ZkNode {
        &mut self.node
    }

    /// SIGKILL, reap and remove the temp dir (for statics that are never dropped).
    pub(crate) fn shutdown_for_exit(&self) {
        self.node.sp.proc.kill_now();
        let _ = std::fs::remove_dir_all(self.node.dir.path());
    }
}

/// `n` ZooKeeper quorum peers on loopback (`server.N=127.0.0.1:quorum:election`), each with
/// its own client port and temp data dir. Dropping it kills every peer.
#[derive(Debug)]
pub struct ZkEnsemble {
    nodes: Vec<ZkNode>,
}

impl ZkEnsemble {
    /// Starts `n` peers (3 is the usual) and waits until ALL of them serve, with one leader.
    pub async fn start(n: usize) -> Result<ZkEnsemble> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "a ZooKeeper ensemble needs n >= 1".into(),
            ));
        }
        let java = java_bin()?;
        let cp = zk_classpath()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(3 * n)?;
            let peers: Vec<Peer> = (0..n)
                .map(|i| Peer {
                    id: i as u32 + 1,
                    client_port: ports[3 * i],
                    quorum_port: ports[3 * i + 1],
                    election_port: ports[3 * i + 2],
                })
                .collect();
            let mut nodes = Vec::with_capacity(n);
            for p in &peers {
                nodes.push(ZkNode::create(&java, &cp, p.client_port, Some(*p), &peers)?);
            }
            let ensemble = ZkEnsemble { nodes };
            for node in &ensemble.nodes {
                node.spawn("start").await?;
            }
            match ensemble.wait_serving(n, START_TIMEOUT, true).await {
                Ok(()) => return Ok(ensemble),
                Err(_)
                    if attempt < BIND_ATTEMPTS
                        && ensemble.nodes.iter().any(|n| n.sp.log.port_taken()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `"127.0.0.1:p1,127.0.0.1:p2,..."`: every peer's client address.
    pub fn connect_string(&self) -> String {
        self.nodes
            .iter()
            .map(ZkNode::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number of peers.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for an ensemble without peers (never, `start(0)` is refused).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Peer `i` (0-based; its `myid` is `i + 1`). Panics if `i >= len()`.
    pub fn node(&mut self, i: usize) -> &mut ZkNode {
        &mut self.nodes[i]
    }

    /// All peers.
    pub fn nodes(&self) -> &[ZkNode] {
        &self.nodes
    }

    /// The index of the peer whose `srvr` says `leader`, if any answers so.
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.mode().ok().flatten().as_deref() == Some("leader"))
    }

    /// Stops every running peer gracefully (all at once; SIGKILL after 10 s).
    pub async fn stop_all(&mut self) -> Result<()> {
        process::stop_all(self.nodes.iter().map(|n| &n.sp)).await;
        Ok(())
    }

    /// SIGKILLs and reaps every peer.
    pub async fn kill_all(&mut self) -> Result<()> {
        process::kill_all(self.nodes.iter().map(|n| &n.sp));
        Ok(())
    }

    /// Wipes every peer; all must be stopped (checked before anything is wiped).
    pub async fn wipe_all(&mut self) -> Result<()> {
        process::ensure_all_stopped(self.nodes.iter().map(|n| &n.sp), "wipe_all")?;
        for n in &mut self.nodes {
            n.wipe()?;
        }
        Ok(())
    }

    /// Starts every peer again (running ones are stopped first) and waits until all serve.
    pub async fn restart_all(&mut self) -> Result<()> {
        self.stop_all().await?;
        for n in &self.nodes {
            n.spawn_again().await?;
        }
        self.wait_serving(self.nodes.len(), RESTART_TIMEOUT, false)
            .await
    }

    /// Waits until a majority of the peers serve and one of them is the leader.
    pub async fn wait_quorum(&self, timeout: Duration) -> Result<()> {
        self.wait_serving(self.nodes.len() / 2 + 1, timeout, false)
            .await
    }

    async fn wait_serving(&self, need: usize, timeout: Duration, starting: bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut serving = 0;
            let mut leaders = 0;
            let mut states = Vec::new();
            for n in &self.nodes {
                if starting {
                    if let Some(e) = n.crashed() {
                        return Err(e);
                    }
                }
                if !n.sp.proc.has_child() {
                    states.push(format!("peer {}: stopped", n.id));
                    continue;
                }
                match probe_serving(n.client_port).await {
                    Ok(s) => {
                        serving += 1;
                        if s.mode == "leader" || s.mode == "standalone" {
                            leaders += 1;
                        }
                        states.push(format!("peer {}: {}", n.id, s.mode));
                    }
                    Err(e) => states.push(format!("peer {}: {e}", n.id)),
                }
            }
            if serving >= need && leaders == 1 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails: String = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "\n--- tail of {} ---\n{}",
                            n.sp.log.path.display(),
                            n.sp.log.tail(15)
                        )
                    })
                    .collect();
                return Err(Error::Timeout {
                    what: format!("{need} of {} ZooKeeper peers to serve", self.nodes.len()),
                    timeout,
                    detail: format!(" ({}){tails}", states.join("; ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaas_section_lists_users_and_refuses_what_would_break_it() {
        let text = jaas_server_section(&[("svc", "pw 1"), ("a.b-c_2", "")]).unwrap();
        assert_eq!(
            text,
            "Server {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n  \
             user_svc=\"pw 1\"\n  user_a.b-c_2=\"\"\n  ;\n};\n"
        );
        for (name, password, hint) in [
            ("", "pw", "non-empty"),
            ("a b", "pw", "A-Z"),
            ("a=b", "pw", "A-Z"),
            ("svc", "p\"w", "quote"),
            ("svc", "p\\w", "backslash"),
            ("svc", "p\nw", "line break"),
        ] {
            match jaas_server_section(&[(name, password)]) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(hint), "{m}"),
                other => panic!("{name:?}/{password:?} must be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn parses_srvr() {
        let text = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nZxid: 0x100000003\nMode: follower\nNode count: 5\n";
        assert_eq!(
            parse_srvr(text).unwrap(),
            Some(Srvr {
                zxid: 0x1_0000_0003,
                mode: "follower".into()
            })
        );
        assert_eq!(
            parse_srvr("This ZooKeeper instance is not currently serving requests\n").unwrap(),
            None
        );
    }
}
