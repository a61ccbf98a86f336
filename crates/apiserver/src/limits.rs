//! The API server's bounds, with kube-apiserver's defaults where it has
//! one: what a request may carry, what an object may weigh once stored,
//! how long a client may take, how many may be served at once.

use std::time::Duration;

/// A request body larger than this is refused (kube-apiserver's
/// `MaxRequestBodyBytes`).
pub const MAX_REQUEST_BODY_BYTES: usize = 3 << 20;
/// An object is never stored larger than this, whatever write path made
/// it (etcd's default request limit, 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1536 << 10;
/// A client that has not finished the TLS handshake by then is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's headers, and for an idle HTTP/1.1 keep-alive
/// connection, to start the next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 connections are pinged this often and closed when a ping goes
/// unanswered for `H2_PING_TIMEOUT`.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What operators may tune (`wharf server --help`).
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Connections open at once; more are closed at accept.
    pub connections: usize,
    /// Non-mutating requests being served at once (watches excepted);
    /// more are answered 429 with Retry-After.
    pub requests_in_flight: usize,
    /// Mutating requests being served at once.
    pub mutating_in_flight: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self { connections: 4096, requests_in_flight: 400, mutating_in_flight: 200 }
    }
}
