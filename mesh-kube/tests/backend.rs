//! `KubeBackend` against a mock API server (kube-rs's `tower_test` pattern): the exact requests
//! (method, path, query, content type, body), retries, `410 Gone`, outages and coalescing.
//!
//! Every scenario runs under a timeout: a request the test waits for and never gets fails the
//! test instead of hanging it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use mesh_core::backend::{ClusterBackend, LocalAnnouncement};
use mesh_core::{ClusterSnapshot, Granularity, Key, Skipped};
use mesh_kube::annotations::{self, DEFAULT_TOPOLOGY_LABEL};
use mesh_kube::{KubeBackend, RetryPolicy};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const NODES: &str = "/api/v1/nodes";
const PEERS: &str = "/apis/kilo.squat.ai/v1alpha1/peers";
/// Lists come from the API server's watch cache, as client-go's informers read them.
const LIST_QUERY: &str = "resourceVersion=0&resourceVersionMatch=NotOlderThan";

fn watch_query(resource_version: &str) -> String {
    format!("watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={resource_version}")
}

/// A request as the API server received it.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

type Responder = SendResponse<Response<Body>>;

/// The API server side of the mock. Requests of the node and peer watchers interleave in any
/// order, so `expect` waits for a matching request and keeps the others for later `expect`s.
struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    stash: Vec<(Received, Responder)>,
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    pairs.sort();
    pairs
}

impl ApiServer {
    fn start() -> (Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer { handle, stash: Vec::new() })
    }

    /// Waits for `method path?query` (the query compared as a set of pairs).
    async fn expect(&mut self, method: &str, path: &str, query: &str) -> (Received, Responder) {
        let query = query_pairs(query);
        let matches =
            |received: &Received| received.method == method && received.path == path && received.query == query;
        if let Some(index) = self.stash.iter().position(|(received, _)| matches(received)) {
            return self.stash.remove(index);
        }
        loop {
            let (request, responder) = self.handle.next_request().await.expect("the client is gone");
            let (parts, body) = request.into_parts();
            let received = Received {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: query_pairs(parts.uri.query().unwrap_or_default()),
                content_type: parts.headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()),
                body: body.collect().await.unwrap().to_bytes().to_vec(),
            };
            if matches(&received) {
                return (received, responder);
            }
            self.stash.push((received, responder));
        }
    }

    /// Answers `method path?query` with `status` and `body`, returning the request.
    async fn answer(&mut self, method: &str, path: &str, query: &str, status: u16, body: Value) -> Received {
        let (received, responder) = self.expect(method, path, query).await;
        responder.send_response(json_response(status, &body));
        received
    }

    /// Answers a watch with these events; the body then ends, as a watch's does after its timeout.
    async fn watch_events(&mut self, path: &str, resource_version: &str, events: &[Value]) {
        let (_, responder) = self.expect("GET", path, &watch_query(resource_version)).await;
        let mut body = Vec::new();
        for event in events {
            body.extend(serde_json::to_vec(event).unwrap());
            body.push(b'\n');
        }
        responder.send_response(Response::builder().status(200).body(Body::from(body)).unwrap());
    }

    /// No request arrives within `wait`.
    async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(request) = tokio::time::timeout(wait, self.handle.next_request()).await {
            panic!("unexpected request {:?}", request.map(|(request, _)| request.uri().clone()));
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn node(name: &str, resource_version: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "resourceVersion": resource_version, "annotations": annotations,
                        "labels": {DEFAULT_TOPOLOGY_LABEL: "eu"}},
           "spec": {"podCIDR": "10.2.0.0/24"},
           "status": {"conditions": []}})
}

fn node_list(resource_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": resource_version}, "items": items})
}

fn key(byte: u8) -> Key {
    Key::from_bytes([byte; 32])
}

fn peer(name: &str, resource_version: &str, public_key: &str) -> Value {
    json!({"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
           "metadata": {"name": name, "resourceVersion": resource_version},
           "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": public_key}})
}

fn peer_list(resource_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "PeerList",
           "metadata": {"resourceVersion": resource_version}, "items": items})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy { attempts: 4, initial: Duration::from_millis(10), max: Duration::from_millis(40) }
}

fn backend(client: Client) -> KubeBackend {
    KubeBackend::new(client, "node-a", DEFAULT_TOPOLOGY_LABEL)
        .with_debounce(Duration::from_millis(20))
        .with_retry_policy(fast_retries())
}

/// Fails the test if `scenario` does not finish in time.
async fn within_timeout<T>(scenario: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("scenario timed out: a request the test waits for was never sent")
}

fn names(snapshot: &ClusterSnapshot) -> (Vec<&str>, Vec<&str>) {
    (
        snapshot.nodes.iter().map(|node| node.name.as_str()).collect(),
        snapshot.peers.iter().map(|peer| peer.name.as_str()).collect(),
    )
}

/// The first list of nodes (`rv 100`: a, b) and peers (`rv 200`: laptop), and its snapshot.
async fn sync(backend: &mut KubeBackend, server: &mut ApiServer) -> ClusterSnapshot {
    let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
        server
            .answer("GET", NODES, LIST_QUERY, 200, node_list("100", vec![node("a", "1", &[]), node("b", "2", &[])]))
            .await;
        server
            .answer("GET", PEERS, LIST_QUERY, 200, peer_list("200", vec![peer("laptop", "3", &key(1).to_base64())]))
            .await;
    });
    let snapshot = snapshot.unwrap().unwrap();
    assert_eq!(names(&snapshot), (vec!["a", "b"], vec!["laptop"]));
    snapshot
}

#[tokio::test]
async fn lists_then_watches_nodes_and_peers_with_the_exact_requests() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        let key_a = key(7).to_base64();
        let (first, ()) = tokio::join!(backend.next_snapshot(), async {
            let list = node_list(
                "100",
                vec![
                    node(
                        "a",
                        "1",
                        &[
                            (annotations::KEY, &key_a),
                            (annotations::ENDPOINT, "192.0.2.1:51820"),
                            (annotations::LAST_SEEN, "1700000000"),
                        ],
                    ),
                    node("b", "2", &[(annotations::PERSISTENT_KEEPALIVE, "often")]),
                ],
            );
            let received = server.answer("GET", NODES, LIST_QUERY, 200, list).await;
            assert!(received.body.is_empty());
            let peers =
                peer_list("200", vec![peer("laptop", "3", &key(1).to_base64()), peer("broken", "4", "not-a-key")]);
            server.answer("GET", PEERS, LIST_QUERY, 200, peers).await;
        });
        let first = first.unwrap().expect("the stream never ends");
        assert_eq!(names(&first), (vec!["a", "b"], vec!["laptop"]));
        let a = &first.nodes[0];
        assert_eq!((a.key, a.location.as_str(), a.last_seen), (Some(key(7)), "eu", Some(1_700_000_000)));
        assert_eq!(a.pod_subnet, Some("10.2.0.0/24".parse().unwrap()));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now - first.now).abs() <= 5, "now is the current Unix time");
        // The invalid peer is skipped with Kilo's reason; the bad keepalive is reported.
        let diagnostics = backend.diagnostics();
        assert_eq!(
            diagnostics.skipped,
            vec![Skipped::peer(
                "broken",
                "WireGuard public key is not base64 encoded: illegal base64 data at input byte 3"
            )]
        );
        assert_eq!(diagnostics.warnings.len(), 1);
        assert_eq!(diagnostics.warnings[0].name, "b");
        assert_eq!(diagnostics.warnings[0].annotation.as_deref(), Some(annotations::PERSISTENT_KEEPALIVE));
        assert_eq!(backend.local_node().map(|node| node.spec.name.as_str()), None, "node-a is not in this cluster");

        // Watches resume from the lists' resourceVersions; events change the next snapshot.
        let (second, ()) = tokio::join!(backend.next_snapshot(), async {
            server
                .watch_events(
                    NODES,
                    "100",
                    &[
                        event("MODIFIED", node("b", "101", &[(annotations::PERSISTENT_KEEPALIVE, "25")])),
                        event("ADDED", node("c", "102", &[])),
                    ],
                )
                .await;
        });
        let second = second.unwrap().unwrap();
        assert_eq!(names(&second), (vec!["a", "b", "c"], vec!["laptop"]));
        assert_eq!(second.nodes[1].persistent_keepalive, 25);
        assert_eq!(backend.diagnostics().warnings, vec![]);

        // After the body ends the watch is resumed from the last event's resourceVersion.
        let (third, ()) = tokio::join!(backend.next_snapshot(), async {
            server.watch_events(NODES, "102", &[event("DELETED", node("c", "103", &[]))]).await;
            server.watch_events(PEERS, "200", &[event("DELETED", peer("laptop", "201", &key(1).to_base64()))]).await;
        });
        assert_eq!(names(&third.unwrap().unwrap()), (vec!["a", "b"], vec![]));
        // Both watches are re-opened (paced: the backend must be read meanwhile) and wait.
        let reopened = async {
            let _nodes = server.expect("GET", NODES, &watch_query("103")).await;
            let _peers = server.expect("GET", PEERS, &watch_query("201")).await;
        };
        tokio::select! {
            snapshot = backend.next_snapshot() => panic!("no change, no snapshot: {snapshot:?}"),
            () = reopened => {}
        }
    })
    .await;
}

#[tokio::test]
async fn announce_sends_one_merge_patch_of_the_owned_annotations() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    let announcement = LocalAnnouncement {
        hostname: "node-a".into(),
        key: Some(key(1)),
        endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
        internal_ip: Some("10.0.0.5/24".parse().unwrap()),
        wireguard_ip: None,
        last_seen: 1_700_000_000,
        discovered_endpoints: BTreeMap::from([(key(2), "5.5.5.5:3333".parse().unwrap())]),
        granularity: Granularity::Full,
        cni_compatibility_ip: None,
        failover_capable: true,
        leader_unreachable: Some("node-b".into()),
    };
    within_timeout(async {
        let (result, received) = tokio::join!(
            backend.announce(&announcement),
            server.answer("PATCH", "/api/v1/nodes/node-a", "fieldManager=mesh-agent", 200, node("node-a", "5", &[]))
        );
        result.unwrap();
        assert_eq!(received.content_type.as_deref(), Some("application/merge-patch+json"));
        assert_eq!(
            received.json(),
            json!({"metadata": {"annotations": {
                "kilo.squat.ai/endpoint": "[2001:db8::1]:51820",
                "kilo.squat.ai/internal-ip": "10.0.0.5/24",
                "kilo.squat.ai/key": key(1).to_base64(),
                "kilo.squat.ai/last-seen": "1700000000",
                "kilo.squat.ai/wireguard-ip": "",
                "kilo.squat.ai/discovered-endpoints":
                    format!(r#"{{"{}":{{"IP":"5.5.5.5","Port":3333,"Zone":""}}}}"#, key(2).to_base64()),
                "kilo.squat.ai/granularity": "full",
                "kilo.squat.ai/cni-compatibility-ip": "",
                "mesh.kilo-rs/capabilities": "failover-v1",
                "mesh.kilo-rs/leader-unreachable": "node-b",
            }}})
        );

        // Another node's announcement is refused without a request.
        let other = LocalAnnouncement { hostname: "node-b".into(), ..announcement.clone() };
        let error = backend.announce(&other).await.unwrap_err();
        assert!(error.to_string().contains(r#"failed to announce node "node-b""#), "{error}");
        server.assert_quiet(Duration::from_millis(50)).await;
    })
    .await;
}

#[tokio::test]
async fn announce_retries_server_errors_but_not_client_errors() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    let announcement = LocalAnnouncement { hostname: "node-a".into(), ..LocalAnnouncement::default() };
    const PATCH_QUERY: &str = "fieldManager=mesh-agent";
    const PATH: &str = "/api/v1/nodes/node-a";
    within_timeout(async {
        // 500, then 429, then success: three identical requests.
        let started = tokio::time::Instant::now();
        let (result, ()) = tokio::join!(backend.announce(&announcement), async {
            let first = server.answer("PATCH", PATH, PATCH_QUERY, 500, status(500, "InternalError", "etcd")).await;
            let second =
                server.answer("PATCH", PATH, PATCH_QUERY, 429, status(429, "TooManyRequests", "slow down")).await;
            let third = server.answer("PATCH", PATH, PATCH_QUERY, 200, node("node-a", "5", &[])).await;
            assert_eq!(first.body, second.body);
            assert_eq!(second.body, third.body);
        });
        result.unwrap();
        // Jittered backoff: at least half of 10 ms + 20 ms.
        assert!(started.elapsed() >= Duration::from_millis(15), "{:?}", started.elapsed());

        // A client error is final at once.
        let (result, _) = tokio::join!(
            backend.announce(&announcement),
            server.answer("PATCH", PATH, PATCH_QUERY, 403, status(403, "Forbidden", "nodes is forbidden"))
        );
        let error = result.unwrap_err();
        let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
        assert!(chain.contains(r#"failed to announce node "node-a""#), "{chain}");
        assert!(chain.contains(r#"failed to patch the annotations of node "node-a""#), "{chain}");
        server.assert_quiet(Duration::from_millis(50)).await;

        // Retries are bounded: `attempts` requests, then the error.
        let (result, ()) = tokio::join!(backend.announce(&announcement), async {
            for _ in 0..fast_retries().attempts {
                server.answer("PATCH", PATH, PATCH_QUERY, 503, status(503, "ServiceUnavailable", "down")).await;
            }
        });
        assert!(result.is_err());
        server.assert_quiet(Duration::from_millis(100)).await;
    })
    .await;
}

#[tokio::test]
async fn clean_up_removes_every_owned_annotation_in_one_patch() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        let (result, ()) = tokio::join!(backend.clean_up("node-a"), async {
            // No read first (RBAC without `get`); the patch is retried after a 500.
            server
                .answer(
                    "PATCH",
                    "/api/v1/nodes/node-a",
                    "fieldManager=mesh-agent",
                    500,
                    status(500, "InternalError", "etcd"),
                )
                .await;
            let patch = server.answer("PATCH", "/api/v1/nodes/node-a", "fieldManager=mesh-agent", 200, json!({})).await;
            assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
            // cni-compatibility-ip too, which Kilo forgets; `null` of a key that is not there is a
            // no-op, and user annotations (and Kilo's force-endpoint, leader...) are not named.
            assert_eq!(
                patch.json(),
                json!({"metadata": {"annotations": {
                    "kilo.squat.ai/cni-compatibility-ip": null,
                    "kilo.squat.ai/discovered-endpoints": null,
                    "kilo.squat.ai/endpoint": null,
                    "kilo.squat.ai/granularity": null,
                    "kilo.squat.ai/internal-ip": null,
                    "kilo.squat.ai/key": null,
                    "kilo.squat.ai/last-seen": null,
                    "kilo.squat.ai/wireguard-ip": null,
                    "mesh.kilo-rs/capabilities": null,
                    "mesh.kilo-rs/leader-unreachable": null,
                }}})
            );
        });
        result.unwrap();
        server.assert_quiet(Duration::from_millis(50)).await;

        // No node: nothing to clean.
        let (result, _) = tokio::join!(
            backend.clean_up("gone"),
            server.answer(
                "PATCH",
                "/api/v1/nodes/gone",
                "fieldManager=mesh-agent",
                404,
                status(404, "NotFound", "nodes \"gone\" not found")
            )
        );
        result.unwrap();
        server.assert_quiet(Duration::from_millis(50)).await;

        // Any other refusal is an error that names the node.
        let (result, _) = tokio::join!(
            backend.clean_up("node-a"),
            server.answer(
                "PATCH",
                "/api/v1/nodes/node-a",
                "fieldManager=mesh-agent",
                403,
                status(403, "Forbidden", "nodes \"node-a\" is forbidden")
            )
        );
        let error = result.unwrap_err().to_string();
        assert!(error.contains("node-a"), "{error}");
    })
    .await;
}

/// Calls `next_snapshot` until it returns a snapshot; the errors it returned on the way.
async fn next_despite_errors(backend: &mut KubeBackend) -> (ClusterSnapshot, usize) {
    let mut errors = 0;
    loop {
        match backend.next_snapshot().await {
            Ok(Some(snapshot)) => return (snapshot, errors),
            Ok(None) => panic!("the backend ended"),
            Err(_) => errors += 1,
        }
    }
}

#[tokio::test]
async fn failed_lists_are_retried_and_nothing_is_returned_before_both_lists() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        let ((snapshot, errors), ()) = tokio::join!(next_despite_errors(&mut backend), async {
            server.answer("GET", NODES, LIST_QUERY, 500, status(500, "InternalError", "etcd")).await;
            server.answer("GET", PEERS, LIST_QUERY, 200, peer_list("200", vec![])).await;
            server.answer("GET", NODES, LIST_QUERY, 503, status(503, "ServiceUnavailable", "down")).await;
            let (_, responder) = server.expect("GET", NODES, LIST_QUERY).await;
            responder.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
            // Only this list completes the cluster; a snapshot before it would lack node "a".
            server.answer("GET", NODES, LIST_QUERY, 200, node_list("100", vec![node("a", "1", &[])])).await;
        });
        assert_eq!(names(&snapshot), (vec!["a"], vec![]));
        assert_eq!(errors, 3, "each failed list is reported once");
        assert!(backend.is_synced());
        assert_eq!(backend.last_watch_error(), None);
    })
    .await;
}

fn gone() -> Value {
    status(410, "Expired", "too old resource version: 100 (250)")
}

#[tokio::test]
async fn a_410_gone_watch_event_relists_and_snapshots_go_on() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        sync(&mut backend, &mut server).await;
        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server.watch_events(NODES, "100", &[event("ERROR", gone())]).await;
            // The relist: b was deleted and c added while the watch was away.
            server
                .answer(
                    "GET",
                    NODES,
                    LIST_QUERY,
                    200,
                    node_list("300", vec![node("a", "1", &[]), node("c", "250", &[])]),
                )
                .await;
        });
        // The relist replaced the nodes at once: never an empty or partial cluster in between.
        assert_eq!(names(&snapshot.unwrap().unwrap()), (vec!["a", "c"], vec!["laptop"]));

        // The stream keeps going from the relist's resourceVersion.
        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server.watch_events(NODES, "300", &[event("ADDED", node("d", "301", &[]))]).await;
        });
        assert_eq!(names(&snapshot.unwrap().unwrap()), (vec!["a", "c", "d"], vec!["laptop"]));
    })
    .await;
}

#[tokio::test]
async fn a_410_gone_answer_to_the_watch_request_relists_too() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        sync(&mut backend, &mut server).await;
        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server.answer("GET", PEERS, &watch_query("200"), 410, gone()).await;
            let peers = peer_list(
                "400",
                vec![peer("laptop", "3", &key(1).to_base64()), peer("phone", "399", &key(2).to_base64())],
            );
            server.answer("GET", PEERS, LIST_QUERY, 200, peers).await;
        });
        assert_eq!(names(&snapshot.unwrap().unwrap()), (vec!["a", "b"], vec!["laptop", "phone"]));
        server.expect("GET", PEERS, &watch_query("400")).await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_api_server_keeps_the_last_cluster() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        sync(&mut backend, &mut server).await;
        // Outage: every watch fails, by status or by transport. No snapshot may come out of it.
        let outage = async {
            for _ in 0..3 {
                server.answer("GET", NODES, &watch_query("100"), 503, status(503, "ServiceUnavailable", "down")).await;
                let (_, responder) = server.expect("GET", PEERS, &watch_query("200")).await;
                responder.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
            }
        };
        let mut errors = 0;
        let reads = async {
            loop {
                match backend.next_snapshot().await {
                    Err(_) => errors += 1,
                    snapshot => panic!("a snapshot during an outage: {snapshot:?}"),
                }
            }
        };
        tokio::select! {
            () = reads => {}
            () = outage => {}
        }
        assert!(errors >= 2, "the failed watches are reported (the agent fails static): {errors}");
        assert!(backend.last_watch_error().is_some_and(|error| error.starts_with("failed to watch")));

        // Back again: the cancelled wait lost nothing, the next change is delivered in full.
        let ((snapshot, _), ()) = tokio::join!(next_despite_errors(&mut backend), async {
            server
                .watch_events(NODES, "100", &[event("MODIFIED", node("b", "101", &[(annotations::LEADER, "")]))])
                .await;
        });
        assert_eq!(names(&snapshot), (vec!["a", "b"], vec!["laptop"]));
        assert!(snapshot.nodes[1].leader);
    })
    .await;
}

#[tokio::test]
async fn bursts_make_one_snapshot_and_no_op_changes_none() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client).with_debounce(Duration::from_millis(300));
    within_timeout(async {
        sync(&mut backend, &mut server).await;
        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server
                .watch_events(
                    NODES,
                    "100",
                    &[
                        event("MODIFIED", node("a", "101", &[(annotations::LOCATION, "paris")])),
                        event("ADDED", node("c", "102", &[])),
                    ],
                )
                .await;
            server
                .watch_events(NODES, "102", &[event("MODIFIED", node("b", "103", &[(annotations::LOCATION, "rome")]))])
                .await;
            server.watch_events(PEERS, "200", &[event("ADDED", peer("phone", "201", &key(2).to_base64()))]).await;
        });
        let snapshot = snapshot.unwrap().unwrap();
        assert_eq!(names(&snapshot), (vec!["a", "b", "c"], vec!["laptop", "phone"]));
        let locations: Vec<&str> = snapshot.nodes.iter().map(|node| node.location.as_str()).collect();
        assert_eq!(locations, ["paris", "rome", "eu"]);

        // A change that translates to the same cluster (a new resourceVersion, a status update)
        // is no snapshot.
        let no_op = async {
            server.watch_events(NODES, "103", &[event("MODIFIED", node("c", "104", &[]))]).await;
            // The next watch stays open.
            let _open = server.expect("GET", NODES, &watch_query("104")).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        tokio::select! {
            snapshot = backend.next_snapshot() => panic!("a snapshot without a change: {snapshot:?}"),
            _ = no_op => {}
        }
    })
    .await;
}

#[tokio::test]
async fn check_crd_reads_the_peer_crd() {
    let (client, mut server) = ApiServer::start();
    let backend = backend(client);
    const PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/peers.kilo.squat.ai";
    within_timeout(async {
        let crd = serde_json::to_value(mesh_kube::crd::crd()).unwrap();
        let (result, _) = tokio::join!(backend.check_crd(), server.answer("GET", PATH, "", 200, crd));
        result.unwrap();
        let (result, _) = tokio::join!(
            backend.check_crd(),
            server.answer("GET", PATH, "", 404, status(404, "NotFound", "not found"))
        );
        let error = result.unwrap_err().to_string();
        assert!(error.starts_with(r#"failed to get CustomResourceDefinition "peers.kilo.squat.ai""#), "{error}");
    })
    .await;
}

/// Syncs, then the Nodes watch is answered 503: the read returns the error. The cluster as
/// synced.
async fn sync_then_fail_the_nodes_watch(backend: &mut KubeBackend, server: &mut ApiServer) -> ClusterSnapshot {
    let before = sync(backend, server).await;
    let (error, ()) = tokio::join!(backend.next_snapshot(), async {
        server.answer("GET", NODES, &watch_query("100"), 503, status(503, "ServiceUnavailable", "down")).await;
    });
    assert!(error.is_err(), "{error:?}");
    before
}

/// After a failed watch, the first watch the API server accepts again returns a snapshot
/// (the same cluster): the agent learns at once that it sees the cluster again, even when
/// nothing changed.
#[tokio::test]
async fn the_first_accepted_watch_after_an_outage_returns_a_snapshot() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        let before = sync_then_fail_the_nodes_watch(&mut backend, &mut server).await;
        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server.watch_events(NODES, "100", &[]).await;
        });
        let snapshot = snapshot.expect("a snapshot").expect("not the end");
        assert_eq!((&snapshot.nodes, &snapshot.peers), (&before.nodes, &before.peers));
    })
    .await;
}

/// Both watches fail while the agent is not reading (it pauses after each read error): one
/// error names both, so the agent pauses once, not once per resource, and the next read finds
/// no stale failure and sees the cluster again.
#[tokio::test]
async fn watches_that_failed_together_make_one_error() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        sync(&mut backend, &mut server).await;
        let mut read = Box::pin(backend.next_snapshot());
        let (nodes, peers) = tokio::select! {
            result = &mut read => panic!("a read before the watches were answered: {result:?}"),
            requests = async {
                let (_, nodes) = server.expect("GET", NODES, &watch_query("100")).await;
                let (_, peers) = server.expect("GET", PEERS, &watch_query("200")).await;
                (nodes, peers)
            } => requests,
        };
        nodes.send_response(json_response(503, &status(503, "ServiceUnavailable", "down")));
        peers.send_response(json_response(503, &status(503, "ServiceUnavailable", "down")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = read.await.expect_err("the failed watches").to_string();
        assert!(error.contains("failed to watch nodes") && error.contains("failed to watch peers"), "{error}");

        let (snapshot, ()) = tokio::join!(backend.next_snapshot(), async {
            server.watch_events(NODES, "100", &[]).await;
            server.watch_events(PEERS, "200", &[]).await;
        });
        assert!(snapshot.is_ok(), "no stale failure after the API server is back: {snapshot:?}");
    })
    .await;
}

/// Only Nodes fail: a Peers watch that the API server accepts meanwhile (as it does every few
/// minutes) says nothing about Nodes. The agent stays blind until a Nodes watch gets through.
#[tokio::test]
async fn a_watch_of_another_resource_does_not_end_the_blindness() {
    let (client, mut server) = ApiServer::start();
    let mut backend = backend(client);
    within_timeout(async {
        let before = sync_then_fail_the_nodes_watch(&mut backend, &mut server).await;
        let mut read = Box::pin(backend.next_snapshot());
        tokio::select! {
            result = &mut read => panic!("a snapshot while Nodes still fail: {result:?}"),
            () = async {
                server.watch_events(PEERS, "200", &[]).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => {}
        }
        let (snapshot, ()) = tokio::join!(read, server.watch_events(NODES, "100", &[]));
        let snapshot = snapshot.expect("a snapshot once Nodes are served").expect("not the end");
        assert_eq!((&snapshot.nodes, &snapshot.peers), (&before.nodes, &before.peers));
    })
    .await;
}
