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
/// Codes and sessions one user holds at most (each): a user's newest
/// replaces its oldest, so no user can crowd the others out.
pub const MAX_PER_USER: usize = 16;

/// Why a code or session was not made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("this login code is unknown, used or expired")]
    UnknownCode,
    #[error("too many dashboard logins are open; try again later")]
    Full,
}

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
/// expired and, when the user holds `MAX_PER_USER`, its oldest; refuses
/// when the table is full of other users' live entries.
fn insert(
    table: &Mutex<HashMap<String, (User, Instant)>>,
    key: String,
    user: User,
    lifetime: Duration,
    now: Instant,
) -> Result<(), SessionError> {
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
    table.retain(|_, (_, until)| *until > now);
    let own: Vec<(&String, Instant)> = table.iter().filter(|(_, (u, _))| u.name == user.name).map(|(k, (_, t))| (k, *t)).collect();
    if own.len() >= MAX_PER_USER {
        if let Some(oldest) = own.iter().min_by_key(|(_, until)| *until).map(|(k, _)| (*k).clone()) {
            table.remove(&oldest);
        }
    } else if table.len() >= MAX_ENTRIES {
        return Err(SessionError::Full);
    }
    table.insert(key, (user, now + lifetime));
    Ok(())
}

impl Sessions {
    /// A one-time login code for `user`.
    pub fn issue_code(&self, user: User, now: Instant) -> Result<String, SessionError> {
        let code = random_secret();
        insert(&self.codes, code.clone(), user, CODE_LIFETIME, now)?;
        Ok(code)
    }

    /// Trades a code (once) for a session token.
    pub fn redeem(&self, code: &str, now: Instant) -> Result<String, SessionError> {
        let taken = self.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(code);
        let (user, until) = taken.ok_or(SessionError::UnknownCode)?;
        if until <= now {
            return Err(SessionError::UnknownCode);
        }
        let token = format!("{SESSION_PREFIX}{}", random_secret());
        insert(&self.sessions, token.clone(), user, SESSION_LIFETIME, now)?;
        Ok(token)
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
        let code = sessions.issue_code(alice(), now).unwrap();
        let token = sessions.redeem(&code, now).unwrap();
        assert!(token.starts_with(SESSION_PREFIX));
        assert_eq!(sessions.redeem(&code, now), Err(SessionError::UnknownCode), "one time only");
        assert_eq!(sessions.user(&token, now).unwrap().name, "alice");
        assert!(sessions.user("wharf-session.guess", now).is_none());
        sessions.end(&token);
        assert!(sessions.user(&token, now).is_none());
    }

    #[test]
    fn codes_and_sessions_expire() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let late = sessions.issue_code(alice(), now).unwrap();
        assert!(sessions.redeem(&late, now + CODE_LIFETIME).is_err());
        let token = sessions.redeem(&sessions.issue_code(alice(), now).unwrap(), now).unwrap();
        assert!(sessions.user(&token, now + SESSION_LIFETIME).is_none());
    }

    #[test]
    fn one_user_cannot_crowd_out_the_others() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let bob = sessions.issue_code(User::authenticated("bob", "", []), now).unwrap();
        let first = sessions.issue_code(alice(), now).unwrap();
        for i in 0..MAX_ENTRIES * 2 {
            sessions.issue_code(alice(), now + Duration::from_millis(i as u64 + 1)).unwrap();
        }
        assert!(sessions.codes.lock().unwrap().len() <= MAX_PER_USER + 1);
        assert!(sessions.redeem(&first, now).is_err(), "alice's oldest went first");
        assert!(sessions.redeem(&bob, now).is_ok(), "bob's code stays");
    }

    #[test]
    fn a_full_table_refuses_rather_than_evicting_others() {
        let sessions = Sessions::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            sessions.issue_code(User::authenticated(format!("user{i}"), "", []), now).unwrap();
        }
        assert_eq!(sessions.issue_code(alice(), now), Err(SessionError::Full));
        assert!(sessions.issue_code(alice(), now + CODE_LIFETIME).is_ok(), "room once the others expire");
    }
}
