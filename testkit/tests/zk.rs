//! ZooKeeper servers and ensembles: every operation against the real server.

mod common;

use common::*;
use std::time::{Duration, Instant};
use succession_testkit::{Error, ZkEnsemble, ZkServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_start_serves_and_drop_kills_process() {
    let zk = ZkServer::start().await.unwrap();
    let pid = zk.pid().expect("running");
    assert!(succession_testkit::process_alive(pid));
    assert_eq!(zk.addr(), format!("127.0.0.1:{}", zk.port()));
    assert_eq!(zk.mode().unwrap().as_deref(), Some("standalone"));

    let client = zk_connect(&zk.addr()).await;
    client
        .create("/hello", b"world", &persistent())
        .await
        .unwrap();
    assert_eq!(client.get_data("/hello").await.unwrap().0, b"world");
    // The server clamps sessions to [1 s, 30 s]: a 1 s session must be accepted as is.
    let short = zk_connect_with(&zk.addr(), Duration::from_secs(1)).await;
    assert_eq!(short.session_timeout(), Duration::from_secs(1));
    drop(short);
    drop(client);

    let data_dir = zk.data_dir().to_path_buf();
    drop(zk);
    assert_pid_gone(pid);
    assert!(!data_dir.exists(), "temp dir removed on drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_kill9_then_restart_keeps_data() {
    let mut zk = ZkServer::start().await.unwrap();
    let port = zk.port();
    let old_pid = zk.pid().unwrap();
    {
        let client = zk_connect(&zk.addr()).await;
        client.create("/kept", b"v1", &persistent()).await.unwrap();
    }
    zk.kill().await.unwrap();
    assert_eq!(zk.pid(), None);
    assert_pid_gone(old_pid);
    assert_eq!(
        zk.last_zxid().unwrap(),
        None,
        "a killed server answers nothing"
    );

    zk.restart().await.unwrap();
    assert_eq!(zk.port(), port, "same port after restart");
    assert_ne!(zk.pid(), Some(old_pid));
    let client = zk_connect(&zk.addr()).await;
    assert_eq!(client.get_data("/kept").await.unwrap().0, b"v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_wipe_restart_comes_back_empty() {
    let mut zk = ZkServer::start().await.unwrap();
    {
        let client = zk_connect(&zk.addr()).await;
        for p in ["/a", "/b", "/c"] {
            client.create(p, b"x", &persistent()).await.unwrap();
        }
    }
    let before = zk.last_zxid().unwrap().expect("serving");
    assert!(before > 0);
    assert!(
        matches!(zk.wipe(), Err(Error::StillRunning { .. })),
        "wipe of a running server is refused"
    );

    zk.stop().await.unwrap();
    assert_eq!(zk.pid(), None);
    zk.wipe().unwrap();
    zk.restart().await.unwrap();

    let after = zk.last_zxid().unwrap().expect("serving");
    assert!(after < before, "zxid went back: {after:#x} < {before:#x}");
    let client = zk_connect(&zk.addr()).await;
    assert_eq!(client.check_stat("/a").await.unwrap(), None, "/a is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_freeze_blocks_requests_and_thaw_resumes() {
    let zk = ZkServer::start().await.unwrap();
    let client = zk_connect(&zk.addr()).await;
    client.create("/f", b"frozen", &persistent()).await.unwrap();

    zk.freeze().unwrap();
    let pid = zk.pid().expect("a frozen server still runs");
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(1500), client.get_data("/f")).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a frozen server answered: {r:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(zk.last_zxid().unwrap(), None, "srvr gets no answer");
    assert_eq!(zk.pid(), Some(pid));

    zk.thaw().unwrap();
    let data = eventually("a read after thaw", Duration::from_secs(20), || async {
        tokio::time::timeout(Duration::from_secs(2), client.get_data("/f"))
            .await
            .ok()?
            .ok()
    })
    .await;
    assert_eq!(data.0, b"frozen");
    assert!(zk.last_zxid().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_ensemble_serves_with_one_node_down() {
    let mut ens = ZkEnsemble::start(3).await.unwrap();
    assert_eq!(ens.len(), 3);
    assert_eq!(ens.connect_string().split(',').count(), 3);
    let leader = ens.leader().expect("a leader");
    let modes: Vec<_> = (0..3).map(|i| ens.node(i).mode().unwrap()).collect();
    assert_eq!(
        modes
            .iter()
            .filter(|m| m.as_deref() == Some("follower"))
            .count(),
        2,
        "{modes:?}"
    );

    let client = zk_connect(&ens.connect_string()).await;
    client.create("/before", b"1", &persistent()).await.unwrap();

    // Take the leader away: the two others elect a new one and keep serving.
    let dead_pid = ens.node(leader).pid().unwrap();
    ens.node(leader).kill().await.unwrap();
    assert_pid_gone(dead_pid);
    ens.wait_quorum(Duration::from_secs(30)).await.unwrap();

    eventually(
        "a write with one node down",
        Duration::from_secs(30),
        || async {
            match tokio::time::timeout(
                Duration::from_secs(3),
                client.create("/after", b"2", &persistent()),
            )
            .await
            {
                Ok(Ok(_)) | Ok(Err(zookeeper_client::Error::NodeExists)) => Some(()),
                _ => None,
            }
        },
    )
    .await;

    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| ens.node(i).addr())
        .collect();
    let other = zk_connect(&survivors.join(",")).await;
    assert_eq!(other.get_data("/after").await.unwrap().0, b"2");
    assert_eq!(other.get_data("/before").await.unwrap().0, b"1");

    // The killed peer comes back on its ports and rejoins as a follower.
    ens.node(leader).restart().await.unwrap();
    assert_eq!(
        ens.node(leader).mode().unwrap().as_deref(),
        Some("follower")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_ensemble_wipe_all_restart_all_comes_back_empty() {
    let mut ens = ZkEnsemble::start(3).await.unwrap();
    {
        let client = zk_connect(&ens.connect_string()).await;
        client.create("/old", b"x", &persistent()).await.unwrap();
    }
    assert!(matches!(
        ens.wipe_all().await,
        Err(Error::StillRunning { .. })
    ));
    ens.stop_all().await.unwrap();
    assert!((0..3).all(|i| ens.node(i).pid().is_none()));
    ens.wipe_all().await.unwrap();
    ens.restart_all().await.unwrap();
    assert!(ens.leader().is_some());
    let client = zk_connect(&ens.connect_string()).await;
    assert_eq!(client.check_stat("/old").await.unwrap(), None);
    ens.kill_all().await.unwrap();
    assert!((0..3).all(|i| ens.node(i).pid().is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_restart_on_a_taken_port_fails_with_the_log_tail() {
    let mut zk = ZkServer::start().await.unwrap();
    zk.stop().await.unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", zk.port())).unwrap();
    let err = zk.restart().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::StartFailed { .. }), "{msg}");
    assert!(msg.contains("Address already in use"), "{msg}");
    assert_eq!(zk.pid(), None);
    drop(squatter);
    zk.restart().await.unwrap();
    assert!(zk.last_zxid().unwrap().is_some());
}

/// The JVM's command line, NUL-separated arguments joined with spaces.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_sasl_server_gets_jaas_and_provider_across_restarts_and_cleans_up() {
    assert!(
        matches!(
            ZkServer::start_with_sasl(&[("bad name", "pw")]).await,
            Err(Error::InvalidArgument(_))
        ),
        "a name that would break the JAAS file is refused"
    );
    let mut zk = ZkServer::start_with_sasl(&[("svc", "pw-1"), ("other", "pw-2")])
        .await
        .unwrap();
    let dir = zk.data_dir().parent().expect("temp dir").to_path_buf();
    let jaas = dir.join("jaas.conf");
    let text = std::fs::read_to_string(&jaas).unwrap();
    assert!(
        text.starts_with("Server {")
            && text.contains("org.apache.zookeeper.server.auth.DigestLoginModule required")
            && text.contains("user_svc=\"pw-1\"")
            && text.contains("user_other=\"pw-2\""),
        "{text}"
    );
    let cfg = std::fs::read_to_string(dir.join("zoo.cfg")).unwrap();
    assert!(
        cfg.contains(
            "authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"
        ),
        "{cfg}"
    );
    let flag = format!("-Djava.security.auth.login.config={}", jaas.display());
    let pid = zk.pid().unwrap();
    assert!(cmdline(pid).contains(&flag), "{}", cmdline(pid));

    // Clients without SASL are still served.
    let client = zk_connect(&zk.addr()).await;
    client.create("/plain", b"ok", &persistent()).await.unwrap();
    drop(client);

    zk.restart().await.unwrap();
    let pid = zk.pid().unwrap();
    assert!(cmdline(pid).contains(&flag), "a restart keeps SASL on");
    let client = zk_connect(&zk.addr()).await;
    assert_eq!(client.get_data("/plain").await.unwrap().0, b"ok");
    drop(client);

    drop(zk);
    assert_pid_gone(pid);
    assert!(
        !dir.exists(),
        "temp dir (with the JAAS file) removed on drop"
    );
}
