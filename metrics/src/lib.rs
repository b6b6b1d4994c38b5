//! `mirari-metrics`: the metrics endpoint every daemon serves on `--http-listen`.
//!
//! Each daemon builds one explicit [`Registry`] (no global one): it registers the counters and
//! histograms that its effectful loops were handed, and collectors that read its state at
//! scrape time (the raft status, the registry, the instance records, `/proc`). This crate only
//! serves that registry: [`serve`] answers `GET /metrics` in the Prometheus text format
//! (`text/plain; version=0.0.4`), or in OpenMetrics text when the scraper asks for it in
//! `Accept`, as Prometheus does.
//!
//! It is plain HTTP without authentication, meant for loopback or a management network. It
//! answers nothing but `GET /metrics` (other paths 404, other methods 405) and never reads a
//! request body; hyper bounds the request head. Scrapes are encoded one at a time on a blocking
//! thread (collectors take locks and read files), so a flood of scrapes waits in line instead
//! of multiplying the work or stalling the async workers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use prometheus_client;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format, the default.
pub const PROMETHEUS_TEXT: &str = prometheus_text::CONTENT_TYPE;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server failed")]
    Serve(#[source] std::io::Error),
}

/// The socket `GET /metrics` is served on, bound before the daemon starts its work so a taken
/// address fails the start.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    pub async fn bind(address: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(address).await.map_err(|source| MetricsError::Bind { address, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `registry` on `listener` until the future is dropped (it ends only on an error).
pub async fn serve(listener: MetricsListener, registry: Registry) -> Result<(), MetricsError> {
    serve_with(listener, router(registry)).await
}

/// Serves `routes` ([`router`] merged with a daemon's own) on `listener`.
pub async fn serve_with(listener: MetricsListener, routes: Router) -> Result<(), MetricsError> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving metrics on http://{address}/metrics (plain HTTP, no authentication)");
    }
    axum::serve(listener.listener, routes).await.map_err(MetricsError::Serve)
}

struct Scraped {
    registry: Registry,
    /// One encoding at a time.
    encoding: Semaphore,
}

/// The HTTP routes: `GET /metrics`, nothing else.
pub fn router(registry: Registry) -> Router {
    let state = Arc::new(Scraped { registry, encoding: Semaphore::new(1) });
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

async fn scrape(State(state): State<Arc<Scraped>>, headers: HeaderMap) -> Response {
    let openmetrics = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(wants_openmetrics);
    let Ok(_permit) = state.encoding.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let encoding = state.clone();
    match tokio::task::spawn_blocking(move || encode(&encoding.registry, openmetrics)).await {
        Ok(Ok(body)) => {
            let content_type = if openmetrics { OPENMETRICS_TEXT } else { PROMETHEUS_TEXT };
            ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus lists it first, then the
/// Prometheus text format at a lower weight).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|choice| {
        let mut parts = choice.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.replace(' ', "") == "q=0");
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The registry in the OpenMetrics text format, or else in the Prometheus one.
pub fn encode(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    if openmetrics {
        text::encode(&mut body, registry)?;
    } else {
        prometheus_text::encode(&mut body, registry)?;
    }
    Ok(body)
}

/// Writes one metric without labels from a collector (a value read at scrape time).
pub fn encode_metric(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Writes a labelled family from a collector: one metric of `metric_type` per label set.
pub fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    members: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in members {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Buckets for latencies in seconds, 250 µs to about 16 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_25, 2.0, 17)
}

/// A histogram of latencies in seconds with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn ask(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("mirari_test_things", "Things", counter.clone());
        counter.inc_by(3);
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, registry));

        let text = ask(address, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        assert!(text.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{text}");
        assert!(text.contains("# TYPE mirari_test_things_total counter\nmirari_test_things_total 3\n"), "{text}");

        let open =
            ask(address, "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n").await;
        assert!(open.contains(OPENMETRICS_TEXT), "{open}");
        assert!(open.trim_end().ends_with("# EOF"), "{open}");

        assert!(ask(address, "GET / HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.0 404"));
        assert!(ask(address, "GET /metrics/x HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.0 404"));
        let post = ask(address, "POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello").await;
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        server.abort();
    }

    #[test]
    fn negotiates_the_format_from_accept() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
                          q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text; q=0, text/plain"));
    }

    #[test]
    fn latency_buckets_span_a_quarter_millisecond_to_seconds() {
        let buckets: Vec<f64> = latency_buckets().collect();
        assert_eq!(buckets.first(), Some(&0.000_25));
        assert!(buckets.last().is_some_and(|last| *last > 10.0 && *last < 20.0), "{buckets:?}");
    }
}
