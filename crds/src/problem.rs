//! A problem found in a policy: where it is, and what to do about it.

use std::fmt;

/// One thing wrong with a policy, named by its field path (`spec.tools.x.rules[0].limit.max`)
/// and said so that a person can fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem of a policy that does not load or compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_all(.0))]
pub struct Problems(pub Vec<Problem>);

fn display_all(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Problems {
    /// Prefixes every path, e.g. with the document a problem came from.
    pub fn within(mut self, prefix: &str) -> Self {
        for p in &mut self.0 {
            p.path = if p.path.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}: {}", p.path)
            };
        }
        self
    }
}
