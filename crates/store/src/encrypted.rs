//! Encryption at rest, as kube-apiserver's `aesgcm` provider does it:
//! [`Encrypted`] wraps any store and seals the values of keys under the
//! chosen prefixes (`/registry/secrets/`) with AES-256-GCM on every write
//! (`k8s:enc:aesgcm:v1:<key name>:`, a random 12-byte nonce, then the
//! ciphertext and tag; the store key is the additional authenticated data,
//! so a value copied under another key does not open), and opens them on
//! every read and watch event. The first key seals; every key opens, so
//! keys can be rotated. A value without the prefix (written before
//! encryption was on) is read as it is.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use futures::StreamExt;

use crate::{Event, KeyValue, Op, Result, Revision, SharedSnapshot, Snapshot, Store, StoreError, Txn, TxnOutcome, Value, WatchStream};

const PREFIX: &str = "k8s:enc:aesgcm:v1:";
const NONCE_LEN: usize = 12;

/// A named 256-bit key.
pub struct EncryptionKey {
    pub name: String,
    pub secret: [u8; 32],
}

/// What gets encrypted and with which keys.
pub struct Encryption {
    /// Store key prefixes whose values are sealed.
    pub prefixes: Vec<String>,
    /// Opening keys, by name.
    keys: Vec<(String, Aes256Gcm)>,
    /// Whether writes are sealed (with the first key); when not, writes
    /// are stored plain and the keys only open what is sealed.
    seal: bool,
}

impl Encryption {
    pub fn new(prefixes: Vec<String>, keys: &[EncryptionKey], seal: bool) -> Self {
        let keys = keys.iter().map(|k| (k.name.clone(), Aes256Gcm::new(&k.secret.into()))).collect();
        Self { prefixes, keys, seal }
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes> {
        let Some((name, cipher)) = self.keys.first().filter(|_| self.seal && self.covers(key)) else { return Ok(value) };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &value, aad: key.as_bytes() })
            .map_err(|_| StoreError::Backend(format!("encrypting {key} failed")))?;
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out.into())
    }

    /// `value` opened when sealed, else as it is: a value the backend holds
    /// packed stays packed, and is not copied.
    fn open(&self, key: &str, value: Value) -> Result<Value> {
        if !value.starts_with(PREFIX.as_bytes()) {
            return Ok(value);
        }
        let value = value.bytes();
        let rest = &value[PREFIX.len()..];
        let cannot = |why: &str| StoreError::Backend(format!("cannot decrypt {key}: {why}"));
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| cannot("no key name"))?;
        let (name, sealed) = (&rest[..colon], &rest[colon + 1..]);
        let (_, cipher) = self.keys.iter().find(|(n, _)| n.as_bytes() == name).ok_or_else(|| {
            cannot(&format!("sealed with key {:?}, which the encryption configuration no longer holds", String::from_utf8_lossy(name)))
        })?;
        if sealed.len() < NONCE_LEN {
            return Err(cannot("truncated"));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: key.as_bytes() })
            .map_err(|_| cannot("the value does not authenticate"))?;
        Ok(plain.as_slice().into())
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = self.open(&kv.key, kv.value)?;
        Ok(kv)
    }

    fn open_event(&self, mut event: Event) -> Result<Event> {
        event.value = self.open(&event.key, event.value)?;
        event.prev = event.prev.map(|p| self.open(&event.key, p)).transpose()?;
        Ok(event)
    }
}

/// A store whose covered values are encrypted at rest.
pub struct Encrypted {
    inner: Arc<dyn Store>,
    encryption: Arc<Encryption>,
}

impl Encrypted {
    pub fn new(inner: Arc<dyn Store>, encryption: Encryption) -> Self {
        Self { inner, encryption: Arc::new(encryption) }
    }
}

#[async_trait::async_trait]
impl Store for Encrypted {
    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await?.map(|kv| self.encryption.open_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let (items, revision) = self.inner.list(prefix).await?;
        Ok((items.into_iter().map(|kv| self.encryption.open_kv(kv)).collect::<Result<_>>()?, revision))
    }

    async fn snapshot(&self) -> Result<SharedSnapshot> {
        Ok(Arc::new(EncryptedSnapshot { inner: self.inner.snapshot().await?, encryption: self.encryption.clone() }))
    }

    async fn txn(&self, mut txn: Txn) -> Result<TxnOutcome> {
        for op in &mut txn.ops {
            if let Op::Put { key, value } = op {
                *value = self.encryption.seal(key, std::mem::take(value))?;
            }
        }
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let encryption = self.encryption.clone();
        let events = self.inner.watch(prefix, after).await?;
        Ok(events.map(move |event| event.and_then(|e| encryption.open_event(e))).boxed())
    }
}

/// A snapshot whose covered values are opened as they are read.
struct EncryptedSnapshot {
    inner: SharedSnapshot,
    encryption: Arc<Encryption>,
}

#[async_trait::async_trait]
impl Snapshot for EncryptedSnapshot {
    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    async fn list_from(&self, prefix: &str, start: &str, limit: usize) -> Result<Vec<KeyValue>> {
        self.inner.list_from(prefix, start, limit).await?.into_iter().map(|kv| self.encryption.open_kv(kv)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    fn key(name: &str, byte: u8) -> EncryptionKey {
        EncryptionKey { name: name.into(), secret: [byte; 32] }
    }

    fn put(key: &str, value: &'static str) -> Txn {
        Txn { compares: vec![], ops: vec![Op::Put { key: key.into(), value: value.into() }] }
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_and_open_with_any_listed_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let secrets = vec!["/registry/secrets/".to_string()];
        let store = Encrypted::new(raw.clone(), Encryption::new(secrets.clone(), &[key("k1", 1)], true));
        store.txn(put("/registry/secrets/ns/a", "hunter2")).await.unwrap();
        store.txn(put("/registry/services/ns/a", "plain")).await.unwrap();
        let at_rest = raw.get("/registry/secrets/ns/a").await.unwrap().unwrap().value.bytes();
        assert!(at_rest.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{at_rest:?}");
        assert!(!at_rest.windows(7).any(|w| w == b"hunter2"), "the plaintext is not at rest");
        assert_eq!(raw.get("/registry/services/ns/a").await.unwrap().unwrap().value, "plain", "other kinds stay plain");
        assert_eq!(store.get("/registry/secrets/ns/a").await.unwrap().unwrap().value, "hunter2");

        // Rotation: a new first key seals, the old one still opens.
        let rotated = Encrypted::new(raw.clone(), Encryption::new(secrets.clone(), &[key("k2", 2), key("k1", 1)], true));
        assert_eq!(rotated.list("/registry/secrets/").await.unwrap().0[0].value, "hunter2");
        rotated.txn(put("/registry/secrets/ns/b", "new")).await.unwrap();
        assert!(raw.get("/registry/secrets/ns/b").await.unwrap().unwrap().value.bytes().starts_with(b"k8s:enc:aesgcm:v1:k2:"));
        let without_k1 = Encrypted::new(raw.clone(), Encryption::new(secrets.clone(), &[key("k2", 2)], true));
        let err = without_k1.get("/registry/secrets/ns/a").await.unwrap_err().to_string();
        assert!(err.contains("no longer holds"), "{err}");

        // A value moved under another key does not open; plain old values read as they are.
        raw.txn(Txn { compares: vec![], ops: vec![Op::Put { key: "/registry/secrets/ns/c".into(), value: at_rest.clone() }] })
            .await
            .unwrap();
        assert!(store.get("/registry/secrets/ns/c").await.unwrap_err().to_string().contains("does not authenticate"));
        raw.txn(put("/registry/secrets/ns/old", "from before")).await.unwrap();
        assert_eq!(store.get("/registry/secrets/ns/old").await.unwrap().unwrap().value, "from before");
    }

    #[tokio::test]
    async fn values_that_are_not_sealed_pass_through_and_events_stay_packed() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let store = Encrypted::new(raw, Encryption::new(vec!["/registry/secrets/".into()], &[key("k1", 1)], true));
        let json = format!(r#"{{"kind":"Service","metadata":{{"name":"a","annotations":{{"x":"{}"}}}}}}"#, "y".repeat(2000));
        let key = "/registry/services/ns/a";
        let mut events = store.watch("/registry/", store.revision()).await.unwrap();
        store.txn(Txn::new().put(key, json.clone())).await.unwrap();
        let listed = store.list("/registry/").await.unwrap().0.remove(0).value;
        let got = store.get(key).await.unwrap().unwrap().value;
        let watched = events.next().await.unwrap().unwrap().value;
        // The history holds events packed; reads come from the file as written.
        assert!(watched.held() < json.len() / 4, "held {} of {}: unpacked on the way through", watched.held(), json.len());
        for value in [listed, got, watched] {
            assert_eq!(value, json.as_str());
        }
    }

    #[tokio::test]
    async fn watch_events_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let store = Encrypted::new(raw, Encryption::new(vec!["/registry/secrets/".into()], &[key("k1", 1)], true));
        let mut events = store.watch("/registry/secrets/", store.revision()).await.unwrap();
        store.txn(put("/registry/secrets/ns/a", "one")).await.unwrap();
        store.txn(put("/registry/secrets/ns/a", "two")).await.unwrap();
        let _ = events.next().await.unwrap().unwrap();
        let second = events.next().await.unwrap().unwrap();
        assert_eq!((second.value, second.prev), ("two".into(), Some("one".into())));
    }
}
