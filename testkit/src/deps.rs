//! Locating the server binaries and jars (Debian packages, overridable by environment).

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory where Debian installs jars.
pub const DEBIAN_JAVA_DIR: &str = "/usr/share/java";

/// Jars the ZooKeeper server cannot run without (relative to [`DEBIAN_JAVA_DIR`]).
const ZK_REQUIRED_JARS: &[&str] = &["zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar"];
/// Jars added when present: a quiet slf4j binding.
const ZK_OPTIONAL_JARS: &[&str] = &["slf4j-simple.jar"];
/// Jars a Curator client needs on top of the ZooKeeper ones.
const CURATOR_REQUIRED_JARS: &[&str] = &[
    "curator-client.jar",
    "curator-framework.jar",
    "curator-recipes.jar",
    "guava.jar",
];
/// Jars added to the Curator classpath when present.
const CURATOR_OPTIONAL_JARS: &[&str] = &[
    "failureaccess.jar",
    "jackson-databind.jar",
    "jackson-core.jar",
    "jackson-annotations.jar",
];

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_string(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn lookup_binary(name: &str, source: &str, override_path: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = override_path {
        let resolved = if p.components().count() == 1 && !p.is_absolute() {
            // A bare name: look it up on PATH.
            search_path(p.as_os_str())
        } else {
            Some(p.to_path_buf())
        };
        return match resolved {
            Some(r) if is_executable_file(&r) => Ok(r),
            _ => Err(Error::MissingDependency {
                what: format!("{name} binary"),
                detail: format!(
                    "{} (given by {source}) is not an executable file",
                    p.display()
                ),
            }),
        };
    }
    if let Some(p) = search_path(OsStr::new(name)) {
        return Ok(p);
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if is_executable_file(&p) {
            return Ok(p);
        }
    }
    if name == "java" {
        if let Some(home) = env_path("JAVA_HOME") {
            let p = home.join("bin/java");
            if is_executable_file(&p) {
                return Ok(p);
            }
        }
    }
    Err(Error::MissingDependency {
        what: format!("{name} binary"),
        detail: format!("not on PATH nor in /usr/bin or /usr/local/bin (or set {source})"),
    })
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable_file(p))
}

/// Locates the executable `name` the way [`etcd_bin`] and friends do, but with an explicit
/// override (`Some(path)`, absolute or a bare name looked up on `PATH`) in place of the
/// environment variable. A missing binary is an [`Error::MissingDependency`] whose message
/// names the binary and says "run scripts/install-deps".
pub fn find_binary(name: &str, override_path: Option<&Path>) -> Result<PathBuf> {
    lookup_binary(name, "an explicit override", override_path)
}

/// The `java` binary: `$JAVA` if set, else `java` on `PATH`, `/usr/bin`, `$JAVA_HOME/bin`.
pub fn java_bin() -> Result<PathBuf> {
    lookup_binary("java", "JAVA", env_path("JAVA").as_deref())
}

/// The `etcd` server binary: `$ETCD_BIN` if set, else `etcd` on `PATH` or in `/usr/bin`.
pub fn etcd_bin() -> Result<PathBuf> {
    lookup_binary("etcd", "ETCD_BIN", env_path("ETCD_BIN").as_deref())
}

/// The `etcdctl` binary: `$ETCDCTL_BIN` if set, else `etcdctl` on `PATH` or in `/usr/bin`.
pub fn etcdctl_bin() -> Result<PathBuf> {
    lookup_binary("etcdctl", "ETCDCTL_BIN", env_path("ETCDCTL_BIN").as_deref())
}

fn jars(dir: &Path, required: &[&str], optional: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for jar in required {
        let p = dir.join(jar);
        if !p.is_file() {
            return Err(Error::MissingDependency {
                what: p.display().to_string(),
                detail: "the jar is not there".to_string(),
            });
        }
        out.push(p.display().to_string());
    }
    for jar in optional {
        let p = dir.join(jar);
        if p.is_file() {
            out.push(p.display().to_string());
        }
    }
    Ok(out)
}

/// The ZooKeeper server/client classpath from the jars in `java_dir` (Debian:
/// `/usr/share/java`), or `override_cp` verbatim when given. Errors name the first
/// missing jar. [`zk_classpath`] is this with `$ZK_CLASSPATH` and [`DEBIAN_JAVA_DIR`].
pub fn find_zk_classpath(override_cp: Option<&str>, java_dir: &Path) -> Result<String> {
    if let Some(cp) = override_cp {
        return Ok(cp.to_string());
    }
    Ok(jars(java_dir, ZK_REQUIRED_JARS, ZK_OPTIONAL_JARS)?.join(":"))
}

/// The classpath to run ZooKeeper 3.8 (`org.apache.zookeeper.server.quorum.QuorumPeerMain`)
/// or a Java ZooKeeper client: Debian's zookeeper, zookeeper-jute, slf4j-api and
/// slf4j-simple jars (the zookeeper jar's manifest pulls in netty, jackson, ...).
/// `$ZK_CLASSPATH` overrides it.
pub fn zk_classpath() -> Result<String> {
    find_zk_classpath(
        env_string("ZK_CLASSPATH").as_deref(),
        Path::new(DEBIAN_JAVA_DIR),
    )
}

/// The Curator classpath from `java_dir`: [`find_zk_classpath`] plus curator-client,
/// curator-framework, curator-recipes, guava (and failureaccess/jackson when present),
/// or `override_cp` verbatim. [`curator_classpath`] is this with `$CURATOR_CLASSPATH`.
pub fn find_curator_classpath(
    override_cp: Option<&str>,
    zk_override_cp: Option<&str>,
    java_dir: &Path,
) -> Result<String> {
    if let Some(cp) = override_cp {
        return Ok(cp.to_string());
    }
    let zk = find_zk_classpath(zk_override_cp, java_dir)?;
    let extra = jars(java_dir, CURATOR_REQUIRED_JARS, CURATOR_OPTIONAL_JARS)?;
    Ok(std::iter::once(zk)
        .chain(extra)
        .collect::<Vec<_>>()
        .join(":"))
}

/// The classpath for a Java program using Apache Curator 5 (Debian's libcurator-recipes-java)
/// against ZooKeeper: [`zk_classpath`] plus the Curator jars and their dependencies.
/// `$CURATOR_CLASSPATH` overrides it entirely.
pub fn curator_classpath() -> Result<String> {
    find_curator_classpath(
        env_string("CURATOR_CLASSPATH").as_deref(),
        env_string("ZK_CLASSPATH").as_deref(),
        Path::new(DEBIAN_JAVA_DIR),
    )
}

/// JVM system property that makes the slf4j-simple binding on [`zk_classpath`] log only
/// warnings and errors. Pass it to `java` before the class name.
pub const JVM_QUIET_LOGGING: &str = "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn";
