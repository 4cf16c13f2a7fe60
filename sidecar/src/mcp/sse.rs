//! Server-sent events (the WHATWG event-stream format) read and written: a byte stream split
//! into events however its bytes arrive, an event's fields read as a browser reads them, and
//! an event written with new data but its other fields kept. Passing a stream on, event by
//! event, is the proxy's.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into complete SSE events (each ending with its blank line).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Where scanning resumes.
    scanned: usize,
    /// Whether the byte before `scanned` ended a line.
    after_newline: bool,
}

impl EventSplitter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of an event not complete yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, raw, including its terminating blank line.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let b = &self.buf;
        let mut i = self.scanned;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &b[i..]) {
            let eol = i + at;
            if eol > i {
                self.after_newline = false;
            }
            let len = if b[eol] == b'\r' {
                if eol + 1 >= b.len() && !self.after_newline {
                    // A CR ending a data line may be the start of CRLF: wait for more. (A CR
                    // that ends the blank line completes the event either way; a LF after it
                    // reaches the client in the next event, bytes unchanged.)
                    self.scanned = eol;
                    return None;
                }
                if b.get(eol + 1) == Some(&b'\n') { 2 } else { 1 }
            } else {
                1
            };
            if self.after_newline {
                self.scanned = 0;
                self.after_newline = false;
                return Some(self.buf.split_to(eol + len).freeze());
            }
            self.after_newline = true;
            i = eol + len;
        }
        if i < b.len() {
            self.after_newline = false;
        }
        self.scanned = b.len();
        None
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn rest(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| {
            self.scanned = 0;
            self.after_newline = false;
            self.buf.split().freeze()
        })
    }
}

/// The fields of one event.
pub struct Event<'a> {
    pub name: Option<&'a str>,
    /// Borrowed from the event when it has one `data:` line (an MCP message, always).
    pub data: Cow<'a, str>,
}

/// An event's fields as a client reads them: a byte order mark opening the stream (`first`) is
/// no part of its first field (WHATWG's event-stream parsing drops it).
pub fn event_fields(raw: &Bytes, first: bool) -> Bytes {
    match raw.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) if first => raw.slice_ref(rest),
        _ => raw.clone(),
    }
}

/// Reads an event's `event:` and joined `data:` lines.
pub fn parse_event(raw: &[u8]) -> Option<Event<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut name = None;
    let mut data: Option<Cow<'_, str>> = None;
    for line in lines(text) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value),
            "data" => match &mut data {
                Some(d) => {
                    let d = d.to_mut();
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(Cow::Borrowed(value)),
            },
            _ => {}
        }
    }
    Some(Event { name, data: data? })
}

/// Whether every line of an event without data is one a client ignores or reads as no message:
/// empty, a comment, or an `id`, `event` or `retry` field.
pub fn only_known_fields(raw: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(raw) else {
        return false;
    };
    lines(text).all(|line| {
        let field = line.split_once(':').map_or(line, |(f, _)| f);
        line.is_empty() || line.starts_with(':') || matches!(field, "id" | "event" | "retry")
    })
}

/// The lines of an event, split at every CR and LF (a CRLF leaves an empty line between,
/// which no field reads).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match memchr::memchr2(b'\n', b'\r', t.as_bytes()) {
            Some(at) => {
                rest = Some(&t[at + 1..]);
                Some(&t[..at])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// A message's bytes as text: borrowed when valid UTF-8, replaced characters otherwise. std's
/// `from_utf8` checks first: `from_utf8_lossy`'s chunked walk was 6.6% of the proxy's CPU on a
/// 500-tool list (perf).
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Rewrites an event with new data, keeping its other fields (`id`, `event`, `retry`).
pub fn rewrite_event(raw: &[u8], data: &str) -> Bytes {
    let text = text(raw);
    let mut out = String::with_capacity(raw.len() + data.len());
    let mut wrote_data = false;
    for line in lines(&text).filter(|l| !l.is_empty()) {
        if line.starts_with("data:") || line == "data" {
            if !wrote_data {
                for d in data.split('\n') {
                    out.push_str("data: ");
                    out.push_str(d);
                    out.push('\n');
                }
                wrote_data = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// An SSE event carrying one JSON-RPC message.
pub fn message_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_opening_the_stream_is_read_past_as_a_client_does() {
        // Found while checking the `sse` fuzz target against a client's parsing: a client
        // drops the mark and reads the data line, so the proxy must read it too, or a tool
        // list there would pass unfiltered.
        let raw = Bytes::from_static(b"\xEF\xBB\xBFdata: {\"a\":1}\n\n");
        let first = event_fields(&raw, true);
        assert_eq!(parse_event(&first).unwrap().data, "{\"a\":1}");
        // Later in the stream it is a byte of the field's name, to a client too.
        assert!(parse_event(&event_fields(&raw, false)).is_none());
    }

    fn split(chunks: &[&str]) -> Vec<String> {
        let mut s = EventSplitter::default();
        let mut out = vec![];
        for c in chunks {
            s.push(c.as_bytes());
            while let Some(e) = s.next_event() {
                out.push(String::from_utf8(e.to_vec()).unwrap());
            }
        }
        out
    }

    #[test]
    fn events_split_on_blank_lines_whatever_the_line_endings() {
        assert_eq!(
            split(&["data: a\n\ndata: b\n\n"]),
            ["data: a\n\n", "data: b\n\n"]
        );
        assert_eq!(split(&["data: a\r\n\r\n"]), ["data: a\r\n\r\n"]);
        assert_eq!(split(&["data: a\r\r"]), ["data: a\r\r"]);
        assert_eq!(split(&["da", "ta: a\r", "\n", "\r\n"]), ["data: a\r\n\r\n"]);
        assert_eq!(
            split(&[": ping\n\n"]),
            [": ping\n\n"],
            "keep-alive comments are events too"
        );
        assert!(split(&["data: partial\n"]).is_empty());
    }

    #[test]
    fn events_keep_their_fields_when_data_is_rewritten() {
        let raw = b"id: 7\nevent: message\ndata: {\"a\":1}\n\n";
        let ev = parse_event(raw).unwrap();
        assert_eq!((ev.name, &*ev.data), (Some("message"), "{\"a\":1}"));
        assert!(
            matches!(ev.data, Cow::Borrowed(_)),
            "one data line is read in place"
        );
        assert_eq!(
            &rewrite_event(raw, "{}")[..],
            b"id: 7\nevent: message\ndata: {}\n\n"
        );
    }

    #[test]
    fn events_read_the_same_however_the_bytes_arrive() {
        let stream = "event: message\r\ndata: {\"a\":1}\r\n\r\n: ping\n\ndata: x\rdata: y\r\rid: 3\ndata: z\n\n";
        let read = |events: Vec<String>| -> (String, Vec<(Option<String>, String)>) {
            let fields = events
                .iter()
                .filter_map(|e| parse_event(e.as_bytes()))
                .map(|e| (e.name.map(str::to_owned), e.data.into_owned()))
                .collect();
            (events.concat(), fields)
        };
        let whole = read(split(&[stream]));
        assert_eq!(whole.0, stream, "every byte passes, once, in order");
        assert_eq!(
            whole.1,
            [
                (Some("message".into()), "{\"a\":1}".into()),
                (None, "x\ny".into()),
                (None, "z".into())
            ]
        );
        // A cut between a blank line's CR and LF moves the LF to the next event, which reads
        // the same.
        for cut in 0..=stream.len() {
            assert_eq!(
                read(split(&[&stream[..cut], &stream[cut..]])),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<String> = stream.chars().map(String::from).collect();
        let bytes: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(read(split(&bytes)), whole, "a byte at a time");
    }

    #[test]
    fn multi_line_data_is_joined() {
        let ev = parse_event(b"data: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(ev.data, "{\"a\":\n1}");
    }
}
