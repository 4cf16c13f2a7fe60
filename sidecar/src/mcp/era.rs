//! Which revision of MCP a request speaks, and where each message a client may send belongs in
//! it. A message Tollgate cannot place (a method its era does not define, a response in an era
//! whose clients send none) is refused, never forwarded: what Tollgate has not read as MCP
//! defines, it cannot decide.
//!
//! ```text
//! MCP-Protocol-Version ─ absent, 2024-11-05 … 2025-11-25 ─> Era::Sessions
//!                      ├ 2026-07-28                      ─> Era::Stateless
//!                      └ anything else                   ─> refused (-32022, the versions known)
//! method ─ in METHODS for the era ─> its Place
//!        └ not                    ─> refused (-32601)
//! ```
//!
//! [`METHODS`] is the one table of what Tollgate does with each method; the README's table is
//! checked against it.

/// The revisions that begin with `initialize` and may keep a session (`Mcp-Session-Id`).
pub const SESSION_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The revisions whose every request stands alone, its version and capabilities in `_meta`.
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The key of `_meta` that names a stateless request's protocol version.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// MCP's two eras, as far as deciding goes: what a client may send differs, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// 2024-11-05 to 2025-11-25: `initialize`, sessions, server-to-client requests answered
    /// by the client, batches (2025-03-26).
    Sessions,
    /// 2026-07-28: every request stands alone and mirrors its method and name in headers;
    /// server-to-client requests travel inside results (`input_required`), so a client sends
    /// no responses.
    Stateless,
}

impl Era {
    /// The era of a request by its `MCP-Protocol-Version` header. No header is 2025-03-26, as
    /// the specification says a server may take it; `None` for a version Tollgate does not
    /// know (see [`unknown_version`]).
    pub fn of(version: Option<&str>) -> Option<Era> {
        match version {
            None => Some(Era::Sessions),
            Some(v) if SESSION_VERSIONS.contains(&v) => Some(Era::Sessions),
            Some(v) if STATELESS_VERSIONS.contains(&v) => Some(Era::Stateless),
            Some(_) => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Era::Sessions => "2024-11-05 to 2025-11-25",
            Era::Stateless => "2026-07-28",
        }
    }
}

/// Why a request naming `version`, which Tollgate does not know, is refused.
pub fn unknown_version(version: &str) -> String {
    format!(
        "Tollgate does not know MCP protocol version {version:?}, so it cannot read the request as that version defines it; it knows {}",
        known_versions().join(", ")
    )
}

/// Every protocol version Tollgate reads, oldest first.
pub fn known_versions() -> Vec<&'static str> {
    SESSION_VERSIONS
        .iter()
        .chain(STATELESS_VERSIONS.iter())
        .copied()
        .collect()
}

/// What Tollgate does with a client message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Decided by policy before the server sees it: `tools/call` always, `resources/read` and
    /// `prompts/get` where a policy names `resource:` or `prompt:`.
    Decided,
    /// Its answer is read: tools a caller may not call are left out (and held to their pins).
    Listed,
    /// Goes on as it is; it runs nothing a policy governs (or what it touches was decided
    /// when it began, as a task's call was).
    Forwarded,
    /// Cancels a call in flight: the call keeps its count (it may have run).
    Cancels,
}

/// Which eras define a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eras {
    Sessions,
    Stateless,
    Both,
}

impl Eras {
    const fn has(self, era: Era) -> bool {
        matches!(
            (self, era),
            (Eras::Both, _) | (Eras::Sessions, Era::Sessions) | (Eras::Stateless, Era::Stateless)
        )
    }
}

/// Whether a method is a request (answered) or a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
}

/// One method a client may send a server.
#[derive(Clone, Copy, Debug)]
pub struct Method {
    pub name: &'static str,
    pub kind: Kind,
    pub eras: Eras,
    pub place: Place,
}

const fn m(name: &'static str, kind: Kind, eras: Eras, place: Place) -> Method {
    Method {
        name,
        kind,
        eras,
        place,
    }
}

use Eras::{Both, Sessions as S, Stateless as M};
use Kind::{Notification as N, Request as R};
use Place::{Cancels, Decided, Forwarded, Listed};

/// Every method a client may send a server, in either era, and what Tollgate does with it.
/// Tasks (`tasks/*`) are core in 2025-11-25 and the `io.modelcontextprotocol/tasks` extension
/// in 2026-07-28; a task's call is decided when it is made (`tools/call` with `task`).
pub const METHODS: &[Method] = &[
    m("initialize", R, S, Forwarded),
    m("ping", R, S, Forwarded),
    m("logging/setLevel", R, S, Forwarded),
    m("server/discover", R, M, Forwarded),
    m("subscriptions/listen", R, M, Forwarded),
    m("tools/list", R, Both, Listed),
    m("tools/call", R, Both, Decided),
    m("resources/list", R, Both, Forwarded),
    m("resources/templates/list", R, Both, Forwarded),
    m("resources/read", R, Both, Decided),
    m("resources/subscribe", R, S, Forwarded),
    m("resources/unsubscribe", R, S, Forwarded),
    m("prompts/list", R, Both, Forwarded),
    m("prompts/get", R, Both, Decided),
    m("completion/complete", R, Both, Forwarded),
    m("tasks/get", R, Both, Forwarded),
    m("tasks/result", R, S, Forwarded),
    m("tasks/list", R, S, Forwarded),
    m("tasks/cancel", R, Both, Forwarded),
    m("tasks/update", R, M, Forwarded),
    m("notifications/initialized", N, S, Forwarded),
    m("notifications/cancelled", N, Both, Cancels),
    m("notifications/progress", N, S, Forwarded),
    m("notifications/roots/list_changed", N, S, Forwarded),
    m("notifications/tasks/status", N, S, Forwarded),
];

/// Where a client message belongs in its era, or why it cannot be placed. `method` is `None`
/// for a response (a client's answer to a server's request).
pub fn place(era: Era, method: Option<&str>, is_request: bool) -> Result<Place, String> {
    let Some(method) = method else {
        return match era {
            // Answers to the server's requests (sampling, elicitation, roots, ping).
            Era::Sessions => Ok(Place::Forwarded),
            Era::Stateless => Err(
                "A 2026-07-28 client sends no JSON-RPC responses: a server asks for input inside its result (input_required), and the client answers by repeating its request".into(),
            ),
        };
    };
    let kind = if is_request { R } else { N };
    match METHODS.iter().find(|d| d.name == method) {
        Some(d) if d.eras.has(era) && d.kind == kind => Ok(d.place),
        Some(d) if d.eras.has(era) => Err(format!(
            "{method} is a {} in MCP {}, and this message is {}",
            kind_name(d.kind),
            era.name(),
            match kind {
                R => "a request (it has an id)",
                N => "a notification (it has no id)",
            }
        )),
        Some(_) => Err(format!(
            "{method} is not a method of MCP {}, the version this request names, so Tollgate cannot decide it",
            era.name()
        )),
        None => Err(format!(
            "Tollgate does not know the method {method:?}: a message it cannot place in MCP {} is not forwarded",
            era.name()
        )),
    }
}

const fn kind_name(kind: Kind) -> &'static str {
    match kind {
        R => "request",
        N => "notification",
    }
}

/// Whether a method's `Mcp-Name` header is required in the stateless era, and mirrors which
/// field of its params.
pub fn named_by(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// A mirrored header value as MCP encodes it: as it is, or `=?base64?…?=` around the Base64 of
/// its UTF-8 text. `None` when the sentinel's content is not Base64 of UTF-8.
pub fn header_value(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine;
    match raw
        .strip_prefix("=?base64?")
        .and_then(|s| s.strip_suffix("?="))
    {
        None => Some(std::borrow::Cow::Borrowed(raw)),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(std::borrow::Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_era_by_its_version_header_and_an_unknown_version_is_refused() {
        assert_eq!(Era::of(None), Some(Era::Sessions));
        assert_eq!(Era::of(Some("2025-06-18")), Some(Era::Sessions));
        assert_eq!(Era::of(Some("2026-07-28")), Some(Era::Stateless));
        assert_eq!(Era::of(Some("2027-03-30")), None);
        let e = unknown_version("2027-03-30");
        assert!(e.contains("2027-03-30") && e.contains("2026-07-28"), "{e}");
        // Compared as text before: "2099" sorted after "2026-07-28" and read as stateless.
        assert!(Era::of(Some("2099")).is_none());
    }

    #[test]
    fn each_era_places_only_the_methods_it_defines() {
        use Era::*;
        assert_eq!(
            place(Stateless, Some("tools/call"), true),
            Ok(Place::Decided)
        );
        assert_eq!(
            place(Sessions, Some("tools/call"), true),
            Ok(Place::Decided)
        );
        assert_eq!(
            place(Stateless, Some("server/discover"), true),
            Ok(Place::Forwarded)
        );
        for gone in [
            "initialize",
            "ping",
            "logging/setLevel",
            "resources/subscribe",
        ] {
            let e = place(Stateless, Some(gone), true).unwrap_err();
            assert!(e.contains("not a method of MCP 2026-07-28"), "{gone}: {e}");
        }
        for new in ["server/discover", "subscriptions/listen", "tasks/update"] {
            assert!(place(Sessions, Some(new), true).is_err(), "{new}");
        }
        let e = place(Sessions, Some("tools/cal"), true).unwrap_err();
        assert!(e.contains("does not know the method \"tools/cal\""), "{e}");
        // A request sent as a notification (no id) is not what the method is.
        let e = place(Sessions, Some("tools/call"), false).unwrap_err();
        assert!(e.contains("is a request"), "{e}");
        assert_eq!(
            place(Sessions, Some("notifications/cancelled"), false),
            Ok(Place::Cancels)
        );
        // Responses: the client's answers to a server's requests, which 2026-07-28 has not.
        assert_eq!(place(Sessions, None, false), Ok(Place::Forwarded));
        assert!(place(Stateless, None, false).is_err());
    }

    #[test]
    fn mirrored_values_decode_from_the_base64_sentinel_and_only_from_valid_base64_of_utf8() {
        assert_eq!(header_value("get_weather").as_deref(), Some("get_weather"));
        assert_eq!(
            header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(header_value("=?base64?not base64?="), None);
        assert_eq!(header_value("=?base64?/w==?="), None, "0xff is not UTF-8");
        // Only the exact, lowercase sentinel encodes.
        assert_eq!(
            header_value("=?BASE64?YQ==?=").as_deref(),
            Some("=?BASE64?YQ==?=")
        );
    }

    #[test]
    fn the_readme_table_lists_every_method_tollgate_places() {
        let readme = include_str!("../../../README.md");
        for d in METHODS {
            assert!(
                readme.contains(&format!("`{}`", d.name)),
                "README.md's table of methods lacks {}",
                d.name
            );
        }
    }
}
