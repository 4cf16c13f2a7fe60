//! The status controllers (run by the leader only).
//!
//! ```text
//! McpPolicy | McpClusterPolicy ─ validate_stored ─┐
//! Index (injected pods, namespace labels) ────────┤
//! the boundary's findings (crate::boundary) ──────┴─> desired_status ─ differs? ─> patch status
//!                                                                     └─ Accepted flipped? ─> Event
//! ```
//!
//! Triggered by the policies' own watch (the index's, shared), by pod and namespace events for
//! exactly the policies whose selection they change, and by the boundary's findings;
//! debounced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use tollgate_api::{McpClusterPolicy, McpPolicy, PolicySpec, PolicyStatus, Problem, selects};

use crate::index::{Index, ticks};

/// A status write the API server refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of {name}: {source}")]
pub struct StatusError {
    name: String,
    #[source]
    source: kube::Error,
}

/// What a policy's status should say now. Conditions keep their `lastTransitionTime` unless
/// their status flips, so an unchanged policy produces an identical status (and no write).
pub fn desired_status(
    old: Option<&PolicyStatus>,
    generation: Option<i64>,
    problems: &[Problem],
    selected_pods: u32,
    tools: u32,
    around: &[String],
    now: Timestamp,
) -> PolicyStatus {
    let accepted = problems.is_empty();
    let (accepted_reason, accepted_message) = if accepted {
        (
            "Valid",
            format!("The policy compiles ({tools} tool entries)"),
        )
    } else {
        let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
        (
            "Invalid",
            format!(
                "{} problem(s); fix and apply again: {}",
                problems.len(),
                list.join("; ")
            ),
        )
    };
    let (ready_reason, ready_message) = match (accepted, selected_pods) {
        (false, _) => (
            "Invalid",
            "Not in force as written: the pods it selects deny every call until it is fixed"
                .to_string(),
        ),
        (true, 0) => (
            "NoPods",
            "In force; it selects no injected pod yet".to_string(),
        ),
        (true, n) => ("InForce", format!("In force on {n} injected pod(s)")),
    };
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let previous = old
            .into_iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    let (closed, boundary_reason, boundary_message) = match around {
        [] => (
            true,
            "Closed",
            "Nothing reaches the selected pods' MCP servers around their sidecars".to_string(),
        ),
        list => {
            let mut message = format!(
                "{} way(s) around the sidecar: {}",
                list.len(),
                list.join("; ")
            );
            message.truncate(MAX_MESSAGE);
            (false, "Open", message)
        }
    };
    PolicyStatus {
        observed_generation: generation,
        conditions: vec![
            condition("Accepted", accepted, accepted_reason, accepted_message),
            condition("Ready", accepted, ready_reason, ready_message),
            condition("Boundary", closed, boundary_reason, boundary_message),
        ],
        selected_pods,
        tools,
    }
}

/// The longest condition message written (the API server allows 32 KiB).
const MAX_MESSAGE: usize = 4096;

struct Context {
    client: Client,
    index: Arc<Index>,
    recorder: Recorder,
}

/// Labels the named namespaces for injection (the Helm chart's `injection.namespaces`), and
/// keeps them labelled: a namespace created later, or whose label was removed, is relabelled.
pub async fn label_namespaces(client: Client, index: Arc<Index>, names: Vec<String>) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let mut changed = index.subscribe();
    loop {
        for name in &names {
            let labels = match index
                .namespaces
                .get(&kube::runtime::reflector::ObjectRef::new(name))
            {
                Some(ns) => ns.labels().clone(),
                None => continue,
            };
            if labels
                .get(crate::inject::NAMESPACE_LABEL)
                .map(String::as_str)
                == Some("enabled")
            {
                continue;
            }
            let patch = serde_json::json!({
                "metadata": { "labels": { crate::inject::NAMESPACE_LABEL: "enabled" } }
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(namespace = %name, "labelled for injection"),
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "cannot label the namespace for injection")
                }
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Runs both controllers until the task is aborted (leadership lost) or the process ends.
pub async fn run(client: Client, index: Arc<Index>, reporter: Reporter) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        index: index.clone(),
        recorder: Recorder::new(client.clone(), reporter),
    });
    let config = controller::Config::default().debounce(Duration::from_millis(200));
    // Fed by the index's watches; a pod or namespace event reconciles only the policies whose
    // selection it changed, the boundary's findings (rare) every policy.
    let policies = Controller::for_shared_stream(index.policy_events(), index.policies.clone())
        .with_config(config.clone())
        .reconcile_on(index.affected_policies())
        .reconcile_all_on(index.resyncs())
        .reconcile_all_on(ticks(index.subscribe_findings()))
        .run(reconcile_policy, on_error, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "McpPolicy reconcile");
            }
        });
    let cluster = Controller::for_shared_stream(
        index.cluster_policy_events(),
        index.cluster_policies.clone(),
    )
    .with_config(config)
    .reconcile_on(index.affected_cluster_policies())
    .reconcile_all_on(index.resyncs())
    .reconcile_all_on(ticks(index.subscribe_findings()))
    .run(reconcile_cluster_policy, on_error, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "McpClusterPolicy reconcile");
        }
    });
    tokio::join!(policies, cluster);
}

/// A reconcile, with its metrics and, when traced, a trace of its own.
async fn observed<K: Resource<DynamicType = ()>>(
    object: &K,
    reconcile: impl Future<Output = Result<Action, StatusError>>,
) -> Result<Action, StatusError> {
    use tollgate_sidecar::telemetry::trace::{self, Attr, SpanKind};
    let kind = K::kind(&());
    let kind: &'static str = match kind.as_ref() {
        "McpPolicy" => "McpPolicy",
        "McpClusterPolicy" => "McpClusterPolicy",
        _ => "other",
    };
    let traced = crate::telemetry::tracer().request(&http::HeaderMap::new(), SpanKind::Internal);
    let result = match &traced {
        None => reconcile.await,
        Some(t) => {
            t.name(format!("reconcile {kind}"));
            let mut attrs = vec![("tollgate.policy", Attr::Str(object.name_any().into()))];
            if let Some(ns) = object.namespace() {
                attrs.push(("k8s.namespace.name", Attr::Str(ns.into())));
            }
            t.set(attrs);
            trace::scope(t.clone(), reconcile).await
        }
    };
    if let (Some(t), Err(e)) = (&traced, &result) {
        t.error(e.to_string());
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::telemetry::metrics()
        .reconciles
        .get_or_create(&crate::telemetry::Reconcile {
            kind,
            result: outcome,
        })
        .inc();
    result
}

async fn reconcile_policy(
    policy: Arc<McpPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, StatusError> {
    let object = policy.clone();
    observed(&*object, reconcile_policy_now(policy, ctx)).await
}

async fn reconcile_cluster_policy(
    policy: Arc<McpClusterPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, StatusError> {
    let object = policy.clone();
    observed(&*object, reconcile_cluster_policy_now(policy, ctx)).await
}

async fn reconcile_policy_now(
    policy: Arc<McpPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, StatusError> {
    let ns = policy.namespace().unwrap_or_default();
    let selects_pod = |pod_ns: &str, _: &_, labels: &_| {
        pod_ns == ns && selects(policy.spec.selector.as_ref(), labels)
    };
    let api: Api<McpPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let problems = tollgate_api::validate::validate_stored(&policy.spec);
    write_status(
        &*policy,
        &api,
        &policy.spec,
        policy.status.as_ref(),
        problems,
        selects_pod,
        &ctx,
    )
    .await
}

async fn reconcile_cluster_policy_now(
    policy: Arc<McpClusterPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, StatusError> {
    let selects_pod = |_: &str, ns_labels: &_, labels: &_| {
        selects(policy.spec.namespace_selector.as_ref(), ns_labels)
            && selects(policy.spec.policy.selector.as_ref(), labels)
    };
    let api: Api<McpClusterPolicy> = Api::all(ctx.client.clone());
    let mut problems = Vec::new();
    if let Some(sel) = &policy.spec.namespace_selector {
        tollgate_api::validate::validate_selector("spec.namespaceSelector", sel, &mut problems);
    }
    problems.extend(tollgate_api::validate::validate_stored(&policy.spec.policy));
    write_status(
        &*policy,
        &api,
        &policy.spec.policy,
        policy.status.as_ref(),
        problems,
        selects_pod,
        &ctx,
    )
    .await
}

async fn write_status<K>(
    object: &K,
    api: &Api<K>,
    spec: &PolicySpec,
    old: Option<&PolicyStatus>,
    problems: Vec<Problem>,
    selects_pod: impl Fn(&str, &BTreeMap<String, String>, &BTreeMap<String, String>) -> bool + Copy,
    ctx: &Context,
) -> Result<Action, StatusError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let selected = ctx.index.count_selected(selects_pod);
    let around = ctx.index.around_selected(selects_pod);
    let status = desired_status(
        old,
        object.meta().generation,
        &problems,
        selected,
        spec.tools.len() as u32,
        &around,
        Timestamp::now(),
    );
    if old == Some(&status) {
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    let name = object.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|source| StatusError {
        name: name.clone(),
        source,
    })?;
    let was_accepted = old
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Accepted")
        .map(|c| c.status == "True");
    let accepted = problems.is_empty();
    if was_accepted != Some(accepted) {
        let event = if accepted {
            Event {
                type_: EventType::Normal,
                reason: "Accepted".into(),
                note: Some(format!(
                    "The policy compiles and is in force on {selected} pod(s)"
                )),
                action: "Validate".into(),
                secondary: None,
            }
        } else {
            let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
            let mut note = format!(
                "Fix and apply again; until then the pods it selects deny every call: {}",
                list.join("; ")
            );
            note.truncate(1000);
            Event {
                type_: EventType::Warning,
                reason: "Invalid".into(),
                note: Some(note),
                action: "Validate".into(),
                secondary: None,
            }
        };
        if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(policy = %name, error = %e, "cannot publish an event");
        }
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn on_error<K>(_: Arc<K>, error: &StatusError, _: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "status write failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn condition<'a>(s: &'a PolicyStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_valid_policy_is_accepted_and_ready_with_its_pod_count() {
        let s = desired_status(None, Some(3), &[], 2, 5, &[], t(100));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((s.selected_pods, s.tools), (2, 5));
        assert_eq!(condition(&s, "Accepted").status, "True");
        assert_eq!(condition(&s, "Ready").status, "True");
        assert_eq!(
            condition(&s, "Ready").message,
            "In force on 2 injected pod(s)"
        );
    }

    #[test]
    fn an_invalid_policy_lists_every_problem_in_accepted_and_is_not_ready() {
        let problems = [
            Problem::new("spec.tools.a.rules[0].rateLimit", "bad"),
            Problem::new("spec.hide[0]", "empty"),
        ];
        let s = desired_status(None, Some(1), &problems, 1, 1, &[], t(100));
        let accepted = condition(&s, "Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(
            accepted
                .message
                .contains("spec.tools.a.rules[0].rateLimit: bad")
        );
        assert!(accepted.message.contains("spec.hide[0]: empty"));
        assert_eq!(condition(&s, "Ready").status, "False");
    }

    #[test]
    fn ways_around_the_sidecar_open_the_boundary_condition_naming_each() {
        let closed = desired_status(None, Some(1), &[], 1, 1, &[], t(100));
        assert_eq!(condition(&closed, "Boundary").status, "True");
        let around = ["team/a: Service s targets port 8080 by number".to_string()];
        let open = desired_status(Some(&closed), Some(1), &[], 1, 1, &around, t(200));
        let boundary = condition(&open, "Boundary");
        assert_eq!(
            (boundary.status.as_str(), boundary.reason.as_str()),
            ("False", "Open")
        );
        assert!(
            boundary
                .message
                .contains("team/a: Service s targets port 8080 by number")
        );
        assert_eq!(boundary.last_transition_time, Time(t(200)));
        assert_eq!(
            condition(&open, "Ready").status,
            "True",
            "the policy is still in force"
        );
    }

    #[test]
    fn an_unchanged_policy_yields_an_identical_status_so_nothing_is_written() {
        let first = desired_status(None, Some(1), &[], 1, 1, &[], t(100));
        let again = desired_status(Some(&first), Some(1), &[], 1, 1, &[], t(500));
        assert_eq!(first, again);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_flips() {
        let first = desired_status(None, Some(1), &[], 0, 1, &[], t(100));
        let more_pods = desired_status(Some(&first), Some(2), &[], 3, 1, &[], t(200));
        assert_eq!(
            condition(&more_pods, "Ready").last_transition_time,
            Time(t(100))
        );
        let broken = desired_status(
            Some(&more_pods),
            Some(3),
            &[Problem::new("spec", "x")],
            3,
            1,
            &[],
            t(300),
        );
        assert_eq!(
            condition(&broken, "Ready").last_transition_time,
            Time(t(300))
        );
    }
}
