//! Objects as JSON values: metadata accessors shared by the generic
//! request paths, and the typed round trip through `k8s-openapi` that
//! defaults and validates each kind.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde_json::{Map, Value};
use wharf_api::kinds::KindInfo;
use wharf_api::ApiObject;

use crate::error::{ApiError, ApiResult};

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub fn resource_version(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or_default()
}

pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// The object's `metadata` map, created if missing or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = Value::Object(Map::new());
    }
    match &mut obj["metadata"] {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Reads a dotted field path (`spec.nodeName`, `involvedObject.kind`) as a
/// string, for field selectors.
pub fn field_string(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// How strictly unknown fields in a request body are treated
/// (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    #[default]
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Ignore") => Ok(Self::Ignore),
            Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => {
                Err(ApiError::BadRequest(format!("fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}")))
            }
        }
    }
}

/// Per-kind decoding, defaulting and validation, behind one object-safe
/// interface so the request paths stay generic over kinds.
pub trait Codec: Send + Sync {
    fn info(&self) -> &'static KindInfo;

    /// Turns a candidate object into its stored form: checked against the
    /// schema, defaulted, validated (against `old` on update). Returns the
    /// object and warnings about fields that were dropped.
    fn prepare(&self, candidate: Value, old: Option<&Value>, validation: FieldValidation) -> ApiResult<(Value, Vec<String>)>;

    /// A reference to the kind's schema in `generator`'s definitions.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
}

pub struct Typed<T>(PhantomData<T>);

impl<T> Default for Typed<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Typed<T> {
    pub const fn new() -> Self {
        Typed(PhantomData)
    }
}

fn decode<T: ApiObject>(info: &KindInfo, value: Value) -> ApiResult<T> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::BadRequest(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = info.kind,
            version = info.version
        ))
    })
}

fn encode<T: ApiObject>(obj: &T) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::Internal(format!("encoding object: {e}")))
}

impl<T: ApiObject + schemars::JsonSchema> Codec for Typed<T> {
    fn info(&self) -> &'static KindInfo {
        T::info()
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T>()
    }

    fn prepare(&self, candidate: Value, old: Option<&Value>, validation: FieldValidation) -> ApiResult<(Value, Vec<String>)> {
        let info = T::info();
        let mut unknown = Vec::new();
        let mut obj: T = if validation == FieldValidation::Ignore {
            decode(info, candidate)?
        } else {
            let obj: T = decode(info, candidate.clone())?;
            unknown_fields(&candidate, &encode(&obj)?, "", &mut unknown);
            obj
        };
        let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        if validation == FieldValidation::Strict && !warnings.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                warnings.join(", "),
                kind = info.kind,
                version = info.version
            )));
        }
        let old: Option<T> = old.map(|o| decode(info, o.clone())).transpose()?;
        if let Some(old) = &old {
            obj.prepare_for_update(old);
        }
        obj.apply_defaults();
        let mut errs = obj.validate();
        if let Some(old) = &old {
            errs.extend(obj.validate_update(old));
        }
        if !errs.is_empty() {
            let name = obj.metadata().name.clone().unwrap_or_default();
            return Err(ApiError::invalid(info, &name, errs));
        }
        Ok((encode(&obj)?, warnings))
    }
}

/// Collects the paths of fields in `input` that the typed round trip
/// dropped, i.e. that the schema does not know.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, value) in i {
                match k.get(key) {
                    None if !value.is_null() => out.push(join(key)),
                    Some(kv) => unknown_fields(value, kv, &join(key), out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                unknown_fields(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_at_any_depth() {
        let codec = crate::kind::SERVICE.codec;
        let body = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x", "namespace": "d", "creationTimestamp": null},
            "spec": {"foo": 1, "ports": [{"port": 80, "bar": true}]}, "status": {}});
        let (_, warnings) = codec.prepare(body.clone(), None, FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"spec.foo\"", "unknown field \"spec.ports[0].bar\""]);
        let err = codec.prepare(body, None, FieldValidation::Strict).unwrap_err();
        assert!(err.to_string().contains("strict decoding error: unknown field \"spec.foo\""), "{err}");
    }

    #[test]
    fn kind_mismatch_and_type_errors_are_bad_requests() {
        let codec = crate::kind::SERVICE.codec;
        let err = codec.prepare(json!({"metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}}), None, FieldValidation::Strict);
        assert!(matches!(err, Err(ApiError::BadRequest(_))));
        let err = codec.prepare(json!({"kind": "Pod", "metadata": {"name": "x"}}), None, FieldValidation::Strict);
        assert!(matches!(err, Err(ApiError::BadRequest(_))));
    }
}
