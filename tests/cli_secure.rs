//! The `succession` binary against secured stores, all real servers started by testkit:
//! etcd with authentication enabled, etcd serving TLS with client certificates, ZooKeeper
//! with digest ACLs, ZooKeeper with SASL DIGEST-MD5. Each runs campaign, observe and run,
//! taking the secret once from the environment, once from a file flag and once from the
//! config file; a wrong password is one clear line and exit 2; the secret appears nowhere
//! in what the binary prints. Run with `--features cli`.

mod common;

use common::{assert_refused, field, run_to_end, secret_file, Cli, Pki};
use succession_testkit::{shared_zk, unique_path, EtcdServer, EtcdTls, ZkServer};

/// How one command gets its settings: extra flags and environment.
#[derive(Clone, Default)]
struct Via {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Via {
    fn args(a: &[&str]) -> Via {
        Via {
            args: a.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Via {
        self.env.push((k.into(), v.into()));
        self
    }

    fn start(&self, head: &[&str], tail: &[&str]) -> Cli {
        let mut args: Vec<&str> = head.to_vec();
        args.extend(self.args.iter().map(String::as_str));
        args.extend(tail);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Cli::start_env(&args, &env)
    }
}

fn assert_no_secret(c: &Cli, secret: &str, who: &str) {
    let (out, err) = (c.stdout(), c.stderr());
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "{who}: the secret appears in the output:\nstdout: {out}\nstderr: {err}"
    );
}

/// An observer, a campaigner `a` and a runner `r` on one secured election: the observer
/// reports a, then r after a resigns; r's child gets r's term; nobody prints the secret.
async fn campaign_observe_run(campaign: Via, observe: Via, run: Via, secret: &str) {
    let dir = tempfile::tempdir().unwrap();
    // The most verbose logging everywhere: the secret must not appear in any log line.
    let (mut campaign, mut observe, mut run) = (campaign, observe, run);
    for v in [&mut campaign, &mut observe, &mut run] {
        v.env.push(("RUST_LOG".into(), "trace".into()));
    }
    let mut o = observe.start(&["observe"], &[]);
    let none = o.until("leader").await;
    assert_eq!(field(&none, "leader"), Some("null"), "{none}");

    let mut a = campaign.start(&["campaign", "--id", "a"], &[]);
    let a_elected = a.until("elected").await;
    o.until_line("leader", |l| field(l, "leader") == Some("a"))
        .await;

    let out = dir.path().join("term");
    let go = dir.path().join("go");
    // The child records its term and runs until the observer has seen r lead.
    let script = format!(
        "echo \"$SUCCESSION_TERM\" > {}; while [ ! -e {} ]; do sleep 0.05; done",
        out.display(),
        go.display()
    );
    let mut r = run.start(&["run", "--id", "r"], &["--", "sh", "-c", &script]);
    r.until("joined").await;
    assert_eq!(a.stop().await, 0, "a resigns cleanly");
    let r_elected = r.until("elected").await;
    let seen_r = o
        .until_line("leader", |l| field(l, "leader") == Some("r"))
        .await;
    assert_eq!(
        field(&seen_r, "term"),
        field(&r_elected, "term"),
        "{seen_r}"
    );
    std::fs::write(&go, "").unwrap();
    r.until("closed").await;
    assert_eq!(r.exit_code().await, 0, "the child's status");
    let term = std::fs::read_to_string(&out).expect("the child ran");
    assert_eq!(Some(term.trim()), field(&r_elected, "term"));
    let parse = |l: &str| {
        field(l, "term")
            .unwrap()
            .parse::<succession::Term>()
            .unwrap()
    };
    assert!(parse(&r_elected) > parse(&a_elected), "terms grow");
    assert_eq!(o.stop().await, 0);
    for (c, who) in [(&a, "campaign"), (&r, "run"), (&o, "observe")] {
        assert!(
            c.stderr().contains("DEBUG"),
            "{who} logged at the most verbose level: {}",
            c.stderr()
        );
        assert_no_secret(c, secret, who);
    }
}

/// A wrong password: exit 2, one line saying what to check, no secret anywhere.
async fn wrong_password(args: &[&str], env: &[(&str, &str)], secret: &str, hint: &str) {
    let o = run_to_end(args, env).await;
    assert_refused("wrong password", &o, hint, true);
    eprintln!(
        "wrong password refused: {}",
        common::error_lines(&o.stderr)[0]
    );
    assert!(
        !o.stderr.contains(secret) && !o.stdout.contains(secret),
        "the wrong password is printed: {} {}",
        o.stdout,
        o.stderr
    );
}

const ETCD_PW: &str = "etcd-Pw-7f3a9";

/// etcd with authentication enabled: a root user and an `app` user allowed only on the
/// election's prefix.
async fn etcd_with_auth(prefix: &str) -> EtcdServer {
    let etcd = EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    c.user_add("root", "root-pw", None).await.unwrap();
    let _ = c.role_add("root").await;
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("app", ETCD_PW, None).await.unwrap();
    c.role_add("app-role").await.unwrap();
    c.role_grant_permission(
        "app-role",
        etcd_client::Permission::read_write(prefix).with_prefix(),
    )
    .await
    .unwrap();
    c.user_grant_role("app", "app-role").await.unwrap();
    c.auth_enable().await.unwrap();
    etcd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_observe_run_against_etcd_with_auth_secrets_from_env_file_and_config() {
    let prefix = unique_path("cli-etcd-auth");
    let etcd = etcd_with_auth(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let ep = etcd.endpoint();
    let store = [
        "--etcd",
        ep.as_str(),
        "--prefix",
        prefix.as_str(),
        "--ttl",
        "3s",
    ];
    let campaign = Via::args(&store)
        .env("SUCCESSION_ETCD_USER", "app")
        .env("SUCCESSION_ETCD_PASSWORD", ETCD_PW);
    let pw_file = secret_file(dir.path(), "pw", &format!("{ETCD_PW}\n"));
    let mut observe = Via::args(&store);
    observe
        .args
        .extend(["--etcd-user", "app", "--etcd-password-file", &pw_file].map(String::from));
    let cfg = dir.path().join("succession.toml");
    std::fs::write(
        &cfg,
        format!(
            "etcd = \"{ep}\"\nprefix = \"{prefix}\"\nttl = \"3s\"\netcd_user = \"app\"\netcd_password_file = \"{pw_file}\"\n"
        ),
    )
    .unwrap();
    let run = Via::args(&["--config", cfg.to_str().unwrap()]);
    campaign_observe_run(campaign, observe, run, ETCD_PW).await;

    let wrong = "WRONG-etcd-pw-55";
    let mut args = vec!["campaign"];
    args.extend(store);
    args.extend(["--etcd-user", "app", "--startup-timeout", "5s"]);
    wrong_password(
        &args,
        &[("SUCCESSION_ETCD_PASSWORD", wrong)],
        wrong,
        "cannot join the election: ",
    )
    .await;
    let mut args = vec!["observe"];
    args.extend(store);
    args.extend(["--etcd-user", "app", "--startup-timeout", "5s"]);
    wrong_password(
        &args,
        &[("SUCCESSION_ETCD_PASSWORD", wrong)],
        wrong,
        "cannot read the election: ",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_observe_run_against_etcd_with_tls_and_client_certificates() {
    let pki = Pki::new();
    let etcd = EtcdServer::start_tls(EtcdTls {
        cert_pem_path: pki.path("server.pem"),
        key_pem_path: pki.path("server-key.pem"),
        client_ca_path: Some(pki.path("ca.pem")),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let prefix = unique_path("cli-etcd-tls");
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"), "{ep}");
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client-key.pem"),
    );
    let store = [
        "--etcd",
        ep.as_str(),
        "--prefix",
        prefix.as_str(),
        "--ttl",
        "3s",
    ];
    let mut campaign = Via::args(&store);
    campaign
        .args
        .extend(["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key].map(String::from));
    // Through the environment, checking the name `localhost` in the server certificate.
    let observe = Via::args(&store)
        .env("SUCCESSION_ETCD_CA", &ca)
        .env("SUCCESSION_ETCD_CERT", &cert)
        .env("SUCCESSION_ETCD_KEY", &key)
        .env("SUCCESSION_ETCD_SERVER_NAME", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("succession.toml");
    std::fs::write(
        &cfg,
        format!(
            "etcd = \"{ep}\"\nprefix = \"{prefix}\"\nttl = \"3s\"\netcd_ca = \"{ca}\"\netcd_cert = \"{cert}\"\netcd_key = \"{key}\"\n"
        ),
    )
    .unwrap();
    let run = Via::args(&["--config", cfg.to_str().unwrap()]);
    // The private key's PEM body must never be printed.
    let key_pem = std::fs::read_to_string(pki.path("client-key.pem")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap().to_string();
    campaign_observe_run(campaign, observe, run, &key_line).await;

    // Without the client certificate the server refuses the connection: one line, exit 2.
    let o = run_to_end(
        &[
            "campaign",
            "--etcd",
            &ep,
            "--prefix",
            &prefix,
            "--etcd-ca",
            &ca,
            "--startup-timeout",
            "3s",
        ],
        &[],
    )
    .await;
    assert_refused(
        "no client certificate",
        &o,
        // How the server refuses varies (an alert, or a closed TLS 1.3 connection); both
        // hints name the flags.
        "--etcd-cert",
        true,
    );
    eprintln!(
        "no client certificate: {}",
        common::error_lines(&o.stderr)[0]
    );
}

const DIGEST_PW: &str = "zk-Digest-pw-91c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_observe_run_against_zookeeper_with_digest_acls() {
    let zk = shared_zk().await;
    let path = unique_path("cli-zk-digest");
    let addr = zk.addr();
    let store = ["--zk", addr.as_str(), "--path", path.as_str()];
    let digest = format!("app:{DIGEST_PW}");
    let campaign = Via::args(&store).env("SUCCESSION_ZK_DIGEST", &digest);
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "digest", &format!("{digest}\n"));
    let mut observe = Via::args(&store);
    observe
        .args
        .extend(["--zk-digest-file", &file].map(String::from));
    let cfg = dir.path().join("succession.toml");
    std::fs::write(
        &cfg,
        format!("zk = \"{addr}\"\npath = \"{path}\"\nzk_digest_file = \"{file}\"\n"),
    )
    .unwrap();
    let run = Via::args(&["--config", cfg.to_str().unwrap()]);

    // Start a, check the ACL of its node names the digest identity, then the scenario.
    let mut a = campaign.start(&["campaign", "--id", "acl-probe"], &[]);
    a.until("elected").await;
    let admin = zookeeper_client::Client::connect(&addr)
        .await
        .expect("admin");
    let kids = admin.list_children(&path).await.expect("children");
    let (acl, _) = admin
        .get_acl(&format!("{path}/{}", kids[0]))
        .await
        .expect("acl");
    assert!(
        acl.iter()
            .any(|a| a.scheme() == "digest" && a.id().starts_with("app:")),
        "the latch node belongs to the digest identity: {acl:?}"
    );
    assert_eq!(a.stop().await, 0);
    assert_no_secret(&a, DIGEST_PW, "campaign");
    campaign_observe_run(campaign, observe, run, DIGEST_PW).await;

    // A participant with the wrong password holds the path open for the next one.
    let mut holder = Cli::start_env(
        &["campaign", "--zk", &addr, "--path", &path, "--id", "holder"],
        &[("SUCCESSION_ZK_DIGEST", &digest)],
    );
    holder.until("elected").await;
    let wrong = "WRONG-digest-pw-13";
    wrong_password(
        &[
            "campaign",
            "--zk",
            &addr,
            "--path",
            &path,
            "--startup-timeout",
            "5s",
        ],
        &[("SUCCESSION_ZK_DIGEST", &format!("app:{wrong}"))],
        wrong,
        "check the credentials (--zk-digest-file (or SUCCESSION_ZK_DIGEST) or --zk-sasl-user with its password)",
    )
    .await;
    assert_eq!(holder.stop().await, 0);
}

const SASL_PW: &str = "zk-Sasl-pw-4d2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_campaign_observe_run_against_zookeeper_with_sasl() {
    let zk = ZkServer::start_with_sasl(&[("app", SASL_PW)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let path = unique_path("cli-zk-sasl");
    let addr = zk.addr();
    let store = ["--zk", addr.as_str(), "--path", path.as_str()];
    let campaign = Via::args(&store)
        .env("SUCCESSION_ZK_SASL_USER", "app")
        .env("SUCCESSION_ZK_SASL_PASSWORD", SASL_PW);
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "pw", SASL_PW);
    let mut observe = Via::args(&store);
    observe
        .args
        .extend(["--zk-sasl-user", "app", "--zk-sasl-password-file", &file].map(String::from));
    let cfg = dir.path().join("succession.toml");
    std::fs::write(
        &cfg,
        format!(
            "zk = \"{addr}\"\npath = \"{path}\"\nzk_sasl_user = \"app\"\nzk_sasl_password = \"{SASL_PW}\"\n"
        ),
    )
    .unwrap();
    let run = Via::args(&["--config", cfg.to_str().unwrap()]);
    campaign_observe_run(campaign, observe, run, SASL_PW).await;

    let wrong = "WRONG-sasl-pw-77";
    for sub in ["campaign", "observe"] {
        wrong_password(
            &[
                sub,
                "--zk",
                &addr,
                "--path",
                &path,
                "--zk-sasl-user",
                "app",
                "--startup-timeout",
                "5s",
            ],
            &[("SUCCESSION_ZK_SASL_PASSWORD", wrong)],
            wrong,
            "rejected the credentials; fix --zk-digest-file (or SUCCESSION_ZK_DIGEST) or --zk-sasl-user with its password",
        )
        .await;
    }
}
