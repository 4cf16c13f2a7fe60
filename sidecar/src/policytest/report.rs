//! How test results read: as `go test -v` prints them, and as JUnit XML for CI.
//!
//! ```text
//! --- FAIL: stripe/refunds are capped (0.00s)
//!     step 3, call create_refund: want deny, got allow
//! FAIL    examples/stripe.tollgate-test.yaml    1 of 4 cases failed
//! ok      examples/github.tollgate-test.yaml    6 cases
//! ```

use std::fmt::Write as _;

use super::Suite;

/// The lines `tollgate test` prints; `verbose` adds a line per passing case.
pub fn text(suites: &[Suite], verbose: bool) -> String {
    let mut out = String::new();
    for s in suites {
        if let Some(e) = &s.error {
            let _ = writeln!(out, "--- ERROR: {}", s.path.display());
            for line in e.lines() {
                let _ = writeln!(out, "    {line}");
            }
            let _ = writeln!(out, "FAIL\t{}\t[not run]", s.path.display());
            continue;
        }
        for c in &s.cases {
            let secs = c.elapsed.as_secs_f64();
            if c.failures.is_empty() {
                if verbose {
                    let _ = writeln!(out, "--- PASS: {}/{} ({secs:.2}s)", s.name, c.name);
                }
                continue;
            }
            let _ = writeln!(out, "--- FAIL: {}/{} ({secs:.2}s)", s.name, c.name);
            for f in &c.failures {
                let _ = writeln!(out, "    {f}");
            }
        }
        let failed = s.failed();
        let _ = match failed {
            0 => writeln!(
                out,
                "ok  \t{}\t{} case{}",
                s.path.display(),
                s.cases.len(),
                plural(s.cases.len())
            ),
            n => writeln!(
                out,
                "FAIL\t{}\t{n} of {} case{} failed",
                s.path.display(),
                s.cases.len(),
                plural(s.cases.len())
            ),
        };
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// JUnit XML: a `testsuite` per file, a `testcase` per case, a `failure` with its lines; a
/// file that could not be run is one `error`.
pub fn junit(suites: &[Suite]) -> String {
    let tests: usize = suites.iter().map(|s| s.cases.len().max(1)).sum();
    let failures: usize = suites.iter().map(Suite::failed).sum();
    let errors = suites.iter().filter(|s| s.error.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"tollgate test\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">"
    );
    for s in suites {
        let file = xml(&s.path.display().to_string());
        let time: f64 = s.cases.iter().map(|c| c.elapsed.as_secs_f64()).sum();
        if let Some(e) = &s.error {
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" file=\"{file}\" tests=\"1\" failures=\"0\" errors=\"1\" time=\"0\">",
                xml(&s.name)
            );
            let _ = writeln!(
                out,
                "    <testcase name=\"(load)\" classname=\"{}\" time=\"0\">\n      <error message=\"{}\">{}</error>\n    </testcase>",
                xml(&s.name),
                xml(e.lines().next().unwrap_or("")),
                xml(e)
            );
            let _ = writeln!(out, "  </testsuite>");
            continue;
        }
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" file=\"{file}\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{time:.6}\">",
            xml(&s.name),
            s.cases.len(),
            s.failed()
        );
        for c in &s.cases {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.6}\"",
                xml(&c.name),
                xml(&s.name),
                c.elapsed.as_secs_f64()
            );
            match c.failures.first() {
                None => out.push_str("/>\n"),
                Some(first) => {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        xml(first),
                        xml(&c.failures.join("\n"))
                    );
                }
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Text as XML writes it in an attribute or an element.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            // Characters XML 1.0 cannot hold at all.
            c if (c as u32) < 0x20 && c != '\t' && c != '\r' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::CaseResult;
    use super::*;
    use std::time::Duration;

    #[test]
    fn junit_escapes_what_a_reason_may_hold_and_counts_failures() {
        let suites = vec![Suite {
            path: "a/t.tollgate-test.yaml".into(),
            name: "t".into(),
            error: None,
            cases: vec![
                CaseResult {
                    name: "ok".into(),
                    failures: vec![],
                    elapsed: Duration::ZERO,
                },
                CaseResult {
                    name: "<bad> & \"quoted\"".into(),
                    failures: vec!["step 1, call x: want deny, got allow".into()],
                    elapsed: Duration::ZERO,
                },
            ],
        }];
        let x = junit(&suites);
        assert!(x.contains("tests=\"2\" failures=\"1\" errors=\"0\""), "{x}");
        assert!(
            x.contains("name=\"&lt;bad&gt; &amp; &quot;quoted&quot;\""),
            "{x}"
        );
        assert!(x.contains("<failure message=\"step 1, call x: want deny, got allow\">"));
        let t = text(&suites, false);
        assert!(
            t.starts_with("--- FAIL: t/<bad> & \"quoted\" (0.00s)\n    step 1"),
            "{t}"
        );
        assert!(
            t.ends_with("FAIL\ta/t.tollgate-test.yaml\t1 of 2 cases failed\n"),
            "{t}"
        );
    }
}
