//! The agent's HTTP endpoints on `--listen` (default `:1107`), as Kilo serves them: `/health`,
//! `/metrics` and `/graph`; and `/status`, what the agent sees, as JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tracing::warn;

use crate::graph_render::GraphRenderer;
use crate::metrics::{Metrics, Status};

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    /// The agent's status (graph, health).
    pub status: Arc<Mutex<Status>>,
}

/// What the handlers share: the agent's state and the graph renderer.
#[derive(Clone, Debug)]
struct Shared {
    state: HttpState,
    renderer: Arc<GraphRenderer>,
}

/// The router: `/` (an index), `/health`, `/metrics`, `/graph`, `/status`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/graph", get(graph))
        .route("/status", get(status))
        .with_state(Shared { state, renderer: Arc::default() })
}

/// Parses `--listen` as Kilo does: `:1107` means every address on port 1107.
pub fn listen_address(listen: &str) -> Result<std::net::SocketAddr, String> {
    let text = if listen.starts_with(':') { format!("0.0.0.0{listen}") } else { listen.to_owned() };
    text.parse().map_err(|_| format!("invalid value {listen:?} for --listen: expected [HOST]:PORT, e.g. :1107"))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>Internal Kilo API</title></head><body><h1>Internal Kilo API</h1><ul>\
         <li><a href=\"/health\">/health</a></li><li><a href=\"/metrics\">/metrics</a></li>\
         <li><a href=\"/graph\">/graph</a></li><li><a href=\"/status\">/status</a></li></ul></body></html>",
    )
}

/// Always 200 with an empty body, as Kilo: the process serves, so it is alive. Whether the last
/// reconcile succeeded is in the metrics (`kilo_errors_total`).
async fn health() -> StatusCode {
    StatusCode::OK
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.state.metrics.render(),
    )
}

/// What the agent sees, as JSON ([`crate::status`]).
async fn status(State(shared): State<Shared>) -> Response {
    let now = mesh_core::time::unix_seconds(std::time::SystemTime::now());
    let document = crate::status::render(&shared.state.status.lock().expect("status lock"), now);
    ([(header::CONTENT_TYPE, "application/json")], format!("{document:#}\n")).into_response()
}

const FORMATS: &[&str] = &["dot", "gv", "svg", "png", "bmp", "fig", "gif", "json", "ps"];
const LAYOUTS: &[&str] = &["circo", "dot", "neato", "twopi", "fdp"];

/// The mesh graph. `format` (default `svg`): `dot`/`gv` give DOT text; the others are rendered by
/// Graphviz's `dot` with `layout` (default `circo`), as Kilo does, one at a time and with a time
/// limit ([`GraphRenderer`]).
async fn graph(State(shared): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(topology) = shared.state.status.lock().expect("status lock").topology.clone() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "did not find any valid Kilo nodes in the cluster").into_response();
    };
    // Drawn on request, not at every reconcile: a 5,000-node graph takes a while to write.
    let dot = topology.to_dot();
    let format = query.get("format").map_or("svg", String::as_str);
    let layout = query.get("layout").map_or("circo", String::as_str);
    if !FORMATS.contains(&format) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unsupported format").into_response();
    }
    if !LAYOUTS.contains(&layout) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unsupported layout").into_response();
    }
    if format == "dot" || format == "gv" {
        return ([(header::CONTENT_TYPE, "text/vnd.graphviz")], dot).into_response();
    }
    match shared.renderer.render(dot, format, layout).await {
        Ok(rendered) => ([(header::CONTENT_TYPE, rendered.content_type)], rendered.bytes).into_response(),
        Err(error) => {
            warn!(%error, "GET /graph failed");
            // Kilo's status and message; the reason is in the agent's log.
            (StatusCode::INTERNAL_SERVER_ERROR, format!("unable to render graph: {error}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_kilo_forms() {
        assert_eq!(listen_address(":1107").unwrap(), "0.0.0.0:1107".parse().unwrap());
        assert_eq!(listen_address("127.0.0.1:9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert!(listen_address("1107").unwrap_err().contains("--listen"));
    }
}
