//! What a user reads from the `succession` binary: every bad input refused with one line
//! naming what to fix (exit 2), and no colour escapes unless stderr is a terminal without
//! NO_COLOR. Run with `--features cli`.

mod common;

use common::{assert_refused, run_to_end, Outcome, BIN};

/// Every duration flag with the subcommand and base arguments it needs.
fn duration_flags() -> Vec<(&'static str, Vec<&'static str>)> {
    let zk = vec!["campaign", "--zk", "127.0.0.1:2181", "--path", "/x"];
    vec![
        ("--session-timeout", zk.clone()),
        ("--ttl", zk.clone()),
        ("--failover-after", zk.clone()),
        ("--failback-after", zk.clone()),
        ("--startup-timeout", zk.clone()),
        ("--health-tolerance", zk.clone()),
        (
            "--interval",
            vec!["observe", "--zk", "127.0.0.1:2181", "--path", "/x"],
        ),
        (
            "--grace",
            vec!["run", "--zk", "127.0.0.1:2181", "--path", "/x"],
        ),
    ]
}

struct Case {
    what: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    hint: String,
    /// Text that must not appear anywhere in the output (a secret).
    absent: Option<&'static str>,
    health_ok: bool,
}

fn case(what: &str, args: &[&str], hint: &str) -> Case {
    Case {
        what: what.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        hint: hint.into(),
        absent: None,
        health_ok: false,
    }
}

async fn check(c: &Case) -> Result<(), String> {
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = c
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let o: Outcome = run_to_end(&args, &env).await;
    let what = c.what.clone();
    let absent = c.absent;
    let hint = c.hint.clone();
    let health_ok = c.health_ok;
    std::panic::catch_unwind(move || {
        assert_refused(&what, &o, &hint, health_ok);
        if let Some(secret) = absent {
            assert!(
                !o.stderr.contains(secret) && !o.stdout.contains(secret),
                "{what}: the secret appears in the output: {}",
                o.stderr
            );
        }
    })
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_every_bad_input_with_one_line_naming_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    // Durations: negative, zero, garbage, for every flag.
    for (flag, base) in duration_flags() {
        for (value, rule) in [
            ("-1s", "-1s is negative; give a positive duration such as"),
            ("0s", "0s is zero; give a positive duration such as"),
            ("soon", "'soon' is not a duration"),
            ("5", "'5' is not a duration"),
        ] {
            let mut args = base.clone();
            args.extend([flag, value]);
            if base[0] == "run" {
                args.extend(["--", "true"]);
            }
            cases.push(case(
                &format!("{flag} {value}"),
                &args,
                &format!("{flag}: {rule}"),
            ));
        }
    }
    // The same through the environment and the config file.
    let mut c = case(
        "SUCCESSION_TTL=-2s",
        &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x"],
        "--ttl: -2s is negative",
    );
    c.env.push(("SUCCESSION_TTL".into(), "-2s".into()));
    cases.push(c);
    for key in [
        "session_timeout",
        "ttl",
        "failover_after",
        "failback_after",
        "startup_timeout",
        "health_tolerance",
    ] {
        for (value, rule) in [("-3s", "is negative"), ("0ms", "is zero")] {
            let p = dir.path().join(format!("{key}-{value}.toml"));
            std::fs::write(
                &p,
                format!("zk = \"127.0.0.1:2181\"\npath = \"/x\"\n{key} = \"{value}\"\n"),
            )
            .unwrap();
            cases.push(case(
                &format!("config {key} = {value}"),
                &["campaign", "--config", p.to_str().unwrap()],
                &format!("config file {}: {key}: {value} {rule}", p.display()),
            ));
        }
    }
    let zk = ["campaign", "--zk", "127.0.0.1:2181", "--path", "/x"];
    let with =
        |extra: &[&str]| -> Vec<String> { zk.iter().chain(extra).map(|s| s.to_string()).collect() };
    let mut more = vec![
        case("unknown flag", &["campaign", "--bogus"], "unexpected argument '--bogus' found"),
        case("no subcommand argument", &["campaign"], "no store given"),
        case("zk without path", &["campaign", "--zk", "127.0.0.1:2181"], "--zk needs --path"),
        case("etcd without prefix", &["campaign", "--etcd", "http://127.0.0.1:2379"], "--etcd needs --prefix"),
        case("zk without port", &["campaign", "--zk", "nohostport", "--path", "/x"], "has no port"),
        case("etcd scheme", &["campaign", "--etcd", "ftp://127.0.0.1:2379", "--prefix", "/x"], "unsupported scheme \"ftp\""),
        case("etcd garbage endpoint", &["campaign", "--etcd", "http://", "--prefix", "/x"], "etcd endpoint"),
        case("relative path", &["campaign", "--zk", "127.0.0.1:2181", "--path", "services/x"], "--path \"services/x\" is relative"),
        case("relative prefix", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "x"], "--prefix \"x\" is relative"),
        case("trailing slash", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x/"], "ends with '/'"),
        case("empty id", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--id", ""], "--id is empty"),
        case("blank id", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--id", "  "], "--id is empty"),
        case("ttl not whole seconds", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "/x", "--ttl", "1500ms"], "--ttl: 1s 500ms is not whole seconds"),
        case("health addr", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--health-addr", "localhost-9090"], "--health-addr \"localhost-9090\" is not IP:PORT"),
        case("run without command", &["run", "--zk", "127.0.0.1:2181", "--path", "/x"], "<CMD>"),
        case("strict mode without supervision", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--strict-mode-lease"], "supervised mode only"),
        case("etcd user without password", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "/x", "--etcd-user", "root"], "--etcd-user needs a password: set SUCCESSION_ETCD_PASSWORD or give --etcd-password-file"),
        case("sasl user without password", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--zk-sasl-user", "app"], "--zk-sasl-user needs a password"),
        case("cert without key", &["campaign", "--etcd", "https://127.0.0.1:2379", "--prefix", "/x", "--etcd-cert", "/nonexistent.pem"], "--etcd-cert needs --etcd-key"),
        case("missing CA file", &["campaign", "--etcd", "https://127.0.0.1:2379", "--prefix", "/x", "--etcd-ca", "/nonexistent/ca.pem"], "cannot read --etcd-ca /nonexistent/ca.pem"),
        case("missing password file", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "/x", "--etcd-user", "root", "--etcd-password-file", "/nonexistent/pw"], "cannot read --etcd-password-file /nonexistent/pw"),
        case("zk auth without zk", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "/x", "--zk-digest-file", &common::secret_file(dir.path(), "digest", "app:pw\n")], "ZooKeeper authentication was given without --zk"),
        case("digest without colon", &["campaign", "--zk", "127.0.0.1:2181", "--path", "/x", "--zk-digest-file", &common::secret_file(dir.path(), "bad-digest", "nocolon-S3CRET\n")], "must be user:password"),
        case("empty password file", &["campaign", "--etcd", "http://127.0.0.1:2379", "--prefix", "/x", "--etcd-user", "root", "--etcd-password-file", &common::secret_file(dir.path(), "empty", "")], "is empty"),
    ];
    let n = more.len();
    more[n - 2].absent = Some("S3CRET");
    cases.append(&mut more);
    // A secret in the config file that is not a string: the error does not quote it.
    let bad_secret = dir.path().join("bad-secret.toml");
    std::fs::write(
        &bad_secret,
        "etcd = \"http://127.0.0.1:2379\"\nprefix = \"/x\"\netcd_user = \"a\"\netcd_password = 98765432123\n",
    )
    .unwrap();
    let mut c = case(
        "config secret not a string",
        &["campaign", "--config", bad_secret.to_str().unwrap()],
        "line 4: the value of etcd_password is not valid; write it as a quoted string",
    );
    c.absent = Some("98765432123");
    cases.push(c);
    // Secrets as plain flag values: refused, naming the alternatives, never echoed.
    for (flag, env, file) in [
        (
            "--etcd-password",
            "SUCCESSION_ETCD_PASSWORD",
            "--etcd-password-file",
        ),
        ("--zk-digest", "SUCCESSION_ZK_DIGEST", "--zk-digest-file"),
        (
            "--zk-sasl-password",
            "SUCCESSION_ZK_SASL_PASSWORD",
            "--zk-sasl-password-file",
        ),
    ] {
        for form in ["space", "equals"] {
            let secret = "pl41n-S3CRET";
            let args = match form {
                "space" => with(&[flag, secret]),
                _ => with(&[&format!("{flag}={secret}")]),
            };
            cases.push(Case {
                what: format!("{flag} as a plain flag ({form})"),
                args,
                env: Vec::new(),
                hint: format!("{flag} would show the secret to anyone running ps; set {env} or give a file with {file} instead"),
                absent: Some(secret),
                health_ok: false,
            });
        }
    }
    // Unreachable servers: refused after --startup-timeout with the reason.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let zk_dead = format!("127.0.0.1:{port}");
    let etcd_dead = format!("http://127.0.0.1:{port}");
    for (what, args, hint) in [
        (
            "unreachable ZooKeeper",
            vec!["campaign", "--zk", &zk_dead, "--path", "/x"],
            "could not join the election within 2s (--startup-timeout)",
        ),
        (
            "unreachable etcd",
            vec!["campaign", "--etcd", &etcd_dead, "--prefix", "/x"],
            "could not join the election within 2s (--startup-timeout)",
        ),
        (
            "observe unreachable ZooKeeper",
            vec!["observe", "--zk", &zk_dead, "--path", "/x"],
            "could not read the election within 2s (--startup-timeout)",
        ),
        (
            "observe unreachable etcd",
            vec!["observe", "--etcd", &etcd_dead, "--prefix", "/x"],
            "could not read the election within 2s (--startup-timeout)",
        ),
    ] {
        let mut args = args;
        args.extend(["--startup-timeout", "2s"]);
        let mut c = case(what, &args, hint);
        c.health_ok = true;
        cases.push(c);
    }

    // Run them a few at a time (2 cores shared).
    let mut failures = Vec::new();
    for chunk in cases.chunks(8) {
        let results = futures::future::join_all(chunk.iter().map(check)).await;
        failures.extend(results.into_iter().filter_map(|r| r.err()));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Log lines go to stderr; with stderr a file (a log file, journald, a container log) they
/// carry no escape codes, also at debug level where every subsystem logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logs_to_a_file_carry_no_escape_codes() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let zk = format!("127.0.0.1:{port}");
    let o = run_to_end(
        &[
            "campaign",
            "--zk",
            &zk,
            "--path",
            "/x",
            "--startup-timeout",
            "2s",
        ],
        &[("RUST_LOG", "debug")],
    )
    .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("DEBUG") || o.stderr.contains("WARN"),
        "log lines were written: {}",
        o.stderr
    );
    assert!(
        !o.stderr.contains('\u{1b}'),
        "escape codes in a log file: {:?}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains(&format!("succession: joining /x on ZooKeeper {zk} as ")),
        "the joining line is in words: {}",
        o.stderr
    );
    assert!(!o.stderr.contains("Zk {"), "no Debug output: {}", o.stderr);
}

/// On a terminal (a pseudo-terminal from `script`), log lines are coloured, and NO_COLOR
/// turns that off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_colours_only_on_a_terminal_and_honours_no_color() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let cmd = format!("{BIN} campaign --zk 127.0.0.1:{port} --path /x --startup-timeout 2s");
    let on_tty = move |no_color: Option<&str>| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("run script(1) (util-linux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = tokio::task::spawn_blocking(move || {
        let coloured = on_tty(None);
        let plain = on_tty(Some("1"));
        (coloured, plain)
    })
    .await
    .unwrap();
    let (coloured, plain) = coloured;
    assert!(
        coloured.contains("DEBUG") || coloured.contains("WARN"),
        "logs on the terminal: {coloured}"
    );
    assert!(
        coloured.contains("\u{1b}["),
        "a terminal gets colours: {coloured:?}"
    );
    assert!(
        plain.contains("DEBUG") || plain.contains("WARN"),
        "logs on the terminal: {plain}"
    );
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR=1 on a terminal: no escapes: {plain:?}"
    );
}

/// `succession completions bash|zsh|fish` and `succession man` come from the clap
/// definition: they name the subcommands and the new flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_generates_completions_and_a_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run_to_end(&["completions", shell], &[]).await;
        assert_eq!(o.code, 0, "{shell}: {}", o.stderr);
        for word in [
            "campaign",
            "observe",
            "etcd-password-file",
            "strict-mode-lease",
        ] {
            assert!(o.stdout.contains(word), "{shell} completion lacks {word}");
        }
        assert!(
            !o.stdout.contains("--etcd-password "),
            "{shell}: the refused plain secret flag is not offered"
        );
    }
    let o = run_to_end(&["man"], &[]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with(".ie") || o.stdout.contains(".TH succession 1"));
    for word in [
        "SUCCESSION CAMPAIGN",
        "SUCCESSION OBSERVE",
        "SUCCESSION RUN",
        "strict\\-mode\\-lease",
        "etcd\\-ca",
    ] {
        assert!(o.stdout.contains(word), "man page lacks {word}");
    }
}
