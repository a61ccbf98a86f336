//! The DNS wire format on the hot path: a query's header, question and
//! EDNS OPT read without allocating a message, and responses assembled
//! from a pre-encoded body behind the query's own question bytes, so the
//! owner names (compressed pointers to the question) echo the query's
//! case. Record encoding itself is hickory-proto's.

use hickory_proto::op::ResponseCode;

use crate::resolve::Answer;

pub const HEADER_LEN: usize = 12;
/// The payload size wharf advertises (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
const MAX_NAME: usize = 255;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A parsed query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// End offset of the question in the packet.
    pub question_end: usize,
    /// Lower case, no trailing dot; other bytes than letters, digits, `-`,
    /// `_` and `*` are escaped as `\DDD`, so they never match a cluster name.
    pub qname: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The requestor's UDP payload size, if it sent EDNS.
    pub edns: Option<u16>,
}

/// Why a packet is not a query wharf answers normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not worth an answer (too short, or a response).
    Drop,
    /// Answer with this code; `question_end` when the question parsed.
    Error { id: u16, flags: u16, question_end: Option<usize>, rcode: ResponseCode, edns: Option<u16> },
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads an uncompressed name at `at` into `name` (lower case); returns
/// the end offset.
fn read_name_into(p: &[u8], mut at: usize, name: &mut String) -> Option<usize> {
    let start = at;
    name.clear();
    loop {
        let len = usize::from(*p.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Compression and extended labels have no place in a question.
        if len & 0xC0 != 0 || at + len > p.len() {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        for &b in &p[at..at + len] {
            match b {
                b'A'..=b'Z' => name.push(char::from(b.to_ascii_lowercase())),
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'*' => name.push(char::from(b)),
                other => name.push_str(&format!("\\{other:03}")),
            }
        }
        at += len;
        if at - start > MAX_NAME {
            return None;
        }
    }
    Some(at)
}

fn read_question_name(p: &[u8], at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let end = read_name_into(p, at, &mut name)?;
    Some((name, end))
}

/// Skips a possibly compressed name of a resource record.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *p.get(at)?;
        match len & 0xC0 {
            0xC0 => return Some(at + 2),
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Finds the OPT record among the additional records: its payload size.
fn read_edns(p: &[u8], mut at: usize, count: u16) -> Result<Option<u16>, ()> {
    let mut edns = None;
    for _ in 0..count {
        at = skip_name(p, at).ok_or(())?;
        let rtype = be16(p, at).ok_or(())?;
        let class = be16(p, at + 2).ok_or(())?;
        let rdlen = usize::from(be16(p, at + 8).ok_or(())?);
        at += 10 + rdlen;
        if at > p.len() {
            return Err(());
        }
        if rtype == OPT {
            if edns.is_some() {
                return Err(()); // two OPT records: FORMERR (RFC 6891 6.1.1)
            }
            edns = Some(class.max(512));
        }
    }
    Ok(edns)
}

/// Parses a query packet.
pub fn parse(p: &[u8]) -> Result<Query, Rejected> {
    let mut query = Query::default();
    parse_into(p, &mut query)?;
    Ok(query)
}

/// Parses a query packet into `query`, reusing its name buffer.
pub fn parse_into(p: &[u8], query: &mut Query) -> Result<(), Rejected> {
    if p.len() < HEADER_LEN {
        return Err(Rejected::Drop);
    }
    let id = be16(p, 0).unwrap_or(0);
    let flags = be16(p, 2).unwrap_or(0);
    if flags & 0x8000 != 0 {
        return Err(Rejected::Drop);
    }
    let counts = [be16(p, 4), be16(p, 6), be16(p, 8), be16(p, 10)].map(|c| c.unwrap_or(0));
    let error = |rcode, question_end, edns| Err(Rejected::Error { id, flags, question_end, rcode, edns });
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return error(ResponseCode::NotImp, None, None);
    }
    if counts[0] != 1 || counts[1] != 0 || counts[2] != 0 {
        return error(ResponseCode::FormErr, None, None);
    }
    let Some(name_end) = read_name_into(p, HEADER_LEN, &mut query.qname) else {
        return error(ResponseCode::FormErr, None, None);
    };
    let (Some(qtype), Some(qclass)) = (be16(p, name_end), be16(p, name_end + 2)) else {
        return error(ResponseCode::FormErr, None, None);
    };
    let question_end = name_end + 4;
    let Ok(edns) = read_edns(p, question_end, counts[3]) else {
        return error(ResponseCode::FormErr, Some(question_end), None);
    };
    if qclass != CLASS_IN {
        return error(ResponseCode::Refused, Some(question_end), edns);
    }
    query.id = id;
    query.flags = flags;
    query.question_end = question_end;
    query.qtype = qtype;
    query.qclass = qclass;
    query.edns = edns;
    Ok(())
}

impl Rejected {
    /// An error answer to a parsed query.
    pub fn answer(query: &Query, rcode: ResponseCode) -> Self {
        Rejected::Error { id: query.id, flags: query.flags, question_end: Some(query.question_end), rcode, edns: query.edns }
    }
}

/// An answer encoded once, without header and question: what follows the
/// question in every response to the same name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub rcode: ResponseCode,
    pub counts: [u16; 3],
    pub body: Vec<u8>,
    /// Length of the answer and authority sections at the start of `body`:
    /// the additional section may be dropped to fit a size limit.
    pub essential: usize,
    /// Not every answer fit in the 64 KiB of a DNS message.
    pub truncated: bool,
}

/// Encodes `answer` for a question of `qname` (lower case). The body
/// follows the question, whose wire length matches the query's for every
/// name `parse` did not escape.
pub fn prepare(qname: &str, _qtype: u16, answer: &Answer) -> Option<Prepared> {
    let (body, counts, essential, truncated) = crate::encode::encode(qname, answer);
    Some(Prepared { rcode: answer.rcode, counts, body, essential, truncated })
}

/// The answer bits of a response header.
struct AnswerFlags {
    authoritative: bool,
    truncated: bool,
    recursion_available: bool,
}

fn header(out: &mut Vec<u8>, q_id: u16, q_flags: u16, rcode: ResponseCode, answer: AnswerFlags, counts: [u16; 4]) {
    // QR, the query's opcode, RD and CD; then AA, TC, RA and the rcode.
    let mut flags = 0x8000 | (q_flags & 0x7900) | (q_flags & 0x0010);
    if answer.authoritative {
        flags |= 0x0400;
    }
    if answer.truncated {
        flags |= 0x0200;
    }
    if answer.recursion_available {
        flags |= 0x0080;
    }
    flags |= u16::from(rcode.low());
    out.extend_from_slice(&q_id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

fn opt_record(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// The most a UDP response to `query` may hold: 512 without EDNS, else
/// the requestor's payload size but never over `EDNS_PAYLOAD` (1232: big
/// enough for most answers, small enough never to fragment, as DNS Flag
/// Day 2020 settled).
pub fn udp_limit(edns: Option<u16>) -> usize {
    edns.map_or(512, |size| size.clamp(512, EDNS_PAYLOAD).into())
}

/// The largest DNS message over TCP.
const TCP_MAX: usize = 65535;
const OPT_LEN: usize = 11;

/// Writes the response to `query` (from `packet`) with a prepared body.
/// Over `limit` (TCP: 64 KiB) the additional section goes first; if the
/// answer still does not fit, a truncated (TC) response carries only the
/// question.
pub fn write_response(query: &Query, packet: &[u8], prepared: &Prepared, aa: bool, ra: bool, limit: Option<usize>, out: &mut Vec<u8>) {
    out.clear();
    let limit = limit.unwrap_or(TCP_MAX);
    let question = &packet[HEADER_LEN..query.question_end];
    let edns = u16::from(query.edns.is_some());
    let fixed = HEADER_LEN + question.len() + if query.edns.is_some() { OPT_LEN } else { 0 };
    let [an, ns, ar] = prepared.counts;
    let (counts, body, tc) = if fixed + prepared.body.len() <= limit {
        ([1, an, ns, ar + edns], &prepared.body[..], prepared.truncated)
    } else if fixed + prepared.essential <= limit {
        ([1, an, ns, edns], &prepared.body[..prepared.essential], prepared.truncated)
    } else {
        // As many whole answer records as fit, marked truncated.
        let (kept, len) = answers_within(&prepared.body, an, limit - fixed);
        ([1, kept, 0, edns], &prepared.body[..len], true)
    };
    header(out, query.id, query.flags, prepared.rcode, AnswerFlags { authoritative: aa, truncated: tc, recursion_available: ra }, counts);
    out.extend_from_slice(question);
    out.extend_from_slice(body);
    if query.edns.is_some() {
        opt_record(out);
    }
}

/// How many of the first `count` records of `body` fit in `room` bytes,
/// and their length. Compression pointers only point backwards, so a
/// prefix of whole records stays valid.
fn answers_within(body: &[u8], count: u16, room: usize) -> (u16, usize) {
    let (mut kept, mut end) = (0, 0);
    for _ in 0..count {
        let Some(next) = skip_name(body, end).and_then(|at| Some(at + 10 + usize::from(be16(body, at + 8)?))) else { break };
        if next > room || next > body.len() {
            break;
        }
        kept += 1;
        end = next;
    }
    (kept, end)
}

/// An error response with the question when there is one.
pub fn write_error(packet: &[u8], rejected: &Rejected, ra: bool, out: &mut Vec<u8>) -> bool {
    let Rejected::Error { id, flags, question_end, rcode, edns } = rejected else { return false };
    out.clear();
    let qd = u16::from(question_end.is_some());
    let answer = AnswerFlags { authoritative: false, truncated: false, recursion_available: ra };
    header(out, *id, *flags, *rcode, answer, [qd, 0, 0, u16::from(edns.is_some())]);
    if let Some(end) = question_end {
        out.extend_from_slice(&packet[HEADER_LEN..*end]);
    }
    if edns.is_some() {
        opt_record(out);
    }
    true
}

/// Replaces a forwarded response's ID and question with the client's
/// (same name up to case), and truncates it to `limit`.
pub fn adapt_upstream(response: &[u8], query: &Query, packet: &[u8], limit: Option<usize>, out: &mut Vec<u8>) -> bool {
    let Some((_, upstream_qend)) = read_question_name(response, HEADER_LEN) else { return false };
    if upstream_qend + 4 != query.question_end || response.len() < query.question_end {
        return false;
    }
    out.clear();
    out.extend_from_slice(response);
    out[0..2].copy_from_slice(&query.id.to_be_bytes());
    out[HEADER_LEN..query.question_end].copy_from_slice(&packet[HEADER_LEN..query.question_end]);
    if limit.is_some_and(|l| out.len() > l) {
        let flags = be16(out, 2).unwrap_or(0) | 0x0200;
        out.truncate(query.question_end);
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        out[6..12].fill(0);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query as HickoryQuery};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RecordType};
    use hickory_proto::rr::{RData, Record};

    fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(HickoryQuery::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(4096);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn parses_case_and_edns() {
        let p = query_bytes("SvC1.TeStNs.Svc.Cluster.Local.", RecordType::A, true);
        let q = parse(&p).unwrap();
        assert_eq!((q.id, q.qname.as_str(), q.qtype, q.edns), (0x1234, "svc1.testns.svc.cluster.local", 1, Some(4096)));
    }

    #[test]
    fn response_echoes_case_through_compression() {
        let p = query_bytes("WeB.Default.Svc.Cluster.Local.", RecordType::A, false);
        let q = parse(&p).unwrap();
        let owner = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
        let answer = Answer { answers: vec![Record::from_rdata(owner, 5, RData::A(A::new(127, 96, 0, 7)))], ..Default::default() };
        let prepared = prepare(&q.qname, q.qtype, &answer).unwrap();
        let mut out = Vec::new();
        write_response(&q, &p, &prepared, true, true, Some(512), &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(msg.metadata.id, 0x1234);
        assert!(msg.metadata.authoritative && msg.metadata.recursion_desired);
        assert_eq!(msg.answers[0].name.to_ascii(), "WeB.Default.Svc.Cluster.Local.");
        assert_eq!(msg.answers[0].data.to_string(), "127.96.0.7");
    }

    #[test]
    fn oversize_answers_truncate() {
        let p = query_bytes("big.default.svc.cluster.local.", RecordType::A, false);
        let q = parse(&p).unwrap();
        let owner = Name::from_ascii("big.default.svc.cluster.local.").unwrap();
        let answers = (0..100).map(|i| Record::from_rdata(owner.clone(), 5, RData::A(A::new(127, 0, 0, i)))).collect();
        let prepared = prepare(&q.qname, q.qtype, &Answer { answers, ..Default::default() }).unwrap();
        let mut out = Vec::new();
        write_response(&q, &p, &prepared, true, true, Some(512), &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert!(msg.metadata.truncation && msg.answers.len() < 100 && out.len() <= 512);
        write_response(&q, &p, &prepared, true, true, None, &mut out);
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 100);
    }

    #[test]
    fn a_thousand_srv_records_fit_one_tcp_message() {
        let p = query_bytes("_http._tcp.big.default.svc.cluster.local.", RecordType::SRV, false);
        let q = parse(&p).unwrap();
        let owner = Name::from_ascii("_http._tcp.big.default.svc.cluster.local.").unwrap();
        let answers = (0..1000)
            .map(|i| {
                let target = Name::from_ascii(format!("web-{i}.big.default.svc.cluster.local.")).unwrap();
                Record::from_rdata(owner.clone(), 5, RData::SRV(hickory_proto::rr::rdata::SRV::new(0, 0, 8080, target)))
            })
            .collect();
        let prepared = prepare(&q.qname, q.qtype, &Answer { answers, ..Default::default() }).unwrap();
        let mut out = Vec::new();
        write_response(&q, &p, &prepared, true, true, None, &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert!(!msg.metadata.truncation);
        assert_eq!(msg.answers.len(), 1000);
        assert_eq!(msg.answers[999].data.to_string(), "0 0 8080 web-999.big.default.svc.cluster.local.");
    }

    #[test]
    fn escaped_names_keep_their_pointers_valid() {
        let p = query_bytes("x\\.Y.cluster.local.", RecordType::A, false);
        let q = parse(&p).unwrap();
        assert_eq!(q.qname, "x\\046y.cluster.local");
        let apex = Name::from_ascii("cluster.local.").unwrap();
        let soa = hickory_proto::rr::rdata::SOA::new(apex.clone(), apex.clone(), 1, 2, 3, 4, 5);
        let answer =
            Answer { rcode: ResponseCode::NXDomain, authority: vec![Record::from_rdata(apex, 5, RData::SOA(soa))], ..Default::default() };
        let prepared = prepare(&q.qname, q.qtype, &answer).unwrap();
        let mut out = Vec::new();
        write_response(&q, &p, &prepared, true, true, Some(512), &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert_eq!(msg.authorities[0].name.to_ascii(), "cluster.local.");
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn the_additional_section_goes_before_truncating() {
        let p = query_bytes("s.default.svc.cluster.local.", RecordType::SRV, false);
        let q = parse(&p).unwrap();
        let owner = Name::from_ascii("s.default.svc.cluster.local.").unwrap();
        let answers = vec![Record::from_rdata(owner.clone(), 5, RData::A(A::new(127, 0, 0, 1)))];
        let additional = (0..60)
            .map(|i| Record::from_rdata(Name::from_ascii(format!("h{i}.example.")).unwrap(), 5, RData::A(A::new(127, 0, 0, i))))
            .collect();
        let prepared = prepare(&q.qname, q.qtype, &Answer { answers, additional, ..Default::default() }).unwrap();
        let mut out = Vec::new();
        write_response(&q, &p, &prepared, true, true, Some(512), &mut out);
        let msg = Message::from_vec(&out).unwrap();
        assert!(!msg.metadata.truncation);
        assert_eq!((msg.answers.len(), msg.additionals.len()), (1, 0));
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(parse(&[0; 5]), Err(Rejected::Drop));
        let mut p = query_bytes("a.b.", RecordType::A, false);
        p[5] = 2; // two questions
        assert!(matches!(parse(&p), Err(Rejected::Error { rcode: ResponseCode::FormErr, .. })));
        let mut p = query_bytes("a.b.", RecordType::A, false);
        p[12] = 0xC0; // a pointer in the question
        assert!(matches!(parse(&p), Err(Rejected::Error { rcode: ResponseCode::FormErr, .. })));
        let mut p = query_bytes("a.b.", RecordType::A, false);
        p[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(parse(&p), Err(Rejected::Error { rcode: ResponseCode::NotImp, .. })));
        let p = query_bytes("a.b.", RecordType::A, false);
        assert!(parse(&p[..p.len() - 2]).is_err());
        let q = parse(&query_bytes("x\\.y.z.", RecordType::A, false)).unwrap();
        assert_eq!(q.qname, "x\\046y.z");
    }
}
