//! The Peer CRD: the checked-in manifest is what the code generates, it is Kilo's CRD plus
//! validation, and the validation is there.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_kube::crd::{crd, crd_yaml};
use serde_json::{Value, json};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/crds.yaml");

#[test]
fn deploy_crds_yaml_is_what_the_code_generates() {
    let on_disk = std::fs::read_to_string(MANIFEST).unwrap_or_else(|error| panic!("cannot read {MANIFEST}: {error}"));
    assert!(
        on_disk == crd_yaml(),
        "deploy/base/crds.yaml differs from mesh_kube::crd::crd_yaml(); regenerate it from the repository root with\n    \
         cargo run -p mesh-agent -- crd > deploy/base/crds.yaml"
    );
}

#[test]
fn yaml_is_one_deterministic_document_that_parses_back() {
    let yaml = crd_yaml();
    assert_eq!(yaml, crd_yaml());
    assert!(!yaml.contains("---"), "one document, no separator");
    assert!(yaml.ends_with('\n'));
    let parsed: CustomResourceDefinition = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(parsed, crd());
    assert_eq!(parsed.metadata.name.as_deref(), Some("peers.kilo.squat.ai"));
}

/// The schema as `kubectl apply` sends it (bounds as integers).
fn schema() -> Value {
    let crd: Value = serde_norway::from_str(&crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["versions"].as_array().unwrap().len(), 1);
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn names_scope_and_version_are_kilos() {
    let crd = serde_json::to_value(crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "kilo.squat.ai");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(
        crd["spec"]["names"],
        json!({"kind": "Peer", "listKind": "PeerList", "plural": "peers", "singular": "peer"})
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        (&version["name"], &version["served"], &version["storage"]),
        (&json!("v1alpha1"), &json!(true), &json!(true))
    );
}

#[test]
fn schema_has_the_required_fields_and_the_validation() {
    let root = schema();
    assert_eq!(root["required"], json!(["spec"]));
    let spec = &root["properties"]["spec"];
    assert_eq!(spec["required"], json!(["allowedIPs", "publicKey"]));

    let allowed_ips = &spec["properties"]["allowedIPs"];
    assert_eq!(allowed_ips["minItems"], 1);
    assert_eq!(allowed_ips["items"]["type"], "string");
    assert_eq!(allowed_ips["x-kubernetes-validations"][0]["rule"], "self.all(ip, isCIDR(ip))");
    // CEL's cost estimate needs bounds on list and strings, or the API server refuses the CRD.
    assert!(allowed_ips["maxItems"].is_number() && allowed_ips["items"]["maxLength"].is_number());

    let public_key = &spec["properties"]["publicKey"];
    assert_eq!((&public_key["minLength"], &public_key["maxLength"]), (&json!(44), &json!(44)));
    assert_eq!(public_key["pattern"], "^[A-Za-z0-9+/]{43}=$");
    assert_eq!(spec["properties"]["presharedKey"]["pattern"], "^([A-Za-z0-9+/]{43}=)?$");
    assert_eq!(spec["properties"]["persistentKeepalive"]["minimum"], 0);

    let endpoint = &spec["properties"]["endpoint"];
    assert_eq!(endpoint["required"], json!(["dnsOrIP", "port"]));
    let port = &endpoint["properties"]["port"];
    assert_eq!((&port["format"], &port["minimum"], &port["maximum"]), (&json!("int32"), &json!(1), &json!(65535)));
    let dns_or_ip = &endpoint["properties"]["dnsOrIP"];
    assert_eq!(
        dns_or_ip["x-kubernetes-validations"][0]["rule"],
        "(has(self.dns) && self.dns != '') || (has(self.ip) && self.ip != '')"
    );
    assert_eq!(
        dns_or_ip["x-kubernetes-validations"][0]["message"],
        "either an endpoint DNS name IP address must be given"
    );
    assert_eq!(dns_or_ip["properties"]["ip"]["x-kubernetes-validations"][0]["rule"], "self == '' || isIP(self)");
    let dns = &dns_or_ip["properties"]["dns"];
    assert_eq!(dns["maxLength"], 253);
    assert_eq!(dns["pattern"], r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$");

    // The rendered YAML carries the rules too (what `kubectl apply` sends).
    let yaml = crd_yaml();
    for rule in ["self.all(ip, isCIDR(ip))", "isIP(self)", "x-kubernetes-validations", "- allowedIPs", "- publicKey"] {
        assert!(yaml.contains(rule), "{rule} missing from the YAML");
    }
}

/// Removes what we add to Kilo's schema: validation keywords.
fn strip_validation(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for keyword in [
                "minItems",
                "maxItems",
                "minLength",
                "maxLength",
                "pattern",
                "minimum",
                "maximum",
                "x-kubernetes-validations",
            ] {
                map.remove(keyword);
            }
            map.values_mut().for_each(strip_validation);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_validation),
        _ => {}
    }
}

#[test]
fn without_the_added_validation_it_is_kilos_crd() {
    let kilo_yaml = include_str!("fixtures/kilo-crds.yaml");
    let mut kilo: Value = serde_norway::from_str(kilo_yaml).unwrap();
    // controller-gen's version stamp is not part of the API.
    kilo["metadata"].as_object_mut().unwrap().remove("annotations");
    let mut ours: Value = serde_norway::from_str(&crd_yaml()).unwrap();
    strip_validation(&mut ours);
    assert_eq!(ours, kilo);
}
