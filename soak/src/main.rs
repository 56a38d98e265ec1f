//! # succession-soak
//!
//! A nemesis soak on real servers: a 3-node ZooKeeper ensemble and a 3-member etcd cluster
//! (testkit), supervised, ZooKeeper-only and etcd-only groups of real `succession campaign`
//! processes (each behind its own TCP proxy per server), a seeded nemesis injecting one
//! fault or two overlapping ones every few seconds, and a checker that judges the whole
//! history (see [`checker`]).
//!
//! ```text
//! cargo run --release -p succession-soak -- --minutes 30 --seed 7 --out docs/RELIABILITY.md
//! ```
//!
//! Prints one summary line on stdout and exits 1 on any violation (2 when the run itself
//! could not be carried out). SIGINT/SIGTERM stop it: participants are killed by pid,
//! servers by testkit; participants also carry `PR_SET_PDEATHSIG`.
#![deny(missing_docs)]

mod checker;
mod history;
mod nemesis;
mod report;
mod rng;
mod world;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use checker::Rules;
use history::{mono_ns, Episode, EventKind, FaultKind, Group, History};
use nemesis::PlanConfig;
use report::RunInfo;
use rng::Rng;
use world::{Timings, World, WorldConfig};

/// Command-line options.
#[derive(Debug, Clone)]
struct Args {
    minutes: f64,
    seed: u64,
    out: Option<PathBuf>,
    bin: Option<PathBuf>,
    supervised: usize,
    single: usize,
    overlap: u64,
    faults: Vec<FaultKind>,
    strict: bool,
}

const USAGE: &str = "usage: succession-soak --minutes M --seed S [--out docs/RELIABILITY.md] \
[--bin PATH/TO/succession] [--supervised N (3)] [--single N (2)] [--overlap PERCENT (35)] \
[--faults KIND,KIND,... (all; e.g. participant-sigstop,leader-sigterm)] \
[--strict-mode-lease (supervised participants run strict; asymmetric partitions scheduled)]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        minutes: 2.0,
        seed: 1,
        out: None,
        bin: None,
        supervised: 3,
        single: 2,
        overlap: 35,
        faults: FaultKind::ALL.to_vec(),
        strict: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let bad = |v: &str| format!("{flag} {v:?}: not a valid value\n{USAGE}");
        match flag.as_str() {
            "--minutes" => {
                let v = val()?;
                a.minutes = v.parse().map_err(|_| bad(&v))?;
            }
            "--seed" => {
                let v = val()?;
                a.seed = v.parse().map_err(|_| bad(&v))?;
            }
            "--out" => a.out = Some(val()?.into()),
            "--bin" => a.bin = Some(val()?.into()),
            "--supervised" => {
                let v = val()?;
                a.supervised = v.parse().map_err(|_| bad(&v))?;
            }
            "--single" => {
                let v = val()?;
                a.single = v.parse().map_err(|_| bad(&v))?;
            }
            "--overlap" => {
                let v = val()?;
                a.overlap = v.parse().map_err(|_| bad(&v))?;
            }
            "--faults" => {
                let v = val()?;
                a.faults = v
                    .split(',')
                    .map(|n| FaultKind::from_name(n.trim()).ok_or_else(|| bad(n)))
                    .collect::<Result<_, _>>()?;
            }
            "--strict-mode-lease" => a.strict = true,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if a.minutes.is_nan()
        || a.minutes <= 0.0
        || a.supervised < 2
        || a.single < 2
        || a.overlap > 100
        || a.faults.is_empty()
    {
        return Err(format!(
            "--minutes must be > 0, groups need >= 2 participants, --overlap <= 100\n{USAGE}"
        ));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let tag = format!("{}-{}", args.seed, std::process::id());
    // One thread: every participant is forked from it, so PR_SET_PDEATHSIG (tied to the
    // forking thread) fires exactly when the runner dies.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            _ => {
                eprintln!("soak: cannot install signal handlers");
                return ExitCode::from(2);
            }
        };
        // On a signal the run future is dropped: World's drop kills every participant by
        // pid, testkit's handles kill and reap every server.
        let interrupted = tokio::select! {
            r = run(args, tag.clone()) => return match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("soak: {e}");
                    ExitCode::from(2)
                }
            },
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        let left = survivors(&tag, std::process::id());
        eprintln!(
            "soak: {interrupted}: stopped; {} started processes left{}",
            left.len(),
            if left.is_empty() {
                String::new()
            } else {
                format!(": {left:?}")
            }
        );
        ExitCode::from(130)
    });
    drop(rt);
    code
}

/// Processes this run started that are still alive: participants (their command line names
/// the run's store paths) and testkit servers (their temp dir names the runner's pid).
/// Read from /proc, so a reused pid is never mistaken for ours.
fn survivors(tag: &str, runner: u32) -> Vec<u32> {
    let ours = format!("/soak-{tag}/");
    let servers = format!("succession-testkit-{runner}-");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == runner {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if (cmd.contains(&ours) || cmd.contains(&servers)) && succession_testkit::process_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// The workspace root (this crate lives in `<root>/soak`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `--bin`, or build the CLI in release mode and use it.
fn succession_binary(a: &Args) -> Result<PathBuf, String> {
    if let Some(b) = &a.bin {
        return if b.is_file() {
            Ok(b.clone())
        } else {
            Err(format!("--bin {}: no such file", b.display()))
        };
    }
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("soak: cargo build --release --features cli --bin succession");
    let st = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--features",
            "cli",
            "--bin",
            "succession",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!("building the succession CLI failed: {st}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let bin = target.join("release").join("succession");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("built, but {} is missing", bin.display()))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn run(a: Args, tag: String) -> Result<ExitCode, String> {
    let bin = succession_binary(&a)?;
    let wall = Instant::now();
    let timings = Timings {
        session_timeout: Duration::from_secs(2),
        ttl: Duration::from_secs(2),
        failover_after: Duration::from_secs(3),
        failback_after: Duration::from_secs(4),
    };
    // Liveness bounds after a heal, from the documented timings (docs/RELIABILITY.md):
    // ZooKeeper: a dead holder's session expires (session timeout), the client's own expiry
    // verdict after a wipe (1.4 x session timeout), reconnect backoff: 4 x session + 2 s.
    // etcd: the old lease runs out (TTL), client reconnect after a restart (~1.7 s), a new
    // lease and campaign: 3 x TTL + 4 s. Supervised: the ZooKeeper bound, or a failover
    // (the fallback leader acts about failover_after after the primary went bad: the
    // decision is written a takeover delay ahead) with generous slack: ZooKeeper bound +
    // failover_after + 5 s.
    let zk_bound = timings.session_timeout * 4 + Duration::from_secs(2);
    let etcd_bound = timings.ttl * 3 + Duration::from_secs(4);
    let sup_bound = zk_bound + timings.failover_after + Duration::from_secs(5);
    let stable = Duration::from_secs(1);
    let rules = Rules {
        bound: [
            (Group::Supervised, sup_bound.as_nanos() as u64),
            (Group::Zk, zk_bound.as_nanos() as u64),
            (Group::Etcd, etcd_bound.as_nanos() as u64),
        ]
        .into_iter()
        .collect(),
        stable: stable.as_nanos() as u64,
    };
    let max_bound = sup_bound.max(zk_bound).max(etcd_bound);
    let hist_dir = std::env::temp_dir().join(format!("succession-soak-{tag}"));
    std::fs::create_dir_all(&hist_dir)
        .map_err(|e| format!("cannot create {}: {e}", hist_dir.display()))?;
    let sizes: HashMap<Group, usize> = [
        (Group::Supervised, a.supervised),
        (Group::Zk, a.single),
        (Group::Etcd, a.single),
    ]
    .into_iter()
    .collect();
    eprintln!(
        "soak: seed {} for {} min: 3 ZooKeeper peers, 3 etcd members, {} supervised + {} ZooKeeper-only + {} etcd-only participants ({}); history in {}",
        a.seed,
        a.minutes,
        a.supervised,
        a.single,
        a.single,
        bin.display(),
        hist_dir.display()
    );
    let t0 = mono_ns();
    let mut w = World::start(WorldConfig {
        bin: bin.clone(),
        tag: tag.clone(),
        sizes,
        timings: timings.clone(),
        log_dir: hist_dir.clone(),
        strict: a.strict,
    })
    .await?;
    if !w.wait_all_led(stable, Duration::from_secs(60)).await {
        return Err(format!(
            "not every group had a leader within 60 s of the start; participant stderr in {}",
            hist_dir.display()
        ));
    }
    let problems = w.problems();
    if !problems.is_empty() {
        return Err(format!(
            "the CLI's events cannot be read (is {} older than the mono_ns field?): {}",
            bin.display(),
            problems[0]
        ));
    }
    eprintln!("soak: every group has a leader; nemesis starts");
    let pcfg = PlanConfig {
        session_timeout: timings.session_timeout,
        ttl: timings.ttl,
        overlap_percent: a.overlap,
        kinds: a.faults.clone(),
        asymmetric_supervised: a.strict,
    };
    let mut rng = Rng::new(a.seed);
    let deadline = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let mut episodes: Vec<Episode> = Vec::new();
    while Instant::now() < deadline {
        let idx = episodes.len();
        let plan = nemesis::episode(&mut rng, &pcfg);
        let start = mono_ns();
        if let Some(prev) = episodes.last_mut() {
            prev.until = start;
        }
        // Inject and heal in time order (inject first at equal times).
        let mut actions: Vec<(Duration, bool, usize)> = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            actions.push((p.offset, false, i));
            actions.push((p.offset + p.hold, true, i));
        }
        actions.sort();
        let base = tokio::time::Instant::now();
        let mut active: Vec<Option<world::Active>> = plan.iter().map(|_| None).collect();
        let mut taken = HashSet::new();
        for (at, heal, i) in actions {
            tokio::time::sleep_until(base + at).await;
            if heal {
                if let Some(act) = active[i].take() {
                    w.heal(act).await?;
                }
            } else {
                active[i] = w.inject(idx, &plan[i], &mut taken, &mut rng).await?;
            }
        }
        let healed = w
            .faults
            .iter()
            .filter(|f| f.episode == idx)
            .filter_map(|f| f.heal)
            .max();
        let kinds: Vec<String> = w
            .faults
            .iter()
            .filter(|f| f.episode == idx)
            .map(|f| format!("{} on {}", f.kind, f.target))
            .collect();
        eprintln!(
            "soak: +{:.0}s episode {idx}: {}",
            (start - t0) as f64 / 1e9,
            if kinds.is_empty() {
                "nothing to hit".to_string()
            } else {
                kinds.join(" + ")
            }
        );
        episodes.push(Episode {
            index: idx,
            start,
            healed,
            until: u64::MAX,
        });
        if !w
            .wait_all_led(stable, max_bound + Duration::from_secs(3))
            .await
        {
            w.notes.push(format!(
                "episode {idx}: not every group had a stable leader within {} of the heal",
                secs(max_bound + Duration::from_secs(3))
            ));
        }
        w.probe_health(Duration::from_secs(5)).await;
        tokio::time::sleep(nemesis::gap(&mut rng)).await;
    }
    // The end: a last recovery, health, then every participant resigns.
    let _ = w
        .wait_all_led(stable, max_bound + Duration::from_secs(3))
        .await;
    w.probe_health(Duration::from_secs(5)).await;
    let end = mono_ns();
    if let Some(prev) = episodes.last_mut() {
        prev.until = end;
    }
    eprintln!("soak: faults over; SIGTERM to every participant, then the store check");
    w.stop_participants(Duration::from_secs(15)).await;
    let clean_wait = timings.session_timeout.max(timings.ttl) * 3 + Duration::from_secs(10);
    let leftovers = w.wait_clean(clean_wait).await;
    let events = w.events();
    let faults = w.faults.clone();
    let runner_violations = w.violations.clone();
    let mut notes = w.notes.clone();
    notes.extend(w.problems());
    drop(w);
    let left = survivors(&tag, std::process::id());

    let h = History {
        events,
        faults,
        episodes,
        end,
    };
    let mut verdict = checker::check(&h, &rules);
    verdict.violations.extend(runner_violations);
    verdict.violations.sort_by_key(|v| v.at);
    write_history(&hist_dir, &h, t0);

    let command = format!(
        "cargo run --release -p succession-soak -- --minutes {} --seed {}{}{}{}",
        a.minutes,
        a.seed,
        if a.strict { " --strict-mode-lease" } else { "" },
        if a.faults.len() == FaultKind::ALL.len() {
            String::new()
        } else {
            format!(
                " --faults {}",
                a.faults
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        a.out
            .as_ref()
            .map(|o| format!(" --out {}", o.display()))
            .unwrap_or_default()
    );
    let info = RunInfo {
        seed: a.seed,
        minutes: a.minutes,
        t0,
        command,
        config: vec![
            format!(
                "participants: {} supervised (ZooKeeper primary, etcd fallback), {} ZooKeeper-only, {} etcd-only; each a `succession campaign` process with its own TCP proxy to every server",
                a.supervised, a.single, a.single
            ),
            format!(
                "participant timings: session timeout {}, lease TTL {}, failover_after {}, failback_after {} (check interval and takeover delay: the CLI's defaults)",
                secs(timings.session_timeout),
                secs(timings.ttl),
                secs(timings.failover_after),
                secs(timings.failback_after)
            ),
            format!(
                "liveness bounds after a heal: supervised {}, ZooKeeper-only {}, etcd-only {}; a leader counts once it has led {}",
                secs(sup_bound),
                secs(zk_bound),
                secs(etcd_bound),
                secs(stable)
            ),
            format!("{}% of episodes overlap two faults", a.overlap),
            if a.strict {
                "supervised participants run with `--strict-mode-lease`; partitions of a supervised participant from ONE store (asymmetric) are scheduled".to_string()
            } else {
                "supervised participants run in the default mode (no `--strict-mode-lease`), so a supervised participant is only partitioned from BOTH stores (asymmetric partitions are the documented two-leader case of that mode)".to_string()
            },
            if a.faults.len() == FaultKind::ALL.len() {
                "fault kinds: all".to_string()
            } else {
                format!(
                    "fault kinds: only {}",
                    a.faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                )
            },
        ],
        leftovers,
        survivors: left,
        notes,
        history_dir: hist_dir.display().to_string(),
        machine: machine(),
        wall_secs: wall.elapsed().as_secs_f64(),
    };
    let md = report::markdown(&h, &verdict, &info);
    if let Some(out) = &a.out {
        write_doc(out, if a.strict { "soak-strict" } else { "soak" }, &md)?;
    }
    std::fs::write(hist_dir.join("report.md"), &md).ok();
    for v in &verdict.violations {
        eprintln!(
            "soak: VIOLATION {} in {}: {}\n{}",
            v.kind,
            v.group.map(|g| g.name()).unwrap_or("-"),
            v.detail,
            report::timeline(&h, &info, v.group, v.at)
        );
    }
    println!("{}", report::summary(&h, &verdict, &info));
    Ok(if report::total_violations(&verdict, &info) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!("{cores} cores (shared), load {load} at the end")
}

/// The events and the fault log as text, for replaying a verdict by hand.
fn write_history(dir: &Path, h: &History, t0: u64) {
    let mut ev = String::new();
    let mut sorted: Vec<_> = h.events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    for e in sorted {
        if matches!(&e.kind, EventKind::Other(n) if n == "health") {
            continue;
        }
        ev.push_str(&format!(
            "{:.6} {} {} {:?}\n",
            e.at.saturating_sub(t0) as f64 / 1e9,
            e.group,
            e.who,
            e.kind
        ));
    }
    let _ = std::fs::write(dir.join("events.txt"), ev);
    let mut f = std::fs::File::create(dir.join("faults.txt")).ok();
    if let Some(f) = f.as_mut() {
        for x in &h.faults {
            let _ = writeln!(
                f,
                "episode {} {} on {}: {:.3}s -> {}",
                x.episode,
                x.kind,
                x.target,
                x.start.saturating_sub(t0) as f64 / 1e9,
                x.heal
                    .map(|t| format!("{:.3}s", t.saturating_sub(t0) as f64 / 1e9))
                    .unwrap_or("never".into())
            );
        }
    }
}

/// Replaces the generated section `name` of `out` (between its markers), or appends it.
fn write_doc(out: &Path, name: &str, md: &str) -> Result<(), String> {
    let begin =
        format!("<!-- {name}:begin (generated by succession-soak; edit outside the markers) -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{md}{}", &old[..b], &old[e..]),
        _ if old.is_empty() => format!("# Reliability: the nemesis soak\n\n{begin}\n{md}{end}\n"),
        _ => format!("{old}\n{begin}\n{md}{end}\n"),
    };
    std::fs::write(out, new).map_err(|e| format!("cannot write {}: {e}", out.display()))
}
