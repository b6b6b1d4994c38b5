//! The web console, served beside `/metrics` on `--http-listen` when that is a loopback
//! address: a page (`coordinator/web/`, plain JavaScript compiled into the binary: nothing is
//! fetched from elsewhere) and the read-only JSON and server-sent-event API it uses.
//!
//! - `GET /api/overview`: this node's raft view, hosts with capacity and use, deployments with
//!   their counts and rollout progress, networks, and instances (the first
//!   [`OVERVIEW_INSTANCES`]) as this coordinator applied them.
//! - `GET /api/events`: the event stream (server-sent events, each with its position as the
//!   event ID, so a browser reconnecting with `Last-Event-ID` resumes without a gap).
//! - `GET /api/instances/{id}/console`: an instance's console, followed (server-sent events).
//!
//! It has no authentication of its own, so it is served to loopback only: an operator reaches
//! it through `ssh -L`. Requests whose `Host` is not a loopback name are refused, so a web page
//! elsewhere cannot reach it through a DNS name that resolves to 127.0.0.1 (DNS rebinding).

pub mod overview;

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use mirari_core::clock;
use mirari_proto::agent as wire_agent;
use mirari_proto::convert::ClusterEventJson;
use mirari_proto::coordinator as pb;

use crate::agents::AgentClients;
use crate::driver::RaftHandle;
use crate::events::{Filter, Position};

/// How many instances the overview lists (it says how many there are in all).
pub const OVERVIEW_INSTANCES: NonZeroUsize = NonZeroUsize::new(1000).unwrap();
/// How many of the newest events a new reader of `/api/events` starts with.
const EVENTS_FIRST: usize = 200;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

#[derive(Debug, Clone)]
struct Console {
    raft: RaftHandle,
    agents: Arc<AgentClients>,
}

/// The console's routes, to merge with `/metrics`.
pub fn router(raft: RaftHandle, agents: Arc<AgentClients>) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/overview", get(overview))
        .route("/api/events", get(events))
        .route("/api/instances/{id}/console", get(console))
        .with_state(Console { raft, agents })
        .layer(middleware::from_fn(loopback_host_only))
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // The page loads only its own script and style and talks only to this server.
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
        ),
    ];
    (headers, body).into_response()
}

/// Whether `Host` names this machine's loopback: `localhost`, `127.x.y.z` or `[::1]`, with
/// any port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if !is_loopback_host(host) {
        let why = "the web console answers only requests for a loopback address (localhost, 127.0.0.1, [::1])\n";
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    next.run(request).await
}

async fn overview(State(console): State<Console>) -> Response {
    let view = {
        let info = crate::service::cluster_info(&console.raft);
        let machine = console.raft.machine();
        overview::overview(&machine.registry, info, clock::wall_ms(), OVERVIEW_INSTANCES)
    };
    let body = serde_json::to_string(&view).expect("the overview serializes");
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// `index.offset`, the SSE event ID of an event.
fn event_id(event: &pb::ClusterEvent) -> String {
    format!("{}.{}", event.index, event.offset)
}

fn parse_event_id(text: &str) -> Option<Position> {
    let (index, offset) = text.split_once('.')?;
    Some(Position { index: index.parse().ok()?, offset: offset.parse::<u32>().ok()?.checked_add(1)? })
}

async fn events(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(parse_event_id);
    let filter = Filter::default();
    let from = resume.unwrap_or_else(|| console.raft.events().tail_start(EVENTS_FIRST, &filter));
    let stream = console.raft.watch_events(Some(from), filter, true).map(|event| {
        Ok(match event {
            Ok(event) => {
                let event = pb::ClusterEvent::from(&event);
                let data = serde_json::to_string(&ClusterEventJson::from(&event)).expect("an event serializes");
                SseEvent::default().id(event_id(&event)).data(data)
            }
            // The browser then reconnects with its last ID and is told the same: shown, not looped on silently.
            Err(gone) => SseEvent::default().event("gone").data(gone.to_string()),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn console(State(console): State<Console>, Path(id): Path<String>) -> Response {
    let request = wire_agent::ConsoleRequest { id, follow: true };
    let chunks = match console.agents.console(&console.raft, request).await {
        Ok(chunks) => chunks,
        Err(status) => return (StatusCode::NOT_FOUND, format!("{}\n", status.message())).into_response(),
    };
    let stream = chunks.map(|chunk| {
        Ok::<_, Infallible>(match chunk {
            Ok(chunk) => {
                let mut text = String::from_utf8_lossy(&chunk.data).into_owned();
                if chunk.dropped > 0 {
                    text = format!("[{} bytes dropped: the reader fell behind]\n{text}", chunk.dropped);
                }
                SseEvent::default().data(serde_json::to_string(&text).expect("a string serializes"))
            }
            Err(status) => SseEvent::default().event("end").data(status.message()),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in ["localhost", "localhost:9400", "127.0.0.1:9400", "127.1.2.3", "[::1]:9400", "[::1]", "LOCALHOST"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in
            ["", "evil.example:9400", "10.0.0.1:9400", "localhost.evil.example", "[fe80::1]:80", "127.0.0.1.nip.io"]
        {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn an_event_id_resumes_right_after_its_event() {
        assert_eq!(parse_event_id("42.3"), Some(Position { index: 42, offset: 4 }));
        assert_eq!(parse_event_id("42"), None);
        assert_eq!(parse_event_id("x.1"), None);
    }
}
