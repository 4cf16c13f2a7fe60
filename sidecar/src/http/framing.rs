//! HTTP/1.1 message framing (RFC 9112), the one place both sides of the proxy read it: the
//! agent's requests in [`crate::http::server`] and the MCP server's answers in [`crate::http::client`].
//!
//! ```text
//! bytes read ─> buffer ─> Framing::step ─> Data(bytes) | End | More (read again)
//!                          Length(n) | Chunked(Size -> Data -> DataEnd -> ... -> Trailers -> Done) | Close
//! ```
//!
//! The decoder works on whatever the buffer holds, so a body reads the same however its
//! bytes arrive; whoever owns the socket reads more when it answers `More`.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};

use crate::http::BoxError;

/// A socket and the buffer it is read into, as a body reads them.
pub(crate) trait Buffered {
    fn buf(&mut self) -> &mut BytesMut;
    /// Reads what the socket has into the buffer; `Ok(0)` is the peer's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

/// Largest chunk-size line, and largest trailer section, in bytes.
const MAX_CHUNK_META: usize = 16 * 1024;

/// Writes the `Content-Length` field line for `n` bytes, as both sides of the proxy state it.
pub(crate) fn put_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// After this many more bytes.
    Length(u64),
    Chunked(Chunked),
    /// When the server closes the connection (answers only).
    Close,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section (read and dropped), this far in.
    Trailers(usize),
    Done,
}

/// One step of reading a body out of the buffer.
pub(crate) enum Step {
    Data(Bytes),
    End,
    /// The buffer holds no more of the body.
    More,
}

impl Framing {
    /// Takes the next piece of the body out of `buf`; with `data` false, only moves past
    /// framing and stops before the next data.
    pub(crate) fn step(&mut self, buf: &mut BytesMut, data: bool) -> Result<Step, BoxError> {
        let chunked = matches!(self, Framing::Chunked(_));
        loop {
            match self {
                Framing::Length(0) | Framing::Chunked(Chunked::Done) => return Ok(Step::End),
                _ if !data && !chunked => return Ok(Step::More),
                _ if buf.is_empty() => return Ok(Step::More),
                Framing::Length(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Close => return Ok(Step::Data(buf.split().freeze())),
                Framing::Chunked(state) => match state {
                    Chunked::Data(_) if !data => return Ok(Step::More),
                    Chunked::Data(left) => {
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err("a chunk is longer than its size".into());
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_META)? else {
                            return Ok(Step::More);
                        };
                        *state = match chunk_size(&line)? {
                            0 => Chunked::Trailers(0),
                            n => Chunked::Data(n),
                        };
                    }
                    Chunked::Trailers(seen) => {
                        let Some(line) = take_line(buf, MAX_CHUNK_META - *seen)? else {
                            return Ok(Step::More);
                        };
                        *state = if line.is_empty() {
                            Chunked::Done
                        } else if is_field_line(&line) {
                            Chunked::Trailers(*seen + line.len() + 2)
                        } else {
                            return Err("a trailer field cannot be read".into());
                        };
                    }
                    Chunked::Done => unreachable!("matched above"),
                },
            }
        }
    }

    /// The body's next piece, read from `from` as needed: `None` at the body's end (for
    /// `Close`, the peer's close). `closed_early` is the error when the peer closes before it.
    pub(crate) fn poll_next(
        &mut self,
        from: &mut impl Buffered,
        cx: &mut Context<'_>,
        closed_early: &'static str,
    ) -> Poll<Result<Option<Bytes>, BoxError>> {
        loop {
            match self.step(from.buf(), true)? {
                Step::Data(data) => return Poll::Ready(Ok(Some(data))),
                Step::End => return Poll::Ready(Ok(None)),
                Step::More => {}
            }
            match ready!(from.poll_fill(cx)) {
                Ok(0) if *self == Framing::Close => return Poll::Ready(Ok(None)),
                Ok(0) => return Poll::Ready(Err(closed_early.into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }
}

/// A CRLF-terminated line taken from the front of `buf`, without its CRLF.
pub(crate) fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, BoxError> {
    let too_long = || "a chunk-size line or the trailer section is too long".into();
    match memchr::memchr(b'\n', buf) {
        Some(i) if i >= max => Err(too_long()),
        Some(i) if i > 0 && buf[i - 1] == b'\r' => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        Some(_) => Err("a chunk-size or trailer line does not end in CRLF".into()),
        None if buf.len() >= max => Err(too_long()),
        None => Ok(None),
    }
}

/// Whether a line is `name: value` by RFC 9110's grammar (a token, then no control
/// characters but tab).
pub(crate) fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty()
        && name.iter().all(tchar)
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// The size on a chunk-size line, its extensions ignored.
pub(crate) fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let digits = &line[..end];
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("a chunk size is not a hexadecimal number".into());
    }
    let rest = &line[end..];
    // After the digits: nothing, or extensions after optional whitespace, with no control
    // characters in them.
    if rest
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_some_and(|&b| b != b';')
        || rest.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
    {
        return Err("a chunk size is not a hexadecimal number".into());
    }
    let text = std::str::from_utf8(digits).expect("hex digits are ASCII");
    Ok(u64::from_str_radix(text, 16).expect("at most 15 hex digits fit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::numbers;

    /// Decodes `wire` read `piece` bytes at a time: the body, and the bytes after it.
    fn decode(
        mut framing: Framing,
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), BoxError> {
        let (mut buf, mut rest, mut body) = (BytesMut::new(), wire, Vec::new());
        loop {
            match framing.step(&mut buf, true)? {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::End => return Ok((body, [&buf[..], rest].concat())),
                Step::More if rest.is_empty() => {
                    return Err("the wire ended inside the body".into());
                }
                Step::More => {
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    fn chunked() -> Framing {
        Framing::Chunked(Chunked::Size)
    }

    #[test]
    fn chunked_bodies_decode_the_same_however_the_bytes_arrive() {
        let wire = b"5;ext=1\r\nhello\r\n6 ; name=\"v\"\r\n world\r\nA\r\n, 10 bytes\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in 1..=wire.len() {
            let (body, rest) = decode(chunked(), wire, piece).unwrap();
            assert_eq!(
                body, b"hello world, 10 bytes",
                "read {piece} bytes at a time"
            );
            assert_eq!(rest, b"NEXT", "read {piece} bytes at a time");
        }
    }

    #[test]
    fn random_chunkings_of_random_bodies_decode_to_the_body() {
        let mut next = numbers(0x2545_f491_4f6c_dd1d);
        for _ in 0..300 {
            let body: Vec<u8> = (0..next(4000)).map(|_| next(256) as u8).collect();
            let mut wire = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let n = (1 + next(700)).min(body.len() - at);
                let size = if next(2) == 0 {
                    format!("{n:x}")
                } else {
                    format!("{n:X}")
                };
                let ext = if next(3) == 0 { ";a=b" } else { "" };
                wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                wire.extend_from_slice(&body[at..at + n]);
                wire.extend_from_slice(b"\r\n");
                at += n;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let piece = 1 + next(600);
            let (decoded, rest) = decode(chunked(), &wire, piece).unwrap();
            assert_eq!(decoded, body);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_META));
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad name: 1\r\n\r\n",
            long_line.as_bytes(),
        ] {
            let read = decode(chunked(), wire, wire.len());
            assert!(
                read.is_err(),
                "{:?} was read as {read:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let (body, rest) = decode(Framing::Length(5), b"helloNEXT", 2).unwrap();
        assert_eq!((&body[..], &rest[..]), (&b"hello"[..], &b"NEXT"[..]));
        assert!(decode(Framing::Length(10), b"hello", 5).is_err());
    }
}
