//! `limit` and `continue` on lists: a page of at most `limit` objects and a
//! continue token for the rest, every page read from the same store
//! snapshot so the pages together are one consistent listing, as
//! kube-apiserver's pages are (etcd reads at the first page's revision).
//! The snapshot is kept until the last page is read, `SNAPSHOT_TTL` passes
//! or `MAX_SNAPSHOTS` newer ones push it out; then its token answers 410
//! Expired and the client starts a new list. A snapshot costs the process
//! no copy of the objects: the embedded store's is a read transaction of
//! its file, etcd's a revision.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use wharf_store::{Revision, SharedSnapshot};

use crate::error::{ApiError, ApiResult};

/// Snapshots kept for their continue tokens.
const MAX_SNAPSHOTS: usize = 32;
/// How long a continue token stays valid (etcd's default compaction
/// interval in kube-apiserver).
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);

struct Kept {
    id: u64,
    snapshot: SharedSnapshot,
    taken: Instant,
}

#[derive(Default)]
pub struct Pager {
    snapshots: Mutex<VecDeque<Kept>>,
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
    /// Keeps `snapshot` for the pages after the first; returns its id.
    pub fn keep(&self, snapshot: SharedSnapshot) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut snapshots = self.kept();
        if snapshots.len() >= MAX_SNAPSHOTS {
            snapshots.pop_front();
        }
        snapshots.push_back(Kept { id, snapshot, taken: Instant::now() });
        id
    }

    /// The snapshot a token continues, its id and the key to start at.
    pub fn resume(&self, token: &str, prefix: &str) -> ApiResult<(SharedSnapshot, u64, String)> {
        let token = decode(token)?;
        if !token.start.starts_with(prefix) {
            return Err(ApiError::BadRequest("continue key is not valid: it is not for this list".into()));
        }
        let snapshots = self.kept();
        let kept = snapshots.iter().find(|s| s.id == token.id && s.snapshot.revision() == token.rv);
        let kept = kept.ok_or_else(expired)?;
        Ok((kept.snapshot.clone(), kept.id, token.start))
    }

    /// The last page of snapshot `id` was read: let it go.
    pub fn finish(&self, id: u64) {
        self.kept().retain(|s| s.id != id);
    }

    /// Lets expired snapshots go. Called as lists and watches start, so an
    /// abandoned list's snapshot (which keeps the store file from reusing
    /// the pages written since) goes soon after its time even when no
    /// other list is paged: every watch is renewed within minutes.
    pub fn sweep(&self) {
        drop(self.kept());
    }

    /// The snapshots still valid.
    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Kept>> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        snapshots.retain(|s| s.taken.elapsed() < SNAPSHOT_TTL);
        snapshots
    }
}

/// A continue token whose snapshot is gone.
pub fn expired() -> ApiError {
    ApiError::Gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
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
    use std::sync::Arc;
    use wharf_store::{KeyValue, Snapshot};

    struct At(Revision);

    #[async_trait::async_trait]
    impl Snapshot for At {
        fn revision(&self) -> Revision {
            self.0
        }
        async fn list_from(&self, _: &str, _: &str, _: usize) -> wharf_store::Result<Vec<KeyValue>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn tokens_resume_their_snapshot_until_finished_or_pushed_out() {
        let pager = Pager::default();
        let first = pager.keep(Arc::new(At(7)));
        let token = encode(first, 7, "/p/001");
        let (kept, id, start) = pager.resume(&token, "/p/").unwrap();
        assert_eq!((kept.revision(), id, start.as_str()), (7, first, "/p/001"));
        assert!(matches!(pager.resume(&token, "/other/"), Err(ApiError::BadRequest(_))), "a token of another list");
        assert!(matches!(pager.resume(&encode(first, 8, "/p/001"), "/p/"), Err(ApiError::Gone(_))), "another revision");
        for _ in 0..MAX_SNAPSHOTS {
            pager.keep(Arc::new(At(8)));
        }
        assert!(matches!(pager.resume(&token, "/p/"), Err(ApiError::Gone(_))), "pushed out: 410");
        assert_eq!(pager.snapshots.lock().unwrap().len(), MAX_SNAPSHOTS, "bounded");

        let second = pager.keep(Arc::new(At(9)));
        pager.finish(second);
        assert!(matches!(pager.resume(&encode(second, 9, "/p/"), "/p/"), Err(ApiError::Gone(_))), "finished: let go");
    }

    #[test]
    fn expired_snapshots_go_at_the_next_sweep() {
        let pager = Pager::default();
        pager.keep(Arc::new(At(1)));
        pager.keep(Arc::new(At(2)));
        let Some(long_ago) = Instant::now().checked_sub(SNAPSHOT_TTL + Duration::from_secs(1)) else { return };
        pager.snapshots.lock().unwrap().iter_mut().for_each(|kept| kept.taken = long_ago);
        pager.sweep();
        assert!(pager.snapshots.lock().unwrap().is_empty(), "an abandoned list's snapshot is let go");
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let pager = Pager::default();
        for bad in ["%%%", "bm90IGpzb24", &base64::engine::general_purpose::URL_SAFE.encode(br#"{"v":"x","rv":1,"id":0,"start":"/p/"}"#)] {
            assert!(matches!(pager.resume(bad, "/p/"), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }
}
