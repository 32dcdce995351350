//! The offline tools as a user runs them, on the example cluster in `examples/`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The example's heartbeats are from just before this instant.
const NOW: &str = "1767225600";

fn example() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cozystack-cluster.yaml");
    root.to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-agent")).args(args).output().expect("mesh-agent runs")
}

fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn plan(host: &str, extra: &[&str]) -> Value {
    let example = example();
    let mut args = vec!["plan", "--nodes", &example, "--hostname", host, "--now", NOW, "-o", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(&args)).unwrap()
}

const CILIUM: &[&str] = &["--compatibility=cilium", "--local=false", "--subnet", "100.66.0.0/16"];

#[test]
fn plan_json_follows_the_contract() {
    let plan = plan("onprem-1", CILIUM);
    for key in ["hostname", "leader", "wireguard", "routes", "rules", "firewall", "skipped", "warnings"] {
        assert!(plan.get(key).is_some(), "missing {key}");
    }
    assert_eq!(plan["hostname"], "onprem-1");
    assert_eq!(plan["leader"], true);
    let wireguard = &plan["wireguard"];
    assert_eq!(wireguard["interface"], "kilo0");
    assert_eq!(wireguard["address"], "100.66.0.3/16");
    assert_eq!(wireguard["listen_port"], 51820);
    let peers = wireguard["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "two cloud locations and the laptop: {peers:?}");
    for peer in peers {
        for key in ["public_key", "endpoint", "allowed_ips", "persistent_keepalive", "preshared_key"] {
            assert!(peer.get(key).is_some(), "peer misses {key}");
        }
    }
    // The NATed cloud leaders have a keepalive, so onprem-1 uses the endpoints it discovered.
    let fsn1 = peers.iter().find(|p| p["public_key"] == "sMhBg4bGO3rSh62Tj0y/wdugnnLt+ztShX87RMQztmo=").unwrap();
    assert_eq!(fsn1["endpoint"], "198.51.100.17:51820");
    let allowed: Vec<&str> = fsn1["allowed_ips"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for ip in ["10.244.3.0/24", "10.0.1.2/32", "10.244.4.0/24", "10.0.1.3/32", "100.66.0.2/32"] {
        assert!(allowed.contains(&ip), "{ip} not in {allowed:?}");
    }
    // Cilium without --local: return traffic to local non-leaders goes through the overlay.
    let routes = plan["routes"].as_array().unwrap();
    let back = routes.iter().find(|r| r["dst"] == "192.168.1.12/32" && r["table"] == 1107).expect("return route");
    assert_eq!(back["gateway"], "10.244.1.47");
    assert_eq!(back["dev"], "cilium_tunl");
    assert!(plan["rules"].as_array().unwrap().iter().any(|r| r["iif"] == "kilo0" && r["dst"] == "192.168.1.12/32"));
    let masquerade = plan["firewall"].as_array().unwrap().iter().any(|r| {
        r["family"] == "ipv4"
            && r["table"] == "nat"
            && r["chain"] == "KILO-NAT"
            && r["args"] == serde_json::json!(["-j", "MASQUERADE"])
    });
    assert!(masquerade);
    assert_eq!(plan["skipped"], serde_json::json!([]));
}

#[test]
fn a_non_leader_sends_everything_to_its_leader_through_the_overlay() {
    let plan = plan("onprem-2", CILIUM);
    assert_eq!(plan["leader"], false);
    assert_eq!(plan["wireguard"]["address"], Value::Null);
    assert_eq!(plan["wireguard"]["peers"], serde_json::json!([]));
    for route in plan["routes"].as_array().unwrap() {
        assert_eq!(route["gateway"], "10.244.0.118", "via onprem-1's cilium_host: {route}");
        assert_eq!(route["dev"], "cilium_tunl");
        assert_eq!(route["src"], "192.168.1.12");
    }
}

#[test]
fn stale_nodes_are_skipped_with_the_reason() {
    let example = example();
    let output = run_ok(&["plan", "--nodes", &example, "--hostname", "ams3-a", "--now", "1767225700"]);
    let plan: Value = serde_json::from_str(&output).unwrap();
    let skipped = plan["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 5, "{skipped:?}");
    assert!(
        skipped.iter().any(|s| s["name"] == "onprem-1" && s["reason"] == "not ready: last-seen 109 s ago (limit 60 s)")
    );
}

#[test]
fn plan_text_is_a_readable_summary() {
    let example = example();
    let text = run_ok(&["plan", "--nodes", &example, "--hostname", "onprem-1", "--now", NOW, "-o", "text"]);
    assert!(text.starts_with("onprem-1: leader\n"), "{text}");
    assert!(text.contains("WireGuard kilo0 10.4.0.3/16, listening on 51820, 3 peers:"), "{text}");
    assert!(text.contains("Routes ("), "{text}");
}

#[test]
fn flags_accept_kilo_forms_and_reject_unknown_values() {
    let example = example();
    let base = ["plan", "--nodes", example.as_str(), "--hostname", "onprem-1", "--now", NOW];
    for extra in
        [&["--local"][..], &["--local=true"], &["--local=false"], &["--service-cidr=10.96.0.0/16,10.97.0.0/16"]]
    {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        run_ok(&args);
    }
    let mut args = base.to_vec();
    args.push("--compatibility=cillium");
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("compatibility \"cillium\" unknown; possible values are: flannel, cilium"), "{stderr}");
}

#[test]
fn input_errors_exit_2_and_say_what_is_wrong() {
    let example = example();
    let output = run(&["plan", "--nodes", &example, "--hostname", "nope", "--now", NOW]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("known nodes: ams3-a, fsn1-a, fsn1-b, onprem-1, onprem-2, onprem-3"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["plan", "--nodes", "-", "--hostname", "a"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"kind: Node\nmetadata:\n  name: [a\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("<stdin>: ") && stderr.contains("line 4"), "{stderr}");

    let output = run(&["plan", "--hostname", "a"]);
    assert_eq!(output.status.code(), Some(1), "no input is a usage error");
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes: 0 success, 1 usage error, 2 input error"));
}

/// A strict reader of wg-quick files: known sections and keys, valid keys, CIDRs and endpoints.
fn check_wg_quick(text: &str) -> usize {
    let mut peers = 0;
    let mut section = "";
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('[') {
            section = line;
            assert!(matches!(line, "[Interface]" | "[Peer]"), "unknown section {line}");
            peers += usize::from(line == "[Peer]");
            continue;
        }
        let (key, value) = line.split_once(" = ").unwrap_or_else(|| panic!("not key = value: {line}"));
        match (section, key) {
            ("[Interface]", "ListenPort") | ("[Peer]", "PersistentKeepalive") => {
                value.parse::<u16>().unwrap();
            }
            ("[Interface]", "PrivateKey") | ("[Peer]", "PublicKey" | "PresharedKey") => {
                mesh_core::Key::from_base64(value).unwrap();
            }
            ("[Peer]", "AllowedIPs") => value.split(", ").for_each(|ip| {
                ip.parse::<ipnet::IpNet>().unwrap();
            }),
            ("[Peer]", "Endpoint") => {
                mesh_core::Endpoint::parse(value).unwrap();
            }
            _ => panic!("unexpected {key} in {section}"),
        }
    }
    peers
}

#[test]
fn showconf_prints_valid_wg_quick_files() {
    let example = example();
    let node = run_ok(&["showconf", "node", "onprem-1", "--nodes", &example, "--now", NOW]);
    assert!(node.starts_with("[Interface]\nListenPort = 51820\n"), "{node}");
    assert_eq!(check_wg_quick(&node), 3);

    let peer = run_ok(&["showconf", "peer", "admin-laptop", "--nodes", &example, "--now", NOW]);
    assert_eq!(check_wg_quick(&peer), 3, "one peer per location: {peer}");
    assert!(peer.contains("PersistentKeepalive = 25"), "the laptop's own keepalive: {peer}");

    let as_peer = run_ok(&[
        "showconf",
        "node",
        "onprem-1",
        "--as-peer",
        "--allowed-ips",
        "10.96.0.0/16",
        "--nodes",
        &example,
        "--now",
        NOW,
    ]);
    assert_eq!(check_wg_quick(&as_peer), 1);
    assert!(as_peer.contains("10.96.0.0/16"), "{as_peer}");

    let output = run(&["showconf", "node", "onprem-2", "--nodes", &example, "--now", NOW]);
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&output.stderr), "Node \"onprem-2\" is not a leader node\n");

    let output = run(&["showconf", "peer", "nobody", "--nodes", &example, "--now", NOW]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn showconf_as_peer_manifests_are_peer_objects() {
    let example = example();
    let yaml = run_ok(&["showconf", "node", "onprem-1", "--as-peer", "-o", "yaml", "--nodes", &example, "--now", NOW]);
    let manifest: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(manifest["apiVersion"], "kilo.squat.ai/v1alpha1");
    assert_eq!(manifest["kind"], "Peer");
    assert_eq!(manifest["metadata"]["name"], "onprem-1");
    assert_eq!(manifest["spec"]["endpoint"], serde_json::json!({"dnsOrIP": {"ip": "203.0.113.10"}, "port": 51820}));
    assert_eq!(manifest["spec"]["publicKey"], "7w7adx5aMG36uKQ4akVe/ziJF588DNm8DpY1OP0fKxQ=");
    let json = run_ok(&["showconf", "node", "onprem-1", "--as-peer", "-o", "json", "--nodes", &example, "--now", NOW]);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), manifest);
}

#[test]
fn graph_is_valid_dot_with_granularity_from_the_annotations() {
    let example = example();
    let auto = run_ok(&["graph", "--nodes", &example, "--now", NOW]);
    let explicit = run_ok(&["graph", "--nodes", &example, "--now", NOW, "--mesh-granularity", "location"]);
    assert_eq!(auto, explicit);
    assert!(auto.starts_with("digraph kilo {\n\tlabel=\"100.66.0.0/16\";\n"), "{auto}");
    assert!(auto.ends_with("\n}\n\n"), "kgctl prints one more newline");

    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz `dot` must be installed for this test (apt-get install -y graphviz)");
    dot.stdin.take().unwrap().write_all(auto.as_bytes()).unwrap();
    let output = dot.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("<svg"));
}

/// The pictures of docs/topology.md are drawn from these DOT files; they must show what `graph`
/// prints today.
#[test]
fn docs_pictures_are_current() {
    let example = example();
    let pictures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/pictures");
    for granularity in ["location", "full", "cross"] {
        let dot = run_ok(&["graph", "--nodes", &example, "--now", NOW, "--mesh-granularity", granularity]);
        let committed = std::fs::read_to_string(pictures.join(format!("{granularity}.dot"))).unwrap();
        assert_eq!(dot, committed, "docs/pictures/{granularity}.dot is stale: run scripts/docs-pictures.sh");
        let svg = std::fs::read_to_string(pictures.join(format!("{granularity}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "docs/pictures/{granularity}.svg is not an SVG");
    }
}

#[test]
fn crd_prints_the_deployed_crd() {
    let crd = run_ok(&["crd"]);
    let deployed =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds.yaml")).unwrap();
    assert_eq!(crd, deployed, "regenerate with: cargo run -p mesh-agent -- crd > deploy/base/crds.yaml");
}

/// A one-thread HTTP/1.1 server on loopback that answers the two list requests of `--kubeconfig`
/// with the example's objects, so the live-cluster path runs against real HTTP.
fn fake_api_server() -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let objects: Value = serde_norway::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
    let items = objects["items"].as_array().unwrap().clone();
    let list = |kind: &str, api: &str| {
        let items: Vec<&Value> = items.iter().filter(|item| item["kind"] == kind).collect();
        serde_json::json!({"apiVersion": api, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
            .to_string()
    };
    let nodes = list("Node", "v1");
    let peers = list("Peer", "kilo.squat.ai/v1alpha1");
    let handle = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header == "\r\n" || header.is_empty() {
                    break;
                }
            }
            let body = if request_line.contains("/api/v1/nodes") { &nodes } else { &peers };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            requests.push(request_line.trim().to_owned());
        }
        requests
    });
    (address, handle)
}

/// A kubeconfig naming `server`, in a fresh directory (removed by the caller).
fn kubeconfig_for(server: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mesh-agent-kubeconfig-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user:\n    token: test\n"
        ),
    )
    .unwrap();
    (dir, kubeconfig)
}

fn assert_listed_the_cluster(requests: &[String]) {
    assert!(requests[0].starts_with("GET /api/v1/nodes"), "{requests:?}");
    assert!(requests[1].starts_with("GET /apis/kilo.squat.ai/v1alpha1/peers"), "{requests:?}");
}

#[test]
fn plan_reads_a_live_cluster_through_a_kubeconfig() {
    let (server, handle) = fake_api_server();
    let (dir, kubeconfig) = kubeconfig_for(&server, "flag");
    let from_cluster =
        run_ok(&["plan", "--kubeconfig", kubeconfig.to_str().unwrap(), "--hostname", "onprem-1", "--now", NOW]);
    let requests = handle.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_listed_the_cluster(&requests);
    let example = example();
    let from_files = run_ok(&["plan", "--nodes", &example, "--hostname", "onprem-1", "--now", NOW]);
    assert_eq!(from_cluster, from_files);
}

#[test]
fn an_unknown_hostname_names_a_bounded_number_of_nodes() {
    let path = std::env::temp_dir().join(format!("mesh-agent-cli-many-{}.yaml", std::process::id()));
    let nodes: String = (0..1000).map(|n| format!("---\nkind: Node\nmetadata:\n  name: node-{n:04}\n")).collect();
    std::fs::write(&path, nodes).unwrap();
    let output = run(&["plan", "--nodes", path.to_str().unwrap(), "--hostname", "nope"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("known nodes: node-0000, node-0001,"), "{stderr}");
    assert!(stderr.contains("node-0019, and 980 more"), "{stderr}");
    assert!(stderr.len() < 1000, "{} bytes", stderr.len());
}

#[test]
fn a_hijacking_peer_is_refused_with_a_warning_unless_allowed() {
    let path = std::env::temp_dir().join(format!("mesh-agent-cli-hijack-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "apiVersion: kilo.squat.ai/v1alpha1\nkind: Peer\nmetadata: {name: everything}\nspec:\n  allowedIPs: [0.0.0.0/0]\n  \
         publicKey: a2V5NQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let peers = path.to_str().unwrap().to_owned();
    let refused = plan("onprem-1", &[CILIUM, &["--peers", &peers]].concat());
    let allowed = plan("onprem-1", &[CILIUM, &["--peers", &peers, "--allowed-hijack-cidr=0.0.0.0/0"]].concat());
    let _ = std::fs::remove_file(&path);

    let default_route =
        |plan: &Value| plan["routes"].as_array().unwrap().iter().any(|route| route["dst"] == "0.0.0.0/0");
    let warning = |plan: &Value| {
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "everything" && w["value"] == "0.0.0.0/0")
            .cloned()
    };
    assert!(!default_route(&refused));
    let warning = warning(&refused).expect("a warning names the Peer and the range");
    assert_eq!(warning["kind"], "peer");
    assert_eq!(warning["annotation"], "spec.allowedIPs");
    assert!(warning["reason"].as_str().unwrap().contains("refused (allow it with --allowed-hijack-cidr)"), "{warning}");
    assert!(default_route(&allowed), "--allowed-hijack-cidr routes it as Kilo does");
    assert!(plan_warning_free(&allowed, "everything"));
}

fn plan_warning_free(plan: &Value, name: &str) -> bool {
    plan["warnings"].as_array().unwrap().iter().all(|w| w["name"] != name)
}

/// Runs mesh-agent with `KUBECONFIG` set.
fn run_with_kubeconfig(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-agent")).args(args).env("KUBECONFIG", kubeconfig).output().unwrap()
}

#[test]
fn graph_reads_the_cluster_of_the_kubeconfig_environment_variable_as_kgctl_does() {
    let (server, handle) = fake_api_server();
    let (dir, kubeconfig) = kubeconfig_for(&server, "env");
    let output = run_with_kubeconfig(&kubeconfig, &["graph", "--now", NOW]);
    let requests = handle.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_listed_the_cluster(&requests);
    let example = example();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), run_ok(&["graph", "--nodes", &example, "--now", NOW]));
}

#[test]
fn files_given_win_over_the_kubeconfig_environment_variable() {
    // Nothing listens there: reading the cluster would fail.
    let dir = std::env::temp_dir().join(format!("mesh-agent-kubeconfig-unused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, "this is not a kubeconfig").unwrap();
    let example = example();
    let output =
        run_with_kubeconfig(&kubeconfig, &["plan", "--nodes", &example, "--hostname", "onprem-1", "--now", NOW]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        run_ok(&["plan", "--nodes", &example, "--hostname", "onprem-1", "--now", NOW])
    );
}

#[test]
fn kubeconfig_is_accepted_before_the_subcommand_as_kgctl_takes_it() {
    let (server, handle) = fake_api_server();
    let (dir, kubeconfig) = kubeconfig_for(&server, "global");
    let output = run(&["--kubeconfig", kubeconfig.to_str().unwrap(), "graph", "--now", NOW]);
    let requests = handle.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_listed_the_cluster(&requests);
    assert!(String::from_utf8(output.stdout).unwrap().starts_with("digraph"));
}

#[test]
fn without_a_source_the_tools_name_every_way_to_give_one() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_mesh-agent")).args(["graph"]).env_remove("KUBECONFIG").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kubeconfig FILE, or set KUBECONFIG"), "{stderr}");
}

#[test]
fn a_fatal_start_up_error_is_a_json_line_with_log_format_json() {
    // A key file that cannot be created fails before the agent touches the network.
    const KEY: &str = "--private-key-file=/proc/no-such-dir/key";
    let output = run(&["--hostname", "a", KEY, "--log-format=json"]);
    assert_eq!(output.status.code(), Some(3), "the agent failed to start");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_else(|| panic!("no output: {stderr:?}"));
    let line: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["fields"]["message"].as_str().unwrap();
    assert!(message.contains("/proc/no-such-dir"), "{message}");
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let text = run(&["--hostname", "a", KEY]);
    let stderr = String::from_utf8(text.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("mesh-agent: failed to create directory /proc/no-such-dir"), "{stderr}");
}

#[test]
fn doctor_is_silent_on_the_example_and_names_a_location_given_only_as_a_label() {
    let example = example();
    let healthy = run(&["doctor", "--nodes", &example, "--now", NOW, "-o", "json"]);
    assert_eq!(healthy.status.code(), Some(0), "{}", String::from_utf8_lossy(&healthy.stdout));
    let report: Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert_eq!(report["problems"], 0);
    let leaders: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["check"] == "leaders")
        .map(|finding| finding["subject"].as_str().unwrap())
        .collect();
    assert_eq!(leaders, ["location:cloud-ams3", "location:cloud-fsn1", "location:onprem"]);

    // The same cluster with ams3-a's location as a label.
    let text = std::fs::read_to_string(&example).unwrap();
    let mut objects: Value = serde_norway::from_str(&text).unwrap();
    let ams3 =
        objects["items"].as_array_mut().unwrap().iter_mut().find(|item| item["metadata"]["name"] == "ams3-a").unwrap();
    let location = ams3["metadata"]["annotations"].as_object_mut().unwrap().remove("kilo.squat.ai/location").unwrap();
    ams3["metadata"]["labels"]["kilo.squat.ai/location"] = location.clone();
    let dir = std::env::temp_dir().join(format!("mesh-agent-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.json");
    std::fs::write(&file, objects.to_string()).unwrap();
    let broken = run(&["doctor", "--nodes", file.to_str().unwrap(), "--now", NOW]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(broken.status.code(), Some(4));
    let stdout = String::from_utf8(broken.stdout).unwrap();
    assert!(stdout.contains("PROBLEM  location              node ams3-a: kilo.squat.ai/location="), "{stdout}");
    let fix = format!("fix: kubectl annotate node ams3-a kilo.squat.ai/location={}", location.as_str().unwrap());
    assert!(stdout.contains(&fix), "{stdout}");
    assert!(String::from_utf8_lossy(&broken.stderr).contains("doctor found 1 problem(s)"));
}
