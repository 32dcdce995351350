//! Nodes and Peers from files as `kubectl get -o yaml|json` prints them, or from a live cluster:
//! the input of `plan`, `showconf` and `graph`.

use std::io::Read as _;
use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use mesh_kube::crd::Peer;
use serde::Deserialize as _;
use serde_json::Value;

use super::CliError;

/// The Kubernetes objects the CLI works on.
#[derive(Debug, Default)]
pub struct Objects {
    /// Node objects.
    pub nodes: Vec<Node>,
    /// Peer objects.
    pub peers: Vec<Peer>,
}

impl Objects {
    /// Reads every file (`-` is standard input) and collects the Nodes and Peers they hold.
    pub fn from_files(paths: &[&Path]) -> Result<Objects, CliError> {
        let mut objects = Objects::default();
        for path in paths {
            let (name, text) = read(path)?;
            objects.add_documents(&name, &text)?;
        }
        Ok(objects)
    }

    /// Lists Nodes and Peers from the cluster of a kubeconfig (or the in-cluster configuration).
    pub async fn from_cluster(kubeconfig: Option<&Path>) -> Result<Objects, CliError> {
        let input = |error: mesh_kube::Error| CliError::input(error.to_string());
        let client = mesh_kube::api::client(kubeconfig, None).await.map_err(input)?;
        let (nodes, peers) = mesh_kube::api::list(client).await.map_err(input)?;
        Ok(Objects { nodes, peers })
    }

    /// The Nodes and Peers of one YAML or JSON text; `file` names it in errors.
    ///
    /// ```
    /// use mesh_agent::cli::input::Objects;
    /// let objects = Objects::from_text("nodes.yaml", "kind: Node\nmetadata: {name: a}\n").unwrap();
    /// assert_eq!(objects.nodes.len(), 1);
    /// let error = Objects::from_text("bad.json", "{\"metadata\": {\"name\": \"a\"}}").unwrap_err();
    /// assert_eq!(error.to_string(), "bad.json: object \"a\" has no kind");
    /// ```
    pub fn from_text(file: &str, text: &str) -> Result<Objects, CliError> {
        let mut objects = Objects::default();
        objects.add_documents(file, text)?;
        Ok(objects)
    }

    /// Adds the objects of a YAML or JSON text: single objects, `List`s (`NodeList`, `PeerList`, …)
    /// and multi-document streams. A UTF-8 byte order mark is skipped; a key that appears twice
    /// in one YAML mapping is an error (which value was meant cannot be told).
    fn add_documents(&mut self, file: &str, text: &str) -> Result<(), CliError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let error = |e: &dyn std::fmt::Display| CliError::input(format!("{file}: {e}"));
        // JSON as JSON: YAML's parser, though YAML is a superset of JSON, refuses the surrogate
        // pairs JSON escapes characters outside the Basic Multilingual Plane with.
        if text.trim_start().starts_with(['{', '[']) {
            for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
                self.add_value(file, value.map_err(|e| error(&e))?)?;
            }
            return Ok(());
        }
        for document in serde_norway::Deserializer::from_str(text) {
            // Through YAML's own value, which refuses duplicate keys (JSON's keeps the last).
            let yaml = serde_norway::Value::deserialize(document).map_err(|e| error(&e))?;
            let value = serde_json::to_value(yaml).map_err(|e| error(&e))?;
            self.add_value(file, value)?;
        }
        Ok(())
    }

    fn add_value(&mut self, file: &str, value: Value) -> Result<(), CliError> {
        if value.is_null() {
            return Ok(()); // an empty document, e.g. after a trailing `---`
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            for item in items {
                self.add_value(file, item.clone())?;
            }
            return Ok(());
        }
        let invalid = |e: serde_json::Error| CliError::input(format!("{file}: {kind} {name:?}: {e}"));
        match kind.as_str() {
            "Node" => self.nodes.push(serde_json::from_value(value).map_err(invalid)?),
            "Peer" => self.peers.push(serde_json::from_value(value).map_err(invalid)?),
            "" => return Err(CliError::input(format!("{file}: object {name:?} has no kind"))),
            // Other objects (a Service in the same dump, …) are not ours to judge.
            _ => {}
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<(String, String), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::input(format!("failed to read standard input: {e}")))?;
        return Ok(("<stdin>".to_owned(), text));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("failed to read {}: {e}", path.display())))?;
    Ok((path.display().to_string(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_streams_and_json() {
        let mut objects = Objects::default();
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: a}\n\
                    - apiVersion: kilo.squat.ai/v1alpha1\n  kind: Peer\n  metadata: {name: p}\n  spec:\n    \
                    allowedIPs: [10.5.0.1/32]\n    publicKey: a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\
                    ---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n---\n";
        objects.add_documents("cluster.yaml", yaml).unwrap();
        objects
            .add_documents("nodes.json", r#"{"kind":"NodeList","items":[{"kind":"Node","metadata":{"name":"c"}}]}"#)
            .unwrap();
        let names: Vec<_> = objects.nodes.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(objects.peers.len(), 1);
    }

    #[test]
    fn json_escapes_a_byte_order_mark_and_duplicate_keys() {
        // "😀" as JSON escapes it: a surrogate pair.
        let json = r#"{"kind":"Node","metadata":{"name":"a","annotations":{"note":"\ud83d\ude00"}}}"#;
        let mut objects = Objects::default();
        objects.add_documents("nodes.json", json).unwrap();
        let annotations = objects.nodes[0].metadata.annotations.clone().unwrap();
        assert_eq!(annotations["note"], "\u{1f600}");

        for text in
            ["\u{feff}kind: Node\nmetadata: {name: b}\n", "\u{feff}{\"kind\":\"Node\",\"metadata\":{\"name\":\"b\"}}"]
        {
            let mut objects = Objects::default();
            objects.add_documents("bom", text).unwrap();
            assert_eq!(objects.nodes[0].metadata.name.as_deref(), Some("b"), "{text:?}");
        }

        let duplicated = "kind: Node\nmetadata:\n  name: a\n  annotations:\n    kilo.squat.ai/location: x\n    \
                          kilo.squat.ai/location: y\n";
        let error = Objects::default().add_documents("dup.yaml", duplicated).unwrap_err().to_string();
        assert_eq!(
            error,
            "dup.yaml: metadata.annotations: duplicate entry with key \"kilo.squat.ai/location\" at line 5 column 5"
        );
    }

    #[test]
    fn malformed_input_names_the_file_and_the_line() {
        let error = Objects::default().add_documents("bad.yaml", "kind: Node\nmetadata: [\n").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("bad.yaml: "), "{message}");
        assert!(message.contains("line 3"), "{message}");
        let error =
            Objects::default().add_documents("x.yaml", "kind: Node\nmetadata: {name: a}\nspec: 3\n").unwrap_err();
        assert!(error.to_string().starts_with("x.yaml: Node \"a\": "), "{error}");
    }
}
