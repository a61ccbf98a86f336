//! Values as the embedded store holds them in memory: JSON compressed with
//! zstd against a dictionary of typical Kubernetes objects
//! (`dictionary.json`), so that the many small objects of a cluster, which
//! share most of their bytes, cost a fraction of their size (a pod of
//! 826 bytes is about 100). The file on disk keeps values as written: the
//! dictionary can change from one build to the next.
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
}

/// A stored value as a backend hands it out: as written, or packed.
#[derive(Clone, Debug, Default)]
pub struct Value(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Plain(Bytes),
    /// The original length (u32, little endian), then a zstd frame. An
    /// `Arc` holds its count in the same allocation; a `Bytes` made from a
    /// `Vec` allocates a header of its own once it is shared (by the map
    /// and an event, always).
    Packed(Arc<[u8]>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Plain(Bytes::new())
    }
}

impl Value {
    /// The value as it was written.
    pub fn bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Plain(bytes) => bytes.clone(),
            Repr::Packed(packed) => unpack(packed),
        }
    }

    /// Whether the value as written starts with `prefix`. A packed value is
    /// a JSON object, so for any other prefix this is answered without
    /// unpacking it.
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        match &self.0 {
            Repr::Plain(bytes) => bytes.starts_with(prefix),
            Repr::Packed(_) if prefix.first().is_some_and(|b| *b != b'{') => false,
            Repr::Packed(packed) => unpack(packed).starts_with(prefix),
        }
    }

    /// Bytes held in memory for it.
    pub fn held(&self) -> usize {
        match &self.0 {
            Repr::Plain(bytes) => bytes.len(),
            Repr::Packed(packed) => packed.len(),
        }
    }
}

impl From<Bytes> for Value {
    fn from(bytes: Bytes) -> Self {
        Value(Repr::Plain(bytes))
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value(Repr::Plain(Bytes::from_static(s.as_bytes())))
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
    pub fn pack(&mut self, value: &Bytes) -> Value {
        let plain = || Value(Repr::Plain(value.clone()));
        let Some(compressor) = self.0.as_mut() else { return plain() };
        let Ok(length) = u32::try_from(value.len()) else { return plain() };
        if value.len() < MIN_PACKED || value.first() != Some(&b'{') {
            return plain();
        }
        match compressor.compress(value) {
            Ok(frame) if frame.len() + 4 < value.len() => {
                let packed: Arc<[u8]> = length.to_le_bytes().iter().chain(&frame).copied().collect();
                Value(Repr::Packed(packed))
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
        // Only this module packs, so this is a bug, not bad input: the
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
        assert!(matches!(packed.0, Repr::Packed(_)));
        assert!(packed.held() * 2 < pod.len(), "{} of {}", packed.held(), pod.len());
        assert_eq!(packed.bytes(), pod);
        assert_eq!(packed, Value::from(pod));
        assert!(packed.starts_with(br#"{"apiVersion":"v1""#) && !packed.starts_with(b"k8s:") && !packed.starts_with(b"{\"kind"));
    }

    #[test]
    fn what_is_not_json_or_too_short_stays_as_written() {
        let mut packer = Packer::default();
        for value in [Bytes::from_static(b"k8s:enc:aesgcm:v1:k1:\x00\x01\x02"), Bytes::from_static(b"{}"), Bytes::new()] {
            let kept = packer.pack(&value);
            assert!(matches!(kept.0, Repr::Plain(_)));
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
