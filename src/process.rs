//! Run a child process only while leading (feature `process`, Linux).
//!
//! A leader often does its work in another program: a batch job, a worker pool, a script.
//! Killing only the direct child on loss of leadership is not enough (its workers live on,
//! re-parented to init), and neither is a fixed grace period (another participant may be
//! elected before it ends). [`GuardedChild`] runs the command under a small **guard
//! process** so that:
//!
//! * **The whole tree is signalled.** The command runs in its own process group and the
//!   guard is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): every descendant that loses
//!   its parent is re-parented to the guard, not to init, even one that left the process
//!   group with `setsid`. Stopping sends SIGTERM to the group and to every descendant the
//!   guard can see, then SIGKILL, and resolves only when every process is reaped.
//! * **The grace period never outlasts leadership.** [`GuardedChild::terminate`] caps the
//!   grace by [`kill_deadline`]: the election's [`takeover_bound`](crate::Election::takeover_bound)
//!   (the earliest instant another participant could be granted leadership) minus
//!   [`STOP_MARGIN`], re-checked whenever the status changes while the command drains.
//! * **If the owning process stalls, the tree dies.** While the command runs under
//!   [`GuardedChild::until_lost`] (and while [`GuardedChild::terminate`] drains it), the
//!   owner renews every 50 ms a deadline the guard holds: the bound its last contact gives
//!   (the layer's, for a supervisor) minus [`STOP_MARGIN`]. An owner that stops renewing
//!   (SIGSTOP, a runtime blocked on a full pipe, starvation) has its tree SIGKILLed by the
//!   guard there; `until_lost` then reports [`Outcome::LeadershipLost`]. At the kill
//!   deadline the owner also kills the group and the guard's descendants itself and
//!   SIGCONTs the guard (a stopped or traced guard cannot keep the tree alive).
//! * **If the owning process dies, the tree dies.** The guard holds one end of a socket whose
//!   other end only the owner holds. When the owner exits for any reason (SIGKILL, OOM kill,
//!   panic, a dropped [`GuardedChild`]) the guard sees end-of-file and SIGKILLs every
//!   descendant at once, long before the owner's ZooKeeper session or etcd lease can
//!   expire. The direct child also has `PR_SET_PDEATHSIG = SIGKILL` on the guard.
//!
//! The guard is forked from the calling process (no extra binary) and uses only
//! async-signal-safe system calls; it closes every inherited descriptor except standard
//! input, output and error (the command's stdin is `/dev/null`), so it holds no store
//! connection of its owner. It ignores SIGINT/SIGTERM/SIGHUP/SIGQUIT (a Ctrl-C on the
//! terminal reaches the owner, which stops the command in order).
//!
//! What is **not** covered: SIGKILL of the guard itself together with its owner (e.g.
//! `kill -9 -<owner's process group>`): then only the direct child dies (its
//! `PDEATHSIG`); SIGKILL of the guard alone, unless the owner called [`adopt_orphans`] and
//! calls [`kill_orphans`] on the error it then gets (as `succession run` does); a host
//! (owner and guard) paused longer than the takeover bound (the command resumes after
//! another leader started: fence your writes on [`Term`](crate::Term)s); and a store fact
//! that removes a leader at once (an operator deleting its node or revoking its lease, a
//! store wiped and restarted empty, which can elect a new leader before the old one can
//! know: the tree is then killed when the loss is learned, at the latest at the takeover
//! bound).
//! Other operating systems: the module is Linux-only.
//!
//! ```no_run
//! # async fn f(election: std::sync::Arc<dyn succession::Election>) -> std::io::Result<()> {
//! use std::time::Duration;
//! use succession::process::{run_while_leading, LeaderCommand, Outcome};
//! use succession::ElectionExt;
//!
//! let leadership = election.wait_for_leadership(Duration::from_secs(60)).await.unwrap();
//! let cmd = LeaderCommand::new("/usr/bin/my-worker")
//!     .arg("--shard=7")
//!     .env("FENCING_TERM", leadership.term().to_string());
//! match run_while_leading(&*election, &leadership, &cmd, Duration::from_secs(5), std::future::pending()).await? {
//!     Outcome::Exited { status, .. } => println!("worker finished: {status}"),
//!     Outcome::LeadershipLost(stopped) => println!("lost leadership; worker stopped: {stopped:?}"),
//!     _ => {} // Outcome::Cancelled: `cancel` never completes here
//! }
//! # Ok(()) }
//! ```

use std::ffi::{CString, OsStr, OsString};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::{Election, Leadership};

/// Time kept between the forced kill of a leader's command and the election's
/// [`takeover_bound`](crate::Election::takeover_bound), for the kill and the reaping.
pub const STOP_MARGIN: Duration = Duration::from_millis(100);

/// The instant by which a command started under a grant must be dead: `grace` from now,
/// but never later than the election's takeover bound minus [`STOP_MARGIN`] once this
/// participant no longer leads. While it still leads (a voluntary stop before resigning),
/// only `grace` counts: nobody else can be elected before we give up our place.
pub fn kill_deadline(election: &dyn Election, grace: Duration) -> Instant {
    let now = Instant::now();
    let by_grace = now + grace;
    if election.status().borrow().is_leader() {
        return by_grace;
    }
    match election.takeover_bound() {
        Some(bound) => {
            let bound = Instant::from_std(bound);
            let cap = bound.checked_sub(STOP_MARGIN).unwrap_or(now).max(now);
            by_grace.min(cap)
        }
        // Never had contact: nothing could have been granted here; kill at once.
        None => now,
    }
}

/// The latest instant our last confirmed contact keeps the claim safe (the layer we lead
/// through, for a supervisor), minus [`STOP_MARGIN`]. `None` before any contact.
fn contact_bound(election: &dyn Election) -> Option<Instant> {
    let c = election.contact();
    let last = c.last?;
    let bound = Instant::from_std(last + c.safe_for);
    Some(bound.checked_sub(STOP_MARGIN).unwrap_or(bound))
}

/// The guard's own deadline while the tree is being stopped: the kill instant, and never
/// later than our contact allows.
fn guard_deadline(election: &dyn Election, kill_at: Instant) -> Instant {
    match contact_bound(election) {
        Some(b) => kill_at.min(b),
        None => kill_at,
    }
}

/// `at` on the CLOCK_MONOTONIC clock, in nanoseconds (what `std::time::Instant` uses on
/// Linux; converted through the current reading of both, so no assumption on its layout).
fn monotonic_ns(at: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let mono = mono_now_ns();
    if at >= now {
        mono.saturating_add((at - now).as_nanos() as u64)
    } else {
        mono.saturating_sub((now - at).as_nanos() as u64)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (async-signal-safe).
fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A command to run under a guard: program, arguments and extra environment variables
/// (the rest of the environment is inherited). Standard input is `/dev/null`; standard
/// output and error are inherited.
#[derive(Debug, Clone)]
pub struct LeaderCommand {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl LeaderCommand {
    /// A command running `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        LeaderCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The program as given.
    pub fn program(&self) -> &OsStr {
        &self.program
    }
}

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// The command's own exit status (None if it had been reaped before the stop).
    pub status: Option<ExitStatus>,
    /// Whether SIGKILL was needed (the grace or the takeover bound ran out).
    pub killed: bool,
    /// From the start of the stop until every process of the tree was reaped.
    pub took: Duration,
}

/// What [`run_while_leading`] ended with. Every process of the command's tree is gone in
/// each case.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The command exited on its own while we still led; leftover descendants (if any)
    /// were stopped like on a loss.
    Exited {
        /// The command's exit status.
        status: ExitStatus,
        /// How the leftover descendants were stopped.
        rest: Stopped,
    },
    /// Leadership was lost; the tree was stopped within the kill deadline.
    LeadershipLost(Stopped),
    /// The `cancel` future completed (e.g. a shutdown signal); the tree was stopped with
    /// the full grace (capped only if leadership was lost meanwhile).
    Cancelled(Stopped),
}

/// Run `cmd` while `leadership` holds; stop its whole process tree when leadership is lost
/// (SIGTERM, then SIGKILL at [`kill_deadline`]) or when `cancel` completes (SIGTERM, then
/// SIGKILL after `grace`). Returns once every process of the tree is reaped.
pub async fn run_while_leading(
    election: &dyn Election,
    leadership: &Leadership,
    cmd: &LeaderCommand,
    grace: Duration,
    cancel: impl Future<Output = ()>,
) -> io::Result<Outcome> {
    GuardedChild::spawn(cmd)?
        .until_lost(election, leadership, grace, cancel)
        .await
}

/// A command running under a guard process; see the [module docs](self).
///
/// Dropping it kills the whole tree (the guard sees its control socket close).
#[derive(Debug)]
pub struct GuardedChild {
    guard: libc::pid_t,
    pid: libc::pid_t,
    ctl: tokio::net::UnixStream,
    status: Option<ExitStatus>,
    /// The guard closed its end: every process of the tree is gone.
    gone: bool,
    /// The guard killed the tree by itself: our deadline passed before we moved it.
    deadline_hit: bool,
    /// Bytes for the guard not yet written (whole messages; see `push`).
    out: Vec<u8>,
    reaped: bool,
    msg: [u8; 5],
    have: usize,
}

/// Messages on the control socket. Guard to owner: `P<pid>` started, `F<errno>` fork
/// failed, `E<wait status>` the command exited. Owner to guard: `T` SIGTERM the tree, `K`
/// SIGKILL the tree and exit when it is gone. End-of-file from the owner = `K`.
const MSG_PID: u8 = b'P';
const MSG_FAILED: u8 = b'F';
const MSG_EXIT: u8 = b'E';
/// Guard to owner: `X<0>` the owner's deadline passed: the guard is killing the tree.
const MSG_DEADLINE: u8 = b'X';
const CMD_TERM: u8 = b'T';
const CMD_KILL: u8 = b'K';
/// Owner to guard: `D<u64 LE>` SIGKILL the tree by yourself at this CLOCK_MONOTONIC
/// instant (nanoseconds; 0 = no deadline) unless a later `D` moves it first. A dead man's
/// switch: it holds even when the owner is alive but stalled (blocked on a full stdout
/// pipe, SIGSTOPped, starved) while its session or lease runs out.
const CMD_DEADLINE: u8 = b'D';
/// How often [`GuardedChild::until_lost`] and [`GuardedChild::terminate`] renew the
/// guard's own deadline.
const RENEW_EVERY: Duration = Duration::from_millis(50);

impl GuardedChild {
    /// Start `cmd` under a new guard. Fails early (nothing started) when the program cannot
    /// be found or is not executable.
    pub fn spawn(cmd: &LeaderCommand) -> io::Result<GuardedChild> {
        let prep = Prepared::new(cmd)?;
        let (ours, theirs) = socketpair()?;
        // SAFETY: open(2) with a constant NUL-terminated path.
        let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if devnull < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let devnull = unsafe { OwnedFd::from_raw_fd(devnull) };
        let guard = fork_guard(&prep, theirs.as_raw_fd(), devnull.as_raw_fd())?;
        drop(theirs);
        drop(devnull);
        ours.set_nonblocking(true)?;
        let ctl = tokio::net::UnixStream::from_std(ours)?;
        let mut child = GuardedChild {
            guard,
            pid: 0,
            ctl,
            status: None,
            gone: false,
            deadline_hit: false,
            out: Vec::new(),
            reaped: false,
            msg: [0; 5],
            have: 0,
        };
        // The guard reports the command's pid (or the fork error) at once; read it
        // synchronously with a bound so `spawn` stays a plain function.
        let pid = child.read_start()?;
        child.pid = pid;
        Ok(child)
    }

    fn read_start(&mut self) -> io::Result<libc::pid_t> {
        let fd = self.ctl.as_raw_fd();
        let mut buf = [0u8; 5];
        let mut got = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got < 5 {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the command's guard process did not start within 10 s",
                ));
            }
            // SAFETY: poll(2) on one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
            // SAFETY: read(2) into the unfilled part of our buffer.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), 5 - got) };
            if n == 0 {
                return Err(io::Error::other(
                    "the command's guard process exited before starting the command",
                ));
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e);
            }
            got += n as usize;
        }
        let v = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        match buf[0] {
            MSG_PID => Ok(v),
            MSG_FAILED => Err(io::Error::from_raw_os_error(v)),
            _ => Err(io::Error::other(
                "unexpected message from the guard process",
            )),
        }
    }

    /// The command's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The guard's process id.
    pub fn guard_pid(&self) -> u32 {
        self.guard as u32
    }

    /// Read one message; `None` at end-of-file (the guard exited: the tree is gone).
    async fn next_message(&mut self) -> io::Result<Option<(u8, i32)>> {
        if self.gone {
            return Ok(None);
        }
        // Cancel safe: a partly read message stays in `self.msg`.
        while self.have < self.msg.len() {
            let n = match self.ctl.read(&mut self.msg[self.have..]).await {
                Ok(n) => n,
                // The guard exited with a command of ours unread: it is gone all the same.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.gone = true;
                self.reap_guard().await?;
                return Ok(None);
            }
            self.have += n;
        }
        self.have = 0;
        let buf = self.msg;
        let v = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if buf[0] == MSG_EXIT {
            self.status = Some(ExitStatus::from_raw(v));
        }
        if buf[0] == MSG_DEADLINE {
            self.deadline_hit = true;
        }
        Ok(Some((buf[0], v)))
    }

    /// Reap the guard; `Err` when it did not end by itself (killed by a signal: SIGKILL,
    /// the OOM killer): the command's descendants may then live on, re-parented to the
    /// nearest subreaper (see [`kill_orphans`]).
    async fn reap_guard(&mut self) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        let guard = self.guard;
        // The guard has closed its socket: it is exiting; waitpid returns promptly.
        let st = tokio::task::spawn_blocking(move || {
            let mut st = 0;
            // SAFETY: waitpid(2) on our own child.
            let r = unsafe { libc::waitpid(guard, &mut st, 0) };
            (r, st)
        })
        .await
        .unwrap_or((-1, 0));
        self.reaped = true;
        let (r, st) = st;
        if r == guard && libc::WIFSIGNALED(st) {
            return Err(io::Error::other(format!(
                "the command's guard process was killed (signal {}); the command's processes may live on",
                libc::WTERMSIG(st)
            )));
        }
        Ok(())
    }

    /// Wait until the command itself exits (its descendants may still run; stop them with
    /// [`terminate`](Self::terminate) or [`kill`](Self::kill)). Cancel safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            if self.next_message().await?.is_none() {
                return self.status.ok_or_else(|| {
                    io::Error::other("the command's guard process died without reporting")
                });
            }
        }
    }

    /// Queue `msg` for the guard and write what the socket takes now, never waiting: a
    /// guard that is stopped does not read, and this process must go on (its kill does
    /// not depend on the guard, see [`kill_from_owner`](Self::kill_from_owner)). Only
    /// whole messages are queued or dropped, so the stream stays in step; a `droppable`
    /// one (a deadline renewal) is dropped while much is pending.
    fn push(&mut self, msg: &[u8], droppable: bool) {
        if self.gone {
            return;
        }
        if droppable && self.out.len() > 512 {
            self.flush();
            return;
        }
        self.out.extend_from_slice(msg);
        self.flush();
    }

    /// Write pending messages without waiting.
    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.ctl.try_write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The guard is gone already.
                Err(_) => {
                    self.out.clear();
                    return;
                }
            }
        }
    }

    fn send(&mut self, cmd: u8) {
        self.push(&[cmd], false);
    }

    /// Have the guard SIGKILL the whole tree by itself at `at` (`None`: no deadline), unless
    /// a later call moves it. Unlike [`terminate`](Self::terminate)'s kill, this holds when
    /// this process stalls (a blocked write, SIGSTOP, starvation) after the call. Never
    /// waits (a renewal the guard cannot take now is dropped).
    pub async fn set_deadline(&mut self, at: Option<Instant>) {
        let ns = at.map_or(0, |at| monotonic_ns(at.into_std()).max(1));
        let b = ns.to_le_bytes();
        let msg = [CMD_DEADLINE, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        self.push(&msg, true);
    }

    /// SIGKILL the tree from this process too, without the guard's help (a guard that is
    /// stopped or traced cannot do it), and wake the guard (SIGCONT) so that it reaps.
    fn kill_from_owner(&self) {
        // SAFETY: kill(2) of our own child (the guard, not yet reaped: `reaped` is false
        // until its end of the socket closed), of the command's process group while the
        // command was not reported exited (the unreaped command keeps its group id from
        // being reused), and of the guard's descendants found in /proc.
        unsafe {
            if self.reaped || self.gone {
                return;
            }
            if self.status.is_none() {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            for_each_descendant(self.guard, |pid| {
                libc::kill(pid, libc::SIGKILL);
            });
            libc::kill(self.guard, libc::SIGCONT);
        }
    }

    /// Stop the whole tree: SIGTERM to every process now, SIGKILL at
    /// [`kill_deadline`]`(election, grace)`, re-computed (only ever earlier) each time the
    /// election's status changes meanwhile. Resolves when every process is reaped.
    pub async fn terminate(
        &mut self,
        grace: Duration,
        election: &dyn Election,
    ) -> io::Result<Stopped> {
        let started = Instant::now();
        let mut status_rx = election.status();
        let mut watching = true;
        let mut kill_at = kill_deadline(election, grace);
        let mut killed = false;
        if kill_at <= Instant::now() {
            self.kill_from_owner();
            self.send(CMD_KILL);
            killed = true;
        } else {
            self.set_deadline(Some(guard_deadline(election, kill_at)))
                .await;
            self.send(CMD_TERM);
        }
        let mut renew = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                msg = self.next_message() => {
                    if msg?.is_none() {
                        return Ok(Stopped { status: self.status, killed, took: started.elapsed() });
                    }
                }
                _ = tokio::time::sleep_until(kill_at), if !killed => {
                    self.kill_from_owner();
                    self.send(CMD_KILL);
                    killed = true;
                }
                _ = renew.tick() => {
                    if killed {
                        // Keep killing from here too until the guard reports the tree gone
                        // (it may be stopped, or not reading yet).
                        self.kill_from_owner();
                        self.flush();
                    } else {
                        self.set_deadline(Some(guard_deadline(election, kill_at))).await;
                    }
                }
                r = status_rx.changed(), if !killed && watching => {
                    // A gone status stream no longer moves the bound: keep the deadline.
                    watching = r.is_ok();
                    kill_at = kill_at.min(kill_deadline(election, grace));
                    self.set_deadline(Some(guard_deadline(election, kill_at))).await;
                }
            }
        }
    }

    /// Let the command run while `leadership` holds, then stop its tree as
    /// [`run_while_leading`] does (use this form to learn the pid before it runs).
    pub async fn until_lost(
        mut self,
        election: &dyn Election,
        leadership: &Leadership,
        grace: Duration,
        cancel: impl Future<Output = ()>,
    ) -> io::Result<Outcome> {
        tokio::pin!(cancel);
        let mut renew = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = leadership.lost() => {
                    return self.terminate(grace, election).await.map(Outcome::LeadershipLost);
                }
                _ = &mut cancel => {
                    return self.terminate(grace, election).await.map(Outcome::Cancelled);
                }
                status = self.wait() => {
                    let status = status?;
                    let rest = self.terminate(grace, election).await?;
                    if self.deadline_hit {
                        // Not an exit of its own: the guard killed the tree at the bound
                        // our contact gave (we could not confirm leadership in time).
                        return Ok(Outcome::LeadershipLost(Stopped {
                            status: Some(status),
                            killed: true,
                            took: rest.took,
                        }));
                    }
                    return Ok(Outcome::Exited { status, rest });
                }
                _ = renew.tick() => {
                    // While we lead, the guard kills the tree by itself at the bound our
                    // last contact gives, should this process stall before it learns of a
                    // loss.
                    let at = contact_bound(election);
                    self.set_deadline(at).await;
                }
            }
        }
    }

    /// SIGKILL the whole tree now and wait until every process is reaped.
    pub async fn kill(&mut self) -> io::Result<Stopped> {
        let started = Instant::now();
        self.kill_from_owner();
        self.send(CMD_KILL);
        while self.next_message().await?.is_some() {}
        Ok(Stopped {
            status: self.status,
            killed: true,
            took: started.elapsed(),
        })
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Closing our end (when `ctl` drops right after this) makes the guard kill the
        // tree and exit; reap it off this thread so no zombie is left.
        let guard = self.guard;
        let _ = std::thread::Builder::new()
            .name("succession-guard-reaper".into())
            .spawn(move || {
                let mut st = 0;
                // SAFETY: waitpid(2) on our own child.
                unsafe { libc::waitpid(guard, &mut st, 0) };
            });
    }
}

/// Everything the forked guard needs, allocated before the fork.
struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Prepared {
    fn new(cmd: &LeaderCommand) -> io::Result<Prepared> {
        let path = resolve(&cmd.program)?;
        let cstr = |s: &OsStr, what: &str| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the command's {what} contains a NUL byte"),
                )
            })
        };
        let mut argv = vec![cstr(&cmd.program, "program name")?];
        for a in &cmd.args {
            argv.push(cstr(a, "arguments")?);
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !cmd.envs.iter().any(|(k2, _)| k2 == k))
            .collect();
        env.extend(cmd.envs.iter().cloned());
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(CString::new(kv).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an environment variable for the command contains a NUL byte",
                )
            })?);
        }
        Ok(Prepared {
            path: cstr(path.as_os_str(), "program path")?,
            argv,
            envp,
        })
    }
}

/// The program's path: as given when it contains a `/`, else the first executable match
/// in `PATH`.
fn resolve(program: &OsStr) -> io::Result<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not an executable file", p.display()),
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{} was not found in PATH (give a path, or fix PATH)",
            Path::new(program).display()
        ),
    ))
}

fn socketpair() -> io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair(2) writes two descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    unsafe {
        Ok((
            std::os::unix::net::UnixStream::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}

/// Fork the guard. In the parent: the guard's pid.
fn fork_guard(prep: &Prepared, ctl: RawFd, devnull: RawFd) -> io::Result<libc::pid_t> {
    let mut argv: Vec<*const libc::c_char> = prep.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prep.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let exec = Exec {
        path: prep.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
    };
    // SAFETY: signals are blocked across fork so that no handler of this process runs in
    // the child; the child only calls async-signal-safe functions (guard_main) and never
    // returns; the parent restores its mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let pid = libc::fork();
        if pid == 0 {
            guard_main(&exec, ctl, devnull);
        }
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        Ok(pid)
    }
}

struct Exec {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

const CTL_FD: RawFd = 3;
const NULL_FD: RawFd = 4;

/// Write all of `buf` to `fd` (async-signal-safe).
unsafe fn write_all(fd: RawFd, buf: &[u8]) {
    let mut off = 0;
    while off < buf.len() {
        let n = libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off);
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return;
        }
        off += n as usize;
    }
}

unsafe fn report(kind: u8, v: i32) {
    let b = v.to_le_bytes();
    write_all(CTL_FD, &[kind, b[0], b[1], b[2], b[3]]);
}

unsafe fn set_all_signals(action: libc::sighandler_t) {
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = action;
    libc::sigemptyset(&mut sa.sa_mask);
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The guard process. Async-signal-safe system calls only: no allocation, no locks.
unsafe fn guard_main(exec: &Exec, ctl: RawFd, devnull: RawFd) -> ! {
    // Signals: defaults everywhere (no handler of the owner may run here), then ignore the
    // ones that would kill the guard before it could stop the tree.
    set_all_signals(libc::SIG_DFL);
    let mut ign: libc::sigaction = std::mem::zeroed();
    ign.sa_sigaction = libc::SIG_IGN;
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        libc::sigaction(sig, &ign, std::ptr::null_mut());
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

    // Descriptors: the control socket at 3, /dev/null at 4, stdio kept, all else closed
    // (the owner's store connections must not outlive the owner here).
    let a = libc::fcntl(ctl, libc::F_DUPFD_CLOEXEC, 10);
    let b = libc::fcntl(devnull, libc::F_DUPFD_CLOEXEC, 10);
    if a < 0 || b < 0 {
        libc::_exit(120);
    }
    libc::dup3(a, CTL_FD, libc::O_CLOEXEC);
    libc::dup3(b, NULL_FD, libc::O_CLOEXEC);
    if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
        for fd in 5..65536 {
            libc::close(fd);
        }
    }
    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    // `ps -o comm` shows what this process is (its arguments stay the owner's).
    libc::prctl(libc::PR_SET_NAME, c"leader-guard".as_ptr(), 0, 0, 0);
    let me = libc::getpid();

    let cmd = libc::fork();
    if cmd == 0 {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != me {
            libc::_exit(127);
        }
        libc::dup2(NULL_FD, 0);
        set_all_signals(libc::SIG_DFL);
        libc::execve(exec.path, exec.argv, exec.envp);
        libc::_exit(127);
    }
    if cmd < 0 {
        report(MSG_FAILED, *libc::__errno_location());
        libc::_exit(1);
    }
    // Also from this side, so that no signal to the group can miss the command.
    libc::setpgid(cmd, cmd);
    report(MSG_PID, cmd);

    let mut cmd_done = false;
    let mut killing = false;
    let mut stopping = false;
    // The owner's own kill deadline (CLOCK_MONOTONIC ns; 0 = none).
    let mut deadline: u64 = 0;
    let mut inbuf = [0u8; 64];
    let mut inlen = 0usize;
    loop {
        // Reap everything that ended; the guard's work is done when nothing is left.
        loop {
            let mut st = 0;
            let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
            if r > 0 {
                if r == cmd {
                    cmd_done = true;
                    report(MSG_EXIT, st);
                }
                continue;
            }
            if r < 0 && *libc::__errno_location() == libc::ECHILD {
                libc::_exit(0);
            }
            break;
        }
        if !killing && deadline != 0 && mono_now_ns() >= deadline {
            killing = true; // the owner did not move its deadline in time: it stalled
            report(MSG_DEADLINE, 0);
        }
        if killing {
            if !cmd_done {
                libc::kill(-cmd, libc::SIGKILL);
            }
            for_each_descendant(me, |pid| {
                libc::kill(pid, libc::SIGKILL);
            });
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 2_000_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: CTL_FD,
            events: libc::POLLIN,
            revents: 0,
        };
        // Short timeout: exits of the tree are noticed by the reaping above (sooner once
        // the tree was told to stop), and the deadline within 10 ms.
        if libc::poll(&mut pfd, 1, if stopping { 1 } else { 10 }) > 0 {
            let n = libc::read(
                CTL_FD,
                inbuf[inlen..].as_mut_ptr().cast(),
                inbuf.len() - inlen,
            );
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                killing = true; // the owner is gone
                continue;
            }
            if n > 0 {
                inlen += n as usize;
            }
            let mut off = 0;
            while off < inlen {
                match inbuf[off] {
                    CMD_KILL => {
                        killing = true;
                        off += 1;
                    }
                    CMD_TERM => {
                        stopping = true;
                        if !cmd_done {
                            libc::kill(-cmd, libc::SIGTERM);
                        }
                        for_each_descendant(me, |pid| {
                            libc::kill(pid, libc::SIGTERM);
                        });
                        off += 1;
                    }
                    CMD_DEADLINE => {
                        if inlen - off < 9 {
                            break; // the rest of it comes with the next read
                        }
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&inbuf[off + 1..off + 9]);
                        deadline = u64::from_le_bytes(b);
                        off += 9;
                    }
                    _ => off += 1,
                }
            }
            inbuf.copy_within(off..inlen, 0);
            inlen -= off;
        }
    }
}

/// Make this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): should a guard die
/// without stopping its tree (it was SIGKILLed alone, e.g. by the OOM killer), the
/// command's orphans are re-parented here instead of to init, where [`kill_orphans`] finds
/// them. For a process whose only children are guards (like `succession run`).
pub fn adopt_orphans() -> io::Result<()> {
    // SAFETY: prctl(2) with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL every descendant of this process and reap it, until none is left or `within`
/// has passed; returns how many were left. Only for a process whose children are all
/// guards and their orphans (see [`adopt_orphans`]): it kills *every* child.
pub fn kill_orphans(within: Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    // SAFETY: getpid(2).
    let me = unsafe { libc::getpid() };
    loop {
        let mut left = 0;
        // SAFETY: kill(2) of our own descendants found in /proc; waitpid(2) reaps our
        // children only.
        unsafe {
            for_each_descendant(me, |pid| {
                left += 1;
                libc::kill(pid, libc::SIGKILL);
            });
            let mut st = 0;
            while libc::waitpid(-1, &mut st, libc::WNOHANG) > 0 {}
        }
        if left == 0 || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Call `f` for every descendant of `root` found through `/proc/<pid>/task/<pid>/children`
/// (depth first; at most 4096 at a time). Async-signal-safe: stack buffers only.
unsafe fn for_each_descendant(root: libc::pid_t, mut f: impl FnMut(libc::pid_t)) {
    let mut stack = [0 as libc::pid_t; 4096];
    let mut top = 1;
    stack[0] = root;
    while top > 0 {
        top -= 1;
        let pid = stack[top];
        // "/proc/<pid>/task/<pid>/children\0"
        let mut path = [0u8; 64];
        path[..6].copy_from_slice(b"/proc/");
        let mut n = 6;
        n += write_num(&mut path[n..], pid);
        path[n..n + 6].copy_from_slice(b"/task/");
        n += 6;
        n += write_num(&mut path[n..], pid);
        path[n..n + 9].copy_from_slice(b"/children");
        n += 9;
        path[n] = 0;
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        let mut cur: libc::pid_t = 0;
        let mut in_num = false;
        loop {
            let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if r <= 0 {
                break;
            }
            for &c in &buf[..r as usize] {
                if c.is_ascii_digit() {
                    cur = cur.wrapping_mul(10).wrapping_add((c - b'0') as libc::pid_t);
                    in_num = true;
                } else if in_num {
                    f(cur);
                    if top < stack.len() {
                        stack[top] = cur;
                        top += 1;
                    }
                    cur = 0;
                    in_num = false;
                }
            }
        }
        if in_num {
            f(cur);
            if top < stack.len() {
                stack[top] = cur;
                top += 1;
            }
        }
        libc::close(fd);
    }
}

/// Decimal digits of a positive `v` into `out`; returns how many.
fn write_num(out: &mut [u8], v: libc::pid_t) -> usize {
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = v.max(0) as u32;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut b = [0u8; 12];
        let n = write_num(&mut b, 4_194_304);
        assert_eq!(&b[..n], b"4194304");
        let n = write_num(&mut b, 7);
        assert_eq!(&b[..n], b"7");
    }

    #[test]
    fn a_missing_program_is_refused_before_anything_starts() {
        let e = GuardedChild::spawn(&LeaderCommand::new("no-such-program-succession-test"))
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("PATH"), "{e}");
    }
}
