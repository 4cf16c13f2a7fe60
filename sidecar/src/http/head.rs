//! The head of an HTTP/1.1 message (RFC 9112 §2–§7), read one way for both sides of the
//! proxy: the agents' requests ([`super::server`]) and the MCP server's answers
//! ([`super::client`]).
//!
//! ```text
//! buffer ─> httparse (≤ 128 fields) ─> start line + fields sliced from the frozen head
//!        ─> Content-Length, Transfer-Encoding, Connection: each read here, once
//!        ─> request: refused unless it reads one way (4xx naming why)
//!           answer:  framed as RFC 9112 §6.3 says a client reads it
//! ```
//!
//! The two directions differ only where RFC 9112 has them differ: a server must refuse a
//! request it could frame two ways, and a client reads an answer by its stronger framing and
//! then uses the connection for nothing else. Whoever reads more of the socket when a head is
//! not all there yet owns the limit on its size, [`MAX_HEAD`].

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::http::framing::{Chunked, Framing};

/// Largest head read, in bytes, on either side.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head, on either side.
pub(crate) const MAX_HEADERS: usize = 128;

/// Room left in each request's header map for the fields a proxy adds before forwarding it
/// (`Host`, `X-Forwarded-For`, `-Host`, `-Proto`), so adding them does not grow the map.
const FORWARDING_FIELDS: usize = 4;

/// Why a request was refused before any handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

pub(crate) fn refusal(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// A request head, read and checked.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) parts: http::request::Parts,
    /// How its body is framed: `Length` or `Chunked`.
    pub(crate) body: Framing,
    /// The client asked to close the connection after the answer (or did not ask to keep an
    /// HTTP/1.0 one).
    pub(crate) close: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub(crate) expect_continue: bool,
}

/// An answer's head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
}

/// Why a head could not be split into its start line and fields.
enum Unreadable {
    TooManyFields,
    Syntax(httparse::Error),
    FieldName,
    FieldValue,
}

/// The head's `len` bytes taken out of `buf`, and its fields (found at `ranges` of it, by
/// [`field_ranges`]) as values that slice it.
fn fields(
    buf: &mut BytesMut,
    len: usize,
    ranges: Vec<(HeaderName, Range<usize>)>,
    spare: usize,
) -> Result<(Bytes, HeaderMap), Unreadable> {
    let head = buf.split_to(len).freeze();
    let headers = sliced_headers(&head, ranges, spare).map_err(|()| Unreadable::FieldValue)?;
    Ok((head, headers))
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// The request head at the start of `buf`, taken out of it; `None` when it is not all there
/// yet. Refuses, naming the problem, whatever could be read more than one way.
pub(crate) fn read_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    let mut found = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let bad = |reason: &str| refusal(StatusCode::BAD_REQUEST, reason);
    let unreadable = |e: Unreadable| match e {
        Unreadable::TooManyFields => refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request has more than {MAX_HEADERS} header fields"),
        ),
        Unreadable::Syntax(e) => bad(&format!("the request head cannot be read: {e}")),
        Unreadable::FieldName => bad("a header field name cannot be read"),
        Unreadable::FieldValue => bad("a header field value cannot be read"),
    };
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut found,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(unreadable(Unreadable::TooManyFields)),
        Err(e) => return Err(unreadable(Unreadable::Syntax(e))),
    };
    let version = version(parsed.version);
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("the request method is not a token"))?;
    // The target and the values are sliced out of the head once it is frozen: no copy each.
    let target = range_in(buf, parsed.path.unwrap_or_default().as_bytes());
    let ranges =
        field_ranges(buf, parsed.headers).map_err(|()| unreadable(Unreadable::FieldName))?;
    let (head, headers) = fields(buf, len, ranges, FORWARDING_FIELDS).map_err(unreadable)?;
    let uri = Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| bad("the request target is not a valid URI"))?;

    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (version == Version::HTTP_11 && hosts == 0) {
        return Err(bad(
            "an HTTP/1.1 request needs exactly one Host header field",
        ));
    }
    if method == Method::CONNECT {
        return Err(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served: this is a reverse proxy in front of one MCP server",
        ));
    }
    // `PRI` is the start of HTTP/2's preface, no HTTP/1.1 method (RFC 9113 §3.4), and the
    // asterisk form is OPTIONS' alone (RFC 9112 §3.2.4): hyper refuses the first, and a server
    // may read either otherwise than the proxy. Found by the `http_framing` fuzz target.
    if method.as_str() == "PRI" {
        return Err(bad(
            "PRI is the start of HTTP/2's connection preface, not an HTTP/1.1 method",
        ));
    }
    if uri == "*" {
        if method != Method::OPTIONS {
            return Err(bad("the request target * is for OPTIONS alone"));
        }
    } else if !uri.path().starts_with('/') || (uri.scheme().is_none() && uri.authority().is_some())
    {
        // Neither a path (origin form) nor an absolute URI (`~*`, `host:80`): read one way
        // by no two servers. Found by the `http_framing` fuzz target.
        return Err(bad(
            "the request target must be a path such as /mcp, or an absolute URI",
        ));
    }
    let body = match transfer_coding(&headers) {
        Some(_) if version == Version::HTTP_10 => {
            return Err(bad("HTTP/1.0 has no Transfer-Encoding"));
        }
        Some(_) if headers.contains_key(header::CONTENT_LENGTH) => {
            return Err(bad(
                "the request is framed both by Transfer-Encoding and by Content-Length",
            ));
        }
        Some(Ok(TransferCoding::Chunked)) => Framing::Chunked(Chunked::Size),
        Some(Ok(TransferCoding::ChunkedAfterOthers)) => {
            return Err(refusal(
                StatusCode::NOT_IMPLEMENTED,
                "only the chunked transfer coding is supported",
            ));
        }
        Some(Ok(TransferCoding::NotChunked)) => {
            return Err(bad(
                "the request's last transfer coding is not chunked, so its length cannot be known",
            ));
        }
        Some(Err(why)) => return Err(bad(&format!("the request's {why}"))),
        None => match content_length(&headers) {
            Some(Ok(n)) => Framing::Length(n),
            Some(Err(())) => {
                return Err(bad(
                    "the Content-Length is not one decimal number (or its values disagree)",
                ));
            }
            None => Framing::Length(0),
        },
    };
    let expect_continue = match headers.get(header::EXPECT) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => {
            return Err(refusal(
                StatusCode::EXPECTATION_FAILED,
                "the only expectation served is Expect: 100-continue",
            ));
        }
    };
    let close = !keeps_alive(version, &headers);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(RequestHead {
        parts: req.into_parts().0,
        body,
        close,
        expect_continue,
    }))
}

/// The answer's head at the start of `buf`, taken out of it; `None` when it is not all there
/// yet, or what makes it no HTTP/1.1 head.
pub(crate) fn read_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, &'static str> {
    let mut found = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let unreadable = |e: Unreadable| match e {
        Unreadable::TooManyFields => "more than 128 header fields",
        Unreadable::Syntax(_) => "the head cannot be parsed",
        Unreadable::FieldName => "bad header name",
        Unreadable::FieldValue => "bad header value",
    };
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut found,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(unreadable(Unreadable::TooManyFields)),
        Err(e) => return Err(unreadable(Unreadable::Syntax(e))),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("bad status code")?;
    let version = version(parsed.version);
    let ranges =
        field_ranges(buf, parsed.headers).map_err(|()| unreadable(Unreadable::FieldName))?;
    let (_, headers) = fields(buf, len, ranges, 0).map_err(unreadable)?;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

/// How the body of an answer ends, and whether its connection may carry another request
/// (RFC 9112 §6.3, §9.3). `no_body`: the request was `HEAD`.
pub(crate) fn response_framing(
    head: &ResponseHead,
    no_body: bool,
) -> Result<(Framing, bool), &'static str> {
    let headers = &head.headers;
    let keep_alive = keeps_alive(head.version, headers);
    if no_body || head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), keep_alive));
    }
    match transfer_coding(headers) {
        // HTTP/1.0 has no transfer codings: the framing is faulty (RFC 9112 §6.1).
        Some(_) if head.version == Version::HTTP_10 => {
            Err("Transfer-Encoding in an HTTP/1.0 answer")
        }
        Some(Err(why)) => Err(why),
        // Framed two ways, it may have been smuggled: read by the stronger rule, and the
        // connection used for nothing else.
        Some(Ok(TransferCoding::Chunked | TransferCoding::ChunkedAfterOthers)) => Ok((
            Framing::Chunked(Chunked::Size),
            keep_alive && !headers.contains_key(header::CONTENT_LENGTH),
        )),
        Some(Ok(TransferCoding::NotChunked)) => Ok((Framing::Close, false)),
        None => match content_length(headers) {
            Some(Ok(n)) => Ok((Framing::Length(n), keep_alive)),
            Some(Err(())) => Err("its Content-Length cannot be read"),
            None => Ok((Framing::Close, false)),
        },
    }
}

/// What a message's `Transfer-Encoding` says of its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    /// `chunked`, alone.
    Chunked,
    /// `chunked` last, after other codings.
    ChunkedAfterOthers,
    /// Its last coding is not `chunked`: only the connection's close ends the body.
    NotChunked,
}

/// The `Transfer-Encoding`, if any, read as one list across its field lines. `Err` when an
/// element is empty or not visible ASCII: which coding is last, and so the framing, is then
/// uncertain.
fn transfer_coding(headers: &HeaderMap) -> Option<Result<TransferCoding, &'static str>> {
    let mut codings = list(headers, header::TRANSFER_ENCODING).peekable();
    codings.peek()?;
    let (mut count, mut last) = (0, &b""[..]);
    for coding in codings {
        if coding.is_empty() {
            return Some(Err(
                "Transfer-Encoding has an empty coding, so its last one is unknown",
            ));
        }
        if !coding.iter().all(|b| b.is_ascii_graphic()) {
            return Some(Err("Transfer-Encoding has a coding that is not a token"));
        }
        count += 1;
        last = coding;
    }
    Some(Ok(match (last.eq_ignore_ascii_case(b"chunked"), count) {
        (true, 1) => TransferCoding::Chunked,
        (true, _) => TransferCoding::ChunkedAfterOthers,
        (false, _) => TransferCoding::NotChunked,
    }))
}

/// Whether a connection stays open after this message (RFC 9112 §9.3): HTTP/1.1 unless it
/// says `close`, HTTP/1.0 only when it says `keep-alive`.
pub(crate) fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let says =
        |token: &[u8]| list(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token));
    match version {
        Version::HTTP_11 => !says(b"close"),
        _ => says(b"keep-alive"),
    }
}

/// The elements of a comma-separated field (RFC 9110 §5.6.1) across all its lines, trimmed:
/// `Connection`, `Transfer-Encoding`. Empty elements are kept, for whoever must refuse them.
pub(crate) fn list(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Where `part` (a slice of `buf`, as httparse hands them out) lies in `buf`.
pub(crate) fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// The header fields httparse found in `buf`, as names and ranges of `buf`: once the head is
/// split off and frozen, [`sliced_headers`] makes each value a slice of it, not a copy.
/// `Err` when a name cannot be one.
pub(crate) fn field_ranges(
    buf: &[u8],
    fields: &[httparse::Header<'_>],
) -> Result<Vec<(HeaderName, Range<usize>)>, ()> {
    fields
        .iter()
        .map(|f| {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ())?;
            Ok((name, range_in(buf, f.value)))
        })
        .collect()
}

/// The fields of a frozen head, their values sharing its bytes, in a map with room for `spare`
/// more. `Err` when a value cannot be one.
pub(crate) fn sliced_headers(
    head: &Bytes,
    fields: Vec<(HeaderName, Range<usize>)>,
    spare: usize,
) -> Result<HeaderMap, ()> {
    let mut headers = HeaderMap::with_capacity(fields.len() + spare);
    for (name, range) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(range)).map_err(|_| ())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The `Content-Length`, if any: every value the same decimal number, or an error.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let Some(n) = decimal(part.trim_ascii()) else {
                return Some(Err(()));
            };
            if found.is_some_and(|f| f != n) {
                return Some(Err(()));
            }
            found = Some(n);
        }
    }
    found.map(Ok)
}

/// One or more ASCII digits as a `u64`; `None` for anything else, or more than fits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::framing::Chunked;
    use crate::http::numbers;

    /// `content_length` as it was first written, on text: the oracle for the one on bytes.
    fn content_length_on_text(headers: &HeaderMap) -> Option<Result<u64, ()>> {
        let mut found = None;
        for value in headers.get_all(header::CONTENT_LENGTH) {
            let Ok(text) = value.to_str() else {
                return Some(Err(()));
            };
            for part in text.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(Err(()));
                }
                let Ok(n) = part.parse::<u64>() else {
                    return Some(Err(()));
                };
                if found.is_some_and(|f| f != n) {
                    return Some(Err(()));
                }
                found = Some(n);
            }
        }
        found.map(Ok)
    }

    #[test]
    fn content_lengths_read_as_the_text_reading_reads_them() {
        let pieces: [&[u8]; 16] = [
            b"0",
            b"7",
            b"42",
            b"042",
            b",",
            b" ",
            b"\t",
            b"-1",
            b"+1",
            b"1e3",
            b"x",
            b"18446744073709551615",
            b"18446744073709551616",
            b"\xff",
            b"\xc3\xa9",
            b"",
        ];
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let mut headers = HeaderMap::new();
            for _ in 0..next(3) + 1 {
                let value: Vec<u8> = (0..next(5))
                    .flat_map(|_| pieces[next(pieces.len())])
                    .copied()
                    .collect();
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    headers.append(header::CONTENT_LENGTH, value);
                }
            }
            assert_eq!(
                content_length(&headers),
                content_length_on_text(&headers),
                "{headers:?}"
            );
        }
        let one = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            content_length(&h)
        };
        assert_eq!(one("12"), Some(Ok(12)));
        assert_eq!(one(" 12 , 12"), Some(Ok(12)));
        assert_eq!(one("12, 13"), Some(Err(())));
        assert_eq!(one("18446744073709551616"), Some(Err(())));
        assert_eq!(content_length(&HeaderMap::new()), None);
    }

    fn parse(raw: &str) -> Result<Option<RequestHead>, Refusal> {
        read_request(&mut BytesMut::from(raw))
    }

    fn framing_of(raw: &str) -> Framing {
        parse(raw).unwrap().unwrap().body
    }

    #[test]
    fn request_framing_is_read_by_rfc_9112() {
        let cases = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5, 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Framing::Chunked(Chunked::Size),
            ),
            (
                "POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
                Framing::Length(3),
            ),
            ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0)),
            // A bare LF ends a line (RFC 9112 §2.2 allows it; hyper reads it so too). The
            // upstream never sees it: the proxy writes every head it sends anew.
            ("GET / HTTP/1.1\nHost: a\n\n", Framing::Length(0)),
        ];
        for (raw, want) in cases {
            assert_eq!(framing_of(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn requests_that_could_be_read_two_ways_are_refused_with_the_reason() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
                "both by Transfer-Encoding and by Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                400,
                "not chunked",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
                "not chunked",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
                "only the chunked",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
                "only the chunked",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n",
                400,
                "empty coding",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
                "HTTP/1.0",
            ),
            ("GET / HTTP/1.1\r\n\r\n", 400, "exactly one Host"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                400,
                "exactly one Host",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
                400,
                "cannot be read",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
                400,
                "cannot be read",
            ),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "cannot be read"),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, "cannot be read"),
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                405,
                "CONNECT",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
                417,
                "100-continue",
            ),
        ];
        for (raw, status, reason) in cases {
            let refused = parse(raw).expect_err(&format!("{raw:?} was read"));
            assert_eq!(refused.status.as_u16(), status, "{raw:?}: {refused:?}");
            assert!(
                refused.reason.contains(reason),
                "{raw:?}: {:?} does not say {reason:?}",
                refused.reason
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "x: 1\r\n".repeat(MAX_HEADERS)
        );
        assert_eq!(
            parse(&many).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_head_keeps_every_field_and_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(
            "POST /mcp?x=1 HTTP/1.1\r\nHost: a\r\nAccept: a\r\naccept: b\r\nConnection: close\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\nBODYNEXT",
        );
        let head = read_request(&mut buf).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/mcp?x=1");
        let accept: Vec<_> = head.parts.headers.get_all("accept").iter().collect();
        assert_eq!(accept, ["a", "b"]);
        assert!(head.close && head.expect_continue);
        assert_eq!(&buf[..], b"BODYNEXT");
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(
            !parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .close
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().close);
    }

    fn chunked() -> Framing {
        Framing::Chunked(Chunked::Size)
    }

    fn answer(raw: &str) -> ResponseHead {
        read_response(&mut BytesMut::from(raw)).unwrap().unwrap()
    }
    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                chunked(),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                false,
                chunked(),
                true,
            ),
            // Framed two ways: chunked wins, and the connection is not used again.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                false,
                chunked(),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                false,
                Framing::Close,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: Close\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                false,
                Framing::Length(0),
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                Framing::Length(0),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                true,
                Framing::Length(0),
                true,
            ),
        ];
        for (raw, head_request, want, keep_alive) in cases {
            let got = response_framing(&answer(raw), head_request).unwrap();
            assert_eq!(got, (want, keep_alive), "{raw:?}");
        }
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            // HTTP/1.0 has no transfer codings; an empty coding hides which one is last.
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n",
        ] {
            assert!(
                response_framing(&answer(raw), false).is_err(),
                "{raw:?} was accepted"
            );
        }
    }

    #[test]
    fn heads_keep_every_field_and_leave_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 202 Accepted\r\nSet-Cookie: a\r\nset-cookie: b\r\nMcp-Session-Id: s1\r\n\r\nBODY",
        );
        let head = read_response(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::ACCEPTED);
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
        assert_eq!(head.headers["mcp-session-id"], "s1");
        assert_eq!(&buf[..], b"BODY");

        assert!(
            read_response(&mut BytesMut::from("HTTP/1.1 200 OK\r\nx: 1\r\n"))
                .unwrap()
                .is_none()
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(read_response(&mut BytesMut::from(many.as_str())).is_err());
        assert!(read_response(&mut BytesMut::from("HTTP/1.1 2000 OK\r\n\r\n")).is_err());
        assert!(
            read_response(&mut BytesMut::from(
                "HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n"
            ))
            .is_err()
        );
    }
}
