//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.
//!
//! ```text
//! every 1/5 of the lease:  Lease absent                     ─ create (holder = me)    ─> leader
//!             held by me                       ─ renew renewTime         ─> leader
//!             held by another, not expired     ─                         ─> follower
//!             held by another, expired  ─ take over (transitions+1) ─> leader
//! every write carries the resourceVersion read, so two candidates never both win
//! on shutdown, the holder stops leading and releases the lease (client-go's ReleaseOnCancel),
//! so a successor leads at once instead of after the lease expires
//! ```

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::health::Health;

/// How often the holder renews and candidates retry, as a fraction of the lease's duration.
const RETRY_FRACTION: u32 = 5;

/// What a candidate should do with a lease it read.
#[derive(Debug, PartialEq)]
pub enum Step {
    Create,
    Renew,
    TakeOver,
    Follow { holder: String },
}

/// Decides the next step from the lease as read (pure, so its cases are tested on their own).
pub fn next_step(lease: Option<&Lease>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Step::TakeOver
        } else {
            Step::Create
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    if holder.is_empty() || renewed + duration < now {
        Step::TakeOver
    } else {
        Step::Follow { holder }
    }
}

/// Runs the election until `stopping` turns true, publishing whether this replica leads; then
/// publishes that it no longer leads and releases the lease if it holds it.
/// Which lease a replica runs for, as whom.
pub struct Candidate {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub me: String,
    pub duration: Duration,
}

pub async fn elect(
    candidate: Candidate,
    leading: watch::Sender<bool>,
    mut stopping: watch::Receiver<bool>,
    health: Arc<Health>,
) {
    let Candidate {
        client,
        namespace,
        name,
        me,
        duration,
    } = candidate;
    const PART: &str = "the leader election";
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    while !*stopping.borrow_and_update() {
        let won = match try_once(&api, &name, &me, duration).await {
            Ok(won) => {
                health.ok(PART);
                won
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "leader election step failed");
                health.fail(PART, format!("lease {namespace}/{name}: {e}"));
                false
            }
        };
        leading.send_if_modified(|l| {
            let changed = *l != won;
            if changed {
                tracing::info!(lease = %name, identity = %me, leader = won, "leadership changed");
            }
            *l = won;
            changed
        });
        tokio::select! {
            () = tokio::time::sleep(duration / RETRY_FRACTION) => {}
            _ = stopping.changed() => {}
        }
    }
    let was_leading = leading.send_replace(false);
    if was_leading {
        match release(&api, &name, &me).await {
            Ok(true) => tracing::info!(lease = %name, identity = %me, "released the lease"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot release the lease; it expires on its own")
            }
        }
    }
}

/// Empties the lease's holder if it is still `me` (the resourceVersion read guards the write),
/// which [`next_step`] reads as free to take over.
async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(me) {
        return Ok(false);
    }
    let patch = json!({
        "metadata": { "resourceVersion": lease.metadata.resource_version },
        "spec": { "holderIdentity": "", "leaseDurationSeconds": 1 },
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

async fn try_once(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let lease = api.get_opt(name).await?;
    let now = Timestamp::now();
    let time = json!(now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    let step = next_step(lease.as_ref(), me, now);
    let rv = lease
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone());
    let result = match step {
        Step::Follow { .. } => return Ok(false),
        Step::Create => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": {
                    "holderIdentity": me,
                    "leaseDurationSeconds": duration.as_secs().max(1),
                    "acquireTime": time, "renewTime": time, "leaseTransitions": 0,
                },
            }))
            .expect("a Lease builds");
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Step::Renew => {
            let patch = json!({
                "metadata": { "resourceVersion": rv },
                "spec": { "renewTime": time, "leaseDurationSeconds": duration.as_secs().max(1) },
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
        Step::TakeOver => {
            let transitions = lease
                .as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0);
            let patch = json!({
                "metadata": { "resourceVersion": rv },
                "spec": {
                    "holderIdentity": me,
                    "leaseDurationSeconds": duration.as_secs().max(1),
                    "acquireTime": time, "renewTime": time,
                    "leaseTransitions": transitions + 1,
                },
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64) -> Lease {
        serde_json::from_value(json!({
            "metadata": { "name": "tollgate-operator" },
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": Timestamp::from_second(renewed).unwrap().to_string(),
            },
        }))
        .unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn the_first_candidate_creates_the_lease() {
        assert_eq!(next_step(None, "a", at(100)), Step::Create);
    }

    #[test]
    fn the_holder_renews_and_others_follow_while_it_is_fresh() {
        let l = lease("a", 100);
        assert_eq!(next_step(Some(&l), "a", at(110)), Step::Renew);
        assert_eq!(
            next_step(Some(&l), "b", at(110)),
            Step::Follow { holder: "a".into() }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(
            next_step(Some(&lease("a", 100)), "b", at(116)),
            Step::TakeOver
        );
        assert_eq!(
            next_step(Some(&lease("", 100)), "b", at(101)),
            Step::TakeOver
        );
    }
}
