//! Encoding answers to wire format with full name compression: every
//! owner name equal to the question is a pointer to it, and other names
//! share suffixes with anything written before (hickory's encoder stops
//! compressing after 16 KiB, which made 1,000-record answers overflow a
//! TCP message). SRV targets stay uncompressed, as RFC 2782 requires.

use std::collections::HashMap;

use hickory_proto::rr::{Name, RData, Record};

use crate::resolve::Answer;

/// A DNS message may not exceed this.
const MAX_MESSAGE: usize = 65535;
/// Pointers hold 14-bit offsets.
const MAX_POINTER: usize = 0x3FFF;

struct Encoder {
    buf: Vec<u8>,
    /// Lower-case wire form of a name suffix → its offset.
    suffixes: HashMap<Vec<u8>, u16>,
}

fn labels(name: &Name) -> Vec<Vec<u8>> {
    name.iter().map(|l| l.to_ascii_lowercase()).collect()
}

impl Encoder {
    fn name(&mut self, labels: &[Vec<u8>], compress: bool) {
        for i in 0..labels.len() {
            let suffix: Vec<u8> = labels[i..].iter().flat_map(|l| std::iter::once(l.len() as u8).chain(l.iter().copied())).collect();
            if compress {
                if let Some(&at) = self.suffixes.get(&suffix) {
                    self.buf.extend_from_slice(&(0xC000 | at).to_be_bytes());
                    return;
                }
            }
            if self.buf.len() <= MAX_POINTER {
                self.suffixes.entry(suffix).or_insert(self.buf.len() as u16);
            }
            self.buf.push(labels[i].len() as u8);
            self.buf.extend_from_slice(&labels[i]);
        }
        self.buf.push(0);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes one record; false if its data type is not one wharf serves.
    fn record(&mut self, record: &Record) -> bool {
        let start = self.buf.len();
        self.name(&labels(&record.name), true);
        self.u16(u16::from(record.record_type()));
        self.u16(1); // IN
        self.u32(record.ttl);
        let length_at = self.buf.len();
        self.u16(0);
        match &record.data {
            RData::A(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::AAAA(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::CNAME(n) => self.name(&labels(&n.0), true),
            RData::PTR(n) => self.name(&labels(&n.0), true),
            RData::NS(n) => self.name(&labels(&n.0), true),
            RData::SRV(srv) => {
                self.u16(srv.priority);
                self.u16(srv.weight);
                self.u16(srv.port);
                self.name(&labels(&srv.target), false);
            }
            RData::TXT(txt) => {
                for s in txt.txt_data.iter() {
                    self.buf.push(s.len().min(255) as u8);
                    self.buf.extend_from_slice(&s[..s.len().min(255)]);
                }
            }
            RData::SOA(soa) => {
                self.name(&labels(&soa.mname), true);
                self.name(&labels(&soa.rname), true);
                self.u32(soa.serial);
                self.u32(soa.refresh as u32);
                self.u32(soa.retry as u32);
                self.u32(soa.expire as u32);
                self.u32(soa.minimum);
            }
            _ => {
                self.buf.truncate(start);
                return false;
            }
        }
        let rdlen = (self.buf.len() - length_at - 2) as u16;
        self.buf[length_at..length_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        true
    }
}

/// A label as `wire::parse` wrote it, back to its bytes (`\\DDD` escapes).
fn unescape(label: &str) -> Vec<u8> {
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit);
        if escaped {
            let value = bytes[i + 1..i + 4].iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The encoded sections of an answer, placed after a 12-byte header and
/// the question `qname` (lower case): (body, counts, length of the answer
/// and authority part, whether answers were cut to fit 64 KiB).
pub fn encode(qname: &str, answer: &Answer) -> (Vec<u8>, [u16; 3], usize, bool) {
    let mut enc = Encoder { buf: vec![0; 12], suffixes: HashMap::new() };
    let question: Vec<Vec<u8>> = if qname.is_empty() { Vec::new() } else { qname.split('.').map(unescape).collect() };
    enc.name(&question, false);
    enc.buf.extend_from_slice(&[0, 0, 0, 1]); // type and class, not part of the body
    let body_start = enc.buf.len();
    let mut counts = [0u16; 3];
    let mut truncated = false;
    let mut essential = 0;
    for (section, records) in [&answer.answers, &answer.authority, &answer.additional].into_iter().enumerate() {
        for record in records {
            let before = enc.buf.len();
            if !enc.record(record) {
                continue;
            }
            if enc.buf.len() > MAX_MESSAGE {
                enc.buf.truncate(before);
                truncated |= section == 0;
                break;
            }
            counts[section] += 1;
        }
        if section == 1 {
            essential = enc.buf.len() - body_start;
        }
    }
    (enc.buf.split_off(body_start), counts, essential, truncated)
}
