//! Every edge of wharf has a bound (connections, requests in flight,
//! message sizes, table entries). Reaching one is not an error of wharf's:
//! the client gets a clear refusal where the protocol has one, a counter
//! goes up (`wharf_limit_reached_total{limit}`), and a warning is logged
//! the first time and then at most once a minute per limit, with the
//! count since, so an attack cannot turn the log into a second flood.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// How often one limit's warning may repeat.
const LOG_EVERY: Duration = Duration::from_secs(60);

struct Reports {
    counters: Family<LimitLabel, Counter>,
    /// Per limit: when it was last logged and the hits since.
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

fn reports() -> &'static Reports {
    static REPORTS: OnceLock<Reports> = OnceLock::new();
    REPORTS.get_or_init(|| Reports { counters: Family::default(), logged: Mutex::new(HashMap::new()) })
}

/// Adds the counter of every limit to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register("wharf_limit_reached", "Times a bound at an edge refused or cut something, by limit", reports().counters.clone());
}

/// Records that `limit` (bound `bound`) was reached; `what` says what
/// was refused.
pub fn reached(limit: &'static str, bound: impl std::fmt::Display, what: &str) {
    let reports = reports();
    reports.counters.get_or_create(&LimitLabel { limit }).inc();
    let mut logged = reports.logged.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match logged.get_mut(limit) {
        Some((at, since)) if now.duration_since(*at) < LOG_EVERY => *since += 1,
        Some((at, since)) => {
            tracing::warn!(limit, %bound, hits = *since + 1, "limit reached again: {what}");
            *at = now;
            *since = 0;
        }
        None => {
            tracing::warn!(limit, %bound, "limit reached: {what}; further hits are counted in wharf_limit_reached_total");
            logged.insert(limit, (now, 0));
        }
    }
}

/// How many times `limit` was reached in this process.
pub fn count(limit: &'static str) -> u64 {
    reports().counters.get_or_create(&LimitLabel { limit }).get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hit_counts_once_logged() {
        for _ in 0..1000 {
            reached("test_limit", 5, "a test");
        }
        assert_eq!(count("test_limit"), 1000);
        let logged = reports().logged.lock().unwrap();
        assert_eq!(logged.get("test_limit").map(|(_, since)| *since), Some(999), "one warning, the rest counted");
    }
}
