//! The RBAC in `deploy/` equals what the Kubernetes backend uses: a mock API server records
//! every request of an agent's life (the CRD check, start-up lists, watches, announce, heartbeat,
//! clean-up), and the ClusterRole of deploy/base/rbac.yaml must grant each of them and nothing
//! that none of them needs. Cozystack's chart, which runs this image as a drop-in, must grant them
//! too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::Client;
use kube::client::Body;
use mesh_core::backend::{ClusterBackend, LocalAnnouncement};
use mesh_core::{Granularity, Key};
use mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL;
use mesh_kube::{KubeBackend, RetryPolicy};
use serde_json::{Value, json};

const DEPLOY_RBAC: &str = include_str!("../../deploy/base/rbac.yaml");
const COZYSTACK_RBAC: &str = include_str!("fixtures/cozystack-kilo-rbac.yaml");

/// One authorization check of the API server: what RBAC rules are matched against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    api_group: String,
    resource: String,
    verb: String,
    /// The object's name for requests on one object; `None` for collections.
    name: Option<String>,
}

impl Access {
    /// The access an HTTP request needs: `/api/v1/RESOURCE[/NAME]` or
    /// `/apis/GROUP/VERSION/RESOURCE[/NAME]` (cluster-scoped), the verb from the method and query.
    fn of(method: &str, path: &str, query: &str) -> Access {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (api_group, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("unexpected path {path}"),
        };
        let (resource, name) = match rest {
            [resource] => (*resource, None),
            [resource, name] => (*resource, Some((*name).to_owned())),
            _ => panic!("unexpected path {path}"),
        };
        let watch = query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1");
        let verb = match (method, &name, watch) {
            ("GET", _, true) => "watch",
            ("GET", None, false) => "list",
            ("GET", Some(_), false) => "get",
            ("PATCH", _, _) => "patch",
            ("PUT", _, _) => "update",
            ("POST", _, _) => "create",
            ("DELETE", None, _) => "deletecollection",
            ("DELETE", Some(_), _) => "delete",
            _ => panic!("unexpected method {method}"),
        };
        Access { api_group: api_group.to_owned(), resource: resource.to_owned(), verb: verb.to_owned(), name }
    }

    /// Whether `rule` grants this access, as the RBAC authorizer decides (no wildcards here:
    /// deploy/ uses none, and `*` would grant more than the backend needs).
    fn granted_by(&self, rule: &PolicyRule) -> bool {
        let has =
            |list: &Option<Vec<String>>, value: &str| list.iter().flatten().any(|item| item == value || item == "*");
        let names_match = match (&rule.resource_names, &self.name) {
            (None, _) => true,
            (Some(names), _) if names.is_empty() => true,
            (Some(names), Some(name)) => names.contains(name),
            (Some(_), None) => false,
        };
        has(&rule.api_groups, &self.api_group)
            && has(&rule.resources, &self.resource)
            && rule.verbs.contains(&self.verb)
            && names_match
    }
}

/// Every access the rules grant, spelled out (one per group, resource, verb and name).
fn granted(rules: &[PolicyRule]) -> BTreeSet<Access> {
    let mut accesses = BTreeSet::new();
    for rule in rules {
        let names: Vec<Option<String>> = match &rule.resource_names {
            Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for api_group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        accesses.insert(Access {
                            api_group: api_group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }
    accesses
}

/// The objects of a multi-document YAML file, by kind.
fn objects(yaml: &str) -> BTreeMap<String, Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| -> Value { serde::Deserialize::deserialize(document).expect("RBAC YAML") })
        .filter(|object| !object.is_null())
        .map(|object| (object["kind"].as_str().expect("a kind").to_owned(), object))
        .collect()
}

fn cluster_role(yaml: &str) -> ClusterRole {
    serde_json::from_value(objects(yaml)["ClusterRole"].clone()).expect("a ClusterRole")
}

fn node(name: &str, resource_version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "resourceVersion": resource_version,
                        "labels": {DEFAULT_TOPOLOGY_LABEL: "eu"}},
           "spec": {"podCIDR": "10.2.0.0/24"}})
}

fn json_response(body: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Answers every request as a small cluster would (node-a, then node-b joining through the
/// first node watch once node-a has announced itself; no Peers) and records the access each one needs. Later watches are held
/// open, as an API server holds a quiet watch.
fn serve(client_side: tower_test::mock::Handle<Request<Body>, Response<Body>>) -> Arc<Mutex<Vec<Access>>> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&recorded);
    let crd: Value = serde_norway::from_str(&mesh_kube::crd::crd_yaml()).unwrap();
    tokio::spawn(async move {
        let mut handle = client_side;
        let mut held = Vec::new();
        let mut first_node_watch = None;
        let mut node_b_joined = false;
        while let Some((request, responder)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let access = Access::of(request.method().as_str(), &path, &query);
            record.lock().unwrap().push(access.clone());
            match (access.resource.as_str(), access.verb.as_str()) {
                ("customresourcedefinitions", "get") => responder.send_response(json_response(&crd)),
                ("nodes", "list") => responder.send_response(json_response(&json!({
                    "apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"},
                    "items": [node("node-a", "10")]}))),
                ("peers", "list") => responder.send_response(json_response(&json!({
                    "apiVersion": "kilo.squat.ai/v1alpha1", "kind": "PeerList",
                    "metadata": {"resourceVersion": "10"}, "items": []}))),
                // The first node watch waits for the first announcement; then node-b joins and
                // the body ends, as a watch's does at its timeout, and the watcher watches again.
                ("nodes", "watch") if first_node_watch.is_none() && !node_b_joined => {
                    first_node_watch = Some(responder);
                }
                ("nodes", "watch") | ("peers", "watch") => held.push(responder),
                ("nodes", "patch") => {
                    responder.send_response(json_response(&node("node-a", "12")));
                    if let Some(watch) = first_node_watch.take() {
                        let mut body =
                            serde_json::to_vec(&json!({"type": "ADDED", "object": node("node-b", "11")})).unwrap();
                        body.push(b'\n');
                        watch.send_response(Response::builder().status(200).body(Body::from(body)).unwrap());
                        node_b_joined = true;
                    }
                }
                _ => panic!("the backend made a request this test does not expect: {access:?}"),
            }
        }
    });
    recorded
}

/// The requests of an agent's life against the mock API server.
async fn requests_of_an_agent_life() -> BTreeSet<Access> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let recorded = serve(handle);
    let mut backend = KubeBackend::new(Client::new(service, "default"), "node-a", DEFAULT_TOPOLOGY_LABEL)
        .with_debounce(Duration::from_millis(20))
        .with_retry_policy(RetryPolicy {
            attempts: 1,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
        });
    let life = async {
        backend.check_crd().await.expect("the CRD check");
        let first = backend.next_snapshot().await.expect("the start-up lists").expect("a snapshot");
        assert_eq!(first.nodes.len(), 1);
        let announcement = LocalAnnouncement {
            hostname: "node-a".into(),
            key: Some(Key::from_bytes([1; 32])),
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            internal_ip: Some("10.0.0.5/24".parse().unwrap()),
            wireguard_ip: None,
            last_seen: 1_700_000_000,
            discovered_endpoints: BTreeMap::new(),
            granularity: Granularity::Location,
            cni_compatibility_ip: None,
            failover_capable: true,
            leader_unreachable: None,
        };
        backend.announce(&announcement).await.expect("the announcement");
        let second = backend.next_snapshot().await.expect("the watch").expect("a snapshot");
        assert_eq!(second.nodes.len(), 2, "node-b came through the watch");
        let heartbeat = LocalAnnouncement { last_seen: 1_700_000_030, ..announcement };
        backend.announce(&heartbeat).await.expect("the heartbeat");
        backend.clean_up("node-a").await.expect("the clean-up");
    };
    tokio::time::timeout(Duration::from_secs(10), life).await.expect("the agent's life timed out");
    recorded.lock().unwrap().iter().cloned().collect()
}

fn describe(accesses: &BTreeSet<Access>) -> String {
    accesses
        .iter()
        .map(|a| {
            format!(
                "  {} {}/{}{}",
                a.verb,
                a.api_group,
                a.resource,
                a.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn deploy_rbac_grants_exactly_what_the_backend_uses() {
    let used = requests_of_an_agent_life().await;
    let role = cluster_role(DEPLOY_RBAC);
    let rules = role.rules.clone().unwrap_or_default();
    let refused: BTreeSet<Access> =
        used.iter().filter(|access| !rules.iter().any(|rule| access.granted_by(rule))).cloned().collect();
    assert!(refused.is_empty(), "deploy/base/rbac.yaml does not grant:\n{}", describe(&refused));
    let unused: BTreeSet<Access> = granted(&rules)
        .into_iter()
        .filter(|grant| {
            !used.iter().any(|access| {
                access.api_group == grant.api_group
                    && access.resource == grant.resource
                    && access.verb == grant.verb
                    && (grant.name.is_none() || access.name == grant.name)
            })
        })
        .collect();
    assert!(unused.is_empty(), "deploy/base/rbac.yaml grants what the backend never uses:\n{}", describe(&unused));
    // Named requests are confined to their names where RBAC can: the CRD check.
    assert!(
        rules.iter().any(|rule| rule.resources.as_deref() == Some(&["customresourcedefinitions".to_owned()][..])
            && rule.resource_names.as_deref() == Some(&["peers.kilo.squat.ai".to_owned()][..])),
        "the CRD rule names peers.kilo.squat.ai"
    );
    // Every request of each kind was seen (the life above covers them all).
    let verbs: BTreeSet<(&str, &str)> = used.iter().map(|a| (a.resource.as_str(), a.verb.as_str())).collect();
    let expected = BTreeSet::from([
        ("customresourcedefinitions", "get"),
        ("nodes", "list"),
        ("nodes", "watch"),
        ("nodes", "patch"),
        ("peers", "list"),
        ("peers", "watch"),
    ]);
    assert_eq!(verbs, expected);
}

#[test]
fn the_binding_gives_the_role_to_the_service_account() {
    let objects = objects(DEPLOY_RBAC);
    let account: ServiceAccount = serde_json::from_value(objects["ServiceAccount"].clone()).unwrap();
    let role = cluster_role(DEPLOY_RBAC);
    let binding: ClusterRoleBinding = serde_json::from_value(objects["ClusterRoleBinding"].clone()).unwrap();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), Some(&subjects[0].name)),
        ("ServiceAccount", account.metadata.name.as_ref())
    );
    // Not Kilo's or Cozystack's `kilo`: both may run during a migration.
    assert_ne!(role.metadata.name.as_deref(), Some("kilo"));
    assert_ne!(account.metadata.name.as_deref(), Some("kilo"));
}

#[tokio::test]
async fn cozystack_chart_rbac_grants_what_the_backend_uses() {
    let used = requests_of_an_agent_life().await;
    let rules = cluster_role(COZYSTACK_RBAC).rules.unwrap_or_default();
    let refused: BTreeSet<Access> =
        used.iter().filter(|access| !rules.iter().any(|rule| access.granted_by(rule))).cloned().collect();
    assert!(refused.is_empty(), "Cozystack's kilo ClusterRole does not grant:\n{}", describe(&refused));
}
