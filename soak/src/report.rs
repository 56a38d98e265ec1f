//! The report: a table by fault kind, violations with a timeline excerpt, the fencing
//! cases, and a one-line summary. Pure formatting of a [`Verdict`] and its [`History`].

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::checker::{Recovery, Verdict};
use crate::history::{EventKind, FaultKind, Group, History};

/// What the report says about the run besides the verdict.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// The seed.
    pub seed: u64,
    /// Planned minutes of faults.
    pub minutes: f64,
    /// CLOCK_MONOTONIC ns at the start (timeline times are relative to it).
    pub t0: u64,
    /// The exact command to replay.
    pub command: String,
    /// Configuration lines (participants, timings, bounds).
    pub config: Vec<String>,
    /// What the final store check found (empty: clean).
    pub leftovers: Vec<String>,
    /// Started processes still alive after the run (empty: none).
    pub survivors: Vec<u32>,
    /// Runner notes (skipped faults, unreadable lines).
    pub notes: Vec<String>,
    /// Where the raw history was written.
    pub history_dir: String,
    /// Machine description.
    pub machine: String,
    /// Wall-clock duration of the run (s).
    pub wall_secs: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// One row of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Faults injected.
    pub injected: usize,
    /// Of which in an episode with two faults.
    pub overlapped: usize,
    /// Faults after whose heal every disturbed group had a leader within its bound.
    pub recovered: usize,
    /// Recovery times (ns), sorted: per fault, the slowest disturbed group.
    pub recovery: Vec<u64>,
    /// Leaderless time in the episode (ns), sorted: per fault, the worst disturbed group.
    pub leaderless: Vec<u64>,
}

/// The table by fault kind.
pub fn table(h: &History, v: &Verdict) -> BTreeMap<FaultKind, Row> {
    let mut by_episode: BTreeMap<usize, Vec<&Recovery>> = BTreeMap::new();
    for r in &v.recoveries {
        by_episode.entry(r.episode).or_default().push(r);
    }
    let mut per_episode_count: BTreeMap<usize, usize> = BTreeMap::new();
    for f in &h.faults {
        *per_episode_count.entry(f.episode).or_default() += 1;
    }
    let mut rows: BTreeMap<FaultKind, Row> = BTreeMap::new();
    for f in &h.faults {
        let row = rows.entry(f.kind).or_default();
        row.injected += 1;
        if per_episode_count.get(&f.episode).copied().unwrap_or(0) > 1 {
            row.overlapped += 1;
        }
        let recs: Vec<&Recovery> = by_episode
            .get(&f.episode)
            .map(|rs| {
                rs.iter()
                    .copied()
                    .filter(|r| f.groups.contains(&r.group))
                    .collect()
            })
            .unwrap_or_default();
        if recs.is_empty() {
            continue;
        }
        row.leaderless
            .push(recs.iter().map(|r| r.leaderless).max().unwrap_or(0));
        if recs.iter().all(|r| r.after.is_some()) {
            row.recovered += 1;
            row.recovery
                .push(recs.iter().filter_map(|r| r.after).max().unwrap_or(0));
        }
    }
    for r in rows.values_mut() {
        r.recovery.sort_unstable();
        r.leaderless.sort_unstable();
    }
    rows
}

fn ms(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1e6)
}

fn rel(info: &RunInfo, at: u64) -> String {
    format!("{:>9.3}s", at.saturating_sub(info.t0) as f64 / 1e9)
}

/// A timeline excerpt: the group's events and the faults around `at`.
pub fn timeline(h: &History, info: &RunInfo, group: Option<Group>, at: u64) -> String {
    let from = at.saturating_sub(4_000_000_000);
    let to = at + 2_000_000_000;
    let mut lines: Vec<(u64, String)> = Vec::new();
    for e in &h.events {
        if e.at < from || e.at > to || group.is_some_and(|g| g != e.group) {
            continue;
        }
        let what = match &e.kind {
            EventKind::Joined => "joined".to_string(),
            EventKind::Elected { term, layer } => format!("elected term {term} via {layer}"),
            EventKind::Revoked { reason } => format!("revoked ({reason})"),
            EventKind::ModeChange { what, generation } => {
                format!("{what} to generation {generation}")
            }
            EventKind::Closed => "closed".into(),
            EventKind::Exited { status, expected } => format!(
                "exited: {status}{}",
                if *expected { "" } else { " (UNEXPECTED)" }
            ),
            EventKind::Paused => "SIGSTOP (runner)".into(),
            EventKind::Resumed => "SIGCONT (runner)".into(),
            EventKind::Other(name) if name == "health" || name == "health_listening" => continue,
            EventKind::Other(name) => name.clone(),
        };
        lines.push((e.at, format!("{}  {:<8} {what}", rel(info, e.at), e.who)));
    }
    for f in &h.faults {
        if f.start >= from && f.start <= to {
            lines.push((
                f.start,
                format!(
                    "{}  NEMESIS  inject {} on {}",
                    rel(info, f.start),
                    f.kind,
                    f.target
                ),
            ));
        }
        if let Some(hl) = f.heal.filter(|t| *t >= from && *t <= to) {
            lines.push((
                hl,
                format!(
                    "{}  NEMESIS  healed {} on {}",
                    rel(info, hl),
                    f.kind,
                    f.target
                ),
            ));
        }
    }
    lines.sort_by_key(|l| l.0);
    if lines.len() > 40 {
        let keep = lines.len() - 40;
        lines.drain(..keep);
    }
    lines
        .into_iter()
        .map(|l| l.1)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Violations counted for the summary and the exit status (runner probes included).
pub fn total_violations(v: &Verdict, info: &RunInfo) -> usize {
    v.violations.len() + usize::from(!info.leftovers.is_empty()) + info.survivors.len()
}

/// The one-line summary for stdout.
pub fn summary(h: &History, v: &Verdict, info: &RunInfo) -> String {
    let recovered = table(h, v).values().map(|r| r.recovered).sum::<usize>();
    let fencing_max = v.fencing.iter().map(|f| f.window).max().unwrap_or(0);
    format!(
        "soak seed={} minutes={} episodes={} faults={} recovered={} violations={} fencing_windows={} (max {} ms) leftovers={} processes_left={}",
        info.seed,
        info.minutes,
        h.episodes.len(),
        h.faults.len(),
        recovered,
        total_violations(v, info),
        v.fencing.len(),
        ms(fencing_max),
        info.leftovers.len(),
        info.survivors.len()
    )
}

/// The markdown section written to docs/RELIABILITY.md.
pub fn markdown(h: &History, v: &Verdict, info: &RunInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Run: seed {}, {} minutes\n", info.seed, info.minutes);
    let _ = writeln!(s, "`{}`\n", info.command);
    let _ = writeln!(
        s,
        "{} · wall time {:.0} s · {} episodes · {} faults injected\n",
        info.machine,
        info.wall_secs,
        h.episodes.len(),
        h.faults.len()
    );
    for c in &info.config {
        let _ = writeln!(s, "- {c}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| fault | injected | in an overlap | recovered | recovery p50 (ms) | p99 (ms) | max (ms) | leaderless p50 (ms) | max (ms) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = table(h, v);
    for k in FaultKind::ALL {
        let r = rows.get(&k).cloned().unwrap_or_default();
        let p = |x: f64| percentile(&r.recovery, x).map(ms).unwrap_or("-".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k,
            r.injected,
            r.overlapped,
            r.recovered,
            p(50.0),
            p(99.0),
            r.recovery.last().copied().map(ms).unwrap_or("-".into()),
            percentile(&r.leaderless, 50.0)
                .map(ms)
                .unwrap_or("-".into()),
            r.leaderless.last().copied().map(ms).unwrap_or("-".into())
        );
    }
    let _ = writeln!(
        s,
        "\nRecovery: from the heal (server serving again, link restored, SIGCONT, replacement \
         started) to the first leader that then leads for at least 1 s, per fault the slowest \
         of the groups it disturbs (0 when a leader that was not disturbed kept leading). \
         Leaderless: the time the worst disturbed group had no (unfrozen) leader, from the \
         episode's first injection to that recovery; it includes the fault's hold.\n"
    );
    let _ = writeln!(
        s,
        "| election | leadership grants | via zk | via etcd | failovers seen | failbacks seen | fencing windows |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for g in Group::ALL {
        let count = |f: &dyn Fn(&EventKind) -> bool| {
            h.events
                .iter()
                .filter(|e| e.group == g && f(&e.kind))
                .count()
        };
        let layer = |l: &'static str| move |k: &EventKind| matches!(k, EventKind::Elected { layer, .. } if layer == l);
        // Every participant prints a mode change it sees: count distinct generations.
        let gens = |what: &str| {
            let mut v: Vec<u64> = h
                .events
                .iter()
                .filter(|e| e.group == g)
                .filter_map(|e| match &e.kind {
                    EventKind::ModeChange {
                        what: w,
                        generation,
                    } if w == what => Some(*generation),
                    _ => None,
                })
                .collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            g,
            v.grants.get(&g).copied().unwrap_or(0),
            count(&layer("zk")),
            count(&layer("etcd")),
            gens("failover"),
            gens("failback"),
            v.fencing.iter().filter(|f| f.group == g).count()
        );
    }
    let _ = writeln!(
        s,
        "\nSame-term resumptions (same participant, same term, no grant in between): {}.\n",
        v.resumptions
    );

    let _ = writeln!(s, "**Violations: {}.**\n", total_violations(v, info));
    for (i, x) in v.violations.iter().enumerate() {
        let _ = writeln!(
            s,
            "{}. **{}** in {} at {}: {} (seed {})\n\n```text\n{}\n```\n",
            i + 1,
            x.kind,
            x.group.map(|g| g.name()).unwrap_or("-"),
            rel(info, x.at).trim(),
            x.detail,
            info.seed,
            timeline(h, info, x.group, x.at)
        );
    }
    if !info.leftovers.is_empty() {
        let _ = writeln!(s, "Left in the stores after every participant closed:\n");
        for l in &info.leftovers {
            let _ = writeln!(s, "- {l}");
        }
        let _ = writeln!(s);
    } else {
        let _ = writeln!(
            s,
            "Stores after every participant closed: no ephemeral node under the run's ZooKeeper \
             paths, no key under either etcd election prefix, no lease.\n"
        );
    }
    if info.survivors.is_empty() {
        let _ = writeln!(
            s,
            "Processes: every participant and server the run started was gone at its end.\n"
        );
    } else {
        let _ = writeln!(
            s,
            "Processes still alive after the run: {:?}\n",
            info.survivors
        );
    }
    let _ = writeln!(
        s,
        "**Fencing case** (a leader frozen by SIGSTOP longer than its session/lease, then \
         resumed; it cannot know it was frozen): {} windows, {} with another leader during the \
         pause or the window.",
        v.fencing.len(),
        v.fencing.iter().filter(|f| f.overlapped).count()
    );
    if !v.fencing.is_empty() {
        let mut w: Vec<u64> = v.fencing.iter().map(|f| f.window).collect();
        w.sort_unstable();
        let _ = writeln!(
            s,
            "Post-resume window (SIGCONT to its `revoked`): p50 {} ms, max {} ms.\n",
            percentile(&w, 50.0).map(ms).unwrap_or_default(),
            ms(*w.last().unwrap_or(&0))
        );
        let _ = writeln!(
            s,
            "| participant | term | window (ms) | another leader meanwhile |"
        );
        let _ = writeln!(s, "|---|---|---:|---|");
        for f in v.fencing.iter().take(20) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                f.who,
                f.term,
                ms(f.window),
                if f.overlapped { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(s);
    if !info.notes.is_empty() {
        let _ = writeln!(s, "Runner notes:\n");
        for n in info.notes.iter().take(30) {
            let _ = writeln!(s, "- {n}");
        }
        if info.notes.len() > 30 {
            let _ = writeln!(s, "- ... {} more", info.notes.len() - 30);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Raw history (events, fault log, participant stderr): `{}`.",
        info.history_dir
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
