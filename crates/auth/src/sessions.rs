//! Dashboard sessions: a one-time login code (what `wharf dashboard`
//! prints, in a URL) is traded once for a session token that stands for
//! the user who asked for the code. Both live in memory, expire, and are
//! bounded; a full table drops the entries nearest to expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::user::User;

/// Every session token starts with this, so the authenticator knows
/// where to look.
pub const SESSION_PREFIX: &str = "wharf-session.";
/// How long a login code may wait to be used.
pub const CODE_LIFETIME: Duration = Duration::from_secs(300);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Codes and sessions held at most (each).
pub const MAX_ENTRIES: usize = 1024;

#[derive(Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, (User, Instant)>>,
    sessions: Mutex<HashMap<String, (User, Instant)>>,
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Inserts `key` valid until `now + lifetime`, first dropping what has
/// expired and, when full, the entry nearest to expiry.
fn insert(table: &Mutex<HashMap<String, (User, Instant)>>, key: String, user: User, lifetime: Duration, now: Instant) {
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
    table.retain(|_, (_, until)| *until > now);
    if table.len() >= MAX_ENTRIES {
        if let Some(oldest) = table.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone()) {
            table.remove(&oldest);
        }
    }
    table.insert(key, (user, now + lifetime));
}

impl Sessions {
    /// A one-time login code for `user`.
    pub fn issue_code(&self, user: User, now: Instant) -> String {
        let code = random_secret();
        insert(&self.codes, code.clone(), user, CODE_LIFETIME, now);
        code
    }

    /// Trades a code (once) for a session token.
    pub fn redeem(&self, code: &str, now: Instant) -> Option<String> {
        let (user, until) = self.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(code)?;
        if until <= now {
            return None;
        }
        let token = format!("{SESSION_PREFIX}{}", random_secret());
        insert(&self.sessions, token.clone(), user, SESSION_LIFETIME, now);
        Some(token)
    }

    /// The user a live session token stands for.
    pub fn user(&self, token: &str, now: Instant) -> Option<User> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(token).filter(|(_, until)| *until > now).map(|(user, _)| user.clone())
    }

    /// Ends a session (logout).
    pub fn end(&self, token: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User::authenticated("alice", "", [])
    }

    #[test]
    fn a_code_works_once_and_the_session_stands_for_its_user() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let code = sessions.issue_code(alice(), now);
        let token = sessions.redeem(&code, now).unwrap();
        assert!(token.starts_with(SESSION_PREFIX));
        assert!(sessions.redeem(&code, now).is_none(), "one time only");
        assert_eq!(sessions.user(&token, now).unwrap().name, "alice");
        assert!(sessions.user("wharf-session.guess", now).is_none());
        sessions.end(&token);
        assert!(sessions.user(&token, now).is_none());
    }

    #[test]
    fn codes_and_sessions_expire() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let late = sessions.issue_code(alice(), now);
        assert!(sessions.redeem(&late, now + CODE_LIFETIME).is_none());
        let token = sessions.redeem(&sessions.issue_code(alice(), now), now).unwrap();
        assert!(sessions.user(&token, now + SESSION_LIFETIME).is_none());
    }

    #[test]
    fn the_tables_are_bounded() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let first = sessions.issue_code(alice(), now);
        for i in 0..MAX_ENTRIES * 2 {
            sessions.issue_code(alice(), now + Duration::from_millis(i as u64 + 1));
        }
        assert!(sessions.codes.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(sessions.redeem(&first, now).is_none(), "the oldest went first");
    }
}
