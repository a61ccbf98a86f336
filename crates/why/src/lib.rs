//! `wharf why svc/NAME`: walks the chain that makes a Service answer —
//! its selector and the pods it matches (with near misses), each pod's
//! readiness and last probe failure, the target ports as each pod resolves
//! them, the EndpointSlices, the frontends and the DNS answer — and ends
//! with the first broken link and what to do about it. Everything comes
//! from the API (Events carry the probe failures and frontend conflicts)
//! and from asking the cluster DNS, never from another process's memory.

pub mod chain;
pub mod fetch;

pub use chain::{explain, DnsAnswer, Inputs, Report};
