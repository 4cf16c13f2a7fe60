//! The `*` patterns of tool names (`github.*`) and of passthrough paths (`/oauth/*`).

/// Whether `pattern` can name passthrough paths: it starts with `/`, and has `*` only at its end.
pub fn is_path_pattern(pattern: &str) -> bool {
    pattern.starts_with('/') && pattern.find('*').is_none_or(|at| at == pattern.len() - 1)
}

/// Whether a passthrough path pattern names `path`: the same path, or, for a pattern ending in
/// `*`, any path that starts with what comes before it. Compared as written: no decoding, no
/// case folding, so `/oauth/token` does not name `/OAUTH/token` or `/oauth%2Ftoken`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A tool-name pattern: `*` matches any run of characters, `?` any one.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
        }
    }

    pub fn is_glob(s: &str) -> bool {
        s.contains(['*', '?'])
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}
