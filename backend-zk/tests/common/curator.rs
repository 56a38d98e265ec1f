//! A real Apache Curator LeaderLatch (Java, Debian's libcurator-recipes-java 5.4.0) driven
//! over stdin/stdout, for the interop tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use succession_testkit::{curator_classpath, java_bin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

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

pub struct Curator {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Curator {
    pub async fn start(connect: &str, path: &str, id: &str) -> Curator {
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

    pub async fn expect(&mut self, want: &str) {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("Curator did not print {want:?} in time"))
            .expect("read")
            .unwrap_or_else(|| panic!("Curator exited before printing {want:?}"));
        assert_eq!(line, want, "Curator said {line:?}, expected {want:?}");
    }

    pub async fn send(&mut self, cmd: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
    }

    pub async fn close(mut self) {
        self.send("close").await;
        self.expect("closed").await;
        let _ = self.child.wait().await;
    }
}
