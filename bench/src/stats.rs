//! Samples and their summary (min / median / p95 / max, nearest-rank percentiles).

/// A set of measurements in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Samples::default()
    }

    /// Add one measurement (ms).
    pub fn push(&mut self, ms: f64) {
        self.values.push(ms);
    }

    /// How many measurements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// The nearest-rank percentile `p` (0..=100); None without samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }

    /// The median (for an even count, the mean of the two middle values).
    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    /// The smallest value.
    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    /// The largest value.
    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }

    /// `[n, min, median, p95, max]` formatted for a table row (ms, 1-3 decimals).
    pub fn cells(&self) -> Vec<String> {
        if self.is_empty() {
            return vec!["0".into(), "–".into(), "–".into(), "–".into(), "–".into()];
        }
        vec![
            self.len().to_string(),
            fmt_ms(self.min()),
            fmt_ms(self.median()),
            fmt_ms(self.percentile(95.0)),
            fmt_ms(self.max()),
        ]
    }

    /// Every value, each shifted by `-by` (e.g. minus the session timeout).
    pub fn minus(&self, by: f64) -> Samples {
        Samples {
            values: self.values.iter().map(|v| v - by).collect(),
        }
    }
}

/// A duration in ms with a precision that suits its size; `–` for None.
pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// `a / b` as "0.42x", or `–`.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio formatted as `0.42x`.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{r:.2}x"),
        None => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary() {
        let mut s = Samples::new();
        for v in [5.0, 1.0, 3.0, 2.0, 4.0] {
            s.push(v);
        }
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.median(), Some(3.0));
        assert_eq!(s.percentile(95.0), Some(5.0));
        assert_eq!(s.percentile(50.0), Some(3.0));
        assert_eq!(s.max(), Some(5.0));
        s.push(6.0);
        assert_eq!(s.median(), Some(3.5));
        assert_eq!(s.minus(1.0).min(), Some(0.0));
        assert!(Samples::new().median().is_none());
    }
}
