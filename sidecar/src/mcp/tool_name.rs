//! A tool's `name`, read out of a `tools/list` result without parsing the tool a second time.
//!
//! serde has already read each tool as JSON (a `RawValue`) when its name is wanted, so the text
//! is known to be well formed, and what is left is to find the one top-level `name`. Reading
//! each tool with serde again cost as much as reading the whole list; this costs two vector
//! searches for the shape servers write (`{"name":"…",…}`), and one forward pass otherwise.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The `name` of a tool, read from text serde has already read as JSON (a `RawValue`): `None`
/// when it is not an object, or has no `name`, two, or one that is not a string, as serde's
/// reading of `struct { name: String }` from an object would say.
pub fn tool_name(tool: &str) -> Option<Cow<'_, str>> {
    leading_name(tool).or_else(|| scanned_name(tool))
}

/// The usual shape, `{"name":"…",…}`, read without walking the rest: no later key can be
/// `name` when the rest holds neither `"name"` nor `\u` (the only escape that spells a letter).
/// `None` when that cannot be shown, for [`scanned_name`] to decide.
fn leading_name(tool: &str) -> Option<Cow<'_, str>> {
    static NAME_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"name\""));
    let b = tool.as_bytes();
    let open = skip_ws(b, 0);
    if b.get(open) != Some(&b'{') {
        return None;
    }
    let key = skip_ws(b, open + 1);
    if !b[key..].starts_with(b"\"name\"") {
        return None;
    }
    let at = skip_ws(b, skip_ws(b, key + 6) + 1); // past `:`
    let (end, escaped) = string_end(b, at)?;
    let rest = &b[end..];
    if NAME_KEY.find(rest).is_some() || has_unicode_escape(rest) {
        return None;
    }
    Some(match escaped {
        true => Cow::Owned(unescape(&tool[at..end])?),
        false => Cow::Borrowed(&tool[at + 1..end - 1]),
    })
}

/// Whether JSON text has a `\u` escape: the only escape that can spell a letter, so text
/// without one spells each key as written.
pub fn has_unicode_escape(text: &[u8]) -> bool {
    static UNICODE_ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    UNICODE_ESCAPE.find(text).is_some()
}

/// Any shape: one forward pass over the top-level keys, decoding only a key or name with an
/// escape in it.
fn scanned_name(tool: &str) -> Option<Cow<'_, str>> {
    let b = tool.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut name = None;
    loop {
        i = skip_ws(b, i + 1); // past `{` or `,`
        if b.get(i)? == &b'}' {
            return name; // `{}`
        }
        let (key_end, key_escaped) = string_end(b, i)?;
        let key = &tool[i..key_end];
        let at = skip_ws(b, skip_ws(b, key_end) + 1); // past `:`
        let (end, value_escaped) = value_end(b, at)?;
        if key == "\"name\"" || key_escaped && unescape(key)? == "name" {
            let value = &tool[at..end];
            if name.is_some() || !value.starts_with('"') {
                return None;
            }
            name = Some(match value_escaped {
                true => Cow::Owned(unescape(value)?),
                false => Cow::Borrowed(&value[1..value.len() - 1]),
            });
        }
        i = skip_ws(b, end);
        if b.get(i)? == &b'}' {
            return name;
        }
    }
}

fn unescape(string: &str) -> Option<String> {
    serde_json::from_str(string).ok()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Just past the string that starts at `b[i]`, and whether it has an escape.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'"' => return Some((j + 1, escaped)),
            b'\\' => {
                escaped = true;
                j += 2;
            }
            _ => j += 1,
        }
    }
}

/// Just past the value that starts at `b[i]`, and whether it is a string with an escape.
fn value_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some((j + 1, false));
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            Some((j, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A random JSON value; objects favour keys that read as `name`, and strings escapes.
    fn random_json(seed: &mut u64, depth: u32) -> String {
        fn below(seed: &mut u64, n: u64) -> usize {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed % n) as usize
        }
        let ws = [" ", "", "\n\t", "\r "];
        let strings = [
            r#""name""#,
            r#""n\u0061me""#,
            r#""nam""#,
            r#""names""#,
            r#""a\"name\"""#,
            r#""\\""#,
            r#""tool_7""#,
            r#""\u00e9t\u00e9""#,
            r#""x\\\"y""#,
            r#""""#,
        ];
        let scalars = ["7", "-1.5e3", "true", "false", "null", "0"];
        let kind = match depth {
            0 => [3, 3, 3, 2, 0][below(seed, 5)], // mostly objects, as tools are
            1 => [0, 0, 0, 1, 2, 3][below(seed, 6)], // mostly strings, as names are
            2 => below(seed, 4),
            _ => below(seed, 2),
        };
        match (kind, below(seed, 10)) {
            (0, k) => strings[k].to_string(),
            (1, k) => scalars[k % scalars.len()].to_string(),
            (2, n) => {
                let items: Vec<String> = (0..n % 4).map(|_| random_json(seed, depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            (_, n) => {
                let mut fields = Vec::new();
                for _ in 0..n % 4 {
                    let key = strings[below(seed, 8).saturating_sub(2)];
                    let (a, b) = (ws[below(seed, 4)], ws[below(seed, 4)]);
                    fields.push(format!(
                        "{a}{key}{b}:{a}{}{b}",
                        random_json(seed, depth + 1)
                    ));
                }
                format!("{{{}}}", fields.join(","))
            }
        }
    }

    #[test]
    fn tool_names_are_read_as_serde_reads_them() {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let mut seed = 0x5eed_u64;
        let (mut named, mut nameless, mut leading) = (0, 0, 0);
        for case in 0..20_000 {
            let tool = random_json(&mut seed, 0);
            // serde reads a struct from an array too (`["a"]`); no client reads a tool so.
            let expected = serde_json::from_str::<Named>(&tool)
                .ok()
                .filter(|_| tool.starts_with('{'))
                .map(|t| t.name);
            let read = tool_name(&tool).map(Cow::into_owned);
            assert_eq!(read, expected, "case {case}: {tool}");
            let scanned = scanned_name(&tool).map(Cow::into_owned);
            assert_eq!(scanned, expected, "case {case}, the long way: {tool}");
            if let Some(name) = leading_name(&tool) {
                assert_eq!(
                    Some(name.into_owned()),
                    expected,
                    "case {case}, the short way: {tool}"
                );
                leading += 1;
            }
            if expected.is_some() {
                named += 1;
            } else {
                nameless += 1;
            }
            // Text serde would not read as JSON is never handed over, but must not panic.
            for cut in [1, tool.len() / 2] {
                let _ = tool_name(&tool[..tool.floor_char_boundary(tool.len() - cut)]);
            }
        }
        assert!(
            named > 1_000 && nameless > 1_000,
            "{named} named, {nameless} not"
        );
        assert!(leading > 500, "only {leading} read the short way");
    }
}
