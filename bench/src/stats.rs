//! Measurements and how they are reported: latency histograms, the figures one run of a
//! scenario yields, and the table that sets wasmgate's figures against the baseline's.
//!
//! Every figure is the median over a scenario's runs, and every ratio is wasmgate's median
//! over the baseline's, both measured in the same invocation: the machine is shared and
//! noisy, so absolute numbers from different invocations do not compare, ratios do.

use std::fmt::Write;

/// Latencies in microseconds, from 1 µs to 60 s at 3 significant digits.
pub type Histogram = hdrhistogram::Histogram<u64>;

/// An empty latency histogram.
pub fn histogram() -> Histogram {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Records `micros` into `h`, clamped into its range.
pub fn record(h: &mut Histogram, micros: u64) {
    h.saturating_record(micros.max(1));
}

/// One figure measured in one run.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured, e.g. `msgs/s`.
    pub metric: String,
    /// Its value.
    pub value: f64,
    /// The target from issue 14 (issue 8's where 14 set none), as a ratio or an absolute bound, if there is one.
    pub target: Option<&'static str>,
}

impl Figure {
    /// A figure with no target.
    pub fn new(metric: impl Into<String>, value: f64) -> Self {
        Self {
            metric: metric.into(),
            value,
            target: None,
        }
    }

    /// The same figure with a target.
    pub fn target(mut self, target: &'static str) -> Self {
        self.target = Some(target);
        self
    }
}

/// The p50, p99 and p99.9 of `h`, in microseconds; `p99` gets `p99_target`.
pub fn latencies(h: &Histogram, p99_target: Option<&'static str>) -> Vec<Figure> {
    let mut p99 = Figure::new("p99 µs", h.value_at_quantile(0.99) as f64);
    p99.target = p99_target;
    vec![
        Figure::new("p50 µs", h.value_at_quantile(0.50) as f64),
        p99,
        Figure::new("p99.9 µs", h.value_at_quantile(0.999) as f64),
    ]
}

/// One metric of one scenario: wasmgate's median against the baseline's.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The scenario and its parameters, e.g. `echo ws single 100 clients`.
    pub scenario: String,
    /// The metric.
    pub metric: String,
    /// wasmgate's median.
    pub wasmgate: f64,
    /// The baseline's median; none where the baseline has no such thing (hot reload).
    pub baseline: Option<f64>,
    /// The target.
    pub target: Option<&'static str>,
}

impl Comparison {
    /// wasmgate over the baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .filter(|b| *b != 0.0)
            .map(|b| self.wasmgate / b)
    }

    /// Pairs the medians of wasmgate's runs with the medians of the baseline's runs,
    /// metric by metric, in the order wasmgate's runs report them.
    pub fn pair(scenario: &str, wasmgate: &[Vec<Figure>], baseline: &[Vec<Figure>]) -> Vec<Self> {
        let Some(first) = wasmgate.first() else {
            return Vec::new();
        };
        first
            .iter()
            .map(|figure| Self {
                scenario: scenario.to_owned(),
                metric: figure.metric.clone(),
                wasmgate: median_of(wasmgate, &figure.metric).unwrap_or(f64::NAN),
                baseline: median_of(baseline, &figure.metric),
                target: figure.target,
            })
            .collect()
    }
}

/// The median of `metric` over `runs`, if any run measured it.
fn median_of(runs: &[Vec<Figure>], metric: &str) -> Option<f64> {
    let mut values: Vec<f64> = runs
        .iter()
        .flat_map(|run| run.iter().filter(|f| f.metric == metric).map(|f| f.value))
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The comparisons as a Markdown table.
pub fn table(rows: &[Comparison]) -> String {
    let mut out = String::from(
        "| scenario | metric | wasmgate | baseline | ratio | target |\n|---|---|---:|---:|---:|---|\n",
    );
    for row in rows {
        let ratio = row.ratio().map_or("—".into(), |r| format!("{r:.2}×"));
        let baseline = row.baseline.map_or("—".into(), number);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.metric,
            number(row.wasmgate),
            baseline,
            ratio,
            row.target.unwrap_or("")
        );
    }
    out
}

/// A number with as many digits as it deserves.
fn number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let run = |v: f64| vec![Figure::new("msgs/s", v).target("≥ 0.7×")];
        let wasmgate = [run(70.0), run(90.0), run(80.0)];
        let baseline = [run(100.0), run(300.0), run(100.0)];
        let rows = Comparison::pair("echo", &wasmgate, &baseline);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].wasmgate, 80.0);
        assert_eq!(rows[0].baseline, Some(100.0));
        assert_eq!(rows[0].ratio(), Some(0.8));
        assert!(table(&rows).contains("| echo | msgs/s | 80 | 100 | 0.80× | ≥ 0.7× |"));
    }

    #[test]
    fn a_metric_only_wasmgate_has() {
        let rows = Comparison::pair("reload", &[vec![Figure::new("ms", 12.5)]], &[vec![]]);
        assert_eq!(rows[0].ratio(), None);
        assert!(table(&rows).contains("| reload | ms | 12.50 | — | — |  |"));
    }
}
