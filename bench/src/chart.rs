//! The chart of BENCHMARKS.md: `echo` messages per second and p99 latency against the number
//! of clients, wasmgate beside the baseline, as a self-contained SVG.

use std::fmt::Write;

/// One point of the sweep: a client count and both servers' medians there.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Clients.
    pub clients: usize,
    /// wasmgate's messages per second.
    pub wasmgate_rate: f64,
    /// The baseline's messages per second.
    pub baseline_rate: f64,
    /// wasmgate's p99 in µs.
    pub wasmgate_p99: f64,
    /// The baseline's p99 in µs.
    pub baseline_p99: f64,
}

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN: f64 = 60.0;
const WASMGATE: &str = "#d9480f";
const BASELINE: &str = "#1c7ed6";

/// Two panels, msgs/s and p99, over a logarithmic client axis; `title` goes on top.
pub fn svg(title: &str, points: &[Point]) -> String {
    let width = 2.0 * (PANEL_W + MARGIN) + MARGIN;
    let height = PANEL_H + 2.5 * MARGIN;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        width / 2.0,
        escape(title)
    );
    let rate: Vec<_> = points
        .iter()
        .map(|p| (p.clients, p.wasmgate_rate, p.baseline_rate))
        .collect();
    let p99: Vec<_> = points
        .iter()
        .map(|p| (p.clients, p.wasmgate_p99 / 1000.0, p.baseline_p99 / 1000.0))
        .collect();
    panel(&mut out, MARGIN, "messages per second", &rate);
    panel(&mut out, 2.0 * MARGIN + PANEL_W, "p99 latency (ms)", &p99);
    let legend_y = height - 14.0;
    for (i, (name, color)) in [("wasmgate", WASMGATE), ("baseline", BASELINE)]
        .iter()
        .enumerate()
    {
        let x = width / 2.0 - 110.0 + 130.0 * i as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            x + 24.0,
            x + 30.0,
            legend_y + 4.0,
            y = legend_y
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One panel at `left`: both series against log(clients), y from 0 to the largest value.
fn panel(out: &mut String, left: f64, label: &str, series: &[(usize, f64, f64)]) {
    let top = 1.2 * MARGIN;
    let bottom = top + PANEL_H;
    let max_y = series
        .iter()
        .flat_map(|&(_, a, b)| [a, b])
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let (lo, hi) = series
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(c, _, _)| {
            let c = (c.max(1) as f64).log10();
            (lo.min(c), hi.max(c))
        });
    let span = (hi - lo).max(1.0);
    let x = |clients: usize| left + (((clients.max(1) as f64).log10() - lo) / span) * PANEL_W;
    let y = |v: f64| bottom - v / max_y * PANEL_H;
    let _ = writeln!(
        out,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">clients</text>",
        left + PANEL_W / 2.0,
        top - 8.0,
        left + PANEL_W / 2.0,
        bottom + 34.0
    );
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left + PANEL_W,
            left - 6.0,
            y(v) + 4.0,
            short(v),
            yy = y(v)
        );
    }
    for &(clients, _, _) in series {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{clients}</text>",
            x(clients),
            bottom + 16.0
        );
    }
    for (pick, color) in [(0, WASMGATE), (1, BASELINE)] {
        let points: Vec<String> = series
            .iter()
            .map(|&(c, a, b)| format!("{:.1},{:.1}", x(c), y(if pick == 0 { a } else { b })))
            .collect();
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\"/>",
            points.join(" ")
        );
        for p in &points {
            let (cx, cy) = p.split_once(',').unwrap_or_default();
            let _ = writeln!(
                out,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3.5\" fill=\"{color}\"/>"
            );
        }
    }
}

/// An axis label: 12k, 1.5, 250.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_series_in_both_panels() {
        let points = [
            Point {
                clients: 10,
                wasmgate_rate: 5e4,
                baseline_rate: 8e4,
                wasmgate_p99: 400.0,
                baseline_p99: 200.0,
            },
            Point {
                clients: 100,
                wasmgate_rate: 6e4,
                baseline_rate: 9e4,
                wasmgate_p99: 3000.0,
                baseline_p99: 1500.0,
            },
        ];
        let svg = svg("echo <ws>", &points);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 8);
        assert!(svg.contains("echo &lt;ws&gt;"));
    }
}
