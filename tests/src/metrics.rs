//! The daemons' `/metrics` for end-to-end tests: where they serve it, and a scrape parsed by a
//! Prometheus text parser (`prometheus-parse`), not by our own code.

use prometheus_parse::{Scrape, Value};

/// One scrape of `GET /metrics` at `address` (`IP:PORT`), parsed.
#[derive(Debug)]
pub struct Metrics {
    pub scrape: Scrape,
    /// The answer's text, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Scrapes `address`; the answer must be 200 in the Prometheus text format.
    pub fn scrape(address: &str) -> Result<Self, String> {
        let answer = crate::http_request(address, "/metrics")?;
        if answer.status != 200 {
            return Err(format!("GET http://{address}/metrics: {}", answer.head));
        }
        let content_type = answer.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type").then(|| value.trim().to_owned())
        });
        if content_type.as_deref() != Some("text/plain; version=0.0.4; charset=utf-8") {
            return Err(format!("GET http://{address}/metrics: content type {content_type:?}"));
        }
        let scrape = Scrape::parse(answer.body.lines().map(|l| Ok(l.to_owned()))).map_err(|e| e.to_string())?;
        Ok(Self { scrape, text: answer.body })
    }

    /// The value of the sample `name` whose labels include `labels`, if exactly one has them.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.samples(name, labels);
        let value = matching.next();
        if matching.next().is_some() { None } else { value }
    }

    /// The values of every sample `name` whose labels include `labels`.
    pub fn samples<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = f64> + 'a {
        self.scrape
            .samples
            .iter()
            .filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| number(&s.value))
    }

    /// Every sample `name` with the value of its label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| Some((s.labels.get(label)?.to_owned(), number(&s.value)?)))
            .collect()
    }
}

/// A sample's value, unless it is a histogram's or summary's buckets.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}
