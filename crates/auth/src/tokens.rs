//! kube-apiserver's static token file (`--token-auth-file`): one user per
//! line, `token,user,uid,"group1,group2"`.

use std::collections::HashMap;

use crate::user::User;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("line {line}: {detail}")]
    Line { line: u64, detail: String },
    #[error("{0}")]
    Csv(#[from] csv::Error),
}

/// Bearer tokens and the users they stand for.
#[derive(Clone, Debug, Default)]
pub struct TokenFile {
    users: HashMap<String, User>,
}

impl TokenFile {
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).comment(Some(b'#')).from_reader(text.as_bytes());
        let mut users = HashMap::new();
        for record in reader.records() {
            let record = record?;
            let line = record.position().map_or(0, csv::Position::line);
            let bad = |detail: &str| TokenFileError::Line { line, detail: detail.into() };
            if record.len() < 3 {
                return Err(bad("must have at least 3 columns (token, user name, user uid)"));
            }
            let (token, name, uid) = (record[0].trim(), record[1].trim(), record[2].trim());
            if token.is_empty() || name.is_empty() {
                return Err(bad("the token and the user name may not be empty"));
            }
            let groups = record.get(3).unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from);
            if users.insert(token.to_string(), User::authenticated(name, uid, groups)).is_some() {
                return Err(bad("the token appears twice"));
            }
        }
        Ok(Self { users })
    }

    pub fn user(&self, token: &str) -> Option<&User> {
        self.users.get(token)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Whether a presented secret equals the expected one, in time that
/// depends only on the length, so timing reveals nothing of the secret.
pub fn secret_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_groups_and_quoted_lists() {
        let file = TokenFile::parse("# team\nt1,alice,1001,\"dev,ops\"\nt2,bob,1002\n").unwrap();
        let alice = file.user("t1").unwrap();
        assert_eq!((alice.name.as_str(), alice.uid.as_str()), ("alice", "1001"));
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(file.user("t2").unwrap().groups, ["system:authenticated"]);
        assert!(file.user("t3").is_none());
        assert_eq!(file.len(), 2);
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        let err = TokenFile::parse("t1,alice,1\nt2,bob\n").unwrap_err().to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(TokenFile::parse("t1,a,1\nt1,b,2\n").is_err(), "duplicate token");
        assert!(TokenFile::parse(",a,1\n").is_err(), "empty token");
    }
}
