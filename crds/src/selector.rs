//! Label selectors, as Kubernetes writes them (`matchLabels`, `matchExpressions`), read and
//! matched without the Kubernetes client stack, so the data plane reads a policy's selector
//! without linking it. With the `kube` feature its schema is Kubernetes' own `LabelSelector`
//! schema, so the CRDs say exactly what the API server expects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label selector: every `matchLabels` pair and every `matchExpressions` requirement must
/// hold. Absent or empty, it selects everything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One requirement: `key` `operator` (`In`, `NotIn`, `Exists`, `DoesNotExist`) `values`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Whether a label selector matches a set of labels; an absent or empty selector matches
/// everything, as in Kubernetes. An operator this code does not know matches nothing.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let labels_match = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The schema is Kubernetes' own, from k8s-openapi: the CRDs keep describing the selector as
/// every other resource does.
#[cfg(feature = "kube")]
impl schemars::JsonSchema for LabelSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <KubeLabelSelector as schemars::JsonSchema>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        <KubeLabelSelector as schemars::JsonSchema>::schema_id()
    }

    fn inline_schema() -> bool {
        <KubeLabelSelector as schemars::JsonSchema>::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <KubeLabelSelector as schemars::JsonSchema>::json_schema(generator)
    }
}

#[cfg(feature = "kube")]
type KubeLabelSelector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[cfg(all(test, feature = "kube"))]
mod tests {
    use super::*;

    #[test]
    fn a_selector_reads_and_writes_as_kubernetes_own_type_does() {
        let text = r#"{"matchLabels":{"app":"mcp"},"matchExpressions":[{"key":"tier","operator":"In","values":["a","b"]},{"key":"x","operator":"Exists"}]}"#;
        let ours: LabelSelector = serde_json::from_str(text).unwrap();
        let theirs: KubeLabelSelector = serde_json::from_str(text).unwrap();
        assert_eq!(
            serde_json::to_value(&ours).unwrap(),
            serde_json::to_value(&theirs).unwrap()
        );
        assert_eq!(
            serde_json::to_value(LabelSelector::default()).unwrap(),
            serde_json::to_value(KubeLabelSelector::default()).unwrap()
        );
    }
}
