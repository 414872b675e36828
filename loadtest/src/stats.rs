//! Percentiles and summaries of measured samples.

use serde::Serialize;

/// The q-quantile (0..=1) by nearest rank over sorted `v`; `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A distribution's usual figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Self {
            n: v.len(),
            min: v.first().copied(),
            p50: quantile(&v, 0.50),
            p90: quantile(&v, 0.90),
            p99: quantile(&v, 0.99),
            max: v.last().copied(),
            mean,
        }
    }

    /// `p50 / p90 / p99 / max` with a unit, for tables.
    pub fn brief(&self, unit: &str) -> String {
        let f = |x: Option<f64>| x.map_or("–".to_owned(), |x| format!("{x:.1}"));
        format!(
            "p50 {} / p90 {} / p99 {} / max {} {unit} (n={})",
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.max),
            self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!(
            (s.n, s.min, s.max, s.p50),
            (3, Some(1.0), Some(3.0), Some(2.0))
        );
    }
}
