//! Finding the binaries and jars; clear errors when they are missing.

mod common;

use std::path::Path;
use std::time::Duration;
use succession_testkit::{
    curator_classpath, etcd_bin, etcdctl_bin, find_binary, find_curator_classpath,
    find_zk_classpath, java_bin, shared_etcd, shared_zk, unique_path, zk_classpath, Error,
};

#[test]
fn missing_binary_error_mentions_install_deps() {
    let err = find_binary("etcd", Some(Path::new("/nonexistent/etcd"))).unwrap_err();
    assert!(matches!(err, Error::MissingDependency { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("run scripts/install-deps"), "{msg}");
    assert!(msg.contains("/nonexistent/etcd"), "{msg}");
    assert!(msg.contains("etcd"), "{msg}");

    let err = find_binary("no-such-binary-succession", None).unwrap_err();
    assert!(err.to_string().contains("scripts/install-deps"), "{err}");
}

#[test]
fn missing_jar_error_names_the_jar_and_install_deps() {
    let dir = Path::new("/nonexistent-java-dir");
    let msg = find_zk_classpath(None, dir).unwrap_err().to_string();
    assert!(msg.contains("zookeeper.jar"), "{msg}");
    assert!(msg.contains("run scripts/install-deps"), "{msg}");

    // ZooKeeper jars present but no Curator: the error names the first Curator jar.
    let tmp = tempfile::tempdir().unwrap();
    for jar in ["zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar"] {
        std::fs::write(tmp.path().join(jar), b"").unwrap();
    }
    let msg = find_curator_classpath(None, None, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("curator-client.jar"), "{msg}");
    assert!(msg.contains("run scripts/install-deps"), "{msg}");

    // Overrides are taken verbatim.
    assert_eq!(find_zk_classpath(Some("/x.jar"), dir).unwrap(), "/x.jar");
}

#[test]
fn installed_dependencies_are_found() {
    for bin in [java_bin(), etcd_bin(), etcdctl_bin()] {
        let bin = bin.unwrap();
        assert!(bin.is_file(), "{}", bin.display());
    }
    let zk = zk_classpath().unwrap();
    assert!(zk.contains("zookeeper.jar"), "{zk}");
    let curator = curator_classpath().unwrap();
    assert!(curator.starts_with(&zk), "{curator}");
    for jar in ["curator-recipes.jar", "curator-framework.jar", "guava.jar"] {
        assert!(curator.contains(jar), "{curator}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_talks_to_shared_etcd() {
    let etcd = shared_etcd().await;
    let key = unique_path("etcdctl");
    let out = tokio::process::Command::new(etcdctl_bin().unwrap())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "put", &key, "from-etcdctl"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut client = common::etcd_connect(&[etcd.endpoint()]).await;
    assert_eq!(
        common::etcd_get(&mut client, &key).await.as_deref(),
        Some(&b"from-etcdctl"[..])
    );
}

const CURATOR_CHECK: &str = r#"
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.retry.RetryNTimes;
import java.util.concurrent.TimeUnit;

public class CuratorCheck {
    public static void main(String[] args) throws Exception {
        CuratorFramework c = CuratorFrameworkFactory.newClient(args[0], new RetryNTimes(5, 200));
        c.start();
        if (!c.blockUntilConnected(20, TimeUnit.SECONDS)) throw new RuntimeException("no connection");
        c.create().creatingParentsIfNeeded().forPath(args[1] + "/created-by-curator", "curator".getBytes());
        LeaderLatch latch = new LeaderLatch(c, args[1] + "/latch", "java");
        latch.start();
        if (!latch.await(20, TimeUnit.SECONDS)) throw new RuntimeException("no leadership");
        latch.close();
        c.close();
        System.out.println("CURATOR-OK");
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_classpath_runs_a_curator_client_against_shared_zk() {
    let zk = shared_zk().await;
    let root = unique_path("curator");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("CuratorCheck.java");
    std::fs::write(&src, CURATOR_CHECK).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(java_bin().unwrap())
            .arg(succession_testkit::JVM_QUIET_LOGGING)
            .arg("-cp")
            .arg(curator_classpath().unwrap())
            .arg(&src)
            .arg(zk.addr())
            .arg(&root)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Curator check finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CURATOR-OK"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = common::zk_connect(&zk.addr()).await;
    let (data, _) = client
        .get_data(&format!("{root}/created-by-curator"))
        .await
        .unwrap();
    assert_eq!(data, b"curator");
}
