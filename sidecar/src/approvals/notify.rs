//! The approvals webhook (`--approval-webhook URL`): a JSON POST when an approval is pending and
//! at each step after, for a chat bridge or a pager ([`tollgate_notify`] delivers it).
//!
//! ```text
//! {"event": "pending" | "approved" | "denied" | "expired" | "used", "approval": Approval}
//! ```

use serde_json::json;

use super::Approval;

/// Sends approval events to a webhook.
#[derive(Clone)]
pub struct Notifier(tollgate_notify::Notifier);

impl Notifier {
    pub fn start(url: http::Uri) -> anyhow::Result<Notifier> {
        tollgate_notify::Notifier::start(url)
            .map(Notifier)
            .map_err(|e| anyhow::anyhow!("--approval-webhook: {e}"))
    }

    pub fn send(&self, event: &str, approval: &Approval) {
        self.0.send(json!({ "event": event, "approval": approval }));
    }
}
