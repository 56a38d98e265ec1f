//! Helpers shared by the CLI test files: run the real `succession` binary, read its JSON
//! event lines with deadlines, run it to completion, and make TLS certificates.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_succession");

/// How long any one expected event may take.
pub const BOUND: Duration = Duration::from_secs(30);

/// A running `succession` with its stdout read line by line; stderr goes to a file.
pub struct Cli {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub seen: Vec<String>,
    stderr: tempfile::NamedTempFile,
}

impl Cli {
    /// Start with `args` and extra environment `env`.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Cli {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen stderr file"))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start succession");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Cli {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Start with `args`.
    pub fn start(args: &[&str]) -> Cli {
        Cli::start_env(args, &[])
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Everything written to stdout so far (the lines read).
    pub fn stdout(&self) -> String {
        self.seen.join("\n")
    }

    /// Read lines until one has `"event":"<event>"`; returns it.
    pub async fn until(&mut self, event: &str) -> String {
        self.until_line(event, |_| true).await
    }

    /// Read lines until one has `"event":"<event>"` and satisfies `pred`; returns it.
    pub async fn until_line(&mut self, event: &str, pred: impl Fn(&str) -> bool) -> String {
        let needle = format!("\"event\":\"{event}\"");
        let read = async {
            loop {
                match self.lines.next_line().await.expect("read stdout") {
                    Some(l) => {
                        assert!(l.starts_with("{\"ts_ms\":"), "not a JSON event line: {l}");
                        self.seen.push(l.clone());
                        if l.contains(&needle) && pred(&l) {
                            return l;
                        }
                    }
                    None => return String::new(),
                }
            }
        };
        match tokio::time::timeout(BOUND, read).await {
            Ok(l) if !l.is_empty() => l,
            Ok(_) => panic!(
                "stdout closed before {event}; saw {:#?}; stderr: {}",
                self.seen,
                self.stderr()
            ),
            Err(_) => panic!(
                "no {event} event within {BOUND:?}; saw {:#?}; stderr: {}",
                self.seen,
                self.stderr()
            ),
        }
    }

    /// Reads lines for `window` (an observation window for something that must NOT
    /// happen) and fails if one has `"event":"<event>"`.
    pub async fn none_within(&mut self, event: &str, window: Duration) {
        let needle = format!("\"event\":\"{event}\"");
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return,
                Ok(Ok(Some(l))) => {
                    self.seen.push(l.clone());
                    assert!(
                        !l.contains(&needle),
                        "unexpected {event}: {l}; saw {:#?}",
                        self.seen
                    );
                }
                Ok(_) => panic!(
                    "stdout closed; saw {:#?}; stderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Send `sig` to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// SIGTERM, then its exit code (must exit within the bound).
    pub async fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.exit_code().await
    }

    /// Its exit code (must exit within the bound).
    pub async fn exit_code(&mut self) -> i32 {
        let st = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("did not exit in time; stderr: {}", self.stderr()))
            .expect("wait");
        st.code().unwrap_or(-1)
    }
}

/// The value of `key` in a JSON event line (strings without quotes, `null` as is).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let rest = &line[line.find(&k)? + k.len()..];
    if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next()
    } else {
        rest.split([',', '}']).next()
    }
}

/// The result of a run to completion.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env` to completion (bounded), stderr to a pipe.
pub async fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(40), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} hung"))
        .expect("run");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The stderr lines that are not log lines or the "joining" notice: what the user is told
/// about the failure.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("succession: ") && !l.starts_with("succession: joining "))
        .collect()
}

/// Asserts a refusal: exit 2, exactly one `succession: ...` line on stderr containing
/// `hint`, no panic, and stdout empty or (with `health_ok`) only health events.
pub fn assert_refused(what: &str, o: &Outcome, hint: &str, health_ok: bool) {
    assert_eq!(o.code, 2, "{what}: exit code; stderr: {}", o.stderr);
    let lines = error_lines(&o.stderr);
    assert_eq!(
        lines.len(),
        1,
        "{what}: one error line expected, got {lines:#?} in stderr {:?}",
        o.stderr
    );
    assert!(
        lines[0].contains(hint),
        "{what}: {:?} should contain {hint:?}",
        lines[0]
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{what} panicked: {}",
        o.stderr
    );
    for l in o.stdout.lines() {
        assert!(
            health_ok && l.contains("\"event\":\"health\""),
            "{what}: unexpected stdout line {l}"
        );
    }
}

/// A test PKI in a temp dir: a CA, a server certificate for 127.0.0.1/localhost, a client
/// certificate, all PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "succession CLI test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let issue = |cn: &str, sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = sans;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = usages;
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // etcd 3.4's gateway dials its own client port with the server certificate, so it
        // also needs client usage.
        let (server, server_key) = issue(
            "etcd",
            vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = issue(
            "succession",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// Writes `content` to a new file in `dir` (mode 0600) and returns its path.
pub fn secret_file(dir: &Path, name: &str, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

// ---- `succession run` command trees, judged from /proc ----

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    succession_testkit::process_alive(pid as u32)
}

/// Every live process whose environment carries `CMD_TAG=<tag>...` (prefix match; set by
/// the command script for itself and everything it starts; `succession` itself does not
/// have it).
pub fn tagged(tag: &str) -> Vec<i32> {
    tag_entries(tag).into_iter().map(|(pid, _)| pid).collect()
}

/// Every live process whose environment has an entry starting with `CMD_TAG=<prefix>`:
/// its pid and that entry (`CMD_TAG=...`).
pub fn tag_entries(prefix: &str) -> Vec<(i32, String)> {
    let want = format!("CMD_TAG={prefix}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if let Some(kv) = env
            .split(|&b| b == 0)
            .find(|kv| kv.starts_with(want.as_bytes()))
        {
            if alive(pid) {
                out.push((pid, String::from_utf8_lossy(kv).into_owned()));
            }
        }
    }
    out
}

/// The leader's command: records its pid, starts a grandchild that leaves the process
/// group (`setsid`) and ignores SIGTERM, and drains for `drain` after SIGTERM. Everything
/// it starts carries `CMD_TAG=<tag>-<participant id>`.
pub fn script(dir: &Path, tag: &str, drain: &str) -> String {
    format!(
        "export CMD_TAG={tag}-$SUCCESSION_ID; d={dir}; \
         setsid sh -c 'trap \"\" TERM; echo $$ > '$d/gc.$SUCCESSION_ID'; exec sleep 1000' & \
         trap 'sleep {drain}; exit 0' TERM; \
         echo $$ > $d/cmd.$SUCCESSION_ID; \
         while [ ! -s $d/gc.$SUCCESSION_ID ]; do sleep 0.01; done; \
         echo ready > $d/ready.$SUCCESSION_ID; \
         sleep 1000 & wait",
        dir = dir.display()
    )
}

/// Wait until the command of participant `id` has started its grandchild.
pub async fn ready(dir: &Path, id: &str) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = |f: &str| -> Option<i32> {
            std::fs::read_to_string(dir.join(format!("{f}.{id}")))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if dir.join(format!("ready.{id}")).exists() {
            if let (Some(c), Some(g)) = (read("cmd"), read("gc")) {
                return (c, g);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the command of {id} did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Several CLI processes whose event lines are merged into one channel.
pub struct Fleet {
    children: Vec<Option<Child>>,
    stdins: Vec<Option<tokio::process::ChildStdin>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, String)>,
    /// Every line read so far: (process index, line).
    pub seen: Vec<(usize, String)>,
}

impl Fleet {
    /// Start one `succession` per argument list.
    pub fn start(args: Vec<Vec<String>>) -> Fleet {
        let mut fleet = Fleet::empty();
        for a in args {
            fleet.add(Path::new(BIN), &a, false);
        }
        fleet
    }

    /// No process yet; [`add`](Self::add) some.
    pub fn empty() -> Fleet {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            tx,
            seen: Vec::new(),
        }
    }

    /// Start `program` with `args` (its stdin piped when `stdin`, for [`send`](Self::send));
    /// returns its index.
    pub fn add(&mut self, program: &Path, args: &[String], stdin: bool) -> usize {
        let i = self.children.len();
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send((i, l)).is_err() {
                    return;
                }
            }
        });
        self.stdins.push(child.stdin.take());
        self.children.push(Some(child));
        i
    }

    /// Write `line` to process `i`'s stdin.
    pub async fn send(&mut self, i: usize, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdins[i].as_mut().expect("started with a piped stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the process's stdin");
        stdin.flush().await.expect("flush the process's stdin");
    }

    /// Wait until process `i` exits (within `within`); its exit code.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<i32> {
        let child = self.children[i].as_mut().expect("running");
        let st = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("process {i} did not exit within {within:?}"))
            .expect("wait");
        self.children[i] = None;
        st.code()
    }

    /// Whether process `i` was started and has not been waited for.
    pub fn is_running(&self, i: usize) -> bool {
        self.children.get(i).is_some_and(Option::is_some)
    }

    /// Every line still buffered (without waiting).
    pub fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// The next line from any process within `within` (None at the deadline).
    pub async fn next_line(&mut self, within: Duration) -> Option<(usize, String)> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(l)) => {
                self.seen.push(l.clone());
                Some(l)
            }
            _ => None,
        }
    }

    /// The next line (from any process) matching `pred`, within `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(usize, &str) -> bool,
    ) -> (usize, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((i, l))) => {
                    self.seen.push((i, l.clone()));
                    if pred(i, &l) {
                        return (i, l);
                    }
                }
                Ok(None) => panic!("every process exited before {what}; saw {:#?}", self.seen),
                Err(_) => panic!("no {what} within {within:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// SIGKILL process `i`.
    pub fn kill9(&mut self, i: usize) {
        let child = self.children[i].as_mut().expect("running");
        let pid = child.id().expect("pid") as i32;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        self.children[i] = None;
    }

    /// SIGTERM every running process; each must exit 0 within 30 s.
    pub async fn stop_all(&mut self) {
        for c in self.children.iter_mut().flatten() {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            let st = tokio::time::timeout(Duration::from_secs(30), c.wait())
                .await
                .expect("exits after SIGTERM")
                .expect("wait");
            assert_eq!(st.code(), Some(0));
        }
    }
}

/// `succession campaign` in supervised mode as participant `id`: the ZooKeeper primary at
/// `path`, the etcd fallback under the same prefix, then `flags` (timings and the like).
pub fn supervised_args(zk: &str, etcd: &str, path: &str, id: &str, flags: &[&str]) -> Vec<String> {
    [
        "campaign", "--zk", zk, "--path", path, "--etcd", etcd, "--prefix", path, "--id", id,
    ]
    .iter()
    .chain(flags)
    .map(|s| s.to_string())
    .collect()
}
