//! One JSON line per decision on stdout (and per step of an approval).
//!
//! The request path serialises a record straight into a shared buffer; a writer thread, woken
//! only when the buffer goes from empty to non-empty, waits a few milliseconds so lines
//! coalesce, then writes them in one call. No call waits on stdout, idle costs no wake-ups, and
//! `flush` writes what is left at shutdown. If stdout stops draining and the buffer passes
//! `MAX_BUFFERED` bytes, lines are dropped and counted in the next line (`droppedBefore`),
//! never silently.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::Value;

const MAX_BUFFERED: usize = 8 << 20;
/// How long the writer lets lines gather before writing them.
const COALESCE: Duration = Duration::from_millis(5);

/// One audited decision.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    pub time: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    pub identity: &'a str,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<&'a str>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a Value>,
    /// The approval a call was held on, admitted by, or that this line is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a str>,
    /// Who decided that approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_before: Option<u64>,
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
    dropped: AtomicU64,
}

/// Writes audit lines to stdout without holding up calls.
#[derive(Clone)]
pub struct AuditLog {
    shared: Option<Arc<Shared>>,
    pod: Option<Arc<str>>,
}

impl AuditLog {
    /// Writes to stdout.
    pub fn stdout(pod: Option<String>) -> Self {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(64 << 10)),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut spare = Vec::with_capacity(64 << 10);
                loop {
                    {
                        let mut buf = writer.buf.lock();
                        while buf.is_empty() {
                            writer.ready.wait(&mut buf);
                        }
                    }
                    std::thread::sleep(COALESCE);
                    std::mem::swap(&mut *writer.buf.lock(), &mut spare);
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&spare);
                    let _ = out.flush();
                    spare.clear();
                }
            })
            .expect("spawning the audit thread");
        AuditLog {
            shared: Some(shared),
            pod: pod.map(Into::into),
        }
    }

    /// Writes nothing.
    pub fn disabled() -> Self {
        AuditLog {
            shared: None,
            pod: None,
        }
    }

    pub fn pod(&self) -> Option<&str> {
        self.pod.as_deref()
    }

    pub fn write(&self, mut record: Record<'_>) {
        let Some(shared) = &self.shared else { return };
        let mut buf = shared.buf.lock();
        if buf.len() > MAX_BUFFERED {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            record.dropped_before = Some(dropped);
        }
        let was_empty = buf.is_empty();
        if serde_json::to_writer(&mut *buf, &record).is_ok() {
            buf.push(b'\n');
        }
        drop(buf);
        if was_empty {
            shared.ready.notify_one();
        }
    }

    /// Writes whatever is buffered now (at shutdown).
    pub fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let batch = std::mem::take(&mut *shared.buf.lock());
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

thread_local! {
    /// The formatted date and time of the last second seen on this thread.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 UTC time with milliseconds; the date part is formatted once a second per thread.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, format_second(secs));
        }
        let millis = d.subsec_millis();
        let mut out = String::with_capacity(24);
        out.push_str(&cached.1);
        out.push('.');
        out.push(char::from(b'0' + (millis / 100) as u8));
        out.push(char::from(b'0' + (millis / 10 % 10) as u8));
        out.push(char::from(b'0' + (millis % 10) as u8));
        out.push('Z');
        out
    })
}

/// `secs` since the Unix epoch as RFC 3339, to the second (`2026-12-02T08:00:00`, no zone).
pub fn format_second(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
            "{t}"
        );
        assert_eq!(
            super::format_second(86_400 * 20_781 + 3_661),
            "2026-11-24T01:01:01"
        );
    }

    #[test]
    fn civil_dates_are_right_across_leap_years() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(super::civil_from_days(20_781), (2026, 11, 24));
    }
}
