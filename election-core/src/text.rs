//! Text for people: durations in messages and health reasons.

use std::fmt;
use std::time::Duration;

/// A duration as people write it: `48ms`, `1.7s`, `6s`, `2m5s` (not Rust's Debug form
/// `1.667484887s`). Used in every error message and health reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_millis(1) {
            return write!(f, "{}µs", d.as_micros());
        }
        if d < Duration::from_secs(1) {
            return write!(f, "{}ms", d.as_millis());
        }
        if d < Duration::from_secs(60) {
            let tenths = (d.as_millis() + 50) / 100;
            return if tenths % 10 == 0 {
                write!(f, "{}s", tenths / 10)
            } else {
                write!(f, "{}.{}s", tenths / 10, tenths % 10)
            };
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || (h == 0 && m == 0) {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Human;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        let h = |ms: u64| Human(Duration::from_millis(ms)).to_string();
        assert_eq!(h(48), "48ms");
        assert_eq!(h(1667), "1.7s");
        assert_eq!(h(6000), "6s");
        assert_eq!(h(125_000), "2m5s");
        assert_eq!(h(3_600_000), "1h");
        assert_eq!(Human(Duration::from_micros(300)).to_string(), "300µs");
        assert_eq!(h(59_990), "60s");
    }
}
