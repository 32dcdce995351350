//! The CNI configuration Kilo manages with `--cni` (reference §7.6): the node's pod CIDR in the
//! IPAM ranges of the conflist at `--cni-path`.

use std::path::Path;

use ipnet::IpNet;
use serde_json::{Value, json};

/// Why the conflist cannot be updated.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The file cannot be read or written.
    #[error("failed to {operation} CNI configuration {path}: {source}")]
    Io {
        /// `read` or `write`.
        operation: &'static str,
        /// The conflist.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a conflist with an IPAM plugin.
    #[error("failed to set subnet CIDR in CNI config file {path}; file appears invalid: {reason}")]
    Invalid {
        /// The conflist.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The conflist text with `pod_cidr` as the only IPAM range of every plugin that has IPAM, or
/// `None` when the first IPAM range already is `pod_cidr`. Errors name what is wrong.
pub fn with_pod_cidr(conflist: &str, pod_cidr: IpNet) -> Result<Option<String>, String> {
    let mut config: Value = serde_json::from_str(conflist).map_err(|e| format!("not JSON: {e}"))?;
    let plugins =
        config.get_mut("plugins").and_then(Value::as_array_mut).ok_or_else(|| "it has no plugins list".to_owned())?;
    let current = plugins.iter().find_map(|plugin| plugin.pointer("/ipam/ranges/0/0/subnet")).and_then(Value::as_str);
    if current.and_then(|text| text.parse::<IpNet>().ok()) == Some(pod_cidr) {
        return Ok(None);
    }
    let mut found = false;
    for plugin in plugins.iter_mut() {
        if let Some(ipam) = plugin.get_mut("ipam").and_then(Value::as_object_mut) {
            ipam.insert("ranges".to_owned(), json!([[{ "subnet": pod_cidr.to_string() }]]));
            found = true;
        }
    }
    if !found {
        return Err("no plugin has an ipam section".to_owned());
    }
    Ok(Some(serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n"))
}

/// Rewrites the conflist at `path` when its pod CIDR differs (mode 0644, atomically). Returns
/// whether it changed the file.
pub fn update(path: &Path, pod_cidr: IpNet) -> Result<bool, CniError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CniError::Io {
        operation: "read",
        path: display.clone(),
        source,
    })?;
    let updated =
        with_pod_cidr(&text, pod_cidr).map_err(|reason| CniError::Invalid { path: display.clone(), reason })?;
    let Some(updated) = updated else { return Ok(false) };
    mesh_kube::file::write_atomically(path, updated.as_bytes(), Some(0o644)).map_err(|source| CniError::Io {
        operation: "write",
        path: display,
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFLIST: &str = r#"{"cniVersion":"0.4.0","name":"kilo","plugins":[
        {"type":"bridge","bridge":"kube-bridge","ipam":{"type":"host-local"}},
        {"type":"portmap","snat":true,"capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn sets_the_pod_cidr_once() {
        let cidr: IpNet = "10.2.1.0/24".parse().unwrap();
        let updated = with_pod_cidr(CONFLIST, cidr).unwrap().unwrap();
        let value: Value = serde_json::from_str(&updated).unwrap();
        assert_eq!(value.pointer("/plugins/0/ipam/ranges/0/0/subnet"), Some(&json!("10.2.1.0/24")));
        assert!(value.pointer("/plugins/1/ipam").is_none());
        assert_eq!(with_pod_cidr(&updated, cidr).unwrap(), None, "already set");
        assert!(with_pod_cidr(r#"{"plugins":[{"type":"portmap"}]}"#, cidr).unwrap_err().contains("ipam"));
        assert!(with_pod_cidr("{}", cidr).unwrap_err().contains("plugins"));
    }

    #[test]
    fn updates_the_file_in_place() {
        let dir = std::env::temp_dir().join(format!("mesh-agent-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("10-kilo.conflist");
        std::fs::write(&path, CONFLIST).unwrap();
        let cidr = "10.2.9.0/24".parse().unwrap();
        assert!(update(&path, cidr).unwrap());
        assert!(!update(&path, cidr).unwrap());
        let error = update(&dir.join("missing.conflist"), cidr).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("missing.conflist"), "{error}");
    }
}
