//! Media types, read as RFC 9110 §8.3.1 writes them: `type/subtype *( OWS ";" OWS name=value )`,
//! compared without regard to case, parameters parsed (a value may be quoted).
//!
//! A message's `Content-Type` is read once into [`ContentType`]; a field that is present but
//! cannot be read with certainty (two fields, a non-ASCII byte, no `/`) is `Unreadable`, never
//! taken as absent.

use http::header::{self, HeaderMap, HeaderName};

/// A field's value when it was sent at most once and in visible ASCII: `Ok(None)` when absent,
/// `Err(())` when it cannot be read one way (twice, or with a byte `to_str` would refuse). A
/// field that cannot be read is never taken for an absent one.
#[allow(clippy::result_unit_err)]
pub fn field_once<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    value.to_str().map(Some).map_err(drop)
}

/// What a message's `Content-Type` says, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// No `Content-Type` field.
    Absent,
    /// `application/json`, or a `+json` type.
    Json,
    /// `text/event-stream`.
    EventStream,
    /// Some other media type.
    Other,
    /// A field that cannot be read one way: two of them, a byte that is not visible ASCII,
    /// or not a media type.
    Unreadable,
}

/// A parsed media type, borrowing from the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// `type/subtype`, as written.
    pub essence: &'a str,
    params: &'a str,
}

impl<'a> MediaType<'a> {
    /// Parses a field value; `None` when it is not a media type.
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        let (essence, params) = value.split_once(';').unwrap_or((value, ""));
        let essence = essence.trim_end_matches([' ', '\t']);
        let (kind, sub) = essence.split_once('/')?;
        if !is_token(kind) || !is_token(sub) {
            return None;
        }
        let media = MediaType { essence, params };
        // Every parameter must read, or the whole is unreadable.
        media.params().try_for_each(|p| p.map(drop))?;
        Some(media)
    }

    /// Whether this is `essence` (e.g. `text/event-stream`), in any case.
    pub fn is(&self, essence: &str) -> bool {
        self.essence.eq_ignore_ascii_case(essence)
    }

    /// Whether this is `application/json` or a `+json` type.
    pub fn is_json(&self) -> bool {
        self.is("application/json")
            || self
                .essence
                .len()
                .checked_sub(5)
                .is_some_and(|at| self.essence[at..].eq_ignore_ascii_case("+json"))
    }

    /// The value of parameter `name` (any case), unquoted; `None` when absent.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .filter_map(Option::flatten)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Each parameter: `Some(None)` for an empty one between semicolons, `None` for one that
    /// does not read.
    fn params(&self) -> impl Iterator<Item = Option<Option<(&'a str, String)>>> + 'a {
        split_params(self.params).map(|p| {
            let p = p.trim_matches([' ', '\t']);
            if p.is_empty() {
                return Some(None);
            }
            let (name, value) = p.split_once('=')?;
            if !is_token(name) {
                return None;
            }
            let value = match value.strip_prefix('"') {
                Some(quoted) => unquote(quoted)?,
                None if is_token(value) => value.to_string(),
                None => return None,
            };
            Some(Some((name, value)))
        })
    }
}

/// Splits parameters at semicolons outside quoted strings.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s).filter(|s| !s.is_empty());
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// A quoted string's content (after its opening quote), which must end the parameter.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return chars.as_str().is_empty().then_some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// RFC 9110's `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl ContentType {
    /// The fields nearly every message carries, known without parsing (the parser gives the
    /// same answer: a test holds them to it).
    fn common(field: &str) -> Option<Self> {
        const COMMON: [(&str, ContentType); 4] = [
            ("application/json", ContentType::Json),
            ("application/json; charset=utf-8", ContentType::Json),
            ("text/event-stream", ContentType::EventStream),
            ("text/event-stream; charset=utf-8", ContentType::EventStream),
        ];
        COMMON
            .iter()
            .find(|(text, _)| text.eq_ignore_ascii_case(field))
            .map(|&(_, kind)| kind)
    }

    /// Reads a message's `Content-Type`.
    pub fn of(headers: &HeaderMap) -> Self {
        let field = match field_once(headers, &header::CONTENT_TYPE) {
            Ok(None) => return ContentType::Absent,
            Ok(Some(field)) => field,
            Err(()) => return ContentType::Unreadable,
        };
        if let Some(common) = Self::common(field) {
            return common;
        }
        let Some(media) = MediaType::parse(field) else {
            return ContentType::Unreadable;
        };
        // Text in another charset (UTF-7 spells `tools` as `+AHQ-ools`) is read otherwise by
        // a client than by the proxy.
        if media
            .param("charset")
            .is_some_and(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8"))
        {
            return ContentType::Unreadable;
        }
        if media.is("text/event-stream") {
            ContentType::EventStream
        } else if media.is_json() {
            ContentType::Json
        } else {
            ContentType::Other
        }
    }
}

/// Why a request's `Content-Type` says its body is not the UTF-8 the proxy reads, if it does:
/// a `charset` other than UTF-8, or a field that cannot be read.
pub fn not_utf8(headers: &HeaderMap) -> Option<String> {
    let Ok(field) = field_once(headers, &header::CONTENT_TYPE) else {
        return Some("the Content-Type is sent twice or holds a byte that is not ASCII".into());
    };
    let field = field?;
    if ContentType::common(field).is_some() {
        return None;
    }
    let Some(media) = MediaType::parse(field) else {
        return Some(format!("the Content-Type {field:?} is not a media type"));
    };
    match media.param("charset") {
        Some(cs) if !cs.eq_ignore_ascii_case("utf-8") && !cs.eq_ignore_ascii_case("utf8") => Some(
            format!("the body's charset is {cs:?}; send JSON-RPC as UTF-8"),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_common_fields_known_without_parsing_are_what_parsing_says() {
        for field in [
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            "Application/Json; Charset=UTF-8",
            "text/event-stream",
            "text/event-stream; charset=utf-8",
        ] {
            let common = ContentType::common(field).unwrap();
            let media = MediaType::parse(field).unwrap();
            let parsed = match media.is("text/event-stream") {
                true => ContentType::EventStream,
                false if media.is_json() => ContentType::Json,
                false => ContentType::Other,
            };
            assert_eq!(common, parsed, "{field}");
            assert!(
                media
                    .param("charset")
                    .is_none_or(|c| c.eq_ignore_ascii_case("utf-8")),
                "{field}"
            );
        }
        for other in [
            "application/json;charset=utf-16",
            "application/jsonx",
            "text/plain",
        ] {
            assert_eq!(ContentType::common(other), None, "{other}");
        }
    }

    fn of(values: &[&[u8]]) -> ContentType {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_TYPE, HeaderValue::from_bytes(v).unwrap());
        }
        ContentType::of(&h)
    }

    #[test]
    fn media_types_compare_without_case_and_with_their_parameters_parsed() {
        use ContentType::*;
        let cases: &[(&[&[u8]], ContentType)] = &[
            (&[], Absent),
            (&[b"application/json"], Json),
            (&[b"Application/JSON; charset=UTF-8"], Json),
            (&[b"application/vnd.api+json"], Json),
            (&[b"application/json ; q=\"a;b\" ; x=1"], Json),
            (&[b"TEXT/Event-Stream"], EventStream),
            (&[b"text/event-stream;charset=utf-8"], EventStream),
            (&[b"text/event-streamx"], Other),
            (&[b"text/plain"], Other),
            (&[b"application/jsonx"], Other),
            (&[b"json"], Unreadable),
            (&[b"application/json; charset"], Unreadable),
            (&[b"application/json; charset=\"utf-8"], Unreadable),
            (&[b"application/json; a=b c"], Unreadable),
            (&[b"application/\xC3\xA9json"], Unreadable),
            (&[b"application/json", b"text/event-stream"], Unreadable),
        ];
        for (values, want) in cases {
            assert_eq!(of(values), *want, "{values:?}");
        }
    }

    #[test]
    fn a_body_declared_in_another_charset_is_named() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            not_utf8(&h)
        };
        assert_eq!(with("application/json"), None);
        assert_eq!(with("application/json; charset=\"UTF-8\""), None);
        assert_eq!(with("text/plain"), None);
        assert!(
            with("application/json; charset=utf-16")
                .unwrap()
                .contains("utf-16")
        );
        assert!(
            with("application/json; CHARSET=\"UTF-32BE\"")
                .unwrap()
                .contains("UTF-32BE")
        );
        assert!(with("nonsense").unwrap().contains("not a media type"));
        assert_eq!(not_utf8(&HeaderMap::new()), None);
    }
}
