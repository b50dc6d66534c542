//! Collects each run's figures by (scenario, config, metric) and side, and prints the
//! medians as a markdown table (Tradeplex, baseline, ratio; then each peer measured and
//! Tradeplex's ratio to it) or writes them as JSON.

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

/// Another system measured beside Tradeplex and the bare ZeroMQ baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// NATS request/reply (nats-server + async-nats).
    Nats,
    /// vn.py's RpcClient → RpcServer, direct (one hop).
    Vnpy,
}

impl Peer {
    /// Every peer, in column order.
    pub const ALL: [Peer; 2] = [Peer::Nats, Peer::Vnpy];

    /// Its column heading.
    pub fn title(self) -> &'static str {
        match self {
            Peer::Nats => "NATS",
            Peer::Vnpy => "vn.py RPC",
        }
    }

    /// Its key in JSON and notes.
    pub fn key(self) -> &'static str {
        match self {
            Peer::Nats => "nats",
            Peer::Vnpy => "vnpy",
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
    /// Each peer's figures, for the rows a peer was measured on.
    pub peers: Vec<(Peer, Vec<f64>)>,
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
        ratio(self.tradeplex_median(), self.baseline_median())
    }
    /// The median of `peer`'s figures on this row.
    pub fn peer_median(&self, peer: Peer) -> Option<f64> {
        self.peers
            .iter()
            .find(|(p, _)| *p == peer)
            .and_then(|(_, v)| median(v))
    }
    /// Tradeplex / `peer`.
    pub fn peer_ratio(&self, peer: Peer) -> Option<f64> {
        ratio(self.tradeplex_median(), self.peer_median(peer))
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
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
        let row = self.row(scenario, config, metric, unit);
        match side {
            Side::Tradeplex => row.tradeplex.push(v),
            Side::Baseline => row.baseline.push(v),
        }
    }

    /// Records one repetition's figure of a peer.
    pub fn add_peer(
        &mut self,
        scenario: &str,
        config: &str,
        metric: &str,
        unit: Unit,
        peer: Peer,
        v: f64,
    ) {
        let row = self.row(scenario, config, metric, unit);
        match row.peers.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, runs)) => runs.push(v),
            None => row.peers.push((peer, vec![v])),
        }
    }

    /// The row of (scenario, config, metric), added at the end if new.
    fn row(&mut self, scenario: &str, config: &str, metric: &str, unit: Unit) -> &mut Row {
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
                    peers: Vec::new(),
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// The peers with a figure on any row, in column order.
    pub fn peers_measured(&self) -> Vec<Peer> {
        Peer::ALL
            .into_iter()
            .filter(|p| {
                self.rows
                    .iter()
                    .any(|r| r.peers.iter().any(|(q, v)| q == p && !v.is_empty()))
            })
            .collect()
    }

    /// The markdown table of medians: a NATS or vn.py column pair (figure, Tradeplex/peer)
    /// appears only when that peer was measured.
    pub fn table(&self) -> String {
        let peers = self.peers_measured();
        let mut out = String::from(
            "| scenario | config | metric | Tradeplex | baseline | Tradeplex/baseline |",
        );
        let mut rule = String::from("|---|---|---|---:|---:|---:|");
        for p in &peers {
            out.push_str(&format!(" {} | Tradeplex/{} |", p.title(), p.title()));
            rule.push_str("---:|---:|");
        }
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        let cell = |v: Option<f64>, unit: Unit| v.map_or("-".to_string(), |v| unit.format(v));
        let times = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} ({}) | {} | {} | {} |",
                r.scenario,
                r.config,
                r.metric,
                r.unit.name(),
                cell(r.tradeplex_median(), r.unit),
                cell(r.baseline_median(), r.unit),
                times(r.ratio()),
            ));
            for p in &peers {
                out.push_str(&format!(
                    " {} | {} |",
                    cell(r.peer_median(*p), r.unit),
                    times(r.peer_ratio(*p))
                ));
            }
            out.push('\n');
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
                    "peers": r.peers.iter().map(|(p, runs)| {
                        (p.key().to_string(), json!({
                            "median": median(runs),
                            "ratio": r.peer_ratio(*p),
                            "runs": runs,
                        }))
                    }).collect::<serde_json::Map<String, Value>>(),
                })
            })
            .collect();
        json!({
            "context": context,
            "rows": rows,
            "headline": self.headline(),
            "notes": self.notes,
        })
    }

    /// The rr scenario's ratios to the peers (1 client × 1 worker): Tradeplex p50 / NATS
    /// p50 and / vn.py p50 at window 1, and Tradeplex msgs/s / NATS and / the bare credit
    /// hop at the largest window measured. `None` where a side was not measured.
    pub fn headline(&self) -> Value {
        let find = |scenario: &str, metric: &str| {
            self.rows
                .iter()
                .find(|r| r.scenario == scenario && r.config == "1c×1w" && r.metric == metric)
        };
        let window = |r: &Row| {
            r.scenario
                .strip_prefix("rr w")
                .and_then(|w| w.parse::<usize>().ok())
        };
        let piped = self
            .rows
            .iter()
            .filter(|r| r.config == "1c×1w" && r.metric == "msgs/s")
            .filter_map(|r| window(r).map(|w| (w, r)))
            .max_by_key(|(w, _)| *w);
        let w1_p50 = find("rr w1", "p50");
        json!({
            "w1_p50_tradeplex_over_nats": w1_p50.and_then(|r| r.peer_ratio(Peer::Nats)),
            "w1_p50_tradeplex_over_vnpy": w1_p50.and_then(|r| r.peer_ratio(Peer::Vnpy)),
            "pipelined_window": piped.map(|(w, _)| w),
            "pipelined_tradeplex_over_nats": piped.and_then(|(_, r)| r.peer_ratio(Peer::Nats)),
            "pipelined_tradeplex_over_bare_hop": piped.and_then(|(_, r)| r.ratio()),
        })
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
    fn peer_columns_appear_only_for_peers_measured() {
        let mut r = Report::default();
        r.add(
            "rr w1",
            "1c×1w",
            "p50",
            Unit::Micros,
            Side::Tradeplex,
            100.0,
        );
        r.add("rr w1", "1c×1w", "p50", Unit::Micros, Side::Baseline, 80.0);
        assert!(!r.table().contains("NATS"), "{}", r.table());
        r.add_peer("rr w1", "1c×1w", "p50", Unit::Micros, Peer::Nats, 50.0);
        r.add_peer("rr w1", "1c×1w", "p50", Unit::Micros, Peer::Nats, 30.0);
        r.add(
            "rr w8",
            "1c×1w",
            "msgs/s",
            Unit::PerSec,
            Side::Tradeplex,
            900.0,
        );
        r.add(
            "rr w8",
            "1c×1w",
            "msgs/s",
            Unit::PerSec,
            Side::Baseline,
            1000.0,
        );
        r.add_peer("rr w8", "1c×1w", "msgs/s", Unit::PerSec, Peer::Nats, 600.0);
        let t = r.table();
        assert!(
            t.contains("| Tradeplex/baseline | NATS | Tradeplex/NATS |\n"),
            "{t}"
        );
        assert!(!t.contains("vn.py"), "{t}");
        assert!(
            t.contains("| rr w1 | 1c×1w | p50 (µs) | 100.0 | 80.0 | 1.25 | 40.0 | 2.50 |"),
            "{t}"
        );
        let v = r.json(json!({}));
        assert_eq!(v["rows"][0]["peers"]["nats"]["median"], json!(40.0));
        assert_eq!(v["rows"][0]["peers"]["nats"]["runs"], json!([50.0, 30.0]));
        assert_eq!(v["headline"]["w1_p50_tradeplex_over_nats"], json!(2.5));
        assert_eq!(v["headline"]["w1_p50_tradeplex_over_vnpy"], Value::Null);
        assert_eq!(v["headline"]["pipelined_window"], json!(8));
        assert_eq!(v["headline"]["pipelined_tradeplex_over_nats"], json!(1.5));
        assert_eq!(
            v["headline"]["pipelined_tradeplex_over_bare_hop"],
            json!(0.9)
        );
    }

    #[test]
    fn sides_alternate() {
        assert_eq!(Side::order(0)[0], Side::Tradeplex);
        assert_eq!(Side::order(1)[0], Side::Baseline);
    }
}
