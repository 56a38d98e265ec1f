//! Input checks shared by every backend's configuration builder. Each refuses bad input
//! early with a message that says what to do.

use crate::text::Human;
use std::time::Duration;

use crate::error::{Error, Result};

/// A participant id: not empty or blank, at most 1024 bytes, no control characters.
pub fn participant_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid_config(
            "participant id is empty; give each participant a non-empty id such as hostname-pid",
        ));
    }
    if id.len() > 1024 {
        return Err(Error::invalid_config(format!(
            "participant id is {} bytes long; keep it at most 1024 bytes",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid_config(format!(
            "participant id {id:?} contains control characters; use printable characters only"
        )));
    }
    Ok(())
}

/// An absolute, slash-separated store path such as `/services/scheduler/leader`
/// (ZooKeeper path, etcd prefix): starts with `/`, no trailing `/`, no empty, `.` or `..`
/// segments, no control characters, not `/` itself.
pub fn store_path(path: &str, what: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::invalid_config(format!(
            "{what} is empty; use an absolute path such as /services/my-app/leader"
        )));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid_config(format!(
            "{what} {path:?} is relative; start it with '/', e.g. /{path}"
        )));
    }
    if path == "/" {
        return Err(Error::invalid_config(format!(
            "{what} is the root '/'; use a dedicated path such as /services/my-app/leader"
        )));
    }
    if path.ends_with('/') {
        return Err(Error::invalid_config(format!(
            "{what} {path:?} ends with '/'; remove the trailing slash: {:?}",
            path.trim_end_matches('/')
        )));
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(Error::invalid_config(format!(
                "{what} {path:?} has an empty segment ('//'); use single slashes"
            )));
        }
        if seg == "." || seg == ".." {
            return Err(Error::invalid_config(format!(
                "{what} {path:?} has a '{seg}' segment; relative segments are not allowed, spell the path out"
            )));
        }
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(Error::invalid_config(format!(
            "{what} {path:?} contains control characters; use printable characters only"
        )));
    }
    Ok(())
}

/// A duration that must be positive and, when bounds are given, within them.
pub fn duration(
    value: Duration,
    what: &str,
    min: Option<Duration>,
    max: Option<Duration>,
) -> Result<()> {
    if value.is_zero() {
        return Err(Error::invalid_config(format!(
            "{what} is zero; give a positive duration such as 5s"
        )));
    }
    if let Some(min) = min {
        if value < min {
            return Err(Error::invalid_config(format!(
                "{what} is {}, below the minimum {}; raise it to at least {}",
                Human(value),
                Human(min),
                Human(min)
            )));
        }
    }
    if let Some(max) = max {
        if value > max {
            return Err(Error::invalid_config(format!(
                "{what} is {}, above the maximum {}; lower it to at most {}",
                Human(value),
                Human(max),
                Human(max)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn bad_ids_are_refused_with_a_hint() {
        for bad in ["", "   ", "a\nb"] {
            let e = participant_id(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        }
        assert!(participant_id(&"x".repeat(2000)).is_err());
        assert!(participant_id("web-1:4242").is_ok());
        assert!(participant_id("")
            .unwrap_err()
            .to_string()
            .contains("non-empty"));
    }

    #[test]
    fn bad_paths_are_refused_with_what_to_do() {
        let cases = [
            ("", "absolute"),
            ("leader", "relative"),
            ("/", "root"),
            ("/a/", "trailing"),
            ("/a//b", "empty segment"),
            ("/a/../b", "'..'"),
            ("/a/./b", "'.'"),
            ("/a\u{0}b", "control"),
        ];
        for (bad, hint) in cases {
            let e = store_path(bad, "latch path").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(hint), "{bad:?}: {e}");
        }
        assert!(store_path("/services/app/leader", "latch path").is_ok());
    }

    #[test]
    fn zero_and_out_of_bounds_durations_are_refused() {
        assert!(duration(Duration::ZERO, "ttl", None, None).is_err());
        let min = Some(Duration::from_secs(1));
        let max = Some(Duration::from_secs(10));
        assert!(duration(Duration::from_millis(500), "t", min, max)
            .unwrap_err()
            .to_string()
            .contains("at least 1s"));
        assert!(duration(Duration::from_secs(11), "t", min, max).is_err());
        assert!(duration(Duration::from_secs(5), "t", min, max).is_ok());
    }
}
