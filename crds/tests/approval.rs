//! An approval's life, in one table: every phase against every event, as both planes follow it
//! (the sidecar's own store and the operator's McpApproval status), and the phase a clock and a
//! written decision make of a recorded one.

use tollgate_api::{ApprovalEvent as E, ApprovalPhase as P, ApprovalVerdict as V, NotNow};

#[test]
fn every_phase_against_every_event() {
    let approve = E::Decide(V::Approve);
    let deny = E::Decide(V::Deny);
    #[rustfmt::skip]
    let table = [
        (P::Pending,  approve,  Ok(P::Approved)),
        (P::Pending,  deny,     Ok(P::Denied)),
        (P::Pending,  E::Use,   Err(NotNow::Undecided)),
        (P::Pending,  E::Expire, Ok(P::Expired)),
        (P::Approved, approve,  Err(NotNow::Decided(P::Approved))),
        (P::Approved, deny,     Err(NotNow::Decided(P::Approved))),
        (P::Approved, E::Use,   Ok(P::Used)),
        (P::Approved, E::Expire, Ok(P::Expired)),
        (P::Denied,   approve,  Err(NotNow::Ended(P::Denied))),
        (P::Denied,   deny,     Err(NotNow::Ended(P::Denied))),
        (P::Denied,   E::Use,   Err(NotNow::Ended(P::Denied))),
        (P::Denied,   E::Expire, Err(NotNow::Ended(P::Denied))),
        (P::Expired,  approve,  Err(NotNow::Ended(P::Expired))),
        (P::Expired,  deny,     Err(NotNow::Ended(P::Expired))),
        (P::Expired,  E::Use,   Err(NotNow::Ended(P::Expired))),
        (P::Expired,  E::Expire, Err(NotNow::Ended(P::Expired))),
        (P::Used,     approve,  Err(NotNow::Ended(P::Used))),
        (P::Used,     deny,     Err(NotNow::Ended(P::Used))),
        (P::Used,     E::Use,   Err(NotNow::Ended(P::Used))),
        (P::Used,     E::Expire, Err(NotNow::Ended(P::Used))),
    ];
    for (phase, event, want) in table {
        assert_eq!(phase.next(event), want, "{phase:?} + {event:?}");
    }
    // Only the ends are final, and nothing leaves them.
    for phase in [P::Pending, P::Approved, P::Denied, P::Expired, P::Used] {
        assert_eq!(
            phase.is_final(),
            [approve, deny, E::Use, E::Expire]
                .iter()
                .all(|e| phase.next(*e).is_err()),
            "{phase:?}"
        );
    }
}

#[test]
fn the_phase_to_act_on_follows_a_written_decision_and_the_clock_but_never_leaves_an_end() {
    #[rustfmt::skip]
    let table = [
        // recorded, decision written, expires, now -> the phase to act on
        (P::Pending,  None,             Some(100), 50,  P::Pending),
        (P::Pending,  None,             Some(100), 100, P::Expired),
        (P::Pending,  Some(V::Approve), Some(100), 50,  P::Approved), // before the status follows
        (P::Pending,  Some(V::Deny),    Some(100), 50,  P::Denied),
        (P::Approved, Some(V::Approve), Some(100), 150, P::Expired),
        (P::Approved, Some(V::Approve), None,      150, P::Approved),
        (P::Used,     Some(V::Approve), Some(100), 50,  P::Used),
        (P::Denied,   Some(V::Deny),    Some(100), 150, P::Denied),
        (P::Expired,  Some(V::Approve), Some(100), 50,  P::Expired),
    ];
    for (recorded, decision, expires, now, want) in table {
        assert_eq!(
            recorded.at(decision, expires, now),
            want,
            "{recorded:?} {decision:?} {expires:?} at {now}"
        );
    }
}

#[test]
fn a_call_key_is_the_same_for_the_same_call_and_differs_for_any_other() {
    let key = |tool: &str, who: &str, args: &str| {
        tollgate_api::call_key(&[tool, who], &serde_json::from_str(args).unwrap())
    };
    let one = key(
        "create_bucket",
        "alice",
        r#"{"name": "b", "size": 1, "tags": ["x"]}"#,
    );
    assert_eq!(
        one,
        key(
            "create_bucket",
            "alice",
            r#"{"tags":["x"],"size":1.0,"name":"b"}"#
        )
    );
    assert_eq!(
        one,
        key(
            "create_bucket",
            "alice",
            r#"{"size": 1e0, "name": "b", "tags": ["x"]}"#
        )
    );
    for other in [
        key(
            "create_bucket",
            "bob",
            r#"{"name": "b", "size": 1, "tags": ["x"]}"#,
        ),
        key(
            "create_buckets",
            "alice",
            r#"{"name": "b", "size": 1, "tags": ["x"]}"#,
        ),
        key(
            "create_bucket",
            "alice",
            r#"{"name": "b", "size": 1.5, "tags": ["x"]}"#,
        ),
        key(
            "create_bucket",
            "alice",
            r#"{"name": "b", "size": 1, "tags": ["y"]}"#,
        ),
        // Parts cannot run into each other.
        key(
            "create_bucketa",
            "lice",
            r#"{"name": "b", "size": 1, "tags": ["x"]}"#,
        ),
    ] {
        assert_ne!(one, other);
    }
}
