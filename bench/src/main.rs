//! # succession-bench
//!
//! Measures succession against its peers on real local servers, in one run, and writes the
//! tables to `docs/BENCHMARKS.md`:
//!
//! * ZooKeeper: our latch vs Apache Curator LeaderLatch 5.4.0 (Java, Debian's jars): cold
//!   start, graceful handover (and its floor: a raw delete-to-watch-event), crash
//!   handover, recovery after an ensemble wipe, recovery after a restart with data;
//! * etcd: our election vs `etcdctl elect`: graceful and crash handover;
//! * the supervisor: failover to etcd and failback to ZooKeeper;
//! * scale: 100 and 1000 participants on one latch path;
//! * shared: 3 processes x E elections (E latch paths), one ZooKeeper session per process,
//!   vs 3 JVMs each hosting E Curator latches on one `CuratorFramework`.
//!
//! ```text
//! cargo run --release -p succession-bench -- [--quick] [--out docs/BENCHMARKS.md]
//! ```
//!
//! Servers are started by `succession-testkit`; participants run in driver processes
//! (ours: this binary in the internal `__driver` mode; Curator: `bench/java/BenchLatch.java`,
//! compiled with `javac` at startup) that stamp events with `CLOCK_MONOTONIC`.
#![deny(missing_docs)]

mod clock;
mod driver;
mod etcd;
mod proc;
mod report;
mod scale;
mod shared;
mod shared_driver;
mod stats;
mod sup;
mod zk;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use succession_testkit::{EtcdServer, ZkServer};

use proc::{Driver, Env, Side};
use report::{Section, Table, Verdict};
use stats::Samples;

/// The bench's error type: every failure ends the run with its message.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
succession-bench: leader-election benchmarks of succession vs Curator LeaderLatch 5.4.0 and
etcdctl elect, on ZooKeeper and etcd servers it starts itself (testkit, 127.0.0.1).

USAGE:
    cargo run --release -p succession-bench -- [OPTIONS]

OPTIONS:
    --quick          fewer repetitions (about 2-3 minutes instead of about 6-10)
    --out FILE       where to write the report (default: docs/BENCHMARKS.md of the
                     workspace; `-` = stdout only). Written only when every group ran.
    --only GROUPS    run only these comma-separated groups: zk, etcd, scale, outage, sup,
                     shared (for development; the report then goes to stdout only unless
                     --out is given)
    --shared-sizes E,E
                     elections per process in the `shared` group (default 1000,10000; a
                     quick check: --shared-sizes 200)

GROUPS:
    zk       cold start, graceful handover (and its raw floor), crash handover
    etcd     graceful and crash handover vs etcdctl elect
    scale    100 and 1000 participants on one latch path
    outage   ZooKeeper restarted with data, wiped, long outages
    sup      supervisor failover to etcd and failback
    shared   3 processes x E elections on E latch paths, one ZooKeeper session per process
             (ours: `__shared`; Curator: 3 JVMs, E LeaderLatches on one CuratorFramework):
             start -> every election led exactly once, RSS per election, sessions and
             connections per process (`cons`, `mntr`), graceful close and kill -9 of the
             process leading the most -> all re-led, ZooKeeper wiped -> all re-led (Curator
             bounded at 20 s: CURATOR-724).
    -h, --help       this text

Needs ZooKeeper 3.8, etcd 3.4, etcdctl, a JDK (javac) and Debian's Curator jars:
run scripts/install-deps once.";

/// Groups of scenarios.
const GROUPS: &[&str] = &["zk", "etcd", "scale", "outage", "sup", "shared"];

/// Parsed command line.
#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    out: Option<PathBuf>,
    out_given: bool,
    only: Vec<String>,
    shared_sizes: Option<Vec<usize>>,
    argv: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        quick: false,
        out: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("docs")
                .join("BENCHMARKS.md"),
        ),
        out_given: false,
        only: GROUPS.iter().map(|s| s.to_string()).collect(),
        shared_sizes: None,
        argv: args.to_vec(),
    };
    let mut only_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "-h" | "--help" => return Ok(None),
            "--out" => {
                let v = it
                    .next()
                    .ok_or("--out needs a file name (or `-` for stdout only)")?;
                o.out = if v == "-" {
                    None
                } else {
                    Some(PathBuf::from(v))
                };
                o.out_given = true;
            }
            "--only" => {
                let v = it
                    .next()
                    .ok_or("--only needs a comma-separated list of groups")?;
                let groups: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for g in &groups {
                    if !GROUPS.contains(&g.as_str()) {
                        return Err(format!(
                            "unknown group {g:?} in --only; the groups are {}",
                            GROUPS.join(", ")
                        ));
                    }
                }
                o.only = groups;
                only_given = true;
            }
            "--shared-sizes" => {
                let v = it
                    .next()
                    .ok_or("--shared-sizes needs a comma-separated list of sizes")?;
                let sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| format!("--shared-sizes: not a list of sizes: {v:?}"))?;
                o.shared_sizes = Some(sizes);
            }
            other if other.starts_with("--out=") => {
                let v = &other["--out=".len()..];
                o.out = if v == "-" {
                    None
                } else {
                    Some(PathBuf::from(v))
                };
                o.out_given = true;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; see --help (valid: --quick, --out FILE, --only GROUPS, --shared-sizes E,E)"
                ))
            }
        }
    }
    if only_given && !o.out_given {
        o.out = None;
    }
    Ok(Some(o))
}

/// Repetitions and timeouts of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// `--quick`.
    pub quick: bool,
    /// Discarded warm-up repetitions before latency scenarios (JIT, connection caches).
    pub warmup: usize,
    /// Cold start repetitions (per side).
    pub cold: usize,
    /// Graceful handovers (per side).
    pub graceful: usize,
    /// Raw floor samples.
    pub floor: usize,
    /// Crash handovers (per side).
    pub crash: usize,
    /// Server restarts with data.
    pub restart: usize,
    /// Wipes.
    pub wipe: usize,
    /// Long outages of each kind (back with data, wiped).
    pub long_outage: usize,
    /// How long the server stays down in a long outage.
    pub long_outage_down: Duration,
    /// How long Curator gets to recover from a wipe.
    pub curator_wipe_bound: Duration,
    /// etcd graceful handovers (per side).
    pub etcd_graceful: usize,
    /// etcd crash handovers (ours).
    pub etcd_crash: usize,
    /// etcdctl process start samples.
    pub etcdctl_start: usize,
    /// Supervisor failover/failback cycles.
    pub sup: usize,
    /// Handovers per scale size.
    pub scale_handovers: usize,
    /// Participant counts of the scale group.
    pub scale_sizes: Vec<usize>,
    /// Elections per process of the shared-session group.
    pub shared_sizes: Vec<usize>,
    /// How long Curator gets to recover from a wipe in the shared-session group.
    pub shared_curator_wipe_bound: Duration,
    /// Also measure scale on etcd (ours only).
    pub etcd_scale: bool,
    /// Participants in the latency scenarios.
    pub group: usize,
    /// ZooKeeper session timeout of the latency and scale scenarios.
    pub session: Duration,
    /// ZooKeeper session timeout of the crash scenario.
    pub crash_session: Duration,
    /// ZooKeeper session timeout of the restart-with-data scenario.
    pub restart_session: Duration,
    /// etcd lease TTL (ours).
    pub ttl: Duration,
}

impl Params {
    fn new(quick: bool) -> Params {
        let pick = |full: usize, q: usize| if quick { q } else { full };
        Params {
            quick,
            warmup: pick(3, 2),
            cold: pick(12, 5),
            graceful: pick(30, 10),
            floor: pick(200, 60),
            crash: pick(6, 3),
            restart: pick(5, 2),
            wipe: pick(5, 2),
            long_outage: pick(4, 2),
            long_outage_down: Duration::from_secs(8),
            curator_wipe_bound: Duration::from_secs(30),
            etcd_graceful: pick(30, 10),
            etcd_crash: pick(5, 3),
            etcdctl_start: pick(10, 5),
            sup: pick(3, 1),
            scale_handovers: pick(12, 6),
            scale_sizes: vec![100, 1000],
            shared_sizes: vec![1000, 10_000],
            shared_curator_wipe_bound: Duration::from_secs(20),
            etcd_scale: !quick,
            group: 5,
            session: Duration::from_secs(6),
            crash_session: Duration::from_secs(2),
            restart_session: Duration::from_secs(15),
            ttl: Duration::from_secs(3),
        }
    }
}

/// One scale measurement (one side, one size).
#[derive(Debug, Clone, Default)]
pub struct ScaleRow {
    /// Which side.
    pub side: &'static str,
    /// Participants.
    pub n: usize,
    /// All started at once -> first leader (ms).
    pub first_leader: Option<f64>,
    /// All started at once -> every participant joined (ms).
    pub all_joined: Option<f64>,
    /// Handover latencies (ms).
    pub handover: Samples,
    /// Watches the server triggered per handover (all sessions).
    pub triggered: Samples,
    /// Of those, delivered to sessions other than the leaving leader's.
    pub woken: Samples,
    /// Requests per handover (reads + writes under the latch's namespace).
    pub requests: Samples,
    /// Of those, reads.
    pub reads: Samples,
    /// RSS delta / n (bytes).
    pub mem_per: Option<f64>,
    /// RSS of the driver process / n (bytes).
    pub rss_per: Option<f64>,
}

/// Figures the final reading needs.
#[derive(Debug, Default)]
pub struct Results {
    /// ZK cold start [ours, Curator].
    pub zk_cold: [Samples; 2],
    /// ZK graceful handover [ours, Curator].
    pub zk_graceful: [Samples; 2],
    /// ZK graceful: how long the leader's close call took [ours, Curator].
    pub zk_close: [Samples; 2],
    /// etcd graceful: how long our leader's close() took.
    pub etcd_close: Samples,
    /// etcd graceful: the successor leads − the leader's close() returned.
    pub etcd_after_close: Samples,
    /// Raw delete -> watch event.
    pub floor: Samples,
    /// Raw ZooKeeper floor with the delete sent after an idle pause (as in the handover).
    pub zk_idle_floor: Samples,
    /// Read round trip.
    pub rtt: Samples,
    /// Write round trip.
    pub wrtt: Samples,
    /// Claim multi round trips [check + setData, also asserting one node gone].
    pub zk_claim: [Samples; 2],
    /// ZK crash handover [ours, Curator] (kill -> successor).
    pub zk_crash: [Samples; 2],
    /// ZK restart with data, answers -> leader [ours, Curator].
    pub zk_restart: [Samples; 2],
    /// Curator restarts without a leader within the bound.
    pub zk_restart_curator_missing: usize,
    /// ZK wipe, answers -> leader (ours).
    pub zk_wipe: Samples,
    /// ZK long outage, answers -> leader (ours) [back with data, wiped].
    pub zk_long: [Samples; 2],
    /// The same by session timeout [kind][2 s, 6 s].
    pub zk_long_by_session: [[Samples; 2]; 2],
    /// Connection attempts per second per participant on a down server's port.
    pub zk_down_attempts: Samples,
    /// Curator after a wipe: Some(ms) when it recovered, None when not within the bound.
    pub zk_wipe_curator: Option<Option<f64>>,
    /// etcd graceful [ours, etcdctl].
    pub etcd_graceful: [Samples; 2],
    /// Raw etcd: delete -> watch event, Range round trip, Put round trip.
    pub etcd_floor: [Samples; 3],
    /// Raw etcd: lease revoke -> Delete event of its key.
    pub etcd_revoke_floor: Samples,
    /// Raw etcd: LeaseRevoke round trip.
    pub etcd_revoke_rtt: Samples,
    /// Raw etcd: lease revoke -> Delete event, the revoke sent after an idle pause.
    pub etcd_revoke_idle_floor: Samples,
    /// etcd crash handover (ours, kill -> successor).
    pub etcd_crash: Samples,
    /// etcdctl crash handover (kill -> successor) and its TTL.
    pub etcdctl_crash: Option<(f64, f64)>,
    /// etcdctl process start overhead (spawn -> exit of `etcdctl version`).
    pub etcdctl_version: Samples,
    /// Supervisor figures per timing configuration (see `sup::CONFIGS`).
    pub sup: [sup::SupFigures; 2],
    /// Scale rows.
    pub scale: Vec<ScaleRow>,
    /// etcd scale rows (ours only).
    pub etcd_scale: Vec<ScaleRow>,
    /// Shared-session rows.
    pub shared: Vec<shared::SharedRow>,
    /// RSS of a process with one participant [ours, Curator] (bytes).
    pub standalone_rss: [Samples; 2],
}

/// Everything a scenario needs.
pub struct Ctx {
    /// Binaries, classpath, temp dir.
    pub env: Env,
    /// Repetitions.
    pub p: Params,
    /// The ZooKeeper server.
    pub zk: ZkServer,
    /// The etcd server.
    pub etcd: EtcdServer,
    /// Our long-lived driver.
    pub ours: Driver,
    /// Curator's long-lived driver.
    pub curator: Driver,
    /// Figures for the reading.
    pub res: Results,
    /// Sections so far.
    pub sections: Vec<Section>,
    started: Instant,
}

impl Ctx {
    /// The long-lived driver of `side`.
    pub fn host(&mut self, side: Side) -> &mut Driver {
        match side {
            Side::Ours => &mut self.ours,
            Side::Curator => &mut self.curator,
        }
    }

    /// A progress line on stderr.
    pub fn progress(&self, msg: &str) {
        eprintln!("[{:>6.1} s] {msg}", self.started.elapsed().as_secs_f64());
    }

    /// Finish a section: print it now, keep it for the file.
    pub fn publish(&mut self, s: Section) {
        println!("{}", s.markdown());
        self.sections.push(s);
    }
}

/// A fresh ZooKeeper path / etcd prefix.
pub fn fresh(name: &str) -> String {
    format!(
        "/bench/{name}-{:08x}",
        clock::now_ns() as u32 ^ std::process::id()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__driver") {
        std::process::exit(driver::main());
    }
    if args.first().map(String::as_str) == Some("__shared") {
        std::process::exit(shared_driver::main());
    }
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("succession-bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(run(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("succession-bench: {e}");
            1
        }
    };
    drop(rt);
    std::process::exit(code);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn run(opts: Opts) -> Res<()> {
    let started = Instant::now();
    let load_start = loadavg();
    let mut p = Params::new(opts.quick);
    if let Some(sizes) = &opts.shared_sizes {
        p.shared_sizes = sizes.clone();
    }
    eprintln!(
        "succession-bench: {} run; starting ZooKeeper and etcd (testkit), compiling the Curator driver ...",
        if p.quick { "quick" } else { "full" }
    );
    let env = Env::prepare().await?;
    let (zk, etcd) = tokio::join!(ZkServer::start(), EtcdServer::start());
    let (zk, etcd) = (zk?, etcd?);
    let ours = Driver::spawn(&env, Side::Ours, "ours-host").await?;
    let curator = Driver::spawn(&env, Side::Curator, "curator-host").await?;
    let mut ctx = Ctx {
        env,
        p,
        zk,
        etcd,
        ours,
        curator,
        res: Results::default(),
        sections: Vec::new(),
        started,
    };
    let versions = versions(&ctx).await;
    let groups = opts.only.clone();
    let has = |g: &str| groups.iter().any(|x| x == g);

    // etcdctl's crash handover waits out its fixed 60 s session TTL: in the background.
    let etcdctl_crash = if has("etcd") {
        let (env, ep) = (ctx.env.clone(), ctx.etcd.endpoint());
        Some(tokio::spawn(
            async move { etcd::etcdctl_crash(&env, &ep).await },
        ))
    } else {
        None
    };
    if has("zk") {
        zk::floor(&mut ctx).await?;
        zk::cold_start(&mut ctx).await?;
        zk::graceful(&mut ctx).await?;
        zk::crash(&mut ctx).await?;
    }
    if has("etcd") {
        etcd::run(&mut ctx).await?;
    }
    if has("scale") {
        scale::run(&mut ctx).await?;
    }
    if has("outage") {
        zk::restart_with_data(&mut ctx).await?;
        zk::wipe(&mut ctx).await?;
        zk::long_outage(&mut ctx).await?;
    }
    if has("sup") {
        sup::run(&mut ctx).await?;
    }
    if has("shared") {
        shared::run(&mut ctx).await?;
    }
    if let Some(h) = etcdctl_crash {
        ctx.progress("etcd: waiting for the etcdctl crash handover (60 s session TTL) ...");
        match h.await {
            Ok(Ok(v)) => ctx.res.etcdctl_crash = Some(v),
            Ok(Err(e)) => eprintln!("  etcdctl crash handover failed: {e}"),
            Err(e) => eprintln!("  etcdctl crash handover task failed: {e}"),
        }
        etcd::etcdctl_crash_section(&mut ctx);
    }

    let reading = reading(&ctx.res, &ctx.p);
    let elapsed = started.elapsed();
    let load = (load_start, loadavg());
    let doc = document(&opts, &ctx, &versions, &reading, elapsed, &groups, &load);
    let Ctx { ours, curator, .. } = ctx;
    ours.quit().await;
    curator.quit().await;
    println!("{}", reading_markdown(&reading));
    eprintln!(
        "succession-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &opts.out {
        if groups.len() == GROUPS.len() || opts.out_given {
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(out, doc)?;
            eprintln!("succession-bench: wrote {}", out.display());
        }
    }
    let tmp = std::env::temp_dir().join(format!("succession-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

async fn versions(ctx: &Ctx) -> Vec<(String, String)> {
    let zk = succession_testkit::four_letter_word(ctx.zk.port(), "srvr", Duration::from_secs(2))
        .await
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Zookeeper version:"))
                .map(|v| v.trim().replace("-${mvngit.commit.id}", ""))
        })
        .unwrap_or_else(|| "unknown".into());
    let etcd_bin = succession_testkit::etcd_bin()
        .map(|p| report::version_of(&p, &["--version"]))
        .unwrap_or_else(|e| e.to_string());
    let mut v = vec![
        ("ZooKeeper (server)".into(), zk),
        ("etcd (server)".into(), etcd_bin),
        (
            "etcdctl".into(),
            report::version_of(&ctx.env.etcdctl, &["version"]),
        ),
        (
            "Curator (LeaderLatch)".into(),
            format!("{} (Debian jars)", report::curator_version()),
        ),
        (
            "Java".into(),
            report::version_of(&ctx.env.java, &["-version"]),
        ),
        (
            "rustc (on PATH)".into(),
            report::version_of(std::path::Path::new("rustc"), &["--version"]),
        ),
    ];
    v.push((
        "Rust clients".into(),
        "zookeeper-client 0.11, etcd-client 0.21, tokio 1 (2 worker threads per process)".into(),
    ));
    v
}

pub(crate) fn fmt_s(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

fn document(
    opts: &Opts,
    ctx: &Ctx,
    versions: &[(String, String)],
    reading: &[Verdict],
    elapsed: Duration,
    groups: &[String],
    load: &(String, String),
) -> String {
    let p = &ctx.p;
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str(
        "Generated by the bench binary; do not edit by hand (the next run overwrites it).\n\n\
         ```sh\ncargo run --release -p succession-bench -- [--quick] [--out docs/BENCHMARKS.md]\n```\n\n",
    );
    let cmdline = if opts.argv.is_empty() {
        "cargo run --release -p succession-bench".to_string()
    } else {
        format!(
            "cargo run --release -p succession-bench -- {}",
            opts.argv.join(" ")
        )
    };
    s.push_str(&format!(
        "This file was produced by a **{}** run: `{cmdline}` ({} groups: {}), which took {:.0} s.\n\n",
        if p.quick { "quick (`--quick`)" } else { "full" },
        if groups.len() == GROUPS.len() { "all" } else { "only the" },
        groups.join(", "),
        elapsed.as_secs_f64()
    ));
    s.push_str(
        "Everything runs on this one machine, on loopback, in the same run: one standalone \
         ZooKeeper and one etcd started by `succession-testkit` (ZooKeeper `tickTime=500`, \
         `forceSync=no`), participants in driver processes — ours in `succession-bench __driver` \
         (tokio, 2 worker threads), Curator's in a JVM running `bench/java/BenchLatch.java` \
         (one `CuratorFramework`, i.e. one ZooKeeper session, per participant, as separate \
         processes would have). Each driver stamps events with `CLOCK_MONOTONIC` \
         (`System.nanoTime()` in Java reads the same clock; the bench checks this at start), so \
         instants from different processes are compared directly. A participant's `leader` \
         event is stamped where it happens: ours at the `since` instant of the status that \
         says `Leader` (taken when the role is published), Curator's in its `isLeader()` \
         listener. Latency figures are in \
         milliseconds: min / median / p95 (nearest rank) / max over n repetitions, after \
         discarded warm-up repetitions. The machine is shared (other builds and tests may \
         run at the same time): the load average at start and end is in the table below, and \
         tails (p95, max) are the first to suffer.\n\n",
    );
    s.push_str("## Machine and versions\n\n");
    let mut t = Table::text(&["what", "value"]);
    for (k, v) in report::machine()
        .into_iter()
        .chain(versions.iter().cloned())
    {
        t.row(vec![k, v.replace('|', "/")]);
    }
    t.row(vec![
        "load average (1/5/15 min) at start / end of the run".into(),
        format!("{} / {}", load.0, load.1),
    ]);
    s.push_str(&t.markdown());
    s.push('\n');
    s.push_str("## Parameters\n\n");
    let mut t = Table::text(&["parameter", "value"]);
    let rows: Vec<(&str, String)> = vec![
        ("participants in latency scenarios", p.group.to_string()),
        ("warm-up repetitions (discarded)", p.warmup.to_string()),
        (
            "ZooKeeper session timeout (cold start, graceful, floor, wipe, scale)",
            fmt_s(p.session),
        ),
        (
            "ZooKeeper session timeout (crash handover)",
            fmt_s(p.crash_session),
        ),
        (
            "ZooKeeper session timeout (restart with data)",
            fmt_s(p.restart_session),
        ),
        ("etcd lease TTL (ours)", fmt_s(p.ttl)),
        (
            "etcd session TTL (etcdctl elect, fixed by etcdctl)",
            "60 s".into(),
        ),
        (
            "repetitions: cold start / graceful / floor",
            format!("{} / {} / {}", p.cold, p.graceful, p.floor),
        ),
        (
            "repetitions: crash / restart with data / wipe",
            format!("{} / {} / {}", p.crash, p.restart, p.wipe),
        ),
        (
            "long outages (server down, then back with data / wiped)",
            format!(
                "{} of each, down {}",
                p.long_outage,
                fmt_s(p.long_outage_down)
            ),
        ),
        ("Curator wipe-recovery bound", fmt_s(p.curator_wipe_bound)),
        (
            "repetitions: etcd graceful / etcd crash / etcdctl start",
            format!(
                "{} / {} / {}",
                p.etcd_graceful, p.etcd_crash, p.etcdctl_start
            ),
        ),
        ("supervisor cycles", p.sup.to_string()),
        (
            "shared session: processes x elections per process (E) / Curator wipe bound",
            format!(
                "{} x {} / {}",
                shared::PROCS,
                p.shared_sizes
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_s(p.shared_curator_wipe_bound)
            ),
        ),
        (
            "scale sizes / handovers per size",
            format!(
                "{} / {}",
                p.scale_sizes
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                p.scale_handovers
            ),
        ),
        (
            "scale on etcd (ours only, lease TTL 10 s)",
            if p.etcd_scale {
                "yes".into()
            } else {
                "no (full run only)".into()
            },
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    s.push_str(&t.markdown());
    s.push('\n');
    s.push_str(&reading_markdown(reading));
    for sec in &ctx.sections {
        s.push_str(&sec.markdown());
    }
    s
}

fn reading_markdown(v: &[Verdict]) -> String {
    let mut s = String::from("## Reading against the targets\n\n");
    s.push_str(
        "Medians of this run (maxima where the target says max). \"met\" / \"MISSED\" is computed from the figures below; the \
         explanation says what dominates the figure and what would move it.\n\n",
    );
    let mut t = Table::text(&["target", "measured", "verdict"]);
    for x in v {
        t.row(vec![
            x.target.clone(),
            x.measured.clone(),
            match x.met {
                Some(true) => "met".into(),
                Some(false) => "**MISSED**".into(),
                None if x.target.contains("no numeric target") => "reported".into(),
                None => "not measured".into(),
            },
        ]);
    }
    s.push_str(&t.markdown());
    s.push('\n');
    for x in v {
        if !x.why.is_empty() {
            s.push_str(&format!("- **{}** — {}\n", x.target, x.why));
        }
    }
    s.push('\n');
    s
}

/// The reading of the figures against the issue's targets.
fn reading(r: &Results, p: &Params) -> Vec<Verdict> {
    use stats::{fmt_ms, fmt_ratio, ratio};
    let mut v = Vec::new();
    let med = |s: &Samples| s.median();

    // ZK graceful vs Curator.
    let (o, c) = (med(&r.zk_graceful[0]), med(&r.zk_graceful[1]));
    let rt = ratio(o, c);
    v.push(Verdict {
        target: "ZK graceful handover ≤ 0.8x Curator's".into(),
        measured: format!("{} ms vs {} ms = {}", fmt_ms(o), fmt_ms(c), fmt_ratio(rt)),
        met: rt.map(|x| x <= 0.8),
        why: zk::graceful_why(r),
    });
    // The floor under the handover's own conditions: the bench's handovers start after an
    // idle pause, and a delete sent to an idle server and client is slower than a hot one.
    let hot = med(&r.floor);
    let floor = med(&r.zk_idle_floor).or(hot);
    let wrtt = med(&r.wrtt);
    let over = o.zip(floor).map(|(a, b)| a - b);
    v.push(Verdict {
        target: "ZK graceful handover: ours − floor ≤ one write round trip + 0.25 ms".into(),
        measured: format!(
            "ours − floor = {} ms (floor after the same {} ms idle pause: {} ms; hot floor {} ms, ours − hot floor {} ms); one write round trip = {} ms",
            fmt_ms(over),
            etcd::IDLE_BEFORE_HANDOVER.as_millis(),
            fmt_ms(floor),
            fmt_ms(hot),
            fmt_ms(o.zip(hot).map(|(a, b)| a - b)),
            fmt_ms(wrtt)
        ),
        met: over.zip(wrtt).map(|(a, b)| a <= b + 0.25),
        why: zk::floor_why(r),
    });
    let (o, c) = (med(&r.zk_cold[0]), med(&r.zk_cold[1]));
    let rt = ratio(o, c);
    v.push(Verdict {
        target: "ZK cold start (5 at once -> one leader) ≤ 0.8x Curator's".into(),
        measured: format!("{} ms vs {} ms = {}", fmt_ms(o), fmt_ms(c), fmt_ratio(rt)),
        met: rt.map(|x| x <= 0.8),
        why: zk::cold_why(r),
    });
    let (o, c) = (med(&r.etcd_graceful[0]), med(&r.etcd_graceful[1]));
    let rt = ratio(o, c);
    v.push(Verdict {
        target: "etcd graceful handover ≤ 0.5x etcdctl's (process overheads excluded)".into(),
        measured: format!("{} ms vs {} ms = {}", fmt_ms(o), fmt_ms(c), fmt_ratio(rt)),
        met: rt.map(|x| x <= 0.5),
        why: etcd::graceful_why(r),
    });
    let w = med(&r.zk_wipe);
    let curator = match r.zk_wipe_curator {
        None => "not measured".to_string(),
        Some(None) => format!("no leader within {} s", p.curator_wipe_bound.as_secs()),
        Some(Some(ms)) => format!("recovered after {} ms", fmt_ms(Some(ms))),
    };
    // The max over short and long outages: the bound must hold whatever the outage length.
    let max2 = |a: &Samples, b: &Samples| match (a.max(), b.max()) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let wmax = max2(&r.zk_wipe, &r.zk_long[1]);
    v.push(Verdict {
        target: "ZK wipe recovery ≤ 300 ms (max) after the server answers, short and long outages (Curator: never)".into(),
        measured: format!(
            "ours max {} ms (median {} ms; after {} s down: max {} ms); Curator: {curator}",
            fmt_ms(wmax),
            fmt_ms(w),
            p.long_outage_down.as_secs(),
            fmt_ms(r.zk_long[1].max())
        ),
        met: wmax.map(|x| x <= 300.0),
        why: zk::wipe_why(r),
    });
    let rs = med(&r.zk_restart[0]);
    let rmax = max2(&r.zk_restart[0], &r.zk_long[0]);
    v.push(Verdict {
        target: "ZK restart with data: leader again ≤ 300 ms (max) after the server answers, short and long outages".into(),
        measured: format!(
            "ours max {} ms (median {} ms; after {} s down: max {} ms); Curator median {} ms",
            fmt_ms(rmax),
            fmt_ms(rs),
            p.long_outage_down.as_secs(),
            fmt_ms(r.zk_long[0].max()),
            fmt_ms(med(&r.zk_restart[1]))
        ),
        met: rmax.map(|x| x <= 300.0),
        why: zk::restart_why(r),
    });
    let session = p.crash_session.as_secs_f64() * 1000.0;
    let zc = med(&r.zk_crash[0]);
    v.push(Verdict {
        target: "ZK crash handover within session timeout + 100 ms".into(),
        measured: format!(
            "ours {} ms, Curator {} ms (session timeout {} ms)",
            fmt_ms(zc),
            fmt_ms(med(&r.zk_crash[1])),
            session
        ),
        met: zc.map(|x| x <= session + 100.0),
        why: zk::crash_why(r, p),
    });
    let ttl = p.ttl.as_secs_f64() * 1000.0;
    let ec = med(&r.etcd_crash);
    v.push(Verdict {
        target: "etcd crash handover within TTL + 100 ms".into(),
        measured: format!(
            "ours {} ms (TTL {} ms){}",
            fmt_ms(ec),
            ttl,
            match r.etcdctl_crash {
                Some((ms, ttl)) => format!("; etcdctl {} ms (TTL {} ms)", fmt_ms(Some(ms)), ttl),
                None => String::new(),
            }
        ),
        met: ec.map(|x| x <= ttl + 100.0),
        why: etcd::crash_why(r, p),
    });
    v.extend(scale::verdicts(r, p.session));
    v.extend(sup::verdicts(r));
    v.extend(shared::verdicts(r));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags() {
        let o = parse_args(&args(&["--quick", "--out", "x.md"]))
            .unwrap()
            .unwrap();
        assert!(o.quick);
        assert_eq!(o.out, Some(PathBuf::from("x.md")));
        let o = parse_args(&args(&["--out=-"])).unwrap().unwrap();
        assert_eq!(o.out, None);
        assert!(parse_args(&args(&["--help"])).unwrap().is_none());
        let e = parse_args(&args(&["--fast"])).unwrap_err();
        assert!(e.contains("--fast"), "{e}");
        let e = parse_args(&args(&["--out"])).unwrap_err();
        assert!(e.contains("--out needs"), "{e}");
        let e = parse_args(&args(&["--only", "zk,nope"])).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let o = parse_args(&args(&["--only", "zk"])).unwrap().unwrap();
        assert_eq!(o.only, vec!["zk".to_string()]);
        assert_eq!(o.out, None, "--only alone writes no file");
        let o = parse_args(&args(&["--only", "shared", "--shared-sizes", "200,1000"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.shared_sizes, Some(vec![200, 1000]));
        assert!(parse_args(&args(&["--shared-sizes", "x"])).is_err());
    }
}
