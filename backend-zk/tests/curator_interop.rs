//! Interop with a real Apache Curator LeaderLatch (Java, Debian's libcurator-recipes-java
//! 5.4.0): Rust and Java participants share one latch path, one leader among all, and
//! leadership hands over both ways.
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{joined, participant};
use succession_core::conformance::LeadershipChecker;
use succession_core::{Election, ElectionExt};
use succession_testkit::{curator_classpath, java_bin, unique_path};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const SESSION: Duration = Duration::from_secs(6);

/// Compile the Java helper once per test binary.
async fn compiled() -> (String, PathBuf) {
    static DIR: tokio::sync::OnceCell<(String, PathBuf)> = tokio::sync::OnceCell::const_new();
    DIR.get_or_init(|| async {
        let cp = curator_classpath().expect("Curator jars (run scripts/install-deps)");
        let out = std::env::temp_dir().join(format!("succession-curator-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("class dir");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/java/CuratorLatch.java");
        let javac = java_bin()
            .expect("java (run scripts/install-deps)")
            .with_file_name("javac");
        let status = Command::new(&javac)
            .arg("-cp")
            .arg(&cp)
            .arg("-d")
            .arg(&out)
            .arg(&src)
            .status()
            .await
            .unwrap_or_else(|e| panic!("run {}: {e} (run scripts/install-deps)", javac.display()));
        assert!(status.success(), "javac failed on {}", src.display());
        (cp, out)
    })
    .await
    .clone()
}

struct Curator {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Curator {
    async fn start(connect: &str, path: &str, id: &str) -> Curator {
        let (cp, dir) = compiled().await;
        let mut child = Command::new(java_bin().expect("java"))
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-cp")
            .arg(format!("{cp}:{}", dir.display()))
            .arg("CuratorLatch")
            .args([connect, path, id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Curator helper");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut c = Curator { child, lines };
        c.expect("started").await;
        c
    }

    async fn expect(&mut self, want: &str) {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("Curator did not print {want:?} in time"))
            .expect("read")
            .unwrap_or_else(|| panic!("Curator exited before printing {want:?}"));
        assert_eq!(line, want, "Curator said {line:?}, expected {want:?}");
    }

    async fn send(&mut self, cmd: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
    }

    async fn close(mut self) {
        self.send("close").await;
        self.expect("closed").await;
        let _ = self.child.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_curator_and_rust_share_one_latch_and_hand_over_both_ways() {
    let zk = succession_testkit::shared_zk().await;
    let path = unique_path("curator");
    let checker = LeadershipChecker::new();

    // Java first: it leads; the Rust participants queue behind it and see it as leader.
    let mut java = Curator::start(&zk.addr(), &path, "java-1").await;
    java.expect("leader").await;
    let rust = joined(&zk.addr(), &path, 2, SESSION, &checker).await;
    for r in &rust {
        assert!(
            !r.is_leader(),
            "{} must not lead while Curator does",
            r.id()
        );
    }
    let leader = rust[0]
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(leader.id, "java-1", "we read Curator's participant id");
    assert_eq!(
        leader.term, None,
        "Curator never claims, so no term is reported for its leader"
    );
    let ids: Vec<String> = rust[0]
        .participants()
        .await
        .expect("participants")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec!["java-1", "p0", "p1"]);

    // Java -> Rust.
    java.close().await;
    rust[0]
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("p0 leads after Curator closed");

    // A second Curator queues behind p1; Rust -> Rust -> Java.
    let mut java2 = Curator::start(&zk.addr(), &path, "java-2").await;
    java2.send("status").await;
    java2.expect("not-leader").await;
    rust[0].close().await.expect("close p0");
    let p1 = rust[1]
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("p1 leads");
    let read = rust[1].leader().await.expect("leader").expect("p1 leads");
    assert_eq!(
        (read.id.as_str(), read.term),
        ("p1", Some(p1.term())),
        "leader() reports the claimed term of the leader"
    );
    java2.send("status").await;
    java2.expect("not-leader").await;
    rust[1].close().await.expect("close p1");
    java2.expect("leader").await;
    let observer = participant(&zk.addr(), &path, "observer", SESSION);
    assert_eq!(
        observer
            .leader()
            .await
            .expect("leader")
            .map(|p| (p.id, p.term)),
        Some(("java-2".to_string(), None)),
        "p1's claim is not reported as the term of the Curator leader after it"
    );
    java2.close().await;
    observer.close().await.expect("close");
    checker.assert_ok();
}
