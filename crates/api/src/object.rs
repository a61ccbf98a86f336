//! What each served kind must provide: its discovery facts, defaulting and
//! validation, implemented on the `k8s-openapi` types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::field::FieldErrors;
use crate::kinds::KindInfo;

pub trait ApiObject:
    k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    fn info() -> &'static KindInfo;

    /// Fills the fields Kubernetes defaults on every write.
    fn apply_defaults(&mut self) {}

    /// Rules that hold for any stored object of the kind.
    fn validate(&self) -> FieldErrors;

    /// Carries over what an update may leave out but must keep, before
    /// defaulting (Kubernetes keeps allocated cluster IPs and node ports).
    fn prepare_for_update(&mut self, _old: &Self) {}

    /// Extra rules for changing `old` into `self`.
    fn validate_update(&self, _old: &Self) -> FieldErrors {
        Vec::new()
    }
}
