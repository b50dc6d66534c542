//! Collects each run's figures by (scenario, config, metric) and side, and prints the
//! medians as a markdown table (Tradeplex, baseline, ratio) or writes them as JSON.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in nanoseconds, 1 ns to an hour, 3 significant digits (values
/// outside are clamped, never dropped).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Which system a figure was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Tradeplex,
    Baseline,
}

impl Side {
    /// The order of the two sides in repetition `rep`: they alternate, so neither always
    /// runs on a warmer (or more disturbed) machine.
    pub fn order(rep: usize) -> [Side; 2] {
        if rep % 2 == 1 {
            [Side::Baseline, Side::Tradeplex]
        } else {
            [Side::Tradeplex, Side::Baseline]
        }
    }
}

/// Units, which decide how a figure is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    PerSec,
    Micros,
    Count,
    Percent,
    MiB,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::PerSec => "/s",
            Unit::Micros => "µs",
            Unit::Count => "count",
            Unit::Percent => "%",
            Unit::MiB => "MiB",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Unit::PerSec | Unit::Count => format!("{v:.0}"),
            Unit::Micros | Unit::MiB => format!("{v:.1}"),
            Unit::Percent => format!("{v:.2}"),
        }
    }
}

/// One table row: every repetition's figure on each side.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub config: String,
    pub metric: String,
    pub unit: Unit,
    pub tradeplex: Vec<f64>,
    pub baseline: Vec<f64>,
}

/// The median of the figures (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Row {
    pub fn tradeplex_median(&self) -> Option<f64> {
        median(&self.tradeplex)
    }
    pub fn baseline_median(&self) -> Option<f64> {
        median(&self.baseline)
    }
    /// Tradeplex / baseline, where both exist and the baseline is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.tradeplex_median(), self.baseline_median()) {
            (Some(t), Some(b)) if b != 0.0 => Some(t / b),
            _ => None,
        }
    }
}

/// Every figure of a bench run, in the order first recorded.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// Records one repetition's figure.
    pub fn add(
        &mut self,
        scenario: &str,
        config: &str,
        metric: &str,
        unit: Unit,
        side: Side,
        v: f64,
    ) {
        let i = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.config == config && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.into(),
                    config: config.into(),
                    metric: metric.into(),
                    unit,
                    tradeplex: Vec::new(),
                    baseline: Vec::new(),
                });
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[i];
        match side {
            Side::Tradeplex => row.tradeplex.push(v),
            Side::Baseline => row.baseline.push(v),
        }
    }

    /// The markdown table of medians.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | config | metric | Tradeplex | baseline | Tradeplex/baseline |\n\
             |---|---|---|---:|---:|---:|\n",
        );
        let cell = |v: Option<f64>, unit: Unit| v.map_or("-".to_string(), |v| unit.format(v));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} ({}) | {} | {} | {} |\n",
                r.scenario,
                r.config,
                r.metric,
                r.unit.name(),
                cell(r.tradeplex_median(), r.unit),
                cell(r.baseline_median(), r.unit),
                r.ratio().map_or("-".to_string(), |x| format!("{x:.2}")),
            ));
        }
        out
    }

    /// The results as JSON (medians and every repetition's figure).
    pub fn json(&self, context: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "config": r.config,
                    "metric": r.metric,
                    "unit": r.unit.name(),
                    "tradeplex": r.tradeplex_median(),
                    "baseline": r.baseline_median(),
                    "ratio": r.ratio(),
                    "tradeplex_runs": r.tradeplex,
                    "baseline_runs": r.baseline,
                })
            })
            .collect();
        json!({ "context": context, "rows": rows, "notes": self.notes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let mut r = Report::default();
        r.add(
            "rr",
            "1c×1w",
            "calls/s",
            Unit::PerSec,
            Side::Tradeplex,
            80.0,
        );
        r.add(
            "rr",
            "1c×1w",
            "calls/s",
            Unit::PerSec,
            Side::Baseline,
            100.0,
        );
        r.add("mem", "-", "rss", Unit::MiB, Side::Tradeplex, 5.0);
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].ratio(), Some(0.8));
        assert_eq!(r.rows[1].ratio(), None);
        let t = r.table();
        assert!(
            t.contains("| rr | 1c×1w | calls/s (/s) | 80 | 100 | 0.80 |"),
            "{t}"
        );
        assert!(t.contains("| 5.0 | - | - |"), "{t}");
        assert_eq!(r.json(json!({}))["rows"][0]["ratio"], json!(0.8));
    }

    #[test]
    fn sides_alternate() {
        assert_eq!(Side::order(0)[0], Side::Tradeplex);
        assert_eq!(Side::order(1)[0], Side::Baseline);
    }
}
