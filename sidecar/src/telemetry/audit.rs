//! One JSON line per decision on stdout (and per step of an approval).
//!
//! The request path serialises a record straight into a shared buffer; a writer thread, woken
//! only when the buffer goes from empty to non-empty, waits a few milliseconds so lines
//! coalesce, then writes them in one call. No call waits on stdout, idle costs no wake-ups, and
//! `flush` writes what is left at shutdown.
//!
//! When stdout stops taking lines (a blocked pipe, a log agent that fell behind) the buffer
//! grows to `--audit-buffer`, and then [`Overflow`] decides:
//!
//! ```text
//! deny (default)  decided calls are refused, saying why, and /readyz is 503 until it drains;
//!                 lines of calls already let through are still kept (to twice the buffer)
//! drop            calls go on; lines past the buffer are dropped
//! ```
//!
//! Either way no line is lost silently: a dropped line, or one stdout refused, counts in
//! `tollgate_audit_lines_dropped_total{reason}` and in the next line written
//! (`droppedBefore`), and `/readyz` says so.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::Value;

use crate::telemetry::metrics::AuditMetrics;

/// The default bound of lines waiting for stdout.
pub const DEFAULT_BUFFER: usize = 8 << 20;
/// How long the writer lets lines gather before writing them.
const COALESCE: Duration = Duration::from_millis(5);

/// What happens to calls once stdout has stopped taking lines and the buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse decided calls until the log drains: no call goes unlogged.
    Deny,
    /// Let calls go on and drop their lines, counting them.
    Drop,
}

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
    /// The argument paths a policy asked to log that the call does not have (so a replay can
    /// tell an absent argument from one nobody logged).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub absent_arguments: &'a [String],
    /// The approval a call was held on, admitted by, or that this line is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a str>,
    /// Who decided that approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_before: Option<u64>,
}

impl Record<'_> {
    /// Appends the record as one line of JSON: the line `serde_json` writes of it (a test
    /// holds the two equal), with the keys written as they are and each text escaped only
    /// where it needs it.
    fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        json_str(out, &self.time);
        out.extend_from_slice(b",\"kind\":");
        json_str(out, self.kind);
        field(out, b",\"pod\":", self.pod);
        field(out, b",\"session\":", self.session);
        out.extend_from_slice(b",\"identity\":");
        json_str(out, self.identity);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        field(out, b",\"tool\":", self.tool);
        out.extend_from_slice(b",\"decision\":");
        json_str(out, self.decision);
        field(out, b",\"rule\":", self.rule);
        field(out, b",\"policy\":", self.policy);
        field(out, b",\"reason\":", self.reason);
        out.extend_from_slice(b",\"revision\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.revision).as_bytes());
        if let Some(status) = self.upstream_status {
            out.extend_from_slice(b",\"upstreamStatus\":");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        out.extend_from_slice(b",\"latencyMs\":");
        let _ = serde_json::to_writer(&mut *out, &self.latency_ms);
        if let Some(arguments) = self.arguments {
            out.extend_from_slice(b",\"arguments\":");
            let _ = serde_json::to_writer(&mut *out, arguments);
        }
        if !self.absent_arguments.is_empty() {
            out.extend_from_slice(b",\"absentArguments\":");
            let _ = serde_json::to_writer(&mut *out, self.absent_arguments);
        }
        field(out, b",\"approval\":", self.approval);
        field(out, b",\"decidedBy\":", self.decided_by);
        if let Some(dropped) = self.dropped_before {
            out.extend_from_slice(b",\"droppedBefore\":");
            out.extend_from_slice(itoa::Buffer::new().format(dropped).as_bytes());
        }
        out.extend_from_slice(b"}\n");
    }
}

/// An optional member: its key (with the comma before it) and text, when present.
fn field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(value) = value {
        out.extend_from_slice(key);
        json_str(out, value);
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping (checked a vector at a
/// time), escaped by `serde_json` otherwise.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let plain = !s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
    /// Lines lost since the last line written (that line's `droppedBefore`).
    dropped: AtomicU64,
    /// Whether the last write to stdout failed.
    failing: AtomicBool,
    /// Whether the lines waiting have reached `limit` (kept where the buffer changes, so a
    /// call asks two atomics, not the buffer's lock).
    full: AtomicBool,
    limit: usize,
    overflow: Overflow,
    metrics: AuditMetrics,
}

/// Writes audit lines to stdout without holding up calls.
#[derive(Clone)]
pub struct AuditLog {
    shared: Option<Arc<Shared>>,
    pod: Option<Arc<str>>,
}

impl AuditLog {
    /// Writes to stdout.
    pub fn stdout(
        pod: Option<String>,
        limit: usize,
        overflow: Overflow,
        metrics: AuditMetrics,
    ) -> Self {
        Self::to(std::io::stdout, pod, limit, overflow, metrics)
    }

    /// Writes to what `out` opens (stdout; a test's pipe).
    pub(crate) fn to<W: Write>(
        out: impl Fn() -> W + Send + 'static,
        pod: Option<String>,
        limit: usize,
        overflow: Overflow,
        metrics: AuditMetrics,
    ) -> Self {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(64 << 10)),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            full: AtomicBool::new(false),
            limit,
            overflow,
            metrics,
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
                    {
                        let mut buf = writer.buf.lock();
                        std::mem::swap(&mut *buf, &mut spare);
                        writer.full.store(false, Ordering::Relaxed);
                    }
                    writer.write_out(&mut out(), &spare);
                    spare.clear();
                    // Only once it is written does a batch stop counting against the bound.
                    writer.metrics.buffered.set(writer.buf.lock().len() as i64);
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

    /// `Err(why)` when the log cannot take the line of one more decided call and the policy
    /// is to refuse such calls ([`Overflow::Deny`]).
    pub fn admits(&self) -> Result<(), String> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if shared.overflow == Overflow::Drop {
            return Ok(());
        }
        match self.trouble() {
            None => Ok(()),
            Some(why) => Err(format!(
                "Tollgate cannot write its audit log ({why}), so calls are refused until it can"
            )),
        }
    }

    /// What is wrong with the log now, if anything.
    fn trouble(&self) -> Option<String> {
        let shared = self.shared.as_ref()?;
        if shared.failing.load(Ordering::Relaxed) {
            return Some("stdout refuses writes".into());
        }
        if !shared.full.load(Ordering::Relaxed) {
            return None;
        }
        let waiting = shared.buf.lock().len();
        Some(format!(
            "stdout is not draining: {} KiB of lines wait, the bound is {} KiB",
            waiting >> 10,
            shared.limit >> 10
        ))
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        let Some(shared) = &self.shared else {
            return "audit: off".into();
        };
        let dropped = shared.metrics.dropped_full.get() + shared.metrics.dropped_write_error.get();
        match (self.trouble(), shared.overflow) {
            (None, _) if dropped == 0 => "audit: stdout".into(),
            (None, _) => format!("audit: stdout ({dropped} lines dropped since start)"),
            (Some(why), Overflow::Deny) => {
                format!("audit: {why}; decided calls are refused until it drains")
            }
            (Some(why), Overflow::Drop) => {
                format!("audit: {why}; lines are dropped ({dropped} so far)")
            }
        }
    }

    pub fn write(&self, mut record: Record<'_>) {
        let Some(shared) = &self.shared else { return };
        let mut buf = shared.buf.lock();
        // Refusing calls stops new lines at the bound; lines of calls already let through are
        // kept past it, up to a second bound.
        let hard = match shared.overflow {
            Overflow::Drop => shared.limit,
            Overflow::Deny => shared.limit.saturating_mul(2),
        };
        if buf.len() >= hard {
            drop(buf);
            shared.lost(1, &shared.metrics.dropped_full);
            return;
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            record.dropped_before = Some(dropped);
        }
        let was_empty = buf.is_empty();
        record.write_line(&mut buf);
        shared.metrics.buffered.set(buf.len() as i64);
        if buf.len() >= shared.limit {
            shared.full.store(true, Ordering::Relaxed);
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
        shared.full.store(false, Ordering::Relaxed);
        shared.write_out(&mut std::io::stdout(), &batch);
    }
}

impl Shared {
    /// Counts `lines` as lost: in `counter`, and in the next line written.
    fn lost(&self, lines: u64, counter: &prometheus_client::metrics::counter::Counter) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        counter.inc_by(lines);
    }

    /// Writes a batch of lines; lines stdout refuses are counted as lost.
    fn write_out(&self, out: &mut impl Write, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        let lines = memchr::memchr_iter(b'\n', batch).count() as u64;
        match out.write_all(batch).and_then(|()| out.flush()) {
            Ok(()) => {
                self.metrics.lines.inc_by(lines);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("stdout takes audit lines again");
                }
            }
            Err(e) => {
                // How much of it was written cannot be known: it all counts as lost.
                self.lost(lines, &self.metrics.dropped_write_error);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, lines, "cannot write audit lines to stdout");
                }
            }
        }
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
    use super::*;

    #[test]
    fn a_line_is_exactly_what_serde_json_writes_of_the_record_whatever_its_fields_hold() {
        let texts = [
            "plain",
            "",
            "quote \" and back\\slash",
            "line\nbreak\ttab\u{1}\u{1f}",
            "é 😀 \u{7f} \u{2028}",
            "a long text without anything to escape in it at all, longer than one vector",
        ];
        let args = serde_json::json!({"amount": 1.5, "note": "x\"y", "n": [1, null]});
        let absent = ["args.role".to_string()];
        for (i, text) in texts.iter().enumerate() {
            for full in [false, true] {
                let record = Record {
                    time: format!("2026-12-07T19:00:00.{i:03}Z{text}"),
                    kind: "decision",
                    pod: full.then_some(*text),
                    session: full.then_some(*text),
                    identity: text,
                    method: "tools/call",
                    tool: full.then_some(*text),
                    decision: "allow",
                    rule: full.then_some(*text),
                    policy: Some(text),
                    reason: full.then_some(*text),
                    revision: u64::MAX - i as u64,
                    upstream_status: full.then_some(200 + i as u16),
                    latency_ms: [0.0, 0.125, 1e-7, 12345.678][i % 4],
                    arguments: full.then_some(&args),
                    absent_arguments: if full { &absent } else { &[] },
                    approval: full.then_some(*text),
                    decided_by: full.then_some(*text),
                    dropped_before: full.then_some(i as u64),
                };
                let mut ours = Vec::new();
                record.write_line(&mut ours);
                let mut serdes = serde_json::to_vec(&record).unwrap();
                serdes.push(b'\n');
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(serdes).unwrap()
                );
            }
        }
    }

    /// A stdout the test opens and closes: writes block while it is shut, fail while broken.
    #[derive(Clone, Default)]
    struct Pipe(Arc<(Mutex<PipeState>, Condvar)>);

    #[derive(Default)]
    struct PipeState {
        shut: bool,
        broken: bool,
        taken: Vec<u8>,
    }

    impl Pipe {
        fn set(&self, f: impl FnOnce(&mut PipeState)) {
            f(&mut self.0.0.lock());
            self.0.1.notify_all();
        }
        fn lines(&self) -> Vec<Value> {
            let taken = self.0.0.lock().taken.clone();
            String::from_utf8(taken)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut st = self.0.0.lock();
            while st.shut {
                self.0.1.wait(&mut st);
            }
            if st.broken {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            st.taken.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record() -> Record<'static> {
        Record {
            time: now_rfc3339(),
            kind: "decision",
            pod: None,
            session: None,
            identity: "anonymous",
            method: "tools/call",
            tool: Some("echo"),
            decision: "allow",
            rule: None,
            policy: None,
            reason: None,
            revision: 1,
            upstream_status: None,
            latency_ms: 0.1,
            arguments: None,
            absent_arguments: &[],
            approval: None,
            decided_by: None,
            dropped_before: None,
        }
    }

    fn log(pipe: &Pipe, overflow: Overflow) -> (AuditLog, AuditMetrics) {
        let metrics = crate::telemetry::metrics::Metrics::new().audit();
        let p = pipe.clone();
        let log = AuditLog::to(move || p.clone(), None, 4096, overflow, metrics.clone());
        (log, metrics)
    }

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_blocked_stdout_refuses_calls_once_full_and_loses_no_line_of_a_call_let_through() {
        let pipe = Pipe::default();
        pipe.set(|p| p.shut = true);
        let (log, metrics) = log(&pipe, Overflow::Deny);
        let mut written = 0;
        while log.admits().is_ok() {
            log.write(record());
            written += 1;
            assert!(written < 1000, "the log never filled");
        }
        assert!(log.admits().is_err());
        assert!(log.status().contains("not draining"), "{}", log.status());
        // Calls admitted before the bound was seen still get their lines.
        for _ in 0..5 {
            log.write(record());
        }
        pipe.set(|p| p.shut = false);
        eventually("the log drains", || log.admits().is_ok());
        eventually("every line is written", || {
            metrics.lines.get() == written + 5
        });
        assert_eq!(pipe.lines().len() as u64, written + 5);
        assert_eq!(metrics.dropped_full.get(), 0);
    }

    #[test]
    fn with_overflow_drop_calls_go_on_and_each_dropped_line_is_counted_and_reported_in_the_next() {
        let pipe = Pipe::default();
        pipe.set(|p| p.shut = true);
        let (log, metrics) = log(&pipe, Overflow::Drop);
        for _ in 0..200 {
            assert!(log.admits().is_ok());
            log.write(record());
        }
        assert!(log.admits().is_ok());
        let dropped = metrics.dropped_full.get();
        assert!(dropped > 0, "nothing was dropped");
        assert!(
            log.status().contains("lines are dropped"),
            "{}",
            log.status()
        );
        pipe.set(|p| p.shut = false);
        eventually("the log drains", || metrics.buffered.get() == 0);
        log.write(record());
        eventually("the last line is written", || {
            metrics.lines.get() + dropped == 201
        });
        let lines = pipe.lines();
        assert_eq!(lines.last().unwrap()["droppedBefore"], dropped);
    }

    #[test]
    fn lines_stdout_refuses_are_counted_as_lost_and_calls_are_refused_until_it_takes_them() {
        let pipe = Pipe::default();
        pipe.set(|p| p.broken = true);
        let (log, metrics) = log(&pipe, Overflow::Deny);
        log.write(record());
        log.write(record());
        eventually("both lines are counted lost", || {
            metrics.dropped_write_error.get() == 2
        });
        assert!(log.admits().is_err());
        assert!(log.status().contains("refuses writes"), "{}", log.status());
        pipe.set(|p| p.broken = false);
        log.write(record());
        eventually("stdout takes lines again", || log.admits().is_ok());
        assert_eq!(pipe.lines()[0]["droppedBefore"], 2);
    }

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
