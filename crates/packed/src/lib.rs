//! JSON kept in memory compressed with zstd against a dictionary of
//! typical Kubernetes objects (`dictionary.json`), so that the many small
//! objects of a cluster, which share most of their bytes, cost a fraction
//! of their size (a pod of 826 bytes is about 100): the embedded store's
//! values, and the metadata the EndpointSlice controller keeps of the
//! objects it owns. Nothing packed leaves the process (the store's file
//! keeps values as written): the dictionary can change from one build to
//! the next.
//!
//! A value is unpacked only when it is read (`Value::bytes`), so a listing
//! or a watch backlog hands out packed values without copying them.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

const DICTIONARY: &[u8] = include_bytes!("dictionary.json");
const LEVEL: i32 = 3;
/// Smaller values are kept as written: the frame would cost more than it saves.
const MIN_PACKED: usize = 64;

static DECODER: LazyLock<DecoderDictionary<'static>> = LazyLock::new(|| DecoderDictionary::copy(DICTIONARY));
static ENCODER: LazyLock<EncoderDictionary<'static>> = LazyLock::new(|| EncoderDictionary::copy(DICTIONARY, LEVEL));

thread_local! {
    /// One decompression context per reading thread (making one costs more
    /// than unpacking a value).
    static UNPACKER: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
    /// The packer of `pack`, for the threads that do not keep their own.
    static PACKER: RefCell<Option<Packer>> = const { RefCell::new(None) };
}

/// `value` packed as `Packer::pack` does, with this thread's packer.
pub fn pack(value: &[u8]) -> Value {
    PACKER.with_borrow_mut(|slot| slot.get_or_insert_with(Packer::default).pack(value))
}

/// A stored value as a backend hands it out: a tag byte (`PLAIN` or
/// `PACKED`), then the value as written, or its original length (u32,
/// little endian) and a zstd frame. One `Arc` of 16 bytes, its count in
/// the same allocation: the store holds one per key and two per retained
/// event (the value and the one it replaced).
#[derive(Clone, Debug)]
pub struct Value(Arc<[u8]>);

const PLAIN: u8 = 0;
const PACKED: u8 = 1;

/// A value's bytes as a `Bytes` that shares them.
struct Shared(Arc<[u8]>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The empty value, shared by every delete event.
static EMPTY: LazyLock<Value> = LazyLock::new(|| Value::tagged(PLAIN, &[]));

impl Default for Value {
    fn default() -> Self {
        EMPTY.clone()
    }
}

impl Value {
    fn tagged(tag: u8, content: &[u8]) -> Self {
        Value(std::iter::once(tag).chain(content.iter().copied()).collect())
    }

    /// The tag and what follows it.
    fn parts(&self) -> (u8, &[u8]) {
        // Every constructor writes a tag; an empty buffer is read as empty.
        match self.0.split_first() {
            Some((tag, content)) => (*tag, content),
            None => (PLAIN, &[]),
        }
    }

    /// The value as it was written.
    pub fn bytes(&self) -> Bytes {
        match self.parts() {
            (PACKED, packed) => unpack(packed),
            (_, []) => Bytes::new(),
            _ => Bytes::from_owner(Shared(self.0.clone())).slice(1..),
        }
    }

    /// Whether the value as written starts with `prefix`. A packed value is
    /// a JSON object, so for any other prefix this is answered without
    /// unpacking it.
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        match self.parts() {
            (PACKED, _) if prefix.first().is_some_and(|b| *b != b'{') => false,
            (PACKED, packed) => unpack(packed).starts_with(prefix),
            (_, plain) => plain.starts_with(prefix),
        }
    }

    /// Bytes held in memory for it.
    pub fn held(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    fn is_packed(&self) -> bool {
        self.parts().0 == PACKED
    }

    /// Whether both are the same bytes in memory, not two copies.
    pub fn shares(&self, other: &Value) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value::tagged(PLAIN, bytes)
    }
}

impl From<Bytes> for Value {
    fn from(bytes: Bytes) -> Self {
        Value::tagged(PLAIN, &bytes)
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::tagged(PLAIN, s.as_bytes())
    }
}

/// Two values are equal when what was written is.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Value {}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.bytes() == other.as_bytes()
    }
}

/// Packs values; one per writing thread.
pub struct Packer(Option<Compressor<'static>>);

impl Default for Packer {
    fn default() -> Self {
        match Compressor::with_prepared_dictionary(&ENCODER) {
            Ok(compressor) => Packer(Some(compressor)),
            Err(e) => {
                tracing::warn!(error = %e, "no zstd context; the store keeps values unpacked");
                Packer(None)
            }
        }
    }
}

impl Packer {
    /// `value` packed where that makes it smaller: JSON objects of some
    /// size. Anything else (an encrypted value, a short one) stays as it is.
    pub fn pack(&mut self, value: &[u8]) -> Value {
        let plain = || Value::tagged(PLAIN, value);
        let Some(compressor) = self.0.as_mut() else { return plain() };
        let Ok(length) = u32::try_from(value.len()) else { return plain() };
        if value.len() < MIN_PACKED || value.first() != Some(&b'{') {
            return plain();
        }
        match compressor.compress(value) {
            Ok(frame) if frame.len() + 4 < value.len() => {
                let packed = [PACKED].iter().chain(&length.to_le_bytes()).chain(&frame).copied().collect();
                Value(packed)
            }
            _ => plain(),
        }
    }
}

fn unpack(packed: &[u8]) -> Bytes {
    let (length, frame) = packed.split_at(4.min(packed.len()));
    let length = length.try_into().map(u32::from_le_bytes).unwrap_or(0) as usize;
    let unpacked = UNPACKER.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Decompressor::with_prepared_dictionary(&DECODER).ok();
        }
        let decompressor = slot.as_mut().ok_or_else(|| std::io::Error::other("no zstd context"))?;
        decompressor.decompress(frame, length)
    });
    match unpacked {
        Ok(bytes) => bytes.into(),
        // Only this crate packs, so this is a bug, not bad input: the
        // reader gets an empty value and fails to decode it.
        Err(e) => {
            tracing::error!(error = %e, "a value packed in memory does not unpack");
            Bytes::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_packs_smaller_and_unpacks_to_what_was_written() {
        let pod = Bytes::from(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-1","namespace":"prod","uid":"0e0c9a4e-1d1b-4c55-9d4e-6b8f3f1f2a11","labels":{"app":"api"}},"spec":{"containers":[{"image":"api:2","name":"api"}],"nodeName":"n3"},"status":{"phase":"Running","podIP":"127.1.2.3"}}"#,
        );
        let mut packer = Packer::default();
        let packed = packer.pack(&pod);
        assert!(packed.is_packed());
        assert!(packed.held() * 2 < pod.len(), "{} of {}", packed.held(), pod.len());
        assert_eq!(packed.bytes(), pod);
        assert_eq!(packed, Value::from(pod));
        assert!(packed.starts_with(br#"{"apiVersion":"v1""#) && !packed.starts_with(b"k8s:") && !packed.starts_with(b"{\"kind"));
    }

    #[test]
    fn a_value_is_one_pointer() {
        // The store holds one per key and two per retained event.
        assert_eq!(std::mem::size_of::<Value>(), 16);
        assert_eq!(std::mem::size_of::<Option<Value>>(), 16);
        let plain = Value::from(Bytes::from_static(b"k8s:enc:aesgcm:v1:k1:sealed"));
        let (a, b) = (plain.bytes(), plain.bytes());
        assert_eq!(a, &b"k8s:enc:aesgcm:v1:k1:sealed"[..]);
        assert_eq!(a.as_ptr(), b.as_ptr(), "a plain value is handed out without a copy");
        assert_eq!(Value::default().bytes(), Bytes::new());
    }

    #[test]
    fn what_is_not_json_or_too_short_stays_as_written() {
        let mut packer = Packer::default();
        for value in [Bytes::from_static(b"k8s:enc:aesgcm:v1:k1:\x00\x01\x02"), Bytes::from_static(b"{}"), Bytes::new()] {
            let kept = packer.pack(&value);
            assert!(!kept.is_packed());
            assert_eq!(kept.bytes(), value);
        }
    }

    #[test]
    fn a_value_read_on_many_threads_unpacks_on_each() {
        let value = Bytes::from(format!(r#"{{"kind":"ConfigMap","data":{{"a":"{}"}}}}"#, "x".repeat(5000)));
        let packed = Packer::default().pack(&value);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn({
                    let packed = packed.clone();
                    move || packed.bytes()
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), value);
        }
    }
}
