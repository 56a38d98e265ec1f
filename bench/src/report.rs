//! The report: sections with markdown tables, printed to stdout as they complete and
//! written as a whole to docs/BENCHMARKS.md.

use std::fmt::Write as _;

/// A markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column headers.
    pub head: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
    /// Left-align every column (text tables); else columns after the first are right-aligned.
    pub text: bool,
}

impl Table {
    /// A table with these headers.
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            text: false,
        }
    }

    /// A table of text (all columns left-aligned).
    pub fn text(head: &[&str]) -> Table {
        Table {
            text: true,
            ..Table::new(head)
        }
    }

    /// Add a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", self.head.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.head
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 || self.text { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

/// One group of measurements.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Paragraphs before the tables (what was measured, how).
    pub before: Vec<String>,
    /// The tables.
    pub tables: Vec<Table>,
    /// Paragraphs after the tables (observations).
    pub after: Vec<String>,
}

impl Section {
    /// An empty section with a title.
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            ..Section::default()
        }
    }

    /// The section as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n", self.title);
        for p in &self.before {
            let _ = writeln!(s, "{p}\n");
        }
        for t in &self.tables {
            let _ = writeln!(s, "{}", t.markdown());
        }
        for p in &self.after {
            let _ = writeln!(s, "{p}\n");
        }
        s
    }
}

/// One target of the issue, read against the figures.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The target as stated.
    pub target: String,
    /// What was measured (medians, same run).
    pub measured: String,
    /// Met, missed, or not measurable in this run.
    pub met: Option<bool>,
    /// Why, and what would move it.
    pub why: String,
}

/// What the machine and the software are.
pub fn machine() -> Vec<(String, String)> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        ("CPUs (nproc)".into(), cpus),
        ("CPU model".into(), model),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
    ]
}

/// The first line of `program args` output (stdout, else stderr).
pub fn version_of(program: &std::path::Path, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// The Curator version, from the versioned jar name Debian installs next to
/// `curator-recipes.jar` (e.g. `curator-recipes-5.4.0.jar`).
pub fn curator_version() -> String {
    let dir = std::path::Path::new(succession_testkit::DEBIAN_JAVA_DIR);
    std::fs::read_dir(dir)
        .ok()
        .and_then(|entries| {
            entries.filter_map(|e| e.ok()).find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("curator-recipes-")
                    .and_then(|v| v.strip_suffix(".jar"))
                    .map(|v| v.to_string())
            })
        })
        .unwrap_or_else(|| "unknown (no versioned curator-recipes jar)".into())
}
