//! The console's memory of the broker's own metrics: a sample of the counters it shows
//! every [`SAMPLE_EVERY`], the last [`WINDOW_SAMPLES`] of them kept, so rates and latency
//! percentiles are computed over the last ~10 s the way Prometheus's `rate()` and
//! `histogram_quantile()` would; and a bounded ring of recent errors, made of counter
//! increases between two samples.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: rates and percentiles span the oldest to the newest (10 s).
pub const WINDOW_SAMPLES: usize = 11;
/// Entries of the recent-errors ring.
pub const RECENT_CAP: usize = 100;

/// The families the console reads; nothing else is copied out of a gather.
const FAMILIES: [&str; 10] = [
    "tradeplex_requests_received_total",
    "tradeplex_requests_answered_total",
    "tradeplex_request_duration_seconds",
    "tradeplex_events_relayed_total",
    "tradeplex_event_drops_total",
    "tradeplex_bad_frames_total",
    "tradeplex_risk_rejected_total",
    "tradeplex_risk_checked_total",
    "tradeplex_auth_failures_total",
    "tradeplex_subscriptions_refused_total",
];

/// Counter families whose increases are recent errors, with the kind the ring calls them.
const ERROR_FAMILIES: [(&str, &str); 6] = [
    ("tradeplex_requests_answered_total", "request_error"),
    ("tradeplex_bad_frames_total", "bad_frame"),
    ("tradeplex_event_drops_total", "event_drop"),
    ("tradeplex_risk_rejected_total", "risk_reject"),
    ("tradeplex_auth_failures_total", "auth_failure"),
    (
        "tradeplex_subscriptions_refused_total",
        "subscription_refused",
    ),
];

/// One series: family name and its labels, sorted by label name.
pub type Key = (String, Vec<(String, String)>);

/// The counters (and histogram buckets, as `…_bucket` with `le`) at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When it was taken.
    pub at: Option<Instant>,
    /// Wall-clock time of the sample, Unix ms.
    pub unix_ms: u64,
    /// Every series read.
    pub values: BTreeMap<Key, f64>,
}

impl Sample {
    /// Copies the families the console reads out of a registry gather.
    pub fn from_families(at: Instant, unix_ms: u64, families: &[MetricFamily]) -> Sample {
        let mut values = BTreeMap::new();
        for f in families.iter().filter(|f| FAMILIES.contains(&f.get_name())) {
            for m in f.get_metric() {
                let mut labels: Vec<(String, String)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.get_name().to_string(), l.get_value().to_string()))
                    .collect();
                labels.sort();
                match f.get_field_type() {
                    MetricType::COUNTER => {
                        values.insert(
                            (f.get_name().to_string(), labels),
                            m.get_counter().get_value(),
                        );
                    }
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        let name = format!("{}_bucket", f.get_name());
                        for b in h.get_bucket() {
                            let mut l = labels.clone();
                            l.push(("le".into(), b.get_upper_bound().to_string()));
                            values.insert((name.clone(), l), b.get_cumulative_count() as f64);
                        }
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        values.insert((name, l), h.get_sample_count() as f64);
                    }
                    _ => {}
                }
            }
        }
        Sample {
            at: Some(at),
            unix_ms,
            values,
        }
    }
}

/// One entry of the recent-errors ring: a counter that rose between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    /// When it was seen (the later sample), Unix ms.
    pub unix_ms: u64,
    /// `request_error`, `bad_frame`, `event_drop`, `risk_reject`, `auth_failure` or
    /// `subscription_refused`.
    pub kind: &'static str,
    /// The series' labels (`service` and `outcome`, `socket` and `reason`, `rule`, …).
    pub labels: BTreeMap<String, String>,
    /// By how much it rose.
    pub count: u64,
}

/// The samples of the window and the recent-errors ring.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    recent: VecDeque<Recent>,
}

impl History {
    /// Adds a sample, dropping the oldest past the window, and records what rose.
    pub fn push(&mut self, s: Sample) {
        if let Some(prev) = self.samples.back() {
            let rose = increases(prev, &s);
            for r in rose {
                if self.recent.len() == RECENT_CAP {
                    self.recent.pop_front();
                }
                self.recent.push_back(r);
            }
        }
        if self.samples.len() == WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The recent errors, newest first.
    pub fn recent(&self) -> Vec<Recent> {
        self.recent.iter().rev().cloned().collect()
    }

    /// The seconds the window spans (0 until two samples exist).
    pub fn span_s(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => match (a.at, b.at) {
                (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
                _ => 0.0,
            },
            _ => 0.0,
        }
    }

    /// How much every series of `name` whose labels include `filter` rose over the
    /// window, summed, grouped by the value of label `by` (`""` = one group). A series
    /// absent from the oldest sample counts from 0 (it appeared within the window); a
    /// counter that went down (a service forgotten and registered again) counts from 0.
    pub fn increase_by(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        by: &str,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let (Some(old), Some(new)) = (self.samples.front(), self.samples.back()) else {
            return out;
        };
        for ((n, labels), v) in new.values.range(range_of(name)) {
            if n != name {
                break;
            }
            if !matches(labels, filter) {
                continue;
            }
            let before = old
                .values
                .get(&(n.clone(), labels.clone()))
                .copied()
                .unwrap_or(0.0);
            let delta = if *v >= before { v - before } else { *v };
            let group = label(labels, by).unwrap_or_default().to_string();
            *out.entry(group).or_insert(0.0) += delta;
        }
        out
    }

    /// The newest values of `name` (since the broker started), summed by label `by`.
    pub fn total_by(&self, name: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Some(new) = self.samples.back() else {
            return out;
        };
        for ((n, labels), v) in new.values.range(range_of(name)) {
            if n != name {
                break;
            }
            if matches(labels, filter) {
                let group = label(labels, by).unwrap_or_default().to_string();
                *out.entry(group).or_insert(0.0) += v;
            }
        }
        out
    }

    /// Per-second rate of `name` over the window, grouped by `by`; empty until the window
    /// spans time.
    pub fn rate_by(&self, name: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let span = self.span_s();
        if span <= 0.0 {
            return BTreeMap::new();
        }
        self.increase_by(name, filter, by)
            .into_iter()
            .map(|(k, v)| (k, v / span))
            .collect()
    }

    /// The `q` quantile (0–1) of histogram `family` for one service over the window, in
    /// seconds, interpolated within its bucket as `histogram_quantile()` does; `None`
    /// when nothing was observed in the window.
    pub fn quantile(&self, family: &str, service: &str, q: f64) -> Option<f64> {
        let name = format!("{family}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let (Some(old), Some(new)) = (self.samples.front(), self.samples.back()) else {
            return None;
        };
        for ((n, labels), v) in new.values.range(range_of(&name)) {
            if *n != name {
                break;
            }
            if label(labels, "service") != Some(service) {
                continue;
            }
            let le = match label(labels, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().ok()?,
                None => continue,
            };
            let before = old
                .values
                .get(&(n.clone(), labels.clone()))
                .copied()
                .unwrap_or(0.0);
            let delta = if *v >= before { v - before } else { *v };
            buckets.push((le, delta));
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        quantile_of(q, &buckets)
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets sorted by bound.
pub fn quantile_of(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bucket: that bound is all we know.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

fn range_of(name: &str) -> std::ops::RangeFrom<Key> {
    (name.to_string(), Vec::new())..
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// True when every `(label, value)` of `filter` holds; a label name ending in `!` means
/// "not this value" (`("outcome!", "ok")`).
fn matches(labels: &[(String, String)], filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(k, v)| {
        let negate = k.strip_suffix('!');
        match negate {
            Some(k) => label(labels, k) != Some(*v),
            None => label(labels, k) == Some(*v),
        }
    })
}

/// The error counters that rose from `prev` to `next`.
fn increases(prev: &Sample, next: &Sample) -> Vec<Recent> {
    let mut out = Vec::new();
    for (family, kind) in ERROR_FAMILIES {
        for ((n, labels), v) in next.values.range(range_of(family)) {
            if n != family {
                break;
            }
            if family == "tradeplex_requests_answered_total"
                && label(labels, "outcome") == Some("ok")
            {
                continue;
            }
            let before = prev
                .values
                .get(&(n.clone(), labels.clone()))
                .copied()
                .unwrap_or(0.0);
            let delta = if *v >= before { v - before } else { *v };
            if delta >= 1.0 {
                out.push(Recent {
                    unix_ms: next.unix_ms,
                    kind,
                    labels: labels.iter().cloned().collect(),
                    count: delta as u64,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series written out: name, labels, value.
    type Series<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    fn sample(at: Instant, secs: u64, values: &[Series]) -> Sample {
        Sample {
            at: Some(at + Duration::from_secs(secs)),
            unix_ms: secs * 1000,
            values: values
                .iter()
                .map(|(n, l, v)| {
                    let mut l: Vec<(String, String)> = l
                        .iter()
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect();
                    l.sort();
                    ((n.to_string(), l), *v)
                })
                .collect(),
        }
    }

    const ANSWERED: &str = "tradeplex_requests_answered_total";

    #[test]
    fn rates_span_the_window_and_errors_enter_the_ring_once() {
        let t0 = Instant::now();
        let mut h = History::default();
        let ok = [("service", "SIM"), ("outcome", "ok")];
        let lost = [("service", "SIM"), ("outcome", "worker_lost")];
        h.push(sample(t0, 0, &[(ANSWERED, &ok, 10.0)]));
        assert!(h.rate_by(ANSWERED, &[], "service").is_empty());
        h.push(sample(
            t0,
            1,
            &[(ANSWERED, &ok, 20.0), (ANSWERED, &lost, 2.0)],
        ));
        h.push(sample(
            t0,
            2,
            &[(ANSWERED, &ok, 30.0), (ANSWERED, &lost, 2.0)],
        ));
        assert_eq!(
            h.rate_by(ANSWERED, &[("outcome", "ok")], "service")["SIM"],
            10.0
        );
        assert_eq!(
            h.rate_by(ANSWERED, &[("outcome!", "ok")], "outcome")["worker_lost"],
            1.0
        );
        let recent = h.recent();
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert_eq!(
            (recent[0].kind, recent[0].count, recent[0].unix_ms),
            ("request_error", 2, 1000)
        );
        assert_eq!(recent[0].labels["outcome"], "worker_lost");
    }

    #[test]
    fn the_window_and_the_ring_are_bounded() {
        let t0 = Instant::now();
        let mut h = History::default();
        let bad = [("socket", "frontend"), ("reason", "bad_header")];
        for i in 0..(RECENT_CAP as u64 + 50) {
            h.push(sample(
                t0,
                i,
                &[("tradeplex_bad_frames_total", &bad, i as f64)],
            ));
        }
        assert_eq!(h.samples.len(), WINDOW_SAMPLES);
        assert_eq!(h.span_s(), (WINDOW_SAMPLES - 1) as f64);
        assert_eq!(h.recent().len(), RECENT_CAP);
        assert_eq!(h.recent()[0].kind, "bad_frame");
    }

    #[test]
    fn quantiles_interpolate_within_buckets_like_prometheus() {
        // 100 observations: 50 in (0, 0.001], 49 in (0.001, 0.01], 1 above 0.01.
        let b = [(0.001, 50.0), (0.01, 99.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile_of(0.5, &b), Some(0.001));
        let p99 = quantile_of(0.99, &b).unwrap();
        assert!((p99 - 0.01).abs() < 1e-12, "{p99}");
        assert_eq!(quantile_of(0.999, &b), Some(0.01));
        assert_eq!(quantile_of(0.25, &b), Some(0.0005));
        assert_eq!(
            quantile_of(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn quantiles_come_from_the_buckets_observed_in_the_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        let b = "tradeplex_request_duration_seconds_bucket";
        let l = |le: &'static str| -> Vec<(&'static str, &'static str)> {
            vec![("service", "SIM"), ("le", le)]
        };
        let (a, bb, c) = (l("0.001"), l("0.01"), l("+Inf"));
        h.push(sample(
            t0,
            0,
            &[(b, &a, 1000.0), (b, &bb, 1000.0), (b, &c, 1000.0)],
        ));
        // In the window: 10 observations, all between 1 and 10 ms.
        h.push(sample(
            t0,
            1,
            &[(b, &a, 1000.0), (b, &bb, 1010.0), (b, &c, 1010.0)],
        ));
        let p50 = h
            .quantile("tradeplex_request_duration_seconds", "SIM", 0.5)
            .unwrap();
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        assert_eq!(
            h.quantile("tradeplex_request_duration_seconds", "echo", 0.5),
            None
        );
    }
}
