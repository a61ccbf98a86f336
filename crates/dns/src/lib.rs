//! Cluster DNS: the Kubernetes DNS-Based Service Discovery records of the
//! cluster zone, answered from an index that watch events keep current,
//! other names forwarded upstream.

pub mod index;
pub mod resolve;
