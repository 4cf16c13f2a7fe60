//! Reading JSON with certainty: a text is accepted only when every reader a peer may use
//! (serde_json, Python's `json`, JavaScript's `JSON.parse`, Go's `encoding/json`) reads it one
//! way, the way the proxy decides it.
//!
//! ```text
//! bytes ─ UTF-8, no BOM? ─ RFC 8259 grammar, nothing after the value? ─ keys unique, escapes
//!         whole, numbers exact in every reader? ─> &str (the same bytes, as text)
//!                                               └> Unreadable { what, at } (refuse it)
//! ```
//!
//! What readers disagree on is refused, never guessed: another encoding or a byte order mark
//! (some decode it, others refuse it), invalid UTF-8 (some replace it), a lone surrogate in
//! an escape, extensions some readers accept (`NaN`, `Infinity`, comments, single quotes,
//! trailing commas, leading `+` or zeros), data after the value, an object with a key twice
//! (readers keep the first, the last, or refuse), integers beyond ±2^53 (exact in Python,
//! rounded in JavaScript) and numbers that overflow a double (`1e400` is infinity in Python,
//! an error in serde_json). One pass over the bytes, allocating only for keys that hold an
//! escape and for the key list of nested objects.

use std::borrow::Cow;
use std::fmt;

/// Deepest nesting read, as serde_json's own limit.
pub const MAX_DEPTH: usize = 128;

/// The bytes that end a run of plain text in a string: a quote, a backslash, a control
/// character.
static STRING_STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stops[b] = true;
        b += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Where the next quote, backslash or control character is. Most strings in a message are
/// short, where a table beats a vector search's set-up; past the first bytes, the quote or
/// backslash is found by vector search and the run before it checked for control characters.
fn next_stop(s: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &s[..s.len().min(SHORT)];
    if let Some(n) = head.iter().position(|&b| STRING_STOPS[b as usize]) {
        return Some(n);
    }
    let rest = s.get(SHORT..)?;
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let run = &rest[..end];
    let stop = match run.iter().fold(false, |control, &b| control | (b < 0x20)) {
        true => run.iter().position(|&b| b < 0x20),
        false => (end < rest.len()).then_some(end),
    };
    stop.map(|n| SHORT + n)
}

/// The largest integer every reader holds exactly (2^53).
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Why a text cannot be read with certainty, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// What is wrong, for a person.
    pub what: Cow<'static, str>,
    /// The byte offset it was found at.
    pub at: usize,
    /// Whether the text is not JSON at all (a parse error), rather than JSON that readers
    /// would read differently.
    pub syntax: bool,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.what, self.at)
    }
}

impl std::error::Error for Unreadable {}

/// `bytes` as text, when they are exactly one JSON value that every reader reads the same way.
pub fn read(bytes: &[u8]) -> Result<&str, Unreadable> {
    read_outline(bytes, 0, |_| 0).map(|(text, _)| text)
}

/// A value found while reading: a member of an object at most [`read_outline`]'s `depth`
/// deep, or an item of the document's own array. Values are listed as they end, so the
/// members of an object come before the member that holds it.
///
/// Twelve bytes, whatever the text: listing costs less than the reading's own list of the keys
/// of open objects, and an array's items are listed only at the top (a batch's messages), so
/// no text makes the list grow faster than the reading does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// How deep its container is: 1 for the document's own members or items.
    pub depth: u8,
    /// What the caller's `tag` made of its key as it decodes; [`ITEM`] for an array item.
    pub tag: u8,
    start: u32,
    end: u32,
}

/// The tag of an array item.
pub const ITEM: u8 = u8::MAX;

impl Member {
    /// Its JSON text in `text` (the text read), exactly as sent.
    pub fn value<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start as usize..self.end as usize]
    }
}

/// [`read`], listing the members of objects up to `depth` deep (and the document's own items)
/// as they are read, each with what `tag` makes of its key: what a caller needs of a message's
/// outline, from the same pass that checks it.
pub fn read_outline(
    bytes: &[u8],
    depth: u8,
    tag: fn(&str) -> u8,
) -> Result<(&str, Vec<Member>), Unreadable> {
    let syntax = |what: &'static str, at: usize| Unreadable {
        what: what.into(),
        at,
        syntax: true,
    };
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Err(syntax("the text starts with a byte order mark", 0));
    }
    if bytes.starts_with(b"\xFE\xFF") || bytes.starts_with(b"\xFF\xFE") {
        return Err(syntax("the text is UTF-16, not UTF-8", 0));
    }
    if depth > 0 && u32::try_from(bytes.len()).is_err() {
        return Err(Unreadable {
            what: "the text is larger than 4 GiB".into(),
            at: 0,
            syntax: false,
        });
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| syntax("the text is not UTF-8", e.valid_up_to()))?;
    let mut reader = Reader {
        s: bytes,
        text,
        at: 0,
        // Room for an MCP message's nesting and keys at once: no growing on the way.
        keys: Vec::with_capacity(32),
        stack: Vec::with_capacity(16),
        outline_depth: depth.into(),
        // An MCP message's members and its params' members, without growing.
        outline: Vec::with_capacity(if depth > 0 { 16 } else { 0 }),
        tag,
    };
    reader.document()?;
    Ok((text, reader.outline))
}

/// An open container, with where it starts: an object remembers where its keys start in the
/// key list.
#[derive(Clone, Copy)]
enum Open {
    Object { keys: usize, start: usize },
    Array { start: usize },
}

impl Open {
    fn start(self) -> usize {
        match self {
            Open::Object { start, .. } | Open::Array { start } => start,
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    /// The same bytes, known to be UTF-8.
    text: &'a str,
    at: usize,
    /// The keys of every object still open, innermost last.
    keys: Vec<Cow<'a, str>>,
    stack: Vec<Open>,
    /// Members of objects this deep or less (and the document's items) are listed in
    /// `outline`, tagged by `tag`.
    outline_depth: usize,
    outline: Vec<Member>,
    tag: fn(&str) -> u8,
}

impl<'a> Reader<'a> {
    fn fail(&self, what: impl Into<Cow<'static, str>>, syntax: bool) -> Unreadable {
        Unreadable {
            what: what.into(),
            at: self.at,
            syntax,
        }
    }

    fn bad(&self, what: &'static str) -> Unreadable {
        self.fail(what, true)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn document(&mut self) -> Result<(), Unreadable> {
        self.skip_ws();
        if self.peek().is_none() {
            return Err(self.bad("the text is empty"));
        }
        self.values()?;
        self.skip_ws();
        if self.at != self.s.len() {
            return Err(self.bad("there is data after the JSON value"));
        }
        Ok(())
    }

    /// Lists the value that just ended, from `start`, when its container is shallow enough.
    #[inline]
    fn ended(&mut self, start: usize) {
        let depth = self.stack.len();
        if depth == 0 || depth > self.outline_depth {
            return;
        }
        let tag = match self.stack[depth - 1] {
            Open::Object { .. } => (self.tag)(self.keys.last().map_or("", |k| k)),
            Open::Array { .. } if depth == 1 => ITEM,
            // Deeper arrays' items are no one's business here.
            Open::Array { .. } => return,
        };
        self.outline.push(Member {
            depth: depth as u8,
            tag,
            // Checked against u32 when the reading began.
            start: start as u32,
            end: self.at as u32,
        });
    }

    /// Reads one value and everything nested in it, without recursion.
    fn values(&mut self) -> Result<(), Unreadable> {
        'value: loop {
            self.skip_ws();
            let start = self.at;
            match self.peek() {
                Some(b'{') => {
                    self.open(Open::Object {
                        keys: self.keys.len(),
                        start,
                    })?;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                        self.stack.pop();
                    } else {
                        self.member_key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.open(Open::Array { start })?;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        self.stack.pop();
                    } else {
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string(false)?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(_) => return Err(self.bad("a JSON value was expected")),
                None => return Err(self.bad("the text ends inside a value")),
            }
            // A scalar, or an empty container, ended here.
            self.ended(start);
            // After a value: the next member, or the end of containers.
            loop {
                let Some(&open) = self.stack.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match (open, self.peek()) {
                    (_, Some(b',')) => {
                        self.at += 1;
                        if let Open::Object { .. } = open {
                            self.skip_ws();
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                    (Open::Object { keys, .. }, Some(b'}')) => {
                        self.at += 1;
                        self.close_object(keys)?;
                        self.ended(open.start());
                    }
                    (Open::Array { .. }, Some(b']')) => {
                        self.at += 1;
                        self.stack.pop();
                        self.ended(open.start());
                    }
                    (_, None) => return Err(self.bad("the text ends inside a container")),
                    (Open::Object { .. }, _) => {
                        return Err(self.bad("',' or '}' was expected after an object member"));
                    }
                    (Open::Array { .. }, _) => {
                        return Err(self.bad("',' or ']' was expected after an array item"));
                    }
                }
            }
        }
    }

    fn open(&mut self, open: Open) -> Result<(), Unreadable> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.fail(
                format!("the value is nested deeper than {MAX_DEPTH} levels"),
                false,
            ));
        }
        self.at += 1;
        self.stack.push(open);
        Ok(())
    }

    /// A member's key and its colon.
    fn member_key(&mut self) -> Result<(), Unreadable> {
        if self.peek() != Some(b'"') {
            return Err(self.bad("an object key must be a string in double quotes"));
        }
        let key = self.string(true)?;
        self.keys.push(key);
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.bad("':' was expected after an object key"));
        }
        self.at += 1;
        Ok(())
    }

    /// Ends an object: its keys must all differ, as they decode.
    fn close_object(&mut self, start: usize) -> Result<(), Unreadable> {
        self.stack.pop();
        let keys = &mut self.keys[start..];
        let twice = if keys.len() <= 16 {
            keys.iter()
                .enumerate()
                .find_map(|(i, k)| keys[..i].contains(k).then(|| k.clone()))
        } else {
            keys.sort_unstable();
            keys.windows(2)
                .find_map(|w| (w[0] == w[1]).then(|| w[0].clone()))
        };
        if let Some(key) = twice {
            return Err(self.fail(
                format!("the key {key:?} appears twice in one object"),
                false,
            ));
        }
        self.keys.truncate(start);
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Unreadable> {
        if self.s[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.bad("a JSON value was expected"))
        }
    }

    /// A string, at its opening quote. A key's text is returned, decoded when it holds an
    /// escape (`keep`); a value's is only checked.
    fn string(&mut self, keep: bool) -> Result<Cow<'a, str>, Unreadable> {
        self.at += 1;
        let mut decoded: Option<String> = None;
        let mut plain = self.at;
        loop {
            let Some(n) = next_stop(&self.s[self.at..]) else {
                return Err(self.bad("the text ends inside a string"));
            };
            self.at += n;
            if self.s[self.at] < 0x20 {
                return Err(self.bad("a string holds a control character; escape it"));
            }
            // Valid UTF-8 was checked for the whole text, and quotes and escapes are ASCII, so
            // every slice between them is whole characters.
            let before = &self.text[plain..self.at];
            if self.s[self.at] == b'"' {
                self.at += 1;
                return Ok(match decoded {
                    None if keep => Cow::Borrowed(before),
                    None => Cow::Borrowed(""),
                    Some(mut d) => {
                        d.push_str(before);
                        Cow::Owned(d)
                    }
                });
            }
            let c = self.escape()?;
            if keep {
                let d = decoded.get_or_insert_with(String::new);
                d.push_str(before);
                d.push(c);
            }
            plain = self.at;
        }
    }

    /// One escape, at its backslash.
    fn escape(&mut self) -> Result<char, Unreadable> {
        self.at += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.at += 1;
                let unit = self.hex4()?;
                return match unit {
                    0xD800..=0xDBFF => {
                        if !self.s[self.at..].starts_with(b"\\u") {
                            return Err(self.fail("a string holds a lone surrogate", false));
                        }
                        self.at += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.fail("a string holds a lone surrogate", false));
                        }
                        let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        Ok(char::from_u32(c).expect("a surrogate pair is a character"))
                    }
                    0xDC00..=0xDFFF => Err(self.fail("a string holds a lone surrogate", false)),
                    _ => Ok(char::from_u32(unit).expect("not a surrogate")),
                };
            }
            _ => return Err(self.bad("a string holds an escape JSON does not have")),
        };
        self.at += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, Unreadable> {
        let digits = self
            .s
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.bad("a \\u escape needs four hex digits"))?;
        let mut unit = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.bad("a \\u escape needs four hex digits"))?;
            unit = unit * 16 + v;
        }
        self.at += 4;
        Ok(unit)
    }

    /// A number: RFC 8259's grammar, an integer exact in every reader, a double that is finite.
    fn number(&mut self) -> Result<(), Unreadable> {
        let start = self.at;
        let digits = |r: &mut Self| {
            let from = r.at;
            while let Some(b'0'..=b'9') = r.peek() {
                r.at += 1;
            }
            r.at - from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.bad("a number has a leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.bad("a number needs a digit after its sign")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.bad("a number needs digits after its decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.bad("a number needs digits in its exponent"));
            }
        }
        let text = &self.text[start..self.at];
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let exact = if integer {
            // Up to 15 digits always fits; longer ones are read to check.
            unsigned.len() <= 15
                || unsigned
                    .parse::<u64>()
                    .is_ok_and(|n| n <= MAX_EXACT_INTEGER)
        } else {
            text.parse::<f64>().is_ok_and(f64::is_finite)
        };
        if !exact {
            let at = start;
            return Err(Unreadable {
                what: if integer {
                    format!("the integer {text} is beyond ±2^53, which readers round differently")
                } else {
                    format!("the number {text} does not fit in a double")
                }
                .into(),
                at,
                syntax: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &[u8]) -> Result<(), String> {
        read(text).map(|_| ()).map_err(|e| e.what.into_owned())
    }

    #[test]
    fn plain_json_of_every_kind_is_read() {
        for ok in [
            "{}",
            "[]",
            " \t\r\n{\"a\" : [1, -0, 0.5, -1.5e-300, 1E+2, 9007199254740992, -9007199254740992, true, false, null, \"\"]} \n",
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
            r#""\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#,
            r#"{"x\u0079":1,"xz":2}"#,
            "\"é ü 😀\"",
            "1e-400",
            "123456789012345",
        ] {
            assert_eq!(verdict(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn what_readers_could_read_differently_is_refused_naming_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"  ", "empty"),
            (b"\xEF\xBB\xBF{}", "byte order mark"),
            (b"\xFF\xFE{\x00}\x00", "UTF-16"),
            (b"{\x00}\x00", "an object key must be a string"),
            (b"[\x00]", "a JSON value was expected"),
            (b"{\"a\":\"\xC3\x28\"}", "not UTF-8"),
            (b"{\"a\":\"\xED\xA0\x80\"}", "not UTF-8"),
            (br#"{"a":"\ud800"}"#, "lone surrogate"),
            (br#"{"a":"\udc00\ud800"}"#, "lone surrogate"),
            (br#"{"a":"\ud800\u0041"}"#, "lone surrogate"),
            (br#"{"a":"\x41"}"#, "escape JSON does not have"),
            (br#"{"a":"\u12"}"#, "four hex digits"),
            (b"{\"a\":\"tab\there\"}", "control character"),
            (b"NaN", "a JSON value was expected"),
            (b"[Infinity]", "a JSON value was expected"),
            (b"[-Infinity]", "digit after its sign"),
            (b"[+1]", "a JSON value was expected"),
            (b"[01]", "leading zero"),
            (b"[1.]", "decimal point"),
            (b"[.5]", "a JSON value was expected"),
            (b"[1e]", "exponent"),
            (b"[0x10]", "',' or ']'"),
            (b"[1e400]", "does not fit in a double"),
            (b"[-1e400]", "does not fit in a double"),
            (b"[9007199254740993]", "beyond"),
            (b"[-18446744073709551616]", "beyond"),
            (b"[1,]", "a JSON value was expected"),
            (b"{\"a\":1,}", "an object key must be a string"),
            (b"{'a':1}", "an object key must be a string"),
            (b"{a:1}", "an object key must be a string"),
            (b"{\"a\" 1}", "':' was expected"),
            (b"// c\n{}", "a JSON value was expected"),
            (b"{}/* c */", "data after"),
            (b"{} {}", "data after"),
            (b"{}x", "data after"),
            (b"[1", "ends inside a container"),
            (b"\"abc", "ends inside a string"),
            (b"tru", "a JSON value was expected"),
            (br#"{"a":1,"a":2}"#, "the key \"a\" appears twice"),
            (
                br#"{"x":[{"b":{"c":1,"c":1}}]}"#,
                "the key \"c\" appears twice",
            ),
            (br#"{"xy":1,"x\u0079":2}"#, "the key \"xy\" appears twice"),
            (
                "{\"\\u00e9\":1,\"é\":2}".as_bytes(),
                "the key \"é\" appears twice",
            ),
        ];
        for (text, why) in cases {
            let got = verdict(text);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{:?}: {got:?}, wanted {why:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn keys_twice_are_found_in_large_objects_and_the_same_key_may_recur_at_other_depths() {
        let mut many: String = (0..500)
            .map(|i| format!("\"k{i}\":{{\"k{i}\":1}},"))
            .collect();
        many.insert(0, '{');
        let unique = format!("{}\"last\":0}}", many);
        assert_eq!(verdict(unique.as_bytes()), Ok(()));
        let twice = format!("{}\"k250\":0}}", many);
        assert!(
            verdict(twice.as_bytes())
                .unwrap_err()
                .contains("\"k250\" appears twice")
        );
    }

    #[test]
    fn strings_of_every_length_are_read_to_their_quote_and_a_control_character_anywhere_is_refused()
    {
        for len in [0, 1, 31, 32, 33, 64, 1000] {
            let plain = "a".repeat(len);
            assert_eq!(
                verdict(format!("[\"{plain}\",1]").as_bytes()),
                Ok(()),
                "{len}"
            );
            let escaped = format!("[\"{plain}\\n{plain}\"]");
            assert_eq!(verdict(escaped.as_bytes()), Ok(()), "{len}");
            for at in [0, len / 2, len] {
                let mut bad = plain.clone().into_bytes();
                bad.insert(at, b'\t');
                let text = [b"[\"".as_slice(), &bad, b"\"]"].concat();
                assert!(
                    verdict(&text).unwrap_err().contains("control character"),
                    "{len} {at}"
                );
            }
            let open = format!("[\"{plain}");
            assert!(
                verdict(open.as_bytes())
                    .unwrap_err()
                    .contains("ends inside a string")
            );
        }
    }

    #[test]
    fn the_outline_lists_shallow_members_as_they_end_with_their_keys_decoded() {
        let tag = |key: &str| match key {
            "a" => 1,
            "b" => 2,
            "e" => 5,
            "f" => 6,
            _ => 0,
        };
        // (depth, tag, text) of each member listed.
        let listed = |text: &'static [u8]| {
            let (read, outline) = read_outline(text, 2, tag).unwrap();
            outline
                .iter()
                .map(|m| (m.depth, m.tag, m.value(read)))
                .collect::<Vec<_>>()
        };
        let text = br#"{"a":1,"b":{"c":[true,{"d":null}],"\u0065":"x"},"f":[2]}"#;
        assert_eq!(
            listed(text),
            [
                (1, 1, "1"),
                (2, 0, r#"[true,{"d":null}]"#),
                (2, 5, r#""x""#),
                (1, 2, r#"{"c":[true,{"d":null}],"\u0065":"x"}"#),
                (1, 6, "[2]"),
            ],
            "the items of [2] (depth 2) are not listed"
        );
        assert!(read_outline(text, 0, tag).unwrap().1.is_empty());
        // The document's own items are, with whitespace around them left out.
        assert_eq!(
            listed(b"[ 1 , {\"a\" : 2} ]"),
            [(1, ITEM, "1"), (2, 1, "2"), (1, ITEM, r#"{"a" : 2}"#)]
        );
    }

    #[test]
    fn the_outline_grows_no_faster_than_the_reading_whatever_the_shape() {
        // Two million items of an array in params: none listed (they were 48 bytes each).
        let items = format!(r#"{{"params":[{}0]}}"#, "0,".repeat(2_000_000));
        let (_, outline) = read_outline(items.as_bytes(), 2, |_| 0).unwrap();
        assert_eq!(outline.len(), 1);
        // The document's items are listed, at 12 bytes each.
        assert_eq!(std::mem::size_of::<Member>(), 12);
        let batch = format!("[{}0]", "0,".repeat(100_000));
        assert_eq!(
            read_outline(batch.as_bytes(), 3, |_| 0).unwrap().1.len(),
            100_001
        );
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(verdict(deep(MAX_DEPTH).as_bytes()), Ok(()));
        assert!(
            verdict(deep(MAX_DEPTH + 1).as_bytes())
                .unwrap_err()
                .contains("deeper")
        );
        assert!(verdict("[".repeat(1_000_000).as_bytes()).is_err());
    }

    #[test]
    fn whatever_is_read_is_read_by_serde_json_as_the_same_value() {
        // A small generator of JSON-like texts, mutated: whatever strict reading accepts,
        // serde_json must read too (the converse is not wanted: serde accepts keys twice).
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"a\"",
            "\"b\"",
            "1",
            "-0",
            "1.5e3",
            "true",
            "null",
            " ",
            "\"\\u00e9\"",
            "\"\\ud800\"",
            "1e400",
            "9007199254740993",
            "\u{e9}",
            "\"",
        ];
        let mut accepted = 0;
        for _ in 0..50_000 {
            let n = 1 + next() as usize % 12;
            let text: String = (0..n)
                .map(|_| pieces[next() as usize % pieces.len()])
                .collect();
            if read(text.as_bytes()).is_ok() {
                accepted += 1;
                assert!(
                    serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                    "accepted but serde refuses: {text}"
                );
            }
        }
        assert!(
            accepted > 1000,
            "the generator reaches valid texts ({accepted})"
        );
    }
}
