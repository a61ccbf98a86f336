//! The configuration kinds charts and controllers carry: ConfigMap,
//! Secret, ServiceAccount, and the coordination Lease.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::ByteString;

use crate::field::{FieldError, FieldErrors, Path};
use crate::kinds::{KindInfo, CONFIG_MAP, LEASE, SECRET, SERVICE_ACCOUNT};
use crate::meta::validate_object_meta;
use crate::names;
use crate::object::ApiObject;

/// Kubernetes' limit on a ConfigMap's or Secret's data, all keys together.
const MAX_DATA_BYTES: usize = 1024 * 1024;
const IMMUTABLE: &str = "field is immutable when `immutable` is set";

/// A data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
fn config_key(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.is_empty() || key.len() > 253 {
        errs.push("must be no more than 253 characters and not empty".into());
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    if key == "." || key == ".." {
        errs.push("must not be '.' or '..'".into());
    }
    errs
}

/// Keys valid, none in two maps, all values together within the limit.
fn validate_data(path: &Path, maps: &[(&str, Vec<(&String, usize)>)]) -> FieldErrors {
    let mut errs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for (field, entries) in maps {
        for (key, size) in entries {
            let at = path.child(field).key(key);
            errs.extend(config_key(key).into_iter().map(|d| FieldError::invalid(at.clone(), key.as_str(), d)));
            if !seen.insert(key.as_str()) {
                errs.push(FieldError::invalid(at, key.as_str(), "duplicate of key present in another map"));
            }
            total += size;
        }
    }
    if total > MAX_DATA_BYTES {
        errs.push(FieldError::invalid(path.child(maps[0].0), total as i64, format!("may not be more than {MAX_DATA_BYTES} bytes in all")));
    }
    errs
}

fn entries<V>(map: &Option<BTreeMap<String, V>>, size: impl Fn(&V) -> usize) -> Vec<(&String, usize)> {
    map.iter().flatten().map(|(k, v)| (k, size(v))).collect()
}

/// Once `immutable` is true, the data and the flag stay as they are.
fn validate_immutable<D: PartialEq>(old_immutable: Option<bool>, new_immutable: Option<bool>, old: D, new: D) -> FieldErrors {
    if old_immutable != Some(true) {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if new_immutable != Some(true) {
        errs.push(FieldError::forbidden("immutable", IMMUTABLE));
    }
    if old != new {
        errs.push(FieldError::forbidden("data", IMMUTABLE));
    }
    errs
}

impl ApiObject for ConfigMap {
    fn info() -> &'static KindInfo {
        &CONFIG_MAP
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        let maps = [("data", entries(&self.data, String::len)), ("binaryData", entries(&self.binary_data, |b| b.0.len()))];
        errs.extend(validate_data(&Path::new(""), &maps));
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        validate_immutable(old.immutable, self.immutable, (&old.data, &old.binary_data), (&self.data, &self.binary_data))
    }
}

impl ApiObject for Secret {
    fn info() -> &'static KindInfo {
        &SECRET
    }

    /// `stringData` is write-only: merged into `data`, then dropped.
    fn apply_defaults(&mut self) {
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        self.type_.get_or_insert_with(|| "Opaque".into());
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        errs.extend(validate_data(&Path::new(""), &[("data", entries(&self.data, |b| b.0.len()))]));
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        let mut errs = validate_immutable(old.immutable, self.immutable, &old.data, &self.data);
        if old.type_ != self.type_ {
            errs.push(FieldError::invalid("type", self.type_.as_deref().unwrap_or_default(), "field is immutable"));
        }
        errs
    }
}

impl ApiObject for ServiceAccount {
    fn info() -> &'static KindInfo {
        &SERVICE_ACCOUNT
    }

    fn validate(&self) -> FieldErrors {
        validate_object_meta(&self.metadata, true, names::dns1123_subdomain)
    }
}

impl ApiObject for Lease {
    fn info() -> &'static KindInfo {
        &LEASE
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        let spec = self.spec.as_ref();
        if let Some(seconds) = spec.and_then(|s| s.lease_duration_seconds).filter(|s| *s <= 0) {
            errs.push(FieldError::invalid("spec.leaseDurationSeconds", i64::from(seconds), "must be greater than 0"));
        }
        if let Some(n) = spec.and_then(|s| s.lease_transitions).filter(|n| *n < 0) {
            errs.push(FieldError::invalid("spec.leaseTransitions", i64::from(n), "must be greater than or equal to 0"));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("c".into());
        cm.metadata.namespace = Some("default".into());
        cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        cm
    }

    #[test]
    fn keys_and_sizes_are_checked() {
        assert!(config_map(&[("app.properties", "x"), ("KEY_1", "y")]).validate().is_empty());
        let errs = config_map(&[("bad/key", "x")]).validate();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().starts_with("data[bad/key]: Invalid value: \"bad/key\""), "{}", errs[0]);
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        assert!(config_map(&[("k", &big)]).validate().iter().any(|e| e.field == "data"));
        let mut both = config_map(&[("k", "x")]);
        both.binary_data = Some([("k".to_string(), ByteString(vec![1]))].into());
        assert!(both.validate().iter().any(|e| e.detail.contains("another map")));
    }

    #[test]
    fn immutable_data_stays() {
        let mut old = config_map(&[("k", "1")]);
        old.immutable = Some(true);
        let mut changed = config_map(&[("k", "2")]);
        changed.immutable = Some(true);
        assert_eq!(changed.validate_update(&old).len(), 1);
        let unset = config_map(&[("k", "1")]);
        assert!(unset.validate_update(&old).iter().any(|e| e.field == "immutable"));
        assert!(old.validate_update(&old).is_empty());
    }

    #[test]
    fn secret_string_data_lands_in_data() {
        let mut s = Secret::default();
        s.metadata.name = Some("s".into());
        s.string_data = Some([("password".to_string(), "hunter2".to_string())].into());
        s.apply_defaults();
        assert_eq!(s.string_data, None);
        assert_eq!(s.data.as_ref().and_then(|d| d.get("password")).map(|b| b.0.as_slice()), Some(&b"hunter2"[..]));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }
}
