//! Label and field selectors in their query-string forms
//! (`app=web,tier!=db,env in (a,b),!canary`, `metadata.name=x`).

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: every requirement must hold. Empty selects all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        split_top_level(s)
            .into_iter()
            .filter(|term| !term.trim().is_empty())
            .map(|term| parse_requirement(term.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSelector)
    }

    /// A selector that matches exactly the given key/value pairs, as a
    /// Service's `spec.selector` does.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        LabelSelector(map.iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside a `( ... )` value set.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    let bad = || SelectorError(term.to_string());
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(valid_key(key.trim(), term)?));
    }
    for (op, make) in
        [("==", Requirement::Equals as fn(String, String) -> Requirement), ("!=", Requirement::NotEquals), ("=", Requirement::Equals)]
    {
        if let Some((k, v)) = term.split_once(op) {
            return Ok(make(valid_key(k.trim(), term)?, v.trim().to_string()));
        }
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().map(str::trim).unwrap_or_default();
    if rest.is_empty() {
        return Ok(Requirement::Exists(valid_key(key, term)?));
    }
    let (op, set) = rest.split_once(char::is_whitespace).map_or((rest, ""), |(o, s)| (o, s.trim()));
    let (op, set) = match rest.find('(') {
        Some(paren) if op.len() > paren => (rest[..paren].trim(), &rest[paren..]),
        _ => (op, set),
    };
    let values =
        set.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(bad)?.split(',').map(|v| v.trim().to_string()).collect();
    let key = valid_key(key, term)?;
    match op {
        "in" => Ok(Requirement::In(key, values)),
        "notin" => Ok(Requirement::NotIn(key, values)),
        _ => Err(bad()),
    }
}

fn valid_key(key: &str, term: &str) -> Result<String, SelectorError> {
    if key.is_empty() || !crate::names::qualified_name(key).is_empty() {
        return Err(SelectorError(term.to_string()));
    }
    Ok(key.to_string())
}

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A parsed field selector (`a=b,c!=d`); which fields exist is the
/// caller's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(term.to_string()));
            };
            reqs.push(FieldRequirement { field: field.trim().to_string(), value: value.trim().to_string(), equal });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether every term holds, given how to read a field's value.
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let actual = field(&r.field).unwrap_or_default();
            (actual == r.value) == r.equal
        })
    }

    /// The value the selector pins `field` to, if it does (`metadata.name=x`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|r| r.equal && r.field == field).map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, api)",
            "tier notin (db)",
            "app",
            "!canary",
            "app=web,tier=front",
            "",
            "app in(web)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = ["app=db", "app!=web", "app in (db)", "tier notin (front,x)", "canary", "!app", "app=web,tier=db"];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s} should not match");
        }
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for s in ["app in web", "app foo (x)", "=x", "a b c"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn field_selector_terms() {
        let sel = FieldSelector::parse("metadata.name=x,metadata.namespace!=kube-system").unwrap();
        assert_eq!(sel.exact("metadata.name"), Some("x"));
        let get = |f: &str| match f {
            "metadata.name" => Some("x".to_string()),
            "metadata.namespace" => Some("default".to_string()),
            _ => None,
        };
        assert!(sel.matches(get));
        assert!(!FieldSelector::parse("metadata.name=y").unwrap().matches(get));
    }
}
