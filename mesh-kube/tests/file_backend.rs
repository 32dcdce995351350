//! The file backend on real directories: snapshots, change detection, announcements, clean-up,
//! malformed files, and several agents sharing one directory.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_core::backend::{ClusterBackend, LocalAnnouncement};
use mesh_core::{ClusterSnapshot, Granularity, Key, NodeSpec, ObjectKind};
use mesh_kube::Error;
use mesh_kube::annotations::{self, DEFAULT_TOPOLOGY_LABEL, OWNED_ANNOTATIONS, announcement_annotations};
use mesh_kube::file::FileBackend;
use serde_json::{Value, json};
use tokio::time::timeout;

/// Comfortably more than a poll interval plus the settling time.
const QUIET: Duration = Duration::from_millis(1200);
/// The promise: a change is seen within a second.
const NOTICE: Duration = Duration::from_secs(1);

/// A directory under the system's temporary directory, removed on drop (also when a test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let unique = format!(
            "mesh-agent-file-backend-{test}-{}-{nanos}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        fs::create_dir_all(dir.join("nodes")).unwrap();
        fs::create_dir_all(dir.join("peers")).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn node(&self, file: &str) -> PathBuf {
        self.0.join("nodes").join(file)
    }

    fn peer(&self, file: &str) -> PathBuf {
        self.0.join("peers").join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes a file as a careful writer does: a temporary file renamed over the target.
fn put(path: &Path, text: &str) {
    let temporary = path.with_file_name(format!(".{}.test-tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&temporary, text).unwrap();
    fs::rename(&temporary, path).unwrap();
}

fn key(byte: u8) -> Key {
    Key::from_bytes([byte; 32])
}

/// A Node as `kubectl get node NAME -o yaml` prints it.
fn kubectl_node(name: &str, key: Key, last_seen: i64) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  annotations:
    example.com/owner: team-x
    kilo.squat.ai/endpoint: 192.0.2.1:51820
    kilo.squat.ai/granularity: location
    kilo.squat.ai/internal-ip: 10.0.0.1/24
    kilo.squat.ai/key: {key}
    kilo.squat.ai/last-seen: "{last_seen}"
    kilo.squat.ai/leader: "true"
    kilo.squat.ai/wireguard-ip: 10.4.0.1/16
    node.alpha.kubernetes.io/ttl: "0"
  creationTimestamp: "2025-01-01T00:00:00Z"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    topology.kubernetes.io/region: eu
  name: {name}
  resourceVersion: "4242"
  uid: 0b8c2a55-0000-4000-8000-000000000001
spec:
  podCIDR: 10.244.0.0/24
  podCIDRs:
  - 10.244.0.0/24
  taints:
  - effect: NoSchedule
    key: example.com/dedicated
    value: mesh
status:
  addresses:
  - address: 10.0.0.1
    type: InternalIP
  - address: {name}
    type: Hostname
  conditions:
  - lastHeartbeatTime: "2025-01-01T00:00:00Z"
    lastTransitionTime: "2025-01-01T00:00:00Z"
    message: kubelet is posting ready status
    reason: KubeletReady
    status: "True"
    type: Ready
"#,
        key = key.to_base64()
    )
}

/// A small Node with the given annotations, as YAML.
fn node(name: &str, pod_cidr: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: serde_json::Map<String, Value> =
        annotations.iter().map(|(key, value)| ((*key).to_owned(), json!(value))).collect();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr},
    });
    serde_norway::to_string(&node).unwrap()
}

fn peer(name: &str, public_key: &str) -> String {
    format!(
        "apiVersion: kilo.squat.ai/v1alpha1\nkind: Peer\nmetadata:\n  name: {name}\nspec:\n  allowedIPs:\n  \
         - 10.5.0.1/32\n  publicKey: {public_key}\n  persistentKeepalive: 10\n"
    )
}

fn read_yaml(path: &Path) -> Value {
    serde_norway::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn backend(dir: &TempDir, hostname: &str) -> FileBackend {
    FileBackend::new(dir.path(), hostname, DEFAULT_TOPOLOGY_LABEL).unwrap()
}

async fn next_within(backend: &mut FileBackend, limit: Duration) -> ClusterSnapshot {
    timeout(limit, backend.next_snapshot())
        .await
        .unwrap_or_else(|_| panic!("no snapshot within {limit:?}"))
        .unwrap()
        .expect("the file backend never ends")
}

async fn assert_no_snapshot(backend: &mut FileBackend) {
    if let Ok(snapshot) = timeout(QUIET, backend.next_snapshot()).await {
        panic!("unexpected snapshot: {snapshot:?}");
    }
}

fn names(snapshot: &ClusterSnapshot) -> Vec<&str> {
    snapshot.nodes.iter().map(|node| node.name.as_str()).collect()
}

fn find<'s>(snapshot: &'s ClusterSnapshot, name: &str) -> &'s NodeSpec {
    snapshot.nodes.iter().find(|node| node.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

fn unix_now() -> i64 {
    mesh_core::time::unix_seconds(SystemTime::now())
}

fn only_file(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_first_snapshot_is_the_cluster_as_it_is() {
    let dir = TempDir::new("first");
    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_000));
    put(
        &dir.node("b.yml"),
        &node("b", "10.244.1.0/24", &[(annotations::LOCATION, "us"), (annotations::PERSISTENT_KEEPALIVE, "25")]),
    );
    put(&dir.node("c.json"), r#"{"kind": "Node", "metadata": {"name": "c"}, "spec": {"podCIDR": "10.244.2.0/24"}}"#);
    put(&dir.peer("laptop.yaml"), &peer("laptop", &key(9).to_base64()));
    put(&dir.peer("broken.yaml"), &peer("broken", "c2hvcnQ="));
    // Not object files: dotfiles, backups, temporary files, other extensions.
    for ignored in [".hidden.yaml", "a.yaml~", ".a.yaml.17.0.tmp", "a.yaml.tmp", "README.md", "#a.yaml#"] {
        fs::write(dir.node(ignored), "not: [valid").unwrap();
    }

    let before = unix_now();
    let mut backend = backend(&dir, "a");
    let snapshot = next_within(&mut backend, Duration::from_millis(300)).await;
    assert!((before..=unix_now()).contains(&snapshot.now), "now = {}", snapshot.now);

    assert_eq!(names(&snapshot), ["a", "b", "c"]);
    let a = find(&snapshot, "a");
    assert_eq!(a.key, Some(key(1)));
    assert_eq!(a.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
    assert_eq!(a.internal_ip, Some("10.0.0.1/24".parse().unwrap()));
    assert_eq!(a.wireguard_ip, Some("10.4.0.1/16".parse().unwrap()));
    assert_eq!(a.last_seen, Some(1_700_000_000));
    assert_eq!(a.pod_subnet, Some("10.244.0.0/24".parse().unwrap()));
    assert_eq!(a.granularity, Some(Granularity::Location));
    assert!(a.leader);
    assert_eq!(a.location, "eu", "from the topology label");
    let b = find(&snapshot, "b");
    assert_eq!((b.location.as_str(), b.persistent_keepalive, b.key), ("us", 25, None));
    assert_eq!(find(&snapshot, "c").pod_subnet, Some("10.244.2.0/24".parse().unwrap()));

    assert_eq!(snapshot.peers.len(), 1);
    let laptop = &snapshot.peers[0];
    assert_eq!(laptop.name, "laptop");
    assert_eq!(laptop.public_key, Some(key(9)));
    assert_eq!(laptop.allowed_ips, ["10.5.0.1/32".parse().unwrap()]);
    assert_eq!(laptop.persistent_keepalive, 10);

    let diagnostics = backend.diagnostics();
    assert_eq!(diagnostics.skipped.len(), 1, "{diagnostics:?}");
    let skipped = &diagnostics.skipped[0];
    assert_eq!((skipped.kind, skipped.name.as_str()), (ObjectKind::Peer, "broken"));
    assert_eq!(skipped.reason, "WireGuard public key has invalid length");
    assert!(diagnostics.files.is_empty(), "{diagnostics:?}");
    // What the running agent receives with the snapshot.
    let for_agent = mesh_core::backend::ClusterBackend::diagnostics(&backend);
    assert_eq!((&for_agent.skipped, &for_agent.warnings), (&diagnostics.skipped, &diagnostics.warnings));
    assert_eq!(backend.local_node().map(|node| node.spec.key), Some(Some(key(1))));
}

#[tokio::test]
async fn file_names_kinds_and_documents_are_checked() {
    let dir = TempDir::new("checks");
    // No kind, no apiVersion, no name: the file name is the name.
    put(&dir.node("anonymous.yaml"), "spec:\n  podCIDR: 10.244.9.0/24\n");
    put(&dir.node("x.yaml"), &node("y", "10.244.1.0/24", &[]));
    put(&dir.node("p.yaml"), &peer("p", &key(1).to_base64()));
    put(&dir.node("two.yaml"), &format!("{}---\n{}", node("two", "10.244.2.0/24", &[]), node("two", "", &[])));
    put(&dir.node("empty.yaml"), "");
    put(&dir.node("d.yaml"), &node("d", "10.244.3.0/24", &[]));
    put(&dir.node("d.json"), r#"{"metadata": {"name": "d"}}"#);
    // A trailing document separator is not a second object.
    put(&dir.node("e.yaml"), &format!("---\n{}---\n", node("e", "10.244.4.0/24", &[])));

    let mut backend = backend(&dir, "anonymous");
    let snapshot = next_within(&mut backend, Duration::from_millis(300)).await;
    assert_eq!(names(&snapshot), ["anonymous", "d", "e"]);
    assert_eq!(find(&snapshot, "d").pod_subnet, Some("10.244.3.0/24".parse().unwrap()), "d.yaml wins over d.json");

    let diagnostics = backend.diagnostics();
    let skipped: Vec<(&str, &str)> =
        diagnostics.skipped.iter().map(|skipped| (skipped.name.as_str(), skipped.reason.as_str())).collect();
    assert_eq!(skipped.len(), 4, "{skipped:#?}");
    let reason = |name: &str| skipped.iter().find(|(skipped, _)| *skipped == name).unwrap().1;
    assert!(reason("x").contains("metadata.name \"y\" differs from the file name"), "{}", reason("x"));
    assert!(reason("x").starts_with(&dir.node("x.yaml").display().to_string()), "{}", reason("x"));
    assert!(reason("p").contains("kind is \"Peer\""), "{}", reason("p"));
    assert!(reason("two").contains("2 objects"), "{}", reason("two"));
    assert!(reason("empty").contains("empty"), "{}", reason("empty"));
    let duplicate = diagnostics.warnings.iter().find(|warning| warning.name == "d").unwrap();
    assert!(duplicate.reason.contains("d.json: describes the same object as"), "{}", duplicate.reason);
    assert_eq!(diagnostics.files.len(), 5, "{:#?}", diagnostics.files);
}

#[tokio::test]
async fn construction_needs_the_directory_and_nodes() {
    let dir = TempDir::new("construction");
    let missing = dir.path().join("missing");
    let error = FileBackend::new(&missing, "a", DEFAULT_TOPOLOGY_LABEL).unwrap_err();
    assert!(matches!(error, Error::OpenDirectory { .. }), "{error:?}");
    assert!(error.to_string().contains(&missing.display().to_string()), "{error}");

    fs::remove_dir(dir.path().join("nodes")).unwrap();
    let error = FileBackend::new(dir.path(), "a", DEFAULT_TOPOLOGY_LABEL).unwrap_err();
    assert!(error.to_string().contains(&dir.path().join("nodes").display().to_string()), "{error}");

    fs::write(dir.path().join("nodes"), "").unwrap();
    let error = FileBackend::new(dir.path(), "a", DEFAULT_TOPOLOGY_LABEL).unwrap_err();
    assert!(error.to_string().contains("not a directory"), "{error}");

    fs::remove_file(dir.path().join("nodes")).unwrap();
    fs::create_dir(dir.path().join("nodes")).unwrap();
    fs::remove_dir(dir.path().join("peers")).unwrap();
    assert!(FileBackend::new(dir.path(), "a", DEFAULT_TOPOLOGY_LABEL).is_ok(), "peers/ is optional");
    for hostname in ["", "../a", ".a"] {
        let error = FileBackend::new(dir.path(), hostname, DEFAULT_TOPOLOGY_LABEL).unwrap_err();
        assert!(matches!(error, Error::InvalidName { .. }), "{hostname:?}: {error:?}");
    }
}

#[tokio::test]
async fn changes_are_noticed_within_a_second() {
    let dir = TempDir::new("changes");
    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_000));
    let mut backend = backend(&dir, "a");
    next_within(&mut backend, NOTICE).await;

    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_030));
    let snapshot = next_within(&mut backend, NOTICE).await;
    assert_eq!(find(&snapshot, "a").last_seen, Some(1_700_000_030));

    put(&dir.node("b.yaml"), &node("b", "10.244.1.0/24", &[]));
    assert_eq!(names(&next_within(&mut backend, NOTICE).await), ["a", "b"]);

    // Written in place, not renamed: seen all the same.
    fs::write(dir.peer("laptop.yaml"), peer("laptop", &key(9).to_base64())).unwrap();
    assert_eq!(next_within(&mut backend, NOTICE).await.peers.len(), 1);

    fs::remove_file(dir.node("a.yaml")).unwrap();
    assert_eq!(names(&next_within(&mut backend, NOTICE).await), ["b"]);

    fs::remove_dir_all(dir.path().join("peers")).unwrap();
    assert!(next_within(&mut backend, NOTICE).await.peers.is_empty(), "without peers/ there are no peers");
}

#[tokio::test]
async fn an_identical_rewrite_yields_no_snapshot() {
    let dir = TempDir::new("identical");
    let text = kubectl_node("a", key(1), 1_700_000_000);
    put(&dir.node("a.yaml"), &text);
    put(&dir.peer("laptop.yaml"), &peer("laptop", &key(9).to_base64()));
    let mut backend = backend(&dir, "a");
    next_within(&mut backend, NOTICE).await;

    put(&dir.node("a.yaml"), &text); // a new inode, the same content
    fs::write(dir.peer("laptop.yaml"), peer("laptop", &key(9).to_base64())).unwrap(); // in place
    // Different text, same meaning for the mesh: a status update.
    put(&dir.node("a.yaml"), &text.replace("kubelet is posting ready status", "still ready"));
    assert_no_snapshot(&mut backend).await;

    // The backend still reports real changes after the cancelled waits.
    put(&dir.node("a.yaml"), &kubectl_node("a", key(2), 1_700_000_000));
    assert_eq!(find(&next_within(&mut backend, NOTICE).await, "a").key, Some(key(2)));
}

#[tokio::test]
async fn a_burst_of_writes_gives_one_snapshot() {
    let dir = TempDir::new("burst");
    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_000));
    let mut backend = backend(&dir, "a");
    next_within(&mut backend, NOTICE).await;

    for (index, name) in ["b", "c", "d", "e", "f"].into_iter().enumerate() {
        put(&dir.node(&format!("{name}.yaml")), &node(name, &format!("10.244.{}.0/24", index + 1), &[]));
    }
    put(&dir.peer("laptop.yaml"), &peer("laptop", &key(9).to_base64()));
    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_030));

    let snapshot = next_within(&mut backend, NOTICE).await;
    assert_eq!(names(&snapshot), ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(snapshot.peers.len(), 1);
    assert_eq!(find(&snapshot, "a").last_seen, Some(1_700_000_030));
    assert_no_snapshot(&mut backend).await;
}

fn announcement(hostname: &str, last_seen: i64) -> LocalAnnouncement {
    LocalAnnouncement {
        hostname: hostname.into(),
        key: Some(key(7)),
        endpoint: Some("198.51.100.7:51820".parse().unwrap()),
        internal_ip: Some("10.0.0.7/24".parse().unwrap()),
        wireguard_ip: None,
        last_seen,
        discovered_endpoints: [(key(8), "203.0.113.8:4444".parse().unwrap())].into(),
        granularity: Granularity::Full,
        cni_compatibility_ip: Some("10.1.0.1/32".parse().unwrap()),
        failover_capable: true,
        leader_unreachable: Some("b".into()),
    }
}

#[tokio::test]
async fn announce_rewrites_only_the_owned_annotations() {
    let dir = TempDir::new("announce");
    let path = dir.node("a.yaml");
    let mut original = kubectl_node("a", key(1), 1_700_000_000);
    original = original.replace("  creationTimestamp", "    kilo.squat.ai/location: lab\n  creationTimestamp");
    put(&path, &original);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let mut backend = backend(&dir, "a");
    next_within(&mut backend, NOTICE).await;

    let now = unix_now();
    backend.announce(&announcement("a", now)).await.unwrap();

    let mut expected: Value = serde_norway::from_str(&original).unwrap();
    let annotations = expected["metadata"]["annotations"].as_object_mut().unwrap();
    for (key, value) in announcement_annotations(&announcement("a", now)) {
        annotations.insert(key, Value::String(value));
    }
    assert_eq!(read_yaml(&path), expected, "only the owned annotations change");
    assert_eq!(read_yaml(&path)["metadata"]["annotations"]["kilo.squat.ai/wireguard-ip"], "", "Kilo writes \"\"");
    assert_eq!(only_file(&dir.path().join("nodes")), ["a.yaml"], "no temporary file is left behind");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);

    // The backend reads its own announcement back.
    let snapshot = next_within(&mut backend, NOTICE).await;
    let a = find(&snapshot, "a");
    assert_eq!((a.key, a.last_seen, a.granularity), (Some(key(7)), Some(now), Some(Granularity::Full)));
    assert_eq!(a.location, "lab");
    assert_eq!(a.discovered_endpoints[&key(8)], "203.0.113.8:4444".parse().unwrap());

    // Nothing to change: no write (the inode and the modification time stay).
    let before = fs::metadata(&path).unwrap();
    backend.announce(&announcement("", now)).await.unwrap();
    let after = fs::metadata(&path).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()));
    assert_no_snapshot(&mut backend).await;

    // A new heartbeat: a new file, renamed over the old one.
    backend.announce(&announcement("a", now + 30)).await.unwrap();
    assert_ne!(fs::metadata(&path).unwrap().ino(), before.ino());
    assert_eq!(read_yaml(&path)["metadata"]["annotations"][annotations::LAST_SEEN], (now + 30).to_string());
    assert_eq!(only_file(&dir.path().join("nodes")), ["a.yaml"]);
}

#[tokio::test]
async fn announce_needs_the_node_file() {
    let dir = TempDir::new("announce-missing");
    let mut backend = backend(&dir, "ghost");
    let error = backend.announce(&announcement("ghost", 1)).await.unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("failed to announce node \"ghost\": "), "{message}");
    assert!(message.contains(&dir.node("ghost.yaml").display().to_string()), "{message}");
    assert!(only_file(&dir.path().join("nodes")).is_empty(), "the backend does not invent nodes");

    let error = backend.announce(&announcement("other", 1)).await.unwrap_err();
    assert!(error.to_string().contains("only its own node \"ghost\""), "{error}");

    // A malformed own file is not overwritten.
    put(&dir.node("ghost.yaml"), "metadata: [\n");
    let error = backend.announce(&announcement("ghost", 1)).await.unwrap_err();
    assert!(error.to_string().contains("failed to parse node file"), "{error}");
    assert_eq!(fs::read_to_string(dir.node("ghost.yaml")).unwrap(), "metadata: [\n");
}

/// A node whose own file was emptied restores its annotations with the next heartbeat
/// instead of stopping it (and dropping out of the mesh after 60 s).
#[tokio::test]
async fn an_emptied_own_node_file_gets_the_annotations_back() {
    let dir = TempDir::new("announce-emptied");
    put(&dir.node("e.yaml"), "");
    let mut backend = backend(&dir, "e");
    backend.announce(&LocalAnnouncement { key: Some(key(3)), last_seen: 42, ..announcement("e", 0) }).await.unwrap();
    let text = fs::read_to_string(dir.node("e.yaml")).unwrap();
    assert!(text.contains("name: e") && text.contains("kind: Node"), "{text}");
    assert!(text.contains(&key(3).to_base64()), "the key is restored: {text}");
    assert!(text.contains("kilo.squat.ai/last-seen") && text.contains("42"), "the heartbeat is restored: {text}");
}

#[tokio::test]
async fn announce_keeps_a_json_file_json() {
    let dir = TempDir::new("announce-json");
    let path = dir.node("j.json");
    put(
        &path,
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "j"}, "spec": {"podCIDR": "10.244.0.0/24"}}"#,
    );
    let mut backend = backend(&dir, "j");
    backend.announce(&announcement("j", 5)).await.unwrap();
    let written: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).expect("still JSON");
    assert_eq!(written["metadata"]["annotations"][annotations::LAST_SEEN], "5");
    assert_eq!(written["spec"]["podCIDR"], "10.244.0.0/24");
    assert_eq!(find(&next_within(&mut backend, NOTICE).await, "j").last_seen, Some(5));
}

#[tokio::test]
async fn clean_up_removes_exactly_the_owned_annotations() {
    let dir = TempDir::new("clean-up");
    let path = dir.node("a.yaml");
    put(&path, &kubectl_node("a", key(1), 1_700_000_000));
    let mut backend = backend(&dir, "a");
    backend.announce(&announcement("a", 1_700_000_030)).await.unwrap();
    let mut annotated = read_yaml(&path);
    let annotations = annotated["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.insert(annotations::FORCE_ENDPOINT.into(), json!("203.0.113.1:51820"));
    put(&path, &serde_norway::to_string(&annotated).unwrap());

    backend.clean_up("a").await.unwrap();
    let mut expected = annotated.clone();
    let annotations = expected["metadata"]["annotations"].as_object_mut().unwrap();
    for key in OWNED_ANNOTATIONS {
        assert!(annotations.remove(*key).is_some(), "{key} was there");
    }
    let kept: Vec<&str> = annotations.keys().map(String::as_str).collect();
    assert_eq!(
        kept,
        ["example.com/owner", annotations::FORCE_ENDPOINT, annotations::LEADER, "node.alpha.kubernetes.io/ttl"]
    );
    assert_eq!(read_yaml(&path), expected);
    assert_eq!(only_file(&dir.path().join("nodes")), ["a.yaml"]);

    // Nothing left to remove: no write.
    let inode = fs::metadata(&path).unwrap().ino();
    backend.clean_up("a").await.unwrap();
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    // No file, nothing to do; a name that is no file name is an error.
    backend.clean_up("gone").await.unwrap();
    let error = backend.clean_up("../a").await.unwrap_err();
    assert!(error.to_string().starts_with("failed to clean up node \"../a\": invalid node name"), "{error}");
}

#[tokio::test]
async fn malformed_files_are_reported_and_the_backend_goes_on() {
    let dir = TempDir::new("malformed");
    let good_a = kubectl_node("a", key(1), 1_700_000_000);
    put(&dir.node("a.yaml"), &good_a);
    let mut backend = backend(&dir, "a");
    let first = next_within(&mut backend, NOTICE).await;

    // A file that never parsed is left out and reported with its line.
    let bad = dir.node("bad.yaml");
    put(&bad, "apiVersion: v1\nkind: Node\nmetadata:\n  name: bad\n  annotations: {x: y\nspec: {}\n");
    put(&dir.node("typed.yaml"), "apiVersion: v1\nkind: Node\nmetadata:\n  name: typed\nspec: 3\n");
    let snapshot = next_within(&mut backend, NOTICE).await;
    assert_eq!(snapshot.nodes, first.nodes);
    let diagnostics = backend.diagnostics().clone();
    assert_eq!(diagnostics.files.len(), 2, "{diagnostics:#?}");
    let problem = &diagnostics.files[0];
    assert_eq!(problem.path, bad);
    assert_eq!(problem.line, Some(6), "{problem:?}");
    assert!(!problem.kept_last_valid);
    let skipped = diagnostics.skipped.iter().find(|skipped| skipped.name == "bad").unwrap();
    assert!(skipped.reason.starts_with(&format!("{}: ", bad.display())), "{}", skipped.reason);
    assert!(skipped.reason.contains("line 6"), "{}", skipped.reason);
    let typed = &diagnostics.files[1];
    assert_eq!(typed.line, Some(5), "a type error has its line too: {typed:?}");
    assert!(typed.message.contains("spec: invalid type"), "{typed:?}");

    // A node caught half-written keeps its last valid version, and says so.
    fs::write(dir.node("a.yaml"), &good_a[..good_a.len() / 3]).unwrap();
    let snapshot = next_within(&mut backend, NOTICE).await;
    assert_eq!(find(&snapshot, "a"), find(&first, "a"));
    let diagnostics = backend.diagnostics();
    let kept = diagnostics.files.iter().find(|problem| problem.path == dir.node("a.yaml")).unwrap();
    assert!(kept.kept_last_valid, "{kept:?}");
    let warning = diagnostics.warnings.iter().find(|warning| warning.name == "a").unwrap();
    assert!(warning.reason.ends_with("; using its last valid version"), "{}", warning.reason);

    // Repairs are picked up.
    put(&bad, &node("bad", "10.244.7.0/24", &[]));
    put(&dir.node("a.yaml"), &kubectl_node("a", key(3), 1_700_000_000));
    fs::remove_file(dir.node("typed.yaml")).unwrap();
    let snapshot = next_within(&mut backend, NOTICE).await;
    assert_eq!(names(&snapshot), ["a", "bad"]);
    assert_eq!(find(&snapshot, "a").key, Some(key(3)));
    assert_eq!(backend.diagnostics(), &Default::default());
}

#[tokio::test]
async fn a_vanished_nodes_directory_keeps_the_cluster_and_says_so() {
    let dir = TempDir::new("vanished");
    put(&dir.node("a.yaml"), &kubectl_node("a", key(1), 1_700_000_000));
    let mut backend = backend(&dir, "a");
    let before = next_within(&mut backend, NOTICE).await;

    let aside = dir.path().join("nodes-aside");
    fs::rename(dir.path().join("nodes"), &aside).unwrap();
    // Reported once as an error (the agent fails static), never as an empty cluster.
    let error = timeout(NOTICE, backend.next_snapshot()).await.expect("the failure is reported").unwrap_err();
    assert!(error.to_string().contains(&dir.path().join("nodes").display().to_string()), "{error}");
    assert_no_snapshot(&mut backend).await;
    let error = backend.last_scan_error().expect("the failure is readable");
    assert!(error.contains(&dir.path().join("nodes").display().to_string()), "{error}");

    // Back: the same cluster comes as a snapshot, so the agent knows it sees it again.
    fs::rename(&aside, dir.path().join("nodes")).unwrap();
    let after = next_within(&mut backend, NOTICE).await;
    assert_eq!(after.nodes, before.nodes);
    assert_eq!(backend.last_scan_error(), None);
}

#[tokio::test]
async fn agents_sharing_a_directory_see_each_other() {
    let dir = TempDir::new("shared");
    put(&dir.node("a.yaml"), &node("a", "10.244.0.0/24", &[]));
    put(&dir.node("b.yaml"), &node("b", "10.244.1.0/24", &[("example.com/owner", "team-b")]));
    let mut agent_a = backend(&dir, "a");
    let mut agent_b = backend(&dir, "b");
    next_within(&mut agent_a, NOTICE).await;
    next_within(&mut agent_b, NOTICE).await;

    agent_a.announce(&LocalAnnouncement { key: Some(key(10)), last_seen: 100, ..announcement("a", 0) }).await.unwrap();
    agent_b.announce(&LocalAnnouncement { key: Some(key(11)), last_seen: 200, ..announcement("b", 0) }).await.unwrap();

    let seen_by_a = next_within(&mut agent_a, NOTICE).await;
    let seen_by_b = next_within(&mut agent_b, NOTICE).await;
    assert_eq!(seen_by_a, ClusterSnapshot { now: seen_by_a.now, ..seen_by_b.clone() });
    assert_eq!((find(&seen_by_b, "a").key, find(&seen_by_b, "a").last_seen), (Some(key(10)), Some(100)));
    assert_eq!((find(&seen_by_a, "b").key, find(&seen_by_a, "b").last_seen), (Some(key(11)), Some(200)));
    assert_eq!(read_yaml(&dir.node("b.yaml"))["metadata"]["annotations"]["example.com/owner"], "team-b");
    assert_eq!(only_file(&dir.path().join("nodes")), ["a.yaml", "b.yaml"]);

    // Each agent cleans up only what it is told to, in that node's file.
    agent_b.clean_up("b").await.unwrap();
    let seen_by_a = next_within(&mut agent_a, NOTICE).await;
    assert_eq!(find(&seen_by_a, "b").key, None);
    assert_eq!(find(&seen_by_a, "a").key, Some(key(10)));
}
