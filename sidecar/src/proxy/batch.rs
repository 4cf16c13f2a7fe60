//! A batch split and joined again: when some of a request's messages are refused, the server
//! gets the rest as a batch of their own, and the client gets one answer holding the server's
//! answers and the proxy's.

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{Resp, accepted, json_response};

/// What of a request's body goes on to the server, given the text of the messages `kept` out of
/// `total`: the body as it came when nothing was refused or rewritten, a batch of the kept
/// messages (in their order, byte for byte) when some were refused, the one message as it now
/// reads when a lone message was rewritten (a repeat without Tollgate's own state), nothing
/// when all were refused.
pub(super) fn forwarded<'a>(
    body: &Bytes,
    kept: impl ExactSizeIterator<Item = &'a str> + Clone,
    total: usize,
    batch: bool,
) -> Option<Bytes> {
    // A message read from the body is a slice of it; one rewritten is not.
    let within = |m: &str| {
        let (b, p) = (body.as_ptr() as usize, m.as_ptr() as usize);
        p >= b && p + m.len() <= b + body.len()
    };
    let rewritten = kept.clone().any(|m| !within(m));
    match kept.len() {
        0 => None,
        n if n == total && !rewritten => Some(body.clone()),
        1 if !batch => kept.map(|m| Bytes::copy_from_slice(m.as_bytes())).next(),
        _ => Some(Bytes::from(format!(
            "[{}]",
            kept.collect::<Vec<_>>().join(",")
        ))),
    }
}

/// The client's answer when every message of a request was refused: the proxy's answers, as
/// one object for a single message and an array for a batch, or `202 Accepted` when they were
/// all notifications (which are not answered).
pub(super) fn all_refused(batch: bool, mut answers: Vec<Value>) -> Resp {
    match (batch, answers.len()) {
        (_, 0) => accepted(),
        (false, _) => json_response(StatusCode::OK, &answers.swap_remove(0)),
        (true, _) => json_response(StatusCode::OK, &Value::Array(answers)),
    }
}

/// The server's answers to the forwarded part of a batch, with the proxy's own answers to the
/// part it refused: one array for the client.
pub(super) fn merge_answers(server: &str, ours: Vec<Value>) -> String {
    let mut merged: Vec<Value> = match serde_json::from_str::<Value>(server) {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(_) => vec![],
    };
    merged.extend(ours);
    Value::Array(merged).to_string()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::*;

    async fn body_of(resp: Resp) -> (StatusCode, String) {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn a_partly_refused_batch_forwards_the_kept_messages_byte_for_byte_in_order() {
        let body = Bytes::from_static(br#"[{"a":1} , {"b" : 2},{"c":3}]"#);
        let (a, c) = (r#"{"a":1}"#, r#"{"c":3}"#);
        assert_eq!(
            forwarded(&body, [a, c].into_iter(), 3, true).unwrap(),
            r#"[{"a":1},{"c":3}]"#
        );
        // One kept message of a batch stays a batch: the server answers it with an array.
        assert_eq!(
            forwarded(&body, [c].into_iter(), 3, true).unwrap(),
            r#"[{"c":3}]"#
        );
    }

    #[test]
    fn a_request_nothing_was_refused_of_goes_on_as_it_came_and_one_all_refused_goes_nowhere() {
        let body = Bytes::from_static(b" {\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1} ");
        let raw = &std::str::from_utf8(&body).unwrap()[1..body.len() - 1];
        assert_eq!(forwarded(&body, [raw].into_iter(), 1, false).unwrap(), body);
        assert!(forwarded(&body, std::iter::empty(), 1, false).is_none());
        assert!(forwarded(&body, std::iter::empty(), 2, true).is_none());
        // A lone message rewritten goes as it now reads, not as it came, and not as a batch.
        let rewritten = String::from(r#"{"jsonrpc":"2.0","method":"tools/call","id":1}"#);
        assert_eq!(
            forwarded(&body, [rewritten.as_str()].into_iter(), 1, false).unwrap(),
            rewritten.as_bytes()
        );
    }

    #[test]
    fn the_servers_answers_come_first_then_the_proxys_in_one_array() {
        let ours = vec![json!({"id": 2, "error": {"code": -32001}})];
        let merged = merge_answers(
            r#"[{"id":1,"result":{}},{"id":3,"result":{}}]"#,
            ours.clone(),
        );
        let merged: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            merged,
            json!([{"id":1,"result":{}},{"id":3,"result":{}},{"id":2,"error":{"code":-32001}}])
        );
        // A server that answers a one-message batch with a bare object is still merged.
        let merged = merge_answers(r#"{"id":1,"result":{}}"#, ours.clone());
        let merged: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            merged,
            json!([{"id":1,"result":{}},{"id":2,"error":{"code":-32001}}])
        );
        // Nothing readable from the server: the client still gets the proxy's answers.
        let merged: Value = serde_json::from_str(&merge_answers("not json", ours)).unwrap();
        assert_eq!(merged, json!([{"id":2,"error":{"code":-32001}}]));
    }

    #[tokio::test]
    async fn a_request_refused_whole_is_answered_as_it_was_asked() {
        let denial = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001}});
        let (status, body) = body_of(all_refused(false, vec![denial.clone()])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), denial);

        let (status, body) = body_of(all_refused(true, vec![denial.clone()])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!([denial])
        );

        // Only notifications were refused: nothing to answer.
        let (status, body) = body_of(all_refused(true, Vec::new())).await;
        assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, ""));
    }
}
