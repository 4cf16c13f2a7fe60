//! The SSE event splitter and reader, differential against the WHATWG event-stream parsing a
//! client does: however the bytes are cut, the proxy reads the same messages (event name and
//! data) as a client reading the whole stream, and passes on exactly the bytes that came.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_sidecar::mcp::sse::{EventSplitter, event_fields, parse_event};

/// What the proxy reads: the messages of complete events, and every byte it passes on.
fn proxy_reads(data: &[u8], cuts: &[usize]) -> (Vec<(String, String)>, Vec<u8>) {
    let mut s = EventSplitter::default();
    let (mut messages, mut passed) = (Vec::new(), Vec::new());
    let mut at = 0;
    for &cut in cuts.iter().chain([data.len()].iter()) {
        let cut = cut.clamp(at, data.len());
        s.push(&data[at..cut]);
        at = cut;
        while let Some(raw) = s.next_event() {
            passed.extend_from_slice(&raw);
            let fields = event_fields(&raw, passed.len() == raw.len());
            if let Some(e) = parse_event(&fields) {
                let name = e.name.filter(|n| !n.is_empty()).unwrap_or("message");
                messages.push((name.to_string(), e.data.into_owned()));
            }
        }
    }
    if let Some(rest) = s.rest() {
        passed.extend_from_slice(&rest); // an unterminated last event: passed, never dispatched
    }
    (messages, passed)
}

/// What a client reads: WHATWG's "interpret an event stream", on the whole text.
fn client_reads(text: &str) -> Vec<(String, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (mut out, mut data, mut name) = (Vec::new(), String::new(), String::new());
    let mut has_data = false;
    let mut rest = text;
    while !rest.is_empty() {
        let Some(end) = rest.find(['\r', '\n']) else {
            break; // an unterminated line: the stream ended inside an event
        };
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if has_data {
                let d = data.strip_suffix('\n').unwrap_or(&data).to_string();
                out.push((if name.is_empty() { "message".into() } else { name.clone() }, d));
            }
            data.clear();
            name.clear();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
                has_data = true;
            }
            "event" => name = value.to_string(),
            _ => {}
        }
    }
    out
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let cuts: Vec<usize> = cuts
        .iter()
        .scan(0usize, |at, c| {
            *at += *c as usize;
            Some(*at)
        })
        .collect();
    let (messages, passed) = proxy_reads(&data, &cuts);
    assert_eq!(passed, data, "the bytes passed on are not the bytes that came");
    let Ok(text) = std::str::from_utf8(&data) else {
        return; // not UTF-8: the proxy withholds what it cannot read (SseBody::process)
    };
    assert_eq!(messages, client_reads(text), "the proxy reads other messages than a client: {text:?} cut at {cuts:?}");
});
