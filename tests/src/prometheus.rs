//! Reading `/metrics` the way Prometheus does: a plain HTTP GET, then a strict parse of the
//! text exposition format (version 0.0.4), so a test fails on output a scraper would refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed scrape: every sample by name and labels.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Each metric family's declared type, by family name.
    pub types: BTreeMap<String, String>,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    /// The sample `name` whose labels include every pair of `labels`, summed over the rest
    /// (so `value("x_total", &[])` is the total over all label values); `None` if there is no
    /// such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for ((n, ls), v) in &self.samples {
            let matches = labels
                .iter()
                .all(|(k, want)| ls.iter().any(|(lk, lv)| lk == k && lv == want));
            if n == name && matches {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Every label name used by any sample.
    pub fn label_names(&self) -> BTreeSet<&str> {
        let labels = self.samples.keys().flat_map(|(_, labels)| labels);
        labels.map(|(name, _)| name.as_str()).collect()
    }

    /// As [`Scrape::value`], zero when there is no such sample.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

/// GETs `http://addr/metrics` and parses it; panics on any deviation from the format.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let get = async {
        let mut socket = TcpStream::connect(addr).await?;
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        socket.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("/metrics did not answer")
        .expect("GET /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(body)
}

/// Parses the Prometheus text format strictly: every sample follows a `# TYPE` of its family
/// and appears once.
pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut family: Option<(String, String)> = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "bad metric name in {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    let old = scrape.types.insert(name.into(), kind.into());
                    assert!(old.is_none(), "{name} declared twice");
                    family = Some((name.into(), kind.into()));
                }
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "{line:?}"),
                _ => {}
            }
            continue;
        }
        let (name, labels, value) = sample(line);
        let (fam, kind) = family
            .as_ref()
            .unwrap_or_else(|| panic!("{line:?} has no TYPE"));
        let of_family = name == *fam
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(fam.as_str())));
        assert!(of_family, "{line:?} is not of the family {fam}");
        let old = scrape.samples.insert((name, labels), value);
        assert!(old.is_none(), "{line:?} repeats a sample");
    }
    scrape
}

/// `name{k="v",…} value` → its parts, labels sorted.
fn sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad metric name in {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        while !rest.starts_with('}') {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
            assert!(
                valid_name(key) && !key.contains(':'),
                "bad label in {line:?}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        rest = &rest[1..];
    }
    let mut fields = rest.split_whitespace();
    let value = match fields
        .next()
        .unwrap_or_else(|| panic!("no value in {line:?}"))
    {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
    }
    assert!(fields.next().is_none(), "trailing fields in {line:?}");
    labels.sort();
    (name.to_owned(), labels, value)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_refuses_what_prometheus_would() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"\"} 2\n\
                    x_total{a=\"2\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n";
        let s = parse(text);
        assert_eq!(s.value("x_total", &[]), Some(5.0));
        assert_eq!(s.value("x_total", &[("b", "q\"")]), Some(2.0));
        assert_eq!(s.value("h_count", &[]), Some(1.0));
        assert_eq!(s.value("y", &[]), None);
        for bad in [
            "x 1\n",
            "# TYPE x counter\ny 1\n",
            "# TYPE x counter\nx{a=1} 1\n",
        ] {
            assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad:?}");
        }
    }
}
