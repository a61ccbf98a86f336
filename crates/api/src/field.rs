//! Field errors in the shape and wording of Kubernetes' `field.Error`, so
//! kubectl prints `spec.ports[0].port: Invalid value: 70000: ...`.

use std::fmt;

/// What is wrong with a field; the variants are Kubernetes' error types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    Duplicate,
    NotSupported(Vec<String>),
    Forbidden,
}

impl ErrorType {
    /// The `reason` of a `StatusCause`.
    pub fn reason(&self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::NotSupported(_) => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
        }
    }
}

/// A value as it is quoted in an error message: strings in quotes,
/// numbers bare, anything else preformatted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    None,
    Str(String),
    Int(i64),
    Raw(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => Ok(()),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Raw(r) => f.write_str(r),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Str(s.clone())
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i.into())
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl Value {
    /// A list of strings as Kubernetes quotes it: `[]string{"a", "b"}`.
    pub fn strings(items: &[String]) -> Self {
        let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
        Value::Raw(format!("[]string{{{}}}", quoted.join(", ")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    pub value: Value,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind: ErrorType::Required, field: field.into(), value: Value::None, detail: detail.into() }
    }
    pub fn invalid(field: impl Into<String>, value: impl Into<Value>, detail: impl Into<String>) -> Self {
        Self { kind: ErrorType::Invalid, field: field.into(), value: value.into(), detail: detail.into() }
    }
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self { kind: ErrorType::Duplicate, field: field.into(), value: value.into(), detail: String::new() }
    }
    pub fn not_supported(field: impl Into<String>, value: impl Into<Value>, supported: &[&str]) -> Self {
        Self {
            kind: ErrorType::NotSupported(supported.iter().map(|s| s.to_string()).collect()),
            field: field.into(),
            value: value.into(),
            detail: String::new(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind: ErrorType::Forbidden, field: field.into(), value: Value::None, detail: detail.into() }
    }

    /// The message of a `StatusCause`, without the field path.
    pub fn body(&self) -> String {
        let mut out = match &self.kind {
            ErrorType::Required => "Required value".to_string(),
            ErrorType::Invalid => format!("Invalid value: {}", self.value),
            ErrorType::Duplicate => format!("Duplicate value: {}", self.value),
            ErrorType::NotSupported(supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!("Unsupported value: {}: supported values: {}", self.value, list.join(", "))
            }
            ErrorType::Forbidden => "Forbidden".to_string(),
        };
        if !self.detail.is_empty() {
            out.push_str(": ");
            out.push_str(&self.detail);
        }
        out
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A path into an object, printed as `spec.ports[0].port`.
#[derive(Clone, Debug)]
pub struct Path(String);

impl Path {
    pub fn new(root: &str) -> Self {
        Path(root.to_string())
    }
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }
    pub fn key(&self, k: &str) -> Self {
        Path(format!("{}[{k}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Path> for String {
    fn from(p: Path) -> Self {
        p.0
    }
}
impl From<&Path> for String {
    fn from(p: &Path) -> Self {
        p.0.clone()
    }
}

pub type FieldErrors = Vec<FieldError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_kubernetes_wording() {
        let p = Path::new("spec").child("ports").index(0).child("port");
        assert_eq!(
            FieldError::invalid(&p, 70000, "must be between 1 and 65535, inclusive").to_string(),
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(FieldError::required("spec.ports", "").to_string(), "spec.ports: Required value");
        assert_eq!(
            FieldError::not_supported("spec.type", "Foo", &["ClusterIP", "NodePort"]).to_string(),
            "spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"NodePort\""
        );
        assert_eq!(FieldError::duplicate("spec.ports[1].name", "http").to_string(), "spec.ports[1].name: Duplicate value: \"http\"");
    }
}
