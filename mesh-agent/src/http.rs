//! The agent's HTTP endpoints on `--listen` (default `:1107`), as Kilo serves them: `/health`,
//! `/metrics` and `/graph`.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{Metrics, Status};

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    /// The agent's status (graph, health).
    pub status: Arc<Mutex<Status>>,
}

/// The router: `/` (an index), `/health`, `/metrics`, `/graph`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/graph", get(graph))
        .with_state(state)
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
         <li><a href=\"/graph\">/graph</a></li></ul></body></html>",
    )
}

/// Always 200 with an empty body, as Kilo: the process serves, so it is alive. Whether the last
/// reconcile succeeded is in the metrics (`kilo_errors_total`).
async fn health() -> StatusCode {
    StatusCode::OK
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

const FORMATS: &[&str] = &["dot", "gv", "svg", "png", "bmp", "fig", "gif", "json", "ps"];
const LAYOUTS: &[&str] = &["circo", "dot", "neato", "twopi", "fdp"];

/// The mesh graph. `format` (default `svg`): `dot`/`gv` give DOT text; the others are rendered by
/// Graphviz's `dot` with `layout` (default `circo`), as Kilo does.
async fn graph(State(state): State<HttpState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(topology) = state.status.lock().expect("status lock").topology.clone() else {
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
    let (format, layout) = (format.to_owned(), layout.to_owned());
    let rendered = tokio::task::spawn_blocking(move || render(&dot, &format, &layout)).await;
    match rendered {
        Ok(Some((content_type, bytes))) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "unable to render graph").into_response(),
    }
}

fn render(dot: &str, format: &str, layout: &str) -> Option<(&'static str, Vec<u8>)> {
    let mut child = Command::new("dot")
        .arg(format!("-K{layout}"))
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(dot.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        return None;
    }
    let content_type = match format {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "bmp" => "image/bmp",
        "gif" => "image/gif",
        "json" => "application/json",
        "ps" => "application/postscript",
        _ => "application/octet-stream",
    };
    Some((content_type, output.stdout))
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
