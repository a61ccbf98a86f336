//! RBAC kinds: Role, ClusterRole, RoleBinding and ClusterRoleBinding,
//! defaulted and validated as Kubernetes does (`pkg/apis/rbac/validation`).

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};

use crate::field::{FieldError, FieldErrors, Path};
use crate::kinds::{KindInfo, CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE, ROLE_BINDING};
use crate::meta::validate_object_meta;
use crate::names;
use crate::object::ApiObject;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// RBAC names are path segments: `system:node` is fine, `a/b` is not.
fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"].iter().filter(|c| name.contains(**c)).map(|c| format!("may not contain '{c}'")).collect()
}

fn validate_rules(rules: &Option<Vec<PolicyRule>>, namespaced: bool) -> FieldErrors {
    let mut errs = Vec::new();
    for (i, rule) in rules.iter().flatten().enumerate() {
        let at = Path::new("rules").index(i);
        if rule.verbs.is_empty() {
            errs.push(FieldError::required(at.child("verbs"), "verbs must contain at least one value"));
        }
        let is_empty = |v: &Option<Vec<String>>| v.as_ref().is_none_or(Vec::is_empty);
        if !is_empty(&rule.non_resource_urls) {
            if namespaced {
                errs.push(FieldError::invalid(
                    at.child("nonResourceURLs"),
                    crate::field::Value::Raw(format!("{:?}", rule.non_resource_urls.clone().unwrap_or_default())),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !is_empty(&rule.api_groups) || !is_empty(&rule.resources) {
                errs.push(FieldError::invalid(
                    at.child("nonResourceURLs"),
                    crate::field::Value::Raw(format!("{:?}", rule.non_resource_urls.clone().unwrap_or_default())),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if is_empty(&rule.api_groups) {
            errs.push(FieldError::required(at.child("apiGroups"), "resource rules must supply at least one api group"));
        }
        if is_empty(&rule.resources) {
            errs.push(FieldError::required(at.child("resources"), "resource rules must supply at least one resource"));
        }
    }
    errs
}

fn validate_role_ref(role_ref: &RoleRef, kinds: &[&str]) -> FieldErrors {
    let at = Path::new("roleRef");
    let mut errs = Vec::new();
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(at.child("apiGroup"), role_ref.api_group.as_str(), &[GROUP]));
    }
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(at.child("kind"), role_ref.kind.as_str(), kinds));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required(at.child("name"), ""));
    }
    errs.extend(path_segment(&role_ref.name).into_iter().map(|m| FieldError::invalid(at.child("name"), role_ref.name.as_str(), m)));
    errs
}

fn validate_subjects(subjects: &Option<Vec<Subject>>, namespaced: bool) -> FieldErrors {
    let mut errs = Vec::new();
    for (i, s) in subjects.iter().flatten().enumerate() {
        let at = Path::new("subjects").index(i);
        let group = s.api_group.as_deref().unwrap_or_default();
        if s.name.is_empty() {
            errs.push(FieldError::required(at.child("name"), ""));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !s.name.is_empty() {
                    errs.extend(
                        names::dns1123_subdomain(&s.name).into_iter().map(|m| FieldError::invalid(at.child("name"), s.name.as_str(), m)),
                    );
                }
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(at.child("apiGroup"), group, &[""]));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                    errs.push(FieldError::required(at.child("namespace"), ""));
                }
            }
            "User" | "Group" if group != GROUP => errs.push(FieldError::not_supported(at.child("apiGroup"), group, &[GROUP])),
            "User" | "Group" => {}
            other => errs.push(FieldError::not_supported(at.child("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
    errs
}

/// Subjects and role references name their API group when left out.
fn default_binding(role_ref: &mut RoleRef, subjects: &mut Option<Vec<Subject>>) {
    if role_ref.api_group.is_empty() {
        role_ref.api_group = GROUP.into();
    }
    for s in subjects.iter_mut().flatten() {
        if s.api_group.is_none() && matches!(s.kind.as_str(), "User" | "Group") {
            s.api_group = Some(GROUP.into());
        }
    }
}

fn role_ref_unchanged(old: &RoleRef, new: &RoleRef) -> FieldErrors {
    if old == new {
        return Vec::new();
    }
    vec![FieldError::invalid("roleRef", crate::field::Value::Raw(format!("{new:?}")), "cannot change roleRef")]
}

impl ApiObject for Role {
    fn info() -> &'static KindInfo {
        &ROLE
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, path_segment);
        errs.extend(validate_rules(&self.rules, true));
        errs
    }
}

impl ApiObject for ClusterRole {
    fn info() -> &'static KindInfo {
        &CLUSTER_ROLE
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, false, path_segment);
        errs.extend(validate_rules(&self.rules, false));
        if self.aggregation_rule.as_ref().is_some_and(|a| a.cluster_role_selectors.as_ref().is_none_or(Vec::is_empty)) {
            errs.push(FieldError::required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        errs
    }
}

impl ApiObject for RoleBinding {
    fn info() -> &'static KindInfo {
        &ROLE_BINDING
    }

    fn apply_defaults(&mut self) {
        default_binding(&mut self.role_ref, &mut self.subjects);
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, path_segment);
        errs.extend(validate_role_ref(&self.role_ref, &["Role", "ClusterRole"]));
        errs.extend(validate_subjects(&self.subjects, true));
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        role_ref_unchanged(&old.role_ref, &self.role_ref)
    }
}

impl ApiObject for ClusterRoleBinding {
    fn info() -> &'static KindInfo {
        &CLUSTER_ROLE_BINDING
    }

    fn apply_defaults(&mut self) {
        default_binding(&mut self.role_ref, &mut self.subjects);
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, false, path_segment);
        errs.extend(validate_role_ref(&self.role_ref, &["ClusterRole"]));
        errs.extend(validate_subjects(&self.subjects, false));
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        role_ref_unchanged(&old.role_ref, &self.role_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: ns.map(String::from), name: Some(name.into()), ..Default::default() }
    }

    fn fields(errs: FieldErrors) -> Vec<String> {
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn rules_need_verbs_groups_and_resources_and_roles_no_paths() {
        let role = Role {
            metadata: meta(Some("d"), "system:thing"),
            rules: Some(vec![
                PolicyRule { verbs: vec![], api_groups: Some(vec!["".into()]), resources: Some(vec!["pods".into()]), ..Default::default() },
                PolicyRule { verbs: vec!["get".into()], ..Default::default() },
                PolicyRule { verbs: vec!["get".into()], non_resource_urls: Some(vec!["/x".into()]), ..Default::default() },
            ]),
        };
        assert_eq!(fields(role.validate()), ["rules[0].verbs", "rules[1].apiGroups", "rules[1].resources", "rules[2].nonResourceURLs"]);
        let bad_name = Role { metadata: meta(Some("d"), "a/b"), rules: None };
        assert_eq!(fields(bad_name.validate()), ["metadata.name"]);
    }

    #[test]
    fn bindings_are_defaulted_checked_and_keep_their_role() {
        let mut b = RoleBinding {
            metadata: meta(Some("d"), "alice-edit"),
            role_ref: RoleRef { api_group: String::new(), kind: "ClusterRole".into(), name: "edit".into() },
            subjects: Some(vec![Subject { kind: "User".into(), name: "alice".into(), ..Default::default() }]),
        };
        b.apply_defaults();
        assert_eq!(b.role_ref.api_group, GROUP);
        assert!(b.validate().is_empty(), "{:?}", b.validate());
        let mut changed = b.clone();
        changed.role_ref.name = "admin".into();
        assert_eq!(fields(changed.validate_update(&b)), ["roleRef"]);
        let crb = ClusterRoleBinding {
            metadata: meta(None, "x"),
            role_ref: RoleRef { api_group: GROUP.into(), kind: "Role".into(), name: "r".into() },
            subjects: Some(vec![
                Subject { kind: "ServiceAccount".into(), name: "sa".into(), ..Default::default() },
                Subject { kind: "Robot".into(), name: "r2".into(), ..Default::default() },
            ]),
        };
        assert_eq!(fields(crb.validate()), ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]);
    }
}
