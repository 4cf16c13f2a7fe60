//! The SSE event splitter: however the bytes are cut, the same events come out, and nothing is
//! lost or added; every event parses without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_sidecar::sse::{EventSplitter, parse_event};

fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut s = EventSplitter::default();
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([data.len()].iter()) {
        let cut = cut.clamp(at, data.len());
        s.push(&data[at..cut]);
        at = cut;
        while let Some(e) = s.next_event() {
            out.push(e.to_vec());
        }
    }
    if let Some(rest) = s.rest() {
        out.push(rest.to_vec());
    }
    out
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let cuts: Vec<usize> = cuts.iter().scan(0usize, |at, c| {
        *at += *c as usize;
        Some(*at)
    }).collect();
    let whole = split(&data, &[]);
    let pieces = split(&data, &cuts);
    assert_eq!(whole, pieces, "events depend on where the bytes were cut");
    assert_eq!(whole.concat(), data, "the events are not the bytes that came");
    for e in &whole {
        let _ = parse_event(e);
    }
});
