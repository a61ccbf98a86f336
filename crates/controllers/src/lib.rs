//! Controllers: turn watch events on Services and Pods into the objects
//! that follow from them. They speak only the Kubernetes API (list/watch
//! and writes through `kube`), like kube-controller-manager does, on the
//! runtime in `wharf-kube` (reflectors, work queue, workers).

pub mod endpointslice;
pub mod loadbalancer;
pub mod mirroring;
pub mod nodelifecycle;

pub use endpointslice::EndpointSliceController;
pub use loadbalancer::LoadBalancerController;
pub use mirroring::MirroringController;
pub use nodelifecycle::NodeLifecycleController;
