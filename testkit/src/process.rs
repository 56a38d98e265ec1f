//! Child processes that cannot outlive the test process, free ports, temp dirs.
//!
//! Every server is spawned by ONE dedicated, never-exiting thread ("spawner"), with
//! `prctl(PR_SET_PDEATHSIG, SIGKILL)` and its own process group. PDEATHSIG fires when the
//! *spawning thread* dies; tokio test threads die after each test, the spawner never does,
//! so a child dies exactly when the test process dies (normally, by panic, or by SIGKILL).

use crate::error::{Error, Result};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnReply = tokio::sync::oneshot::Sender<std::io::Result<Child>>;

fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("succession-testkit-spawner".into())
            .spawn(move || {
                // Never returns: the statics hold the sender forever.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                // Unreachable in practice; park so children keep their parent thread.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the succession-testkit spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the spawner thread, with PDEATHSIG=SIGKILL and its own process group.
pub(crate) async fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("testkit spawner thread dropped the request"))?
}

fn send_signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscall on a pid we spawned and have not reaped yet.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A child process owned by a server handle; SIGKILLed and reaped on drop. Signals are only
/// sent while the child is unreaped, so its pid cannot have been reused.
#[derive(Debug, Default)]
pub(crate) struct Proc {
    child: Mutex<Option<Child>>,
}

impl Proc {
    pub(crate) fn set(&self, child: Child) {
        let old = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(child);
        if let Some(mut old) = old {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// Reaps the child if it has exited; returns its status then.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = match g.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => return None,
        };
        if status.is_some() {
            *g = None;
        }
        status
    }

    /// The pid while the process is alive (reaps it first if it exited on its own).
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        live_pid(&mut g)
    }

    /// Sends `sig` if the child is alive, holding the lock so that nobody reaps it (and
    /// frees its pid for reuse) in between. Returns the pid signalled.
    fn signal_live(&self, sig: libc::c_int) -> Option<(u32, std::io::Result<()>)> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let pid = live_pid(&mut g)?;
        Some((pid, send_signal(pid, sig)))
    }

    /// True while a spawned child is not yet reaped (running, or exited but not collected).
    /// Unlike [`Self::pid`] it never reaps, so [`Self::exited`] still sees the status.
    pub(crate) fn has_child(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub(crate) fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Sends `sig` to the running child, or fails with `NotRunning`.
    pub(crate) fn signal(&self, what: &str, op: &'static str, sig: libc::c_int) -> Result<()> {
        match self.signal_live(sig) {
            None => Err(Error::NotRunning {
                what: what.to_string(),
                op,
            }),
            Some((pid, r)) => r.map_err(|e| Error::io(format!("{op} {what} (pid {pid})"), e)),
        }
    }

    /// Sends SIGTERM (and SIGCONT, in case it is frozen); does not wait.
    pub(crate) fn begin_stop(&self) {
        let _ = self.signal_live(libc::SIGTERM);
        let _ = self.signal_live(libc::SIGCONT);
    }

    /// Waits until the child exited, SIGKILLing it once `deadline` passes.
    pub(crate) async fn finish_stop(&self, deadline: Instant) {
        while self.is_running() {
            if Instant::now() >= deadline {
                self.kill_now();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop: SIGTERM, wait up to `grace`, then SIGKILL. Ok if already stopped.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.begin_stop();
        self.finish_stop(Instant::now() + grace).await;
    }

    /// SIGKILL and reap (blocking; a SIGKILLed process is reaped within milliseconds).
    pub(crate) fn kill_now(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGKILL without reaping (the next `pid()`/`exited()` call reaps).
    pub(crate) fn begin_kill(&self) {
        let _ = self.signal_live(libc::SIGKILL);
    }
}

fn live_pid(g: &mut Option<Child>) -> Option<u32> {
    let c = g.as_mut()?;
    match c.try_wait() {
        Ok(None) => Some(c.id()),
        _ => {
            *g = None;
            None
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// True when every thread of `pid` is stopped (or gone): `/proc/<pid>/task/*/stat`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return true;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        matches!(state, Some('T') | Some('t') | Some('Z') | Some('X') | None)
    })
}

/// True while `pid` exists and is not a zombie (reads `/proc/<pid>/stat`).
///
/// Use it to check that a stopped/dropped server really is gone.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// A random 64-bit number (SipHash with a random key over a counter, the time and the pid).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct ports that are free on 127.0.0.1 right now. They are picked at random BELOW
/// the kernel's ephemeral range, so outgoing connections never take them while a server is
/// down for a restart. Another process may still grab one: callers retry on a bind failure.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Never hand out a port twice in one process: two tests picking the same free port
    // before either server binds it would otherwise collide.
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let low = ephemeral_low();
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        if tries > 10_000 {
            return Err(Error::io(
                "find free ports on 127.0.0.1",
                std::io::Error::other("no free port found"),
            ));
        }
        let candidate = if low > 12_000 {
            10_000 + (random_u64() % u64::from(low - 10_000)) as u16
        } else {
            0
        };
        if candidate != 0 && (ports.contains(&candidate) || handed_out.contains(&candidate)) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", candidate)) {
            let port = l
                .local_addr()
                .map_err(|e| Error::io("local_addr", e))?
                .port();
            if !ports.contains(&port) && !handed_out.contains(&port) {
                ports.push(port);
                held.push(l);
            }
        }
    }
    handed_out.extend_from_slice(&ports);
    Ok(ports)
}

const DIR_PREFIX: &str = "succession-testkit-";

/// A fresh temp dir `succession-testkit-<pid>-<kind>-XXXX`. On first use, removes such dirs
/// left behind by test processes that no longer exist (e.g. killed with Ctrl-C).
pub(crate) fn temp_dir(kind: &str) -> Result<tempfile::TempDir> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_stale_dirs);
    tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-{kind}-", std::process::id()))
        .tempdir()
        .map_err(|e| Error::io("create a temp dir", e))
}

fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Opens `path` for appending a server's stdout+stderr; returns the file and its current
/// length (where this run's output starts).
pub(crate) fn open_log(path: &Path, banner: &str) -> Result<(std::fs::File, u64)> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("open log {}", path.display()), e))?;
    let _ = writeln!(f, "===== succession-testkit: {banner} =====");
    let start = f
        .metadata()
        .map_err(|e| Error::io(format!("stat log {}", path.display()), e))?
        .len();
    Ok((f, start))
}

/// The last `lines` lines of `path` written after byte `from`.
pub(crate) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(64 * 1024));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return "(log unreadable)".into();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(log empty)".into()
    } else {
        tail
    }
}

/// True if the log (since `from`) says a listening port was taken.
pub(crate) fn log_says_port_taken(path: &Path, from: u64) -> bool {
    let tail = log_tail(path, from, 400);
    tail.contains("Address already in use") || tail.contains("address already in use")
}

/// Where a server's files live and how to describe it in errors.
#[derive(Debug)]
pub(crate) struct LogFile {
    pub(crate) path: PathBuf,
    pub(crate) run_start: AtomicU64,
}

impl LogFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        LogFile {
            path,
            run_start: AtomicU64::new(0),
        }
    }

    pub(crate) fn open_run(&self, banner: &str) -> Result<std::fs::File> {
        let (f, start) = open_log(&self.path, banner)?;
        self.run_start.store(start, Ordering::Relaxed);
        Ok(f)
    }

    pub(crate) fn tail(&self, lines: usize) -> String {
        log_tail(&self.path, self.run_start.load(Ordering::Relaxed), lines)
    }

    pub(crate) fn port_taken(&self) -> bool {
        log_says_port_taken(&self.path, self.run_start.load(Ordering::Relaxed))
    }
}

/// Empties `dir` (keeps the directory itself); creates it if missing.
pub(crate) fn empty_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        for entry in
            std::fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?
        {
            let entry = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
            let p = entry.path();
            let r = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))
}

/// How long a graceful stop may take before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// One server process with its description and log: the lifecycle that ZooKeeper and etcd
/// nodes share (start, crash detection, stop, kill, freeze, respawn).
#[derive(Debug)]
pub(crate) struct ServerProc {
    // Declared first: the process dies before anything else of its owner is dropped.
    pub(crate) proc: Proc,
    /// How errors name it, e.g. `etcd m1 (127.0.0.1:2379)`.
    pub(crate) what: String,
    pub(crate) log: LogFile,
}

impl ServerProc {
    pub(crate) fn new(what: String, log_path: PathBuf) -> Self {
        ServerProc {
            proc: Proc::default(),
            what,
            log: LogFile::new(log_path),
        }
    }

    /// [`Error::StillRunning`] while the process runs.
    pub(crate) fn ensure_stopped(&self, op: &'static str) -> Result<()> {
        if self.proc.is_running() {
            return Err(Error::StillRunning {
                what: self.what.clone(),
                op,
            });
        }
        Ok(())
    }

    /// Start `cmd` (the binary `exe`) with stdin closed and stdout/stderr appended to this
    /// run's section of the log (headed by `banner`).
    pub(crate) async fn launch(&self, banner: &str, mut cmd: Command, exe: &Path) -> Result<()> {
        self.ensure_stopped("start")?;
        let log = self.log.open_run(banner)?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("clone log handle", e))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log))
            .stderr(std::process::Stdio::from(log2));
        let child = spawn(cmd).await.map_err(|e| Error::StartFailed {
            what: self.what.clone(),
            reason: format!("cannot execute {}: {e}", exe.display()),
            log: self.log.path.clone(),
            log_tail: self.log.tail(20),
        })?;
        self.proc.set(child);
        Ok(())
    }

    /// The start failure of a process that exited on its own (with `lines` of log), if it did.
    pub(crate) fn crashed(&self, lines: usize) -> Option<Error> {
        self.proc.exited().map(|status| Error::StartFailed {
            what: self.what.clone(),
            reason: format!("the process exited ({status})"),
            log: self.log.path.clone(),
            log_tail: self.log.tail(lines),
        })
    }

    /// SIGTERM (plus SIGCONT if frozen), wait for the exit, SIGKILL after [`STOP_GRACE`].
    pub(crate) async fn stop(&self) {
        self.proc.stop(STOP_GRACE).await;
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub(crate) fn freeze(&self) -> Result<()> {
        self.proc.signal(&self.what, "freeze", libc::SIGSTOP)?;
        // kill(2) only queues SIGSTOP: each thread stops when the kernel next gets hold of
        // it, so a busy server (a JVM has dozens of threads) could still answer a request
        // for some milliseconds. Return once every thread is stopped (bounded).
        if let Some(pid) = self.proc.pid() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !all_threads_stopped(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// SIGCONT: resume a frozen process.
    pub(crate) fn thaw(&self) -> Result<()> {
        self.proc.signal(&self.what, "thaw", libc::SIGCONT)
    }

    /// Spawn the stopped process again with `spawn`, retrying briefly while its port is
    /// still taken. Ok as soon as `answers` says it serves, or after `window` without a
    /// crash (readiness proper is the caller's `wait_ready`); a process that exits at once
    /// is an [`Error::StartFailed`] with its log tail (`lines`).
    pub(crate) async fn respawn<S, SF, A, AF>(
        &self,
        spawn: S,
        answers: A,
        window: Duration,
        lines: usize,
    ) -> Result<()>
    where
        S: Fn() -> SF,
        SF: std::future::Future<Output = Result<()>>,
        A: Fn() -> AF,
        AF: std::future::Future<Output = bool>,
    {
        let mut attempt = 0;
        'spawn: loop {
            attempt += 1;
            spawn().await?;
            // A bind failure shows within a moment; anything else is judged by wait_ready.
            let deadline = Instant::now() + window;
            loop {
                if let Some(e) = self.crashed(lines) {
                    if attempt < 3 && self.log.port_taken() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue 'spawn;
                    }
                    return Err(e);
                }
                if Instant::now() >= deadline || answers().await {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Stop every process gracefully, all at once (SIGKILL after [`STOP_GRACE`]).
pub(crate) async fn stop_all<'a>(servers: impl Iterator<Item = &'a ServerProc> + Clone) {
    for s in servers.clone() {
        s.proc.begin_stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    for s in servers {
        s.proc.finish_stop(deadline).await;
    }
}

/// SIGKILL every process, then reap each.
pub(crate) fn kill_all<'a>(servers: impl Iterator<Item = &'a ServerProc> + Clone) {
    for s in servers.clone() {
        s.proc.begin_kill();
    }
    for s in servers {
        s.proc.kill_now();
    }
}

/// [`Error::StillRunning`] (for `op`) naming the first process that runs.
pub(crate) fn ensure_all_stopped<'a>(
    mut servers: impl Iterator<Item = &'a ServerProc>,
    op: &'static str,
) -> Result<()> {
    match servers.find(|s| s.proc.is_running()) {
        Some(s) => s.ensure_stopped(op),
        None => Ok(()),
    }
}
