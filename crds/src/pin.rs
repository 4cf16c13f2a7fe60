//! `McpToolPin`: one tool's pin for one workload, kept in the workload's namespace, so that
//! every replica holds the tool to the same definition and a restarted sidecar keeps it.
//!
//! ```text
//! spec.definition   the pinned definition (digest, and each field's canonical text)
//!   ├─ source FirstUse ─ made by the operator when a sidecar first lists the tool under
//!   │                    trustOnFirstUse; the first replica to list it decides, once
//!   └─ source Accepted ─ a person accepted what the sidecars held back (the `accept` verb on
//!                        mcptoolpins, checked by the operator's webhook; acceptedBy stamped)
//! spec.rejected     the held digest a person refused: it stays held, and is not reported again
//! status.held       what a sidecar lists now that is not the pin: why, what changed, the pod
//! ```
//!
//! The sidecars follow their workload's pins on the policy stream ([`WorkloadPin`]); a pin a
//! person accepted comes before the policy's `spec.pinning.tools`, one made on first use after.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One tool's definition as pinning reads it: the fields an agent reads, each written
/// canonically, and their digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
pub struct ToolDefinition {
    pub name: String,
    /// `sha256:` and the hex digest of the pinned fields, canonical.
    pub digest: String,
    /// The same of every pinned field but the name: one tool under two names shares it.
    pub body: String,
    /// Each pinned field present, canonical.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// The fields of a tool a pin covers, as MCP names them: all a client reads of it (`_meta`
/// carries what clients render, such as an app's resource; `icons` are fetched).
pub const PINNED_FIELDS: [&str; 9] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
    "icons",
    "execution",
    "_meta",
];

/// MCP's behaviour hints of a tool, with the protocol's defaults for those it leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

/// The hints a policy may select tools by (`spec.annotated[].annotations`).
pub const HINTS: [&str; 4] = [
    "readOnlyHint",
    "destructiveHint",
    "idempotentHint",
    "openWorldHint",
];

impl Default for Hints {
    /// MCP's defaults: a tool may destroy and reach the outside world until it says otherwise.
    fn default() -> Self {
        Hints {
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: true,
        }
    }
}

impl Hints {
    /// The hints of a tool's `annotations` object (anything else: the defaults; a hint that is
    /// not a boolean: its default). A read-only tool is not destructive, whatever it says.
    pub fn of(annotations: Option<&serde_json::Value>) -> Hints {
        let d = Hints::default();
        let get = |k: &str, default: bool| {
            annotations
                .and_then(|a| a.get(k))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(default)
        };
        let read_only = get("readOnlyHint", d.read_only);
        Hints {
            read_only,
            // MCP: destructiveHint "is meaningful only when readOnlyHint == false".
            destructive: !read_only && get("destructiveHint", d.destructive),
            idempotent: get("idempotentHint", d.idempotent),
            open_world: get("openWorldHint", d.open_world),
        }
    }

    /// One hint by its MCP name; `None` for a name MCP does not define.
    pub fn get(&self, name: &str) -> Option<bool> {
        match name {
            "readOnlyHint" => Some(self.read_only),
            "destructiveHint" => Some(self.destructive),
            "idempotentHint" => Some(self.idempotent),
            "openWorldHint" => Some(self.open_world),
            _ => None,
        }
    }
}

impl ToolDefinition {
    /// A tool of a `tools/list` result, read; `None` when it is not an object with a string
    /// `name`. Each pinned field is written canonically ([`crate::canonical`]: keys sorted,
    /// numbers by value), so a server's key order, spacing and number spelling change nothing.
    pub fn read(tool: &serde_json::Value) -> Option<ToolDefinition> {
        let obj = tool.as_object()?;
        let name = obj.get("name")?.as_str()?.to_string();
        let mut fields = BTreeMap::new();
        for field in PINNED_FIELDS {
            if let Some(v) = obj.get(field) {
                let mut text = String::new();
                crate::canonical(v, &mut text);
                fields.insert(field.to_string(), text);
            }
        }
        let (digest, body) = digests(&fields);
        Some(ToolDefinition {
            name,
            digest,
            body,
            fields,
        })
    }

    /// Whether the digests are those of the fields, and the name theirs: a definition written
    /// by anyone but the proxy that read it (a report, an edit) is checked so, so that the text
    /// a person reviews is the text the digest pins.
    pub fn verify(&self) -> Result<(), String> {
        let named = self
            .fields
            .get("name")
            .and_then(|n| serde_json::from_str::<String>(n).ok())
            .is_some_and(|n| n == self.name);
        if !named {
            return Err(format!(
                "the definition's fields do not name tool {:?}",
                self.name
            ));
        }
        if let Some(f) = self
            .fields
            .keys()
            .find(|f| !PINNED_FIELDS.contains(&f.as_str()))
        {
            return Err(format!("{f:?} is not a field a pin covers"));
        }
        // Each field's text is one JSON value, written canonically: text that runs into the
        // next field ("x","inputSchema":{…}) would be read as another field than it is.
        for (field, text) in &self.fields {
            let canonical = serde_json::from_str::<serde_json::Value>(text)
                .map(|v| {
                    let mut out = String::new();
                    crate::canonical(&v, &mut out);
                    out
                })
                .ok();
            if canonical.as_deref() != Some(text.as_str()) {
                return Err(format!(
                    "field {field:?} is not one JSON value, written canonically"
                ));
            }
        }
        let (digest, body) = digests(&self.fields);
        if digest != self.digest || body != self.body {
            return Err(format!(
                "digest {} is not that of the definition's fields ({digest})",
                self.digest
            ));
        }
        Ok(())
    }

    /// The tool this definition pins, as a `tools/list` answer would carry it: each field's
    /// text read back. Checked first ([`ToolDefinition::verify`]), so the tool is the one the
    /// digest pins, and reading it again gives this definition.
    pub fn tool(&self) -> Result<serde_json::Value, String> {
        self.verify()?;
        let mut tool = serde_json::Map::new();
        for (field, text) in &self.fields {
            let value = serde_json::from_str(text).map_err(|e| format!("field {field:?}: {e}"))?;
            tool.insert(field.clone(), value);
        }
        Ok(serde_json::Value::Object(tool))
    }

    /// The hints of this definition's `annotations`.
    pub fn hints(&self) -> Hints {
        let annotations = self
            .fields
            .get("annotations")
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
        Hints::of(annotations.as_ref())
    }

    /// The fields whose text differs from `before`'s (a field added or removed too).
    pub fn changed_since(&self, before: &ToolDefinition) -> Vec<&'static str> {
        PINNED_FIELDS
            .into_iter()
            .filter(|f| self.fields.get(*f) != before.fields.get(*f))
            .collect()
    }
}

/// The digest of the fields (each already canonical), and of all but the name: the canonical
/// text of the object they make, as [`crate::canonical`] writes it.
fn digests(fields: &BTreeMap<String, String>) -> (String, String) {
    let object = |skip_name: bool| {
        let mut text = String::from("{");
        for (k, v) in fields.iter().filter(|(k, _)| !(skip_name && *k == "name")) {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&serde_json::Value::String(k.clone()).to_string());
            text.push(':');
            text.push_str(v);
        }
        text.push('}');
        sha256(&text)
    };
    (object(false), object(true))
}

/// `sha256:` and the hex digest of `text`.
pub fn sha256(text: &str) -> String {
    use std::fmt::Write;
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A workload's pin of one tool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "tollgate.dev",
        version = "v1alpha1",
        kind = "McpToolPin",
        namespaced,
        status = "ToolPinStatus",
        shortname = "mcppin",
        category = "tollgate",
        derive = "PartialEq",
        derive = "Default",
        doc = "McpToolPin is the definition one workload's MCP tool is held to.",
        printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload"}"#,
        printcolumn = r#"{"name":"Tool","type":"string","jsonPath":".spec.tool"}"#,
        printcolumn = r#"{"name":"Pinned","type":"string","jsonPath":".spec.definition.digest"}"#,
        printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
        printcolumn = r#"{"name":"Held","type":"string","jsonPath":".status.held.why"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ToolPinSpec {
    /// The workload whose replicas share the pin (`Deployment/mcp`).
    pub workload: String,
    /// The tool's name.
    pub tool: String,
    /// The definition the tool is held to; none while a held definition waits for a person
    /// (the policy's pin, if any, holds it meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<ToolDefinition>,
    #[serde(default)]
    pub source: PinSource,
    /// The API server's user who accepted the definition (stamped by the webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
    /// RFC 3339 (stamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// The held digest a person refused: the tool stays held, without another report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// How a pin was made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum PinSource {
    /// The first definition a replica listed (the policy's `trustOnFirstUse`).
    #[default]
    FirstUse,
    /// A person accepted it.
    Accepted,
}

/// What the sidecars see that differs from the pin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct ToolPinStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldDefinition>,
}

/// A definition a sidecar listed and held back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeldDefinition {
    pub definition: ToolDefinition,
    /// `changed`, `unpinned`, `renamed` or `swapped`.
    pub why: String,
    /// What is known of the change, in words.
    pub reason: String,
    /// The fields that changed, where the pinned definition is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The pod whose sidecar reported it first.
    pub pod: String,
    /// RFC 3339: when it was reported.
    pub since: String,
}

/// A workload's pin of one tool, as the policy stream carries it to the sidecars.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<ToolDefinition>,
    #[serde(default)]
    pub source: PinSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl From<&ToolPinSpec> for WorkloadPin {
    fn from(spec: &ToolPinSpec) -> Self {
        WorkloadPin {
            definition: spec.definition.clone(),
            source: spec.source,
            rejected: spec.rejected.clone(),
        }
    }
}
