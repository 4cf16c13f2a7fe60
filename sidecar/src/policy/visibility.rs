//! The policy set in force, and what the data plane remembers of it: `tools/list` answers by
//! tool name. Whether a tool is listed is a pure function of the set (and the caller, when a
//! policy names subjects), and a server's list is the same on every call, so each tool is
//! decided once per set rather than once per list.

use std::collections::HashMap;
use std::ops::Deref;

use foldhash::fast::RandomState;
use parking_lot::{RwLock, RwLockReadGuard};
use tollgate_api::{Identity, PolicySet};

/// Tool names remembered per set; past this the memo stops growing.
const MEMO_LIMIT: usize = 16_384;

/// A compiled policy set, with its `tools/list` memo. Reads as the [`PolicySet`] it holds.
#[derive(Debug)]
pub struct Enforced {
    set: PolicySet,
    /// `visible()` answers by tool name, kept only when no policy depends on the caller.
    memo: RwLock<HashMap<String, bool, RandomState>>,
}

impl Enforced {
    pub fn new(set: PolicySet) -> Self {
        Enforced {
            set,
            memo: RwLock::default(),
        }
    }

    /// Answers [`PolicySet::visible`] for the tools of one list, reading the memo under one
    /// lock rather than one per tool (its reader count is a cache line both workers write).
    /// Answers decided rather than remembered join the memo when the [`Visibility`] is dropped;
    /// it holds the read lock, so a thread holds one at a time.
    pub fn visibility<'s>(&'s self, who: &'s Identity) -> Visibility<'s> {
        Visibility {
            memo: (!self.set.varies_by_caller()).then(|| self.memo.read()),
            enforced: self,
            who,
            learned: Vec::new(),
        }
    }
}

impl Deref for Enforced {
    type Target = PolicySet;

    fn deref(&self) -> &PolicySet {
        &self.set
    }
}

/// [`PolicySet::visible`] for the tools of one list: see [`Enforced::visibility`].
pub struct Visibility<'s> {
    enforced: &'s Enforced,
    who: &'s Identity,
    /// `None` when answers depend on the caller: nothing is remembered.
    memo: Option<RwLockReadGuard<'s, HashMap<String, bool, RandomState>>>,
    learned: Vec<(String, bool)>,
}

impl Visibility<'_> {
    pub fn visible(&mut self, tool: &str) -> bool {
        let Some(memo) = &self.memo else {
            return self.enforced.set.visible(tool, self.who);
        };
        if let Some(&v) = memo.get(tool) {
            return v;
        }
        let v = self.enforced.set.visible(tool, self.who);
        self.learned.push((tool.to_string(), v));
        v
    }
}

impl Drop for Visibility<'_> {
    fn drop(&mut self) {
        // The read lock goes first: the write lock below would wait for it forever.
        let Some(read) = self.memo.take() else { return };
        drop(read);
        if self.learned.is_empty() {
            return;
        }
        let mut memo = self.enforced.memo.write();
        for (tool, v) in self.learned.drain(..) {
            if memo.len() >= MEMO_LIMIT {
                break;
            }
            memo.insert(tool, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_api::DefaultAction;

    use super::*;

    fn enforced(default: DefaultAction, specs: &[&str]) -> Enforced {
        let specs: Vec<(String, tollgate_api::PolicySpec)> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("p{i}"), serde_yaml::from_str(s).unwrap()))
            .collect();
        let named = specs.iter().map(|(n, s)| (n.as_str(), s));
        Enforced::new(PolicySet::compile(1, default, named).unwrap())
    }

    #[test]
    fn lists_after_the_first_are_answered_from_what_the_first_learned_the_same_way() {
        let e = enforced(
            DefaultAction::Allow,
            &[
                "default: deny\ntools:\n  read: { rules: [] }\n  drop: { rules: [ { name: never, action: deny } ] }",
            ],
        );
        let who = Identity::anonymous();
        let tools = ["read", "drop", "unlisted"];
        let decided: Vec<&str> = tools.into_iter().filter(|t| e.visible(t, &who)).collect();
        assert_eq!(decided, ["read"]);
        for _ in 0..3 {
            let mut visibility = e.visibility(&who);
            let again: Vec<&str> = tools
                .into_iter()
                .filter(|t| visibility.visible(t))
                .collect();
            assert_eq!(again, decided);
        }
        assert_eq!(
            e.memo.read().len(),
            tools.len(),
            "each tool remembered once"
        );
    }

    #[test]
    fn lists_that_depend_on_the_caller_are_never_answered_from_another_callers_list() {
        let e = enforced(
            DefaultAction::Allow,
            &["subjects: [ { subject: bob } ]\nhide: [x]"],
        );
        let (alice, bob) = (Identity::subject("alice"), Identity::subject("bob"));
        for _ in 0..2 {
            assert!(e.visibility(&alice).visible("x"));
            assert!(!e.visibility(&bob).visible("x"));
        }
        assert!(
            e.memo.read().is_empty(),
            "nothing remembered when callers differ"
        );
    }

    #[test]
    fn the_memo_stops_growing_at_its_limit() {
        let e = enforced(DefaultAction::Allow, &["default: allow"]);
        let who = Identity::anonymous();
        let names: Vec<String> = (0..MEMO_LIMIT + 10).map(|i| format!("t{i}")).collect();
        let mut visibility = e.visibility(&who);
        assert!(names.iter().all(|n| visibility.visible(n)));
        drop(visibility);
        assert_eq!(e.memo.read().len(), MEMO_LIMIT);
    }
}
