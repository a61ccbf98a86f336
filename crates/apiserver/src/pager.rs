//! `limit` and `continue` on lists: a page of at most `limit` objects and a
//! continue token for the rest, every page read from the same listing so
//! the pages together are one consistent snapshot, as kube-apiserver's
//! pages are (etcd reads at the first page's revision). The listing is
//! kept, sharing the store's buffers, until `SNAPSHOT_TTL` passes or
//! `MAX_SNAPSHOTS` newer ones push it out; then its token answers 410
//! Expired and the client starts a new list.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use wharf_store::{KeyValue, Revision};

use crate::error::{ApiError, ApiResult};

/// Listings kept for their continue tokens.
const MAX_SNAPSHOTS: usize = 32;
/// How long a continue token stays valid (etcd's default compaction
/// interval in kube-apiserver).
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);

/// One listing, shared by the pages read from it.
pub type Listing = Arc<Vec<KeyValue>>;

struct Snapshot {
    id: u64,
    revision: Revision,
    listing: Listing,
    taken: Instant,
}

#[derive(Default)]
pub struct Pager {
    snapshots: Mutex<VecDeque<Snapshot>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What a continue token holds: the snapshot, its revision, and the key
/// the next page starts at.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Token {
    v: String,
    rv: Revision,
    id: u64,
    start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

impl Pager {
    /// Keeps `listing` for the pages after the first; returns its id.
    pub fn keep(&self, listing: Listing, revision: Revision) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        snapshots.retain(|s| s.taken.elapsed() < SNAPSHOT_TTL);
        if snapshots.len() >= MAX_SNAPSHOTS {
            snapshots.pop_front();
        }
        snapshots.push_back(Snapshot { id, revision, listing, taken: Instant::now() });
        id
    }

    /// The listing a token continues, its revision and where to start.
    pub fn resume(&self, token: &str, prefix: &str) -> ApiResult<(Listing, Revision, u64, String)> {
        let token = decode(token)?;
        if !token.start.starts_with(prefix) {
            return Err(ApiError::BadRequest("continue key is not valid: it is not for this list".into()));
        }
        let snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = snapshots.iter().find(|s| s.id == token.id && s.revision == token.rv && s.taken.elapsed() < SNAPSHOT_TTL);
        let snapshot = snapshot.ok_or_else(|| {
            ApiError::Gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
        })?;
        Ok((snapshot.listing.clone(), snapshot.revision, snapshot.id, token.start))
    }
}

pub fn encode(id: u64, rv: Revision, start: &str) -> String {
    let token = Token { v: TOKEN_VERSION.into(), rv, id, start: start.into() };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode(token: &str) -> ApiResult<Token> {
    let invalid = |why: String| ApiError::BadRequest(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|e| invalid(e.to_string()))?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if token.v != TOKEN_VERSION {
        return Err(invalid(format!("unsupported version {:?}", token.v)));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(n: usize) -> Listing {
        Arc::new(
            (0..n)
                .map(|i| KeyValue { key: format!("/p/{i:03}").into(), value: Default::default(), create_revision: 1, mod_revision: 1 })
                .collect(),
        )
    }

    #[test]
    fn tokens_resume_their_listing_until_pushed_out() {
        let pager = Pager::default();
        let first = pager.keep(listing(3), 7);
        let token = encode(first, 7, "/p/001");
        let (kept, rv, id, start) = pager.resume(&token, "/p/").unwrap();
        assert_eq!((kept.len(), rv, id, start.as_str()), (3, 7, first, "/p/001"));
        assert!(matches!(pager.resume(&token, "/other/"), Err(ApiError::BadRequest(_))), "a token of another list");
        for _ in 0..MAX_SNAPSHOTS {
            pager.keep(listing(1), 8);
        }
        assert!(matches!(pager.resume(&token, "/p/"), Err(ApiError::Gone(_))), "pushed out: 410");
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let pager = Pager::default();
        for bad in ["%%%", "bm90IGpzb24", &base64::engine::general_purpose::URL_SAFE.encode(br#"{"v":"x","rv":1,"id":0,"start":"/p/"}"#)] {
            assert!(matches!(pager.resume(bad, "/p/"), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }
}
