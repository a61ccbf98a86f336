//! Bootstrap tokens, as Kubernetes has them: a token `<id>.<secret>` is a
//! Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`; presented as a bearer token it
//! authenticates `system:bootstrap:<id>` in `system:bootstrappers` until
//! its expiration. A new node uses one once, to obtain its certificate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use crate::user::User;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const NAMESPACE: &str = "kube-system";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const GROUP: &str = "system:bootstrappers";
pub const USER_PREFIX: &str = "system:bootstrap:";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `(id, secret)` when `token` has the bootstrap form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    (valid(id, ID_LEN) && valid(secret, SECRET_LEN)).then_some((id, secret))
}

/// The name of the Secret holding token `id`.
pub fn secret_name(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

fn random(len: usize) -> String {
    (0..len).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// A fresh token and the Secret that makes it valid until `expires`.
pub fn new_token(expires: jiff::Timestamp, description: &str) -> (String, Secret) {
    let (id, secret) = (random(ID_LEN), random(SECRET_LEN));
    let data: BTreeMap<String, ByteString> = [
        ("token-id", id.as_str()),
        ("token-secret", secret.as_str()),
        ("expiration", &expires.to_string()),
        ("usage-bootstrap-authentication", "true"),
        ("description", description),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let object = Secret {
        metadata: ObjectMeta { name: Some(secret_name(&id)), namespace: Some(NAMESPACE.into()), ..Default::default() },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    };
    (format!("{id}.{secret}"), object)
}

fn field<'a>(secret: &'a Secret, key: &str) -> &'a str {
    let value = secret.data.as_ref().and_then(|d| d.get(key));
    value.and_then(|v| std::str::from_utf8(&v.0).ok()).unwrap_or_default()
}

/// The user token `(id, given)` authenticates as, judged against its
/// stored `secret` at `now`; the error says why not (for the log only:
/// the caller just gets 401).
pub fn authenticate(secret: &Secret, id: &str, given: &str, now: jiff::Timestamp) -> Result<User, String> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) || field(secret, "token-id") != id {
        return Err(format!("{} is not a bootstrap token", secret_name(id)));
    }
    if !crate::tokens::secret_matches(given, field(secret, "token-secret")) {
        return Err(format!("wrong secret for bootstrap token {id}"));
    }
    if field(secret, "usage-bootstrap-authentication") != "true" {
        return Err(format!("bootstrap token {id} is not for authentication"));
    }
    let expiration = field(secret, "expiration");
    if !expiration.is_empty() {
        let at: jiff::Timestamp = expiration.parse().map_err(|e| format!("bootstrap token {id}: expiration {expiration:?}: {e}"))?;
        if at <= now {
            return Err(format!("bootstrap token {id} expired at {expiration}"));
        }
    }
    let extra = field(secret, "auth-extra-groups").split(',').map(str::trim).filter(|g| g.starts_with(&format!("{GROUP}:")));
    let groups = std::iter::once(GROUP.to_string()).chain(extra.map(String::from));
    Ok(User::authenticated(format!("{USER_PREFIX}{id}"), "", groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_have_the_kubernetes_form() {
        let (token, secret) = new_token(at("2030-01-01T00:00:00Z"), "test");
        let (id, _) = parse(&token).expect("a fresh token parses");
        assert_eq!(secret.metadata.name.as_deref(), Some(secret_name(id).as_str()));
        assert_eq!(parse("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        for bad in ["abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123456789abcde!", "abcdef.0123456789abcdefg"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_authenticates_until_it_expires_and_only_with_its_secret() {
        let (token, mut secret) = new_token(at("2030-01-01T00:00:00Z"), "test");
        let (id, given) = parse(&token).unwrap();
        let user = authenticate(&secret, id, given, at("2029-12-31T23:59:59Z")).unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{id}"));
        assert_eq!(user.groups, [GROUP, crate::user::AUTHENTICATED]);
        assert!(authenticate(&secret, id, given, at("2030-01-01T00:00:00Z")).unwrap_err().contains("expired"));
        assert!(authenticate(&secret, id, "0000000000000000", at("2029-01-01T00:00:00Z")).is_err());
        secret.type_ = Some("Opaque".into());
        assert!(authenticate(&secret, id, given, at("2029-01-01T00:00:00Z")).is_err(), "not a bootstrap Secret");
    }

    #[test]
    fn extra_groups_stay_within_the_bootstrappers() {
        let (token, mut secret) = new_token(at("2030-01-01T00:00:00Z"), "");
        let (id, given) = parse(&token).unwrap();
        let groups = ByteString(b"system:bootstrappers:workers,system:masters".to_vec());
        secret.data.as_mut().unwrap().insert("auth-extra-groups".into(), groups);
        let user = authenticate(&secret, id, given, at("2029-01-01T00:00:00Z")).unwrap();
        assert_eq!(user.groups, [GROUP, "system:bootstrappers:workers", crate::user::AUTHENTICATED]);
    }
}
