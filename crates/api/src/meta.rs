//! Checks every object's metadata gets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::field::{FieldError, FieldErrors, Path};
use crate::names;

/// Which syntax an object's name must follow.
pub type NameRule = fn(&str) -> Vec<String>;

const TOTAL_ANNOTATION_BYTES: usize = 256 * 1024;

pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, name_rule: NameRule) -> FieldErrors {
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(path.child("name"), "name or generateName is required")),
        Some(name) => {
            for msg in name_rule(name) {
                errs.push(FieldError::invalid(path.child("name"), name, msg));
            }
        }
    }
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    if namespaced && namespace.is_empty() {
        errs.push(FieldError::required(path.child("namespace"), ""));
    } else if !namespaced && !namespace.is_empty() {
        errs.push(FieldError::forbidden(path.child("namespace"), "not allowed on this type"));
    }
    errs.extend(validate_labels(meta.labels.iter().flatten(), &path.child("labels")));
    let mut annotation_bytes = 0;
    for (key, value) in meta.annotations.iter().flatten() {
        annotation_bytes += key.len() + value.len();
        for msg in names::qualified_name(key) {
            errs.push(FieldError::invalid(path.child("annotations"), key, msg));
        }
    }
    if annotation_bytes > TOTAL_ANNOTATION_BYTES {
        errs.push(FieldError::invalid(
            path.child("annotations"),
            crate::field::Value::Raw(String::new()),
            format!("Too long: must have at most {TOTAL_ANNOTATION_BYTES} bytes"),
        ));
    }
    errs
}

/// Label keys and values, as found in `metadata.labels` or a selector map.
pub fn validate_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    for (key, value) in labels {
        for msg in names::qualified_name(key) {
            errs.push(FieldError::invalid(path, key, msg));
        }
        for msg in names::label_value(value) {
            errs.push(FieldError::invalid(path.key(key), value, msg));
        }
    }
    errs
}
