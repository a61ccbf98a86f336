//! The part of SPDY/3.1 that `kubectl port-forward` speaks (inside a
//! WebSocket, `SPDY/3.1+portforward.k8s.io`): frames in, frames out, and
//! the connection-wide zlib contexts of header blocks with the spec's
//! preset dictionary. There is no maintained SPDY crate; the subset here
//! is what kubectl's client (moby/spdystream) sends and reads, and no flow
//! control, as that client keeps none.
//!
//! Bounds: a frame's length (`MAX_FRAME`), a header block's inflated size
//! (`MAX_HEADERS`), and the bytes buffered ahead of a whole frame.

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Largest frame accepted; kubectl writes data in 32 KiB pieces.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest inflated header block accepted.
const MAX_HEADERS: usize = 16 << 10;
const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;

mod control {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
}

/// RST_STREAM status: the stream is refused (too many, or unknown type).
pub const REFUSED_STREAM: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    Headers(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        headers: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    RstStream {
        stream: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and the like: nothing to do.
    Ignored,
}

/// One side's state of a SPDY connection.
pub struct Codec {
    input: BytesMut,
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Only fails for a stream already started, which this one is not.
        let _ = deflate.set_dictionary(&dictionary());
        Codec { input: BytesMut::new(), inflate: Decompress::new(true), deflate }
    }
}

impl Codec {
    /// Bytes from the peer, in any pieces.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole frame fed, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.input.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, self.input[5], self.input[6], self.input[7]]) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::FrameTooLarge(length));
        }
        if self.input.len() < 8 + length {
            return Ok(None);
        }
        let head = self.input.split_to(8);
        let body = self.input.split_to(length);
        let flags = head[4];
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream: first, fin: flags & FLAG_FIN != 0, data: body.to_vec() }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        self.control((first & 0xffff) as u16, body).map(Some)
    }

    fn control(&mut self, kind: u16, mut body: BytesMut) -> Result<Frame, SpdyError> {
        let word = |body: &mut BytesMut| {
            if body.len() >= 4 {
                Ok(body.get_u32() & 0x7fff_ffff)
            } else {
                Err(SpdyError::Malformed("short control frame"))
            }
        };
        Ok(match kind {
            control::SYN_STREAM => {
                let stream = word(&mut body)?;
                let _associated = word(&mut body)?;
                if body.len() < 2 {
                    return Err(SpdyError::Malformed("short SYN_STREAM"));
                }
                body.advance(2);
                Frame::SynStream { stream, headers: self.inflate_headers(&body)? }
            }
            control::RST_STREAM => Frame::RstStream { stream: word(&mut body)? },
            control::PING => Frame::Ping { id: word(&mut body)? },
            control::GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        })
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        parse_headers(&inflate_block(&mut self.inflate, block)?)
    }

    /// SYN_REPLY for `stream`, with no headers (as the kubelet answers).
    pub fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        let mut block = Vec::with_capacity(64);
        // Deflating into a Vec with room cannot fail.
        let _ = self.deflate.compress_vec(&0u32.to_be_bytes(), &mut block, FlushCompress::Sync);
        let mut body = stream.to_be_bytes().to_vec();
        body.extend(block);
        control_frame(control::SYN_REPLY, 0, &body)
    }

    pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend(status.to_be_bytes());
        control_frame(control::RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        control_frame(control::PING, 0, &id.to_be_bytes())
    }

    /// DATA on `stream`; `fin` ends the stream from this side.
    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend((stream & 0x7fff_ffff).to_be_bytes());
        frame.push(if fin { FLAG_FIN } else { 0 });
        frame.extend(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend(data);
        frame
    }
}

/// One header block of the connection's zlib stream, inflated; the
/// stream's first block asks for the dictionary.
fn inflate_block(inflate: &mut Decompress, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
    let mut out = Vec::with_capacity(block.len() * 4);
    let mut rest = block;
    loop {
        let before = inflate.total_in();
        out.reserve(1024);
        let result = inflate.decompress_vec(rest, &mut out, FlushDecompress::Sync);
        rest = &rest[(inflate.total_in() - before) as usize..];
        match result {
            Err(e) if e.needs_dictionary().is_some() => {
                inflate.set_dictionary(&dictionary()).map(|_| ()).map_err(|e| SpdyError::Headers(e.to_string()))?
            }
            Err(e) => return Err(SpdyError::Headers(e.to_string())),
            Ok(Status::StreamEnd) => return Err(SpdyError::Headers("the zlib stream ended".into())),
            Ok(_) if rest.is_empty() && out.len() < out.capacity() => return Ok(out),
            Ok(_) => {}
        }
        if out.len() > MAX_HEADERS {
            return Err(SpdyError::Headers(format!("inflates to over {MAX_HEADERS} bytes")));
        }
    }
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend((0x8000 | VERSION).to_be_bytes());
    frame.extend(kind.to_be_bytes());
    frame.push(flags);
    frame.extend(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend(body);
    frame
}

/// `count, (name length, name, value length, value)*`, all lengths u32.
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let mut rest = block;
    let mut take = |n: usize| -> Result<Vec<u8>, SpdyError> {
        let (head, tail) = rest.split_at_checked(n).ok_or(SpdyError::Malformed("truncated header block"))?;
        rest = tail;
        Ok(head.to_vec())
    };
    let string = |take: &mut dyn FnMut(usize) -> Result<Vec<u8>, SpdyError>| -> Result<String, SpdyError> {
        let n = take(4)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        Ok(String::from_utf8_lossy(&take(n)?).into_owned())
    };
    let count = take(4)?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
    let mut headers = Vec::new();
    for _ in 0..count {
        headers.push((string(&mut take)?, string(&mut take)?));
    }
    Ok(headers)
}

/// The SPDY/3 header dictionary (draft 3, section 2.6.10.1): the common
/// header names and values, each with a 32-bit length before it, then a
/// run of common status codes, dates and types.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dictionary = Vec::with_capacity(1423);
    for word in WORDS {
        dictionary.extend((word.len() as u32).to_be_bytes());
        dictionary.extend(word.as_bytes());
    }
    dictionary.extend(TAIL.as_bytes());
    dictionary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side, as kubectl's framer writes: a header block deflated
    /// with the dictionary, continued across frames.
    fn client_syn_stream(deflate: &mut Compress, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend((s.len() as u32).to_be_bytes());
                raw.extend(s.as_bytes());
            }
        }
        let mut block = Vec::with_capacity(raw.len() + 1500);
        deflate.compress_vec(&raw, &mut block, FlushCompress::Sync).unwrap();
        let mut body = stream.to_be_bytes().to_vec();
        body.extend(0u32.to_be_bytes());
        body.extend([0, 0]);
        body.extend(block);
        control_frame(control::SYN_STREAM, 0, &body)
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head") && d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_inflate_across_frames_and_pieces() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut wire = client_syn_stream(&mut deflate, 1, &[("streamtype", "error"), ("port", "443"), ("requestid", "0")]);
        wire.extend(client_syn_stream(&mut deflate, 3, &[("streamtype", "data"), ("port", "443"), ("requestid", "0")]));
        wire.extend(Codec::data(3, true, b"GET /"));
        wire.extend(Codec::ping(1));
        let mut codec = Codec::default();
        let mut frames = Vec::new();
        // One byte at a time: nothing is decoded before it is whole.
        for byte in wire {
            codec.feed(&[byte]);
            while let Some(frame) = codec.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 4);
        let Frame::SynStream { stream: 3, headers } = &frames[1] else { panic!("{frames:?}") };
        assert_eq!(headers[0], ("streamtype".into(), "data".into()));
        assert_eq!(frames[2], Frame::Data { stream: 3, fin: true, data: b"GET /".to_vec() });
        assert_eq!(frames[3], Frame::Ping { id: 1 });
    }

    #[test]
    fn replies_inflate_with_the_dictionary() {
        let mut codec = Codec::default();
        let mut inflate = Decompress::new(true);
        for stream in [1, 3] {
            let reply = codec.syn_reply(stream);
            assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), control::SYN_REPLY);
            assert_eq!(u32::from_be_bytes([reply[8], reply[9], reply[10], reply[11]]), stream);
            assert_eq!(inflate_block(&mut inflate, &reply[12..]).unwrap(), [0, 0, 0, 0], "no headers");
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut codec = Codec::default();
        codec.feed(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(codec.next_frame(), Err(SpdyError::FrameTooLarge(_))));
        let mut codec = Codec::default();
        codec.feed(&control_frame(control::SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]));
        assert!(matches!(codec.next_frame(), Err(SpdyError::Headers(_))));
        let mut codec = Codec::default();
        codec.feed(&control_frame(control::PING, 0, &[1]));
        assert!(matches!(codec.next_frame(), Err(SpdyError::Malformed(_))));
        assert!(parse_headers(&[0, 0, 0, 9, 0, 0, 0, 200]).is_err(), "claims more than it holds");
    }
}
