//! One agent must never hammer the API server: against a fake API server that fails in each
//! way (a watch it ends at once, failing lists, failing watches, no connection), the request
//! rate after the first seconds stays under one per second. Time is tokio's paused clock, so
//! minutes pass at once; a hot loop cannot advance it, so the server stops answering after
//! [`HOT_LOOP`] requests and the count shows it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use mesh_core::backend::ClusterBackend;
use mesh_kube::KubeBackend;
use mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_test::mock::Handle;

const NODES: &str = "/api/v1/nodes";

/// More requests than a paced agent sends in the whole scenario.
const HOT_LOOP: usize = 2_000;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Lists work; every watch is answered `200` with a body that ends at once.
    WatchEndsAtOnce,
    /// Every list is answered `500`.
    ListsFail,
    /// Lists work; every watch request is answered `500`.
    WatchesFail,
    /// No request gets through (connection refused).
    Unreachable,
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

fn list(path: &str) -> Value {
    if path == NODES {
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": []})
    } else {
        json!({"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "PeerList", "metadata": {"resourceVersion": "1"},
               "items": []})
    }
}

fn server_error() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500})
}

/// Answers every request with `fault`, noting when each came.
async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, fault: Fault, log: Arc<Mutex<Vec<Instant>>>) {
    while let Some((request, respond)) = handle.next_request().await {
        let count = {
            let mut log = log.lock().expect("the log");
            log.push(Instant::now());
            log.len()
        };
        if count >= HOT_LOOP {
            return;
        }
        let watch = request.uri().query().is_some_and(|query| query.contains("watch=true"));
        let path = request.uri().path().to_owned();
        match (fault, watch) {
            (Fault::Unreachable, _) => {
                respond.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
            }
            (Fault::ListsFail, false) | (Fault::WatchesFail, true) => {
                respond.send_response(json_response(500, &server_error()))
            }
            (_, true) => {
                respond.send_response(Response::builder().status(200).body(Body::empty()).expect("a response"))
            }
            (_, false) => respond.send_response(json_response(200, &list(&path))),
        }
    }
}

/// Requests per second the agent sends in `[from, until)` of a run of `until` against `fault`.
async fn request_rate(fault: Fault, from: Duration, until: Duration) -> (f64, usize) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(serve(handle, fault, Arc::clone(&log)));
    let start = Instant::now();
    let mut backend = KubeBackend::new(Client::new(service, "default"), "node-a", DEFAULT_TOPOLOGY_LABEL);
    let _ = tokio::time::timeout(until, async {
        loop {
            let _ = backend.next_snapshot().await;
        }
    })
    .await;
    drop(backend);
    server.abort();
    let log = log.lock().expect("the log");
    let late = log.iter().filter(|at| at.duration_since(start) >= from).count();
    (late as f64 / (until - from).as_secs_f64(), log.len())
}

async fn assert_paced(fault: Fault) {
    let (rate, total) = request_rate(fault, Duration::from_secs(20), Duration::from_secs(320)).await;
    assert!(total < HOT_LOOP, "{fault:?}: a hot loop ({total} requests before the server stopped answering)");
    assert!(rate < 1.0, "{fault:?}: {rate:.2} requests/s after the first 20 s ({total} in all)");
}

#[tokio::test(start_paused = true)]
async fn a_watch_the_server_ends_at_once_is_not_restarted_at_once() {
    assert_paced(Fault::WatchEndsAtOnce).await;
}

#[tokio::test(start_paused = true)]
async fn failing_lists_are_retried_with_growing_backoff() {
    assert_paced(Fault::ListsFail).await;
}

#[tokio::test(start_paused = true)]
async fn failing_watches_are_retried_with_growing_backoff() {
    assert_paced(Fault::WatchesFail).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_api_server_is_retried_with_growing_backoff() {
    assert_paced(Fault::Unreachable).await;
}
