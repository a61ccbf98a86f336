//! The smaller kinds: Namespace, Node, Event.

use k8s_openapi::api::core::v1::{Event, Namespace, Node};

use crate::field::FieldErrors;
use crate::kinds::{KindInfo, EVENT, NAMESPACE, NODE};
use crate::meta::validate_object_meta;
use crate::names;
use crate::object::ApiObject;

/// The label Kubernetes puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl ApiObject for Namespace {
    fn info() -> &'static KindInfo {
        &NAMESPACE
    }

    fn apply_defaults(&mut self) {
        if let Some(name) = self.metadata.name.clone() {
            self.metadata.labels.get_or_insert_with(Default::default).insert(NAMESPACE_NAME_LABEL.into(), name);
        }
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.finalizers.get_or_insert_with(|| vec!["kubernetes".into()]);
        let status = self.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Active".into());
    }

    fn validate(&self) -> FieldErrors {
        validate_object_meta(&self.metadata, false, names::dns1123_label)
    }
}

impl ApiObject for Node {
    fn info() -> &'static KindInfo {
        &NODE
    }

    fn validate(&self) -> FieldErrors {
        validate_object_meta(&self.metadata, false, names::dns1123_subdomain)
    }
}

impl ApiObject for Event {
    fn info() -> &'static KindInfo {
        &EVENT
    }

    fn validate(&self) -> FieldErrors {
        validate_object_meta(&self.metadata, true, names::dns1123_subdomain)
    }
}
