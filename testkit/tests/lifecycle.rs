//! No leftover processes: drop, panic, thread exit, and a killed test process.

mod common;

use common::*;
use std::io::BufRead;
use std::time::{Duration, Instant};
use succession_testkit::{
    four_letter_word, process_alive, shared_etcd, shared_zk, unique_path, EtcdServer, ZkServer,
};

const HELPER_ENV: &str = "SUCCESSION_TESTKIT_ORPHAN_HELPER";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_outlives_the_thread_that_started_it() {
    // PDEATHSIG is per spawning THREAD: start from a thread that then exits.
    let server = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(EtcdServer::start()).unwrap()
    })
    .join()
    .unwrap();
    let pid = server.pid().unwrap();
    server.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(process_alive(pid));
    drop(server);
    assert_pid_gone(pid);
}

#[test]
fn handle_dropped_during_panic_kills_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _server = rt.block_on(EtcdServer::start()).unwrap();
        tx.send(_server.pid().unwrap()).unwrap();
        panic!("a test failing while it holds a server");
    })
    .join();
    assert!(joined.is_err(), "the thread panicked");
    let pid = rx.recv().unwrap();
    assert_pid_gone(pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_servers_are_started_once_per_binary() {
    let a = shared_zk().await;
    let b = shared_zk().await;
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.pid(), b.pid());
    let ruok = four_letter_word(a.port(), "ruok", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(ruok, "imok");
    assert!(a.last_zxid().unwrap().is_some());

    let e1 = shared_etcd().await;
    let e2 = shared_etcd().await;
    assert_eq!(e1.pid(), e2.pid());
    assert_eq!(e1.endpoint(), e2.endpoint());

    let p1 = unique_path("t");
    let p2 = unique_path("t");
    assert_ne!(p1, p2);
    assert!(p1.starts_with("/succession-test/t-"));
}

/// Run only by `children_die_when_the_test_process_is_killed`, in a child test process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: run by children_die_when_the_test_process_is_killed"]
async fn orphan_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let etcd = shared_etcd().await;
    let zk = ZkServer::start().await.unwrap();
    println!("PIDS {} {}", etcd.pid().unwrap(), zk.pid().unwrap());
    // Bounded: the parent kills this process long before.
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(zk);
}

#[test]
fn children_die_when_the_test_process_is_killed() {
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_helper", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("PIDS ") {
                let pids: Vec<u32> = rest.split(' ').map(|p| p.parse().unwrap()).collect();
                let _ = tx.send(pids);
            }
        }
    });
    let pids = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(p) => p,
        Err(e) => {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("the helper never reported its servers: {e}");
        }
    };
    assert!(pids.iter().all(|&p| process_alive(p)));

    helper.kill().unwrap(); // SIGKILL: no destructor, no atexit runs in the helper.
    helper.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while process_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "server {pid} outlived its test process"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
