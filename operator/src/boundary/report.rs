//! What goes around the sidecar, told where people look: a Warning Event on the pod (and a
//! Normal one once it is closed).

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use super::apply::Memory;
use crate::index::Index;

/// A Warning Event on each pod whose findings changed, a Normal one when they are gone.
///
/// Each is a new Event: a Recorder would fold it into the series of the last one with the same
/// reason, which keeps the first note, and the note is what changed.
pub(super) async fn report(
    client: &Client,
    index: &Index,
    reporter: &Reporter,
    findings: &BTreeMap<(String, String), Vec<String>>,
    memory: &mut Memory,
) {
    let keys: BTreeSet<&(String, String)> = findings.keys().chain(memory.reported.keys()).collect();
    let mut events = Vec::new();
    for key in keys {
        let now = findings.get(key);
        if now == memory.reported.get(key) {
            continue;
        }
        let Some(pod) = index.pod(&key.0, &key.1) else {
            continue;
        };
        let event = match now {
            Some(found) => {
                let mut note = found.join("; ");
                note.truncate(1000);
                Event {
                    type_: EventType::Warning,
                    reason: "BoundaryOpen".into(),
                    note: Some(note),
                    action: "Inspect".into(),
                    secondary: None,
                }
            }
            None => Event {
                type_: EventType::Normal,
                reason: "BoundaryClosed".into(),
                note: Some("nothing reaches the MCP port around the sidecar any more".into()),
                action: "Inspect".into(),
                secondary: None,
            },
        };
        events.push((pod.object_ref(&()), event));
    }
    for (reference, event) in events {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "cannot publish an event");
        }
    }
    memory.reported = findings.clone();
    crate::telemetry::metrics()
        .boundaries_open
        .set(i64::try_from(findings.len()).unwrap_or(i64::MAX));
}
