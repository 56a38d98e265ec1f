//! The `succession` binary against real servers: event stream, observe, run, bad input.
//! Run with `--features cli` (the README's test command enables every feature).

use std::time::Duration;

use succession_testkit::{shared_etcd, shared_zk, unique_path};
use tokio::process::Command;

mod common;

use common::{field, Cli, Fleet, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_zk_prints_events_and_hands_over_on_sigterm() {
    let zk = shared_zk().await;
    let path = unique_path("cli-zk");
    let mut a = Cli::start(&["campaign", "--zk", &zk.addr(), "--path", &path, "--id", "a"]);
    a.until("joined").await;
    let elected = a.until("elected").await;
    assert_eq!(field(&elected, "id"), Some("a"));
    assert_eq!(field(&elected, "layer"), Some("zk"));
    assert!(
        field(&elected, "term").is_some_and(|t| t.split('.').count() == 3),
        "{elected}"
    );
    let mut b = Cli::start(&["campaign", "--zk", &zk.addr(), "--path", &path, "--id", "b"]);
    b.until("joined").await;
    a.signal(libc::SIGTERM);
    a.until("revoked").await;
    a.until("closed").await;
    assert_eq!(a.exit_code().await, 0);
    let b_elected = b.until("elected").await;
    let term = |l: &str| {
        field(l, "term")
            .expect("term")
            .parse::<succession::Term>()
            .expect("term")
    };
    assert!(
        term(&b_elected) > term(&elected),
        "terms grow: {b_elected} after {elected}"
    );
    b.signal(libc::SIGINT);
    b.until("closed").await;
    assert_eq!(b.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_etcd_prints_events() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("cli-etcd");
    let mut a = Cli::start(&[
        "campaign",
        "--etcd",
        &etcd.endpoint(),
        "--prefix",
        &prefix,
        "--id",
        "a",
        "--ttl",
        "5s",
    ]);
    a.until("joined").await;
    let elected = a.until("elected").await;
    assert_eq!(field(&elected, "layer"), Some("etcd"));
    a.signal(libc::SIGTERM);
    a.until("closed").await;
    assert_eq!(a.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_observe_reports_each_leader_change() {
    let zk = shared_zk().await;
    let path = unique_path("cli-observe");
    let mut o = Cli::start(&[
        "observe",
        "--zk",
        &zk.addr(),
        "--path",
        &path,
        "--interval",
        "50ms",
    ]);
    let none = o.until("leader").await;
    assert_eq!(field(&none, "leader"), Some("null"), "{none}");
    let mut a = Cli::start(&["campaign", "--zk", &zk.addr(), "--path", &path, "--id", "a"]);
    a.until("elected").await;
    let seen_a = o.until("leader").await;
    assert_eq!(field(&seen_a, "leader"), Some("a"), "{seen_a}");
    let mut b = Cli::start(&["campaign", "--zk", &zk.addr(), "--path", &path, "--id", "b"]);
    b.until("joined").await;
    a.signal(libc::SIGTERM);
    b.until("elected").await;
    let seen_b = o.until("leader").await;
    assert_eq!(field(&seen_b, "leader"), Some("b"), "{seen_b}");
    for c in [&mut a, &mut b, &mut o] {
        c.signal(libc::SIGTERM);
        assert_eq!(c.exit_code().await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_gives_the_child_its_term_and_exits_with_its_status() {
    let zk = shared_zk().await;
    let path = unique_path("cli-run");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env");
    let script = format!(
        "echo \"$SUCCESSION_TERM $SUCCESSION_LAYER $SUCCESSION_ID\" > {}; exit 3",
        out.display()
    );
    let mut r = Cli::start(&[
        "run",
        "--zk",
        &zk.addr(),
        "--path",
        &path,
        "--id",
        "runner",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let elected = r.until("elected").await;
    r.until("closed").await;
    assert_eq!(r.exit_code().await, 3, "the child's exit status");
    let env = std::fs::read_to_string(&out).expect("the child ran");
    let term = field(&elected, "term").expect("term");
    assert_eq!(env.trim(), format!("{term} zk runner"));
}

/// Leadership lost (the latch path is deleted under the leader): the child gets SIGTERM,
/// and one that ignores it is SIGKILLed after --grace; when leadership comes back (path
/// repaired) the command runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_stops_the_child_on_loss_and_restarts_it_when_leading_again() {
    let zk = shared_zk().await;
    let path = unique_path("cli-run-loss");
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!(
        "trap '' TERM; echo $$ >> {}; while true; do sleep 0.1; done",
        pids.display()
    );
    let mut r = Cli::start(&[
        "run",
        "--zk",
        &zk.addr(),
        "--path",
        &path,
        "--id",
        "runner",
        "--grace",
        "300ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    r.until("elected").await;
    let first_pid = wait_for_lines(&pids, 1).await[0];
    let admin = zookeeper_client::Client::connect(&zk.addr())
        .await
        .expect("admin client");
    let kids = admin.list_children(&path).await.expect("children");
    for k in kids {
        let _ = admin.delete(&format!("{path}/{k}"), None).await;
    }
    r.until("revoked").await;
    r.until("elected").await;
    let both = wait_for_lines(&pids, 2).await;
    assert_ne!(
        both[0], both[1],
        "a new child runs after leadership came back"
    );
    assert!(
        !alive(first_pid),
        "the first child (ignoring SIGTERM) was killed after --grace"
    );
    r.signal(libc::SIGTERM);
    r.until("closed").await;
    assert_eq!(r.exit_code().await, 0);
    assert!(
        !alive(both[1]),
        "the child is stopped when succession exits"
    );
}

async fn wait_for_lines(p: &std::path::Path, n: usize) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: Vec<i32> = std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if v.len() >= n {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} child pids after 30s",
            v.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: i32) -> bool {
    succession_testkit::process_alive(pid as u32)
}

/// Runs the binary with `args`, expecting failure: a non-zero exit, a message on stderr
/// containing `hint`, nothing on stdout, no panic, and no hang.
async fn refused(args: &[&str], hint: &str) {
    refused_after(args, hint, false).await
}

/// Like [`refused`]; with `health_events`, stdout may carry health events (and nothing else).
async fn refused_after(args: &[&str], hint: &str, health_events: bool) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(BIN).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} hung"))
    .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        err.contains(hint),
        "{args:?}: stderr {err:?} should contain {hint:?}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if health_events {
        for l in stdout.lines() {
            assert!(
                l.contains("\"event\":\"health\""),
                "{args:?} printed more than health: {l}"
            );
        }
    } else {
        assert!(stdout.is_empty(), "{args:?} printed events: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_bad_input_with_a_clear_error() {
    refused(&["campaign", "--bogus"], "unexpected argument '--bogus'").await;
    refused(
        &[
            "campaign",
            "--zk",
            "127.0.0.1:2181",
            "--path",
            "/x",
            "--health-addr",
            "localhost-9090",
        ],
        "--health-addr \"localhost-9090\" is not IP:PORT",
    )
    .await;
    refused(&["campaign"], "no store given").await;
    refused(&["campaign", "--zk", "127.0.0.1:2181"], "--zk needs --path").await;
    refused(
        &["campaign", "--etcd", "http://127.0.0.1:2379"],
        "--etcd needs --prefix",
    )
    .await;
    refused(
        &["campaign", "--zk", "nohostport", "--path", "/x"],
        "has no port",
    )
    .await;
    refused(
        &["campaign", "--zk", "127.0.0.1:2181", "--path", "relative"],
        "relative",
    )
    .await;
    refused(
        &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x/"],
        "trailing",
    )
    .await;
    refused(
        &[
            "campaign",
            "--zk",
            "127.0.0.1:2181",
            "--path",
            "/x",
            "--id",
            "",
        ],
        "non-empty",
    )
    .await;
    refused(
        &[
            "campaign",
            "--zk",
            "127.0.0.1:2181",
            "--path",
            "/x",
            "--session-timeout",
            "soon",
        ],
        "not a duration",
    )
    .await;
    refused(
        &[
            "campaign",
            "--etcd",
            "ftp://127.0.0.1:2379",
            "--prefix",
            "/x",
        ],
        "ftp",
    )
    .await;
    refused(&["run", "--zk", "127.0.0.1:2181", "--path", "/x"], "CMD").await;
    let cfg = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(cfg.path(), "zk = \"127.0.0.1:2181\"\npaht = \"/x\"\n").expect("write");
    refused(
        &["campaign", "--config", cfg.path().to_str().unwrap()],
        "unknown field",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_unreachable_servers_at_start_fail_fast_with_the_reason() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let zk = format!("127.0.0.1:{port}");
    refused_after(
        &[
            "campaign",
            "--zk",
            &zk,
            "--path",
            "/x",
            "--startup-timeout",
            "2s",
        ],
        "could not join",
        true,
    )
    .await;
    let etcd = format!("http://127.0.0.1:{port}");
    refused_after(
        &[
            "campaign",
            "--etcd",
            &etcd,
            "--prefix",
            "/x",
            "--startup-timeout",
            "2s",
        ],
        "could not join",
        true,
    )
    .await;
    refused_after(
        &[
            "observe",
            "--zk",
            &zk,
            "--path",
            "/x",
            "--startup-timeout",
            "2s",
        ],
        "succession:",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reads_settings_from_a_config_file_and_the_environment() {
    let zk = shared_zk().await;
    let path = unique_path("cli-config");
    let cfg = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        cfg.path(),
        format!(
            "zk = \"{}\"\npath = \"{path}\"\nsession_timeout = \"4s\"\n",
            zk.addr()
        ),
    )
    .expect("write");
    let mut c = Cli::start_env(
        &["campaign", "--config", cfg.path().to_str().unwrap()],
        &[("SUCCESSION_ID", "from-env")],
    );
    let elected = c.until("elected").await;
    assert_eq!(field(&elected, "id"), Some("from-env"));
    c.signal(libc::SIGTERM);
    assert_eq!(c.exit_code().await, 0);
}

fn event_is(l: &str, event: &str) -> bool {
    l.contains(&format!("\"event\":\"{event}\""))
}

/// `campaign` in supervised mode with short timings (session 2 s, TTL 3 s, failover after
/// 3 s, no failback within a test), plus `extra` flags.
fn supervised_args(zk: &str, etcd: &str, path: &str, id: &str, extra: &[&str]) -> Vec<String> {
    let timings = [
        "--session-timeout",
        "2s",
        "--ttl",
        "3s",
        "--failover-after",
        "3s",
        "--failback-after",
        "120s",
    ];
    let flags: Vec<&str> = timings.iter().chain(extra).copied().collect();
    common::supervised_args(zk, etcd, path, id, &flags)
}

/// Supervised mode end to end with real processes: ZooKeeper dies, the fleet fails over to
/// etcd; the etcd-layer leader process is killed -9; another process leads through etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_supervised_fails_over_to_etcd_and_survives_a_kill9_of_the_leader() {
    let mut zk = succession_testkit::ZkServer::start()
        .await
        .expect("zookeeper");
    let etcd = shared_etcd().await;
    let path = unique_path("cli-sup");
    let args = (0..3)
        .map(|i| supervised_args(&zk.addr(), &etcd.endpoint(), &path, &format!("n{i}"), &[]))
        .collect();
    let mut fleet = Fleet::start(args);
    let (_, first) = fleet
        .until(Duration::from_secs(30), "a zk leader", |_, l| {
            event_is(l, "elected")
        })
        .await;
    assert_eq!(field(&first, "layer"), Some("zk"), "{first}");

    zk.stop().await.expect("stop ZooKeeper for good");
    let (_, fo) = fleet
        .until(Duration::from_secs(30), "failover", |_, l| {
            event_is(l, "failover")
        })
        .await;
    assert_eq!(field(&fo, "from"), Some("zk"), "{fo}");
    assert_eq!(field(&fo, "to"), Some("etcd"), "{fo}");
    let (leader, elected) = fleet
        .until(Duration::from_secs(30), "an etcd leader", |_, l| {
            event_is(l, "elected") && field(l, "layer") == Some("etcd")
        })
        .await;

    fleet.kill9(leader);
    let (next, again) = fleet
        .until(Duration::from_secs(30), "another etcd leader", |i, l| {
            i != leader && event_is(l, "elected") && field(l, "layer") == Some("etcd")
        })
        .await;
    assert_ne!(next, leader);
    let term = |l: &str| {
        field(l, "term")
            .expect("term")
            .parse::<succession::Term>()
            .expect("term")
    };
    assert!(term(&again) > term(&elected), "{again} after {elected}");
    assert!(term(&elected) > term(&first), "{elected} after {first}");
    // `joined` once per process; holding a place again after the failover is `rejoined`.
    for i in 0..3 {
        let joined = fleet
            .seen
            .iter()
            .filter(|(j, l)| *j == i && event_is(l, "joined"))
            .count();
        assert_eq!(
            joined, 1,
            "n{i} printed joined {joined} times: {:#?}",
            fleet.seen
        );
    }
    assert!(
        fleet.seen.iter().any(|(_, l)| event_is(l, "rejoined")),
        "the failover shows as rejoined: {:#?}",
        fleet.seen
    );
    fleet.stop_all().await;
}

/// `GET path` from the CLI's `--health-addr` server: (status code, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to --health-addr");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("send request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("health server answers within 10s");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (code, body.to_owned())
}

/// The sum of the samples of `name` whose labels include every pair in `labels`, from a
/// Prometheus text exposition (None when no sample matches).
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labelset, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((ls, v)) => (ls, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\"")))
        {
            let v: f64 = value.trim().parse().expect("sample value");
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The issue-7 acceptance test: two supervised CLI processes serve /healthz, /metrics and
/// /status; through one failover (ZooKeeper stopped for good) the endpoints report the
/// leader, the failover, the layer switch and a healthy leader on etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_health_and_metrics_endpoints_follow_a_failover() {
    let mut zk = succession_testkit::ZkServer::start()
        .await
        .expect("zookeeper");
    let etcd = shared_etcd().await;
    let path = unique_path("cli-health");
    let args = (0..2)
        .map(|i| {
            let id = format!("h{i}");
            let extra = ["--health-addr", "127.0.0.1:0"];
            supervised_args(&zk.addr(), &etcd.endpoint(), &path, &id, &extra)
        })
        .collect();
    let mut fleet = Fleet::start(args);
    let mut addrs: [Option<String>; 2] = [None, None];
    let mut zk_leader = None;
    while addrs.iter().any(Option::is_none) || zk_leader.is_none() {
        let (i, l) = fleet
            .until(
                Duration::from_secs(30),
                "health addresses and a zk leader",
                |_, l| event_is(l, "health_listening") || event_is(l, "elected"),
            )
            .await;
        if event_is(&l, "health_listening") {
            addrs[i] = field(&l, "addr").map(str::to_owned);
        } else {
            assert_eq!(field(&l, "layer"), Some("zk"), "{l}");
            zk_leader = Some(i);
        }
    }
    let addr = |i: usize| addrs[i].clone().expect("address");
    let l = zk_leader.expect("leader");
    let f = 1 - l;
    let sup = [("backend", "supervisor"), ("election", path.as_str())];

    // Before: the leader leads through ZooKeeper; both are live.
    let (code, body) = http_get(&addr(l), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: leading (term"), "{body}");
    let (code, body) = http_get(&addr(f), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (code, m) = http_get(&addr(l), "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(sample(&m, "succession_is_leader", &sup), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "succession_is_leader", &[("backend", "zk")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "succession_layer_active", &[("layer", "zk")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "succession_failovers_total", &[]), None, "{m}");
    assert!(m.contains("# HELP succession_is_leader"), "described: {m}");
    let (_, m) = http_get(&addr(f), "/metrics").await;
    assert_eq!(sample(&m, "succession_is_leader", &sup), Some(0.0), "{m}");

    // ZooKeeper goes away for good: the fleet fails over to etcd.
    zk.stop().await.expect("stop ZooKeeper");
    fleet
        .until(Duration::from_secs(30), "failover", |_, l| {
            event_is(l, "failover")
        })
        .await;
    let (e, _) = fleet
        .until(Duration::from_secs(30), "an etcd leader", |_, l| {
            event_is(l, "elected") && field(l, "layer") == Some("etcd")
        })
        .await;
    let (code, body) = http_get(&addr(e), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: leading (term"), "{body}");
    let (code, status) = http_get(&addr(e), "/status").await;
    assert_eq!(code, 200);
    assert!(status.contains("\"role\":\"leader\""), "{status}");
    assert!(status.contains("\"healthy\":true"), "{status}");
    let (_, m) = http_get(&addr(e), "/metrics").await;
    assert_eq!(
        sample(&m, "succession_failovers_total", &sup),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "succession_layer_active", &[("layer", "etcd")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "succession_layer_active", &[("layer", "zk")]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "succession_is_leader", &sup), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "succession_is_leader", &[("backend", "etcd")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "succession_is_leader", &[("backend", "zk")]),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(&m, "succession_layer_health", &[("layer", "zk")]).is_some_and(|h| h < 2.0),
        "the supervisor saw ZooKeeper unhealthy: {m}"
    );
    assert!(
        sample(
            &m,
            "succession_leadership_changes_total",
            &[("backend", "supervisor"), ("change", "gained")]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        sample(&m, "succession_handover_seconds_count", &sup).is_some_and(|n| n >= 1.0),
        "the takeover after the failover is timed: {m}"
    );
    // The other process saw the same failover and is live (not leading: healthy).
    let o = 1 - e;
    let (code, body) = http_get(&addr(o), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (_, m) = http_get(&addr(o), "/metrics").await;
    assert_eq!(
        sample(&m, "succession_failovers_total", &sup),
        Some(1.0),
        "{m}"
    );
    let (code, _) = http_get(&addr(o), "/nope").await;
    assert_eq!(code, 404);
    fleet.stop_all().await;
}
