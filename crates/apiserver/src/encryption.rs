//! The encryption configuration, in kube-apiserver's format
//! (`EncryptionConfiguration`, `apiserver.config.k8s.io/v1`): which
//! resources are encrypted at rest, and with which keys. wharf reads the
//! `aesgcm` (256-bit keys) and `identity` providers; the first provider
//! writes, every listed key reads. At first start wharf writes one that
//! encrypts Secrets with a fresh key (owner-only file in the data dir).

use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use wharf_store::{Encryption, EncryptionKey};

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
    #[error(transparent)]
    Write(#[from] crate::pki::PkiError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct AesGcm {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Key {
    name: String,
    secret: String,
}

const KIND: &str = "EncryptionConfiguration";
const API_VERSION: &str = "apiserver.config.k8s.io/v1";

fn default_config() -> String {
    let secret: [u8; 32] = rand::random();
    format!(
        "apiVersion: {API_VERSION}
kind: {KIND}
# Written by wharf at first start. To rotate: add a new key first in the
# list, restart every API server, rewrite the secrets (kubectl get secrets
# -A -o json | kubectl replace -f -), then remove the old key.
resources:
- resources: [secrets]
  providers:
  - aesgcm:
      keys:
      - name: key1
        secret: {}
  - identity: {{}}
",
        base64::engine::general_purpose::STANDARD.encode(secret)
    )
}

fn key(path: &Path, key: Key) -> Result<EncryptionKey, EncryptionError> {
    let invalid = |why: String| EncryptionError::Invalid { path: path.display().to_string(), why };
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(key.secret.trim()).map_err(|e| invalid(format!("key {:?}: {e}", key.name)))?;
    let secret: [u8; 32] = bytes.try_into().map_err(|_| invalid(format!("key {:?}: wharf's aesgcm keys are 32 bytes", key.name)))?;
    if key.name.is_empty() || key.name.contains(':') {
        return Err(invalid(format!("key name {:?}: must be non-empty, without ':'", key.name)));
    }
    Ok(EncryptionKey { name: key.name, secret })
}

/// What `text` (the file at `path`) asks for.
pub fn parse(path: &Path, text: &str) -> Result<Encryption, EncryptionError> {
    let invalid = |why: String| EncryptionError::Invalid { path: path.display().to_string(), why };
    let config: Config = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if config.kind != KIND || config.api_version != API_VERSION {
        return Err(invalid(format!("expected kind {KIND} of {API_VERSION}")));
    }
    let [entry] =
        <[ResourceConfig; 1]>::try_from(config.resources).map_err(|_| invalid("wharf takes exactly one resources entry".into()))?;
    let mut keys = Vec::new();
    let mut seal = None;
    for provider in entry.providers {
        let (name, settings) = provider.into_iter().next().ok_or_else(|| invalid("an empty provider".into()))?;
        match name.as_str() {
            "aesgcm" => {
                let aes: AesGcm = serde_json::from_value(settings).map_err(|e| invalid(format!("aesgcm: {e}")))?;
                seal.get_or_insert(!aes.keys.is_empty());
                for k in aes.keys {
                    keys.push(key(path, k)?);
                }
            }
            "identity" => {
                seal.get_or_insert(false);
            }
            other => return Err(invalid(format!("provider {other:?}: wharf supports aesgcm and identity"))),
        }
    }
    let mut prefixes = Vec::new();
    for resource in &entry.resources {
        let plain = resource.trim_end_matches('.');
        if plain.is_empty() || !plain.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(invalid(format!("resource {resource:?}: wharf takes plain resource names (secrets, configmaps)")));
        }
        prefixes.push(format!("/registry/{plain}/"));
    }
    Ok(Encryption::new(prefixes, &keys, seal.unwrap_or(false)))
}

/// The configuration at `path`, written first (Secrets under a fresh key)
/// if there is none.
pub fn load_or_create(path: &Path) -> Result<Encryption, EncryptionError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = default_config();
            crate::pki::write_private(path, &text)?;
            text
        }
        Err(e) => return Err(EncryptionError::Invalid { path: path.display().to_string(), why: e.to_string() }),
    };
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_parses_and_bad_ones_say_why() {
        let path = Path::new("enc.yaml");
        assert!(parse(path, &default_config()).is_ok());
        let err = |text: &str| parse(path, text).err().map(|e| e.to_string()).unwrap_or_default();
        let head =
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n";
        assert!(err(&format!("{head}  - kms: {{name: x}}\n")).contains("wharf supports aesgcm and identity"));
        assert!(err(&format!("{head}  - aesgcm: {{keys: [{{name: k, secret: c2hvcnQ=}}]}}\n")).contains("32 bytes"));
        assert!(err("apiVersion: v1\nkind: Secret\nresources: []\n").contains("expected kind"));
        let wildcard = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n  - identity: {}\n";
        assert!(err(wildcard).contains("plain resource names"), "a wildcard would silently encrypt nothing");
    }
}
