//! When a task is finished: the branches of a fan-out, counted.
//!
//! A fan-out hands its first child the input's id and gives every other child a new id
//! (derived from the input's, so a replay makes the same ones). Each id is therefore one
//! *branch* of the task: the root's id, and one more per extra child. A branch *ends* when
//! its envelope reaches `x-sink` (succeeded) or `x-sump` (failed), and its end record lists
//! the branches it spawned along its route.
//!
//! The task is finished when every branch reachable from the root through those lists has
//! ended: failed if any of them failed, succeeded otherwise. Records may come in any order
//! (a child's end before its parent's) and more than once (at-least-once delivery): the
//! ledger is a set of facts, so neither changes the verdict, and a branch that ended
//! failed once counts as failed whatever copy comes later.
//!
//! ```
//! use troupe_gateway::{BranchEnd, Ledger};
//!
//! let mut ledger = Ledger::new("doc-1");
//! // The second child of the split ends first.
//! ledger.record("doc-1/split/2", BranchEnd::Succeeded, []);
//! assert_eq!(ledger.verdict(), None, "the root has not ended: it may spawn more");
//! ledger.record("doc-1", BranchEnd::Succeeded, ["doc-1/split/2".to_owned()]);
//! assert_eq!(ledger.verdict(), Some(BranchEnd::Succeeded));
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// How a branch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BranchEnd {
    /// It reached the end of its route (`x-sink`).
    Succeeded,
    /// It was set aside (`x-sump`) or failed for good.
    Failed,
}

/// What is known of one task's branches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    root: String,
    /// Each ended branch: how, and what it spawned.
    ended: BTreeMap<String, (BranchEnd, BTreeSet<String>)>,
}

impl Ledger {
    /// The ledger of the task whose submitted envelope has id `root`.
    pub fn new(root: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            ended: BTreeMap::new(),
        }
    }

    /// The submitted envelope's id.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Records that branch `id` ended as `end`, having spawned `spawned`. Returns whether
    /// anything new was learned (a repeated record teaches nothing).
    pub fn record(&mut self, id: &str, end: BranchEnd, spawned: impl IntoIterator<Item = String>) -> bool {
        let spawned: BTreeSet<String> = spawned.into_iter().collect();
        match self.ended.get_mut(id) {
            None => {
                self.ended.insert(id.to_owned(), (end, spawned));
                true
            }
            Some((known_end, known_spawned)) => {
                // Failed dominates, so the merge is the same in every order.
                let merged_end = (*known_end).max(end);
                let before = known_spawned.len();
                known_spawned.extend(spawned);
                let changed = merged_end != *known_end || known_spawned.len() != before;
                *known_end = merged_end;
                changed
            }
        }
    }

    /// Branches known to exist (reachable from the root) that have not ended yet.
    pub fn open_branches(&self) -> BTreeSet<&str> {
        let mut open = BTreeSet::new();
        self.walk(|id, ended| {
            if ended.is_none() {
                open.insert(id);
            }
        });
        open
    }

    /// How the task ended, once every branch reachable from the root has; `None` while
    /// any is open.
    pub fn verdict(&self) -> Option<BranchEnd> {
        let mut open = false;
        let mut worst = BranchEnd::Succeeded;
        self.walk(|_, ended| match ended {
            None => open = true,
            Some(end) => worst = worst.max(end),
        });
        (!open).then_some(worst)
    }

    /// Calls `visit` once for each branch reachable from the root, with how it ended.
    fn walk<'a>(&'a self, mut visit: impl FnMut(&'a str, Option<BranchEnd>)) {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = vec![self.root.as_str()];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            match self.ended.get(id) {
                None => visit(id, None),
                Some((end, spawned)) => {
                    visit(id, Some(*end));
                    stack.extend(spawned.iter().map(String::as_str));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random fan-out tree: branch `i > 0` was spawned by branch `parent[i] < i`; each
    /// branch ends as `ends[i]`. Returns each branch's end record.
    fn records(parents: &[usize], ends: &[bool]) -> Vec<(String, BranchEnd, Vec<String>)> {
        let name = |i: usize| {
            if i == 0 {
                "root".to_owned()
            } else {
                format!("b{i}")
            }
        };
        (0..ends.len())
            .map(|i| {
                let spawned = (1..ends.len())
                    .filter(|&c| parents[c - 1] == i)
                    .map(name)
                    .collect();
                let end = if ends[i] {
                    BranchEnd::Succeeded
                } else {
                    BranchEnd::Failed
                };
                (name(i), end, spawned)
            })
            .collect()
    }

    /// A tree of 1 to 11 branches, how each ends, and an order to deliver their records
    /// in: each at least once, some repeated, shuffled.
    fn history() -> impl Strategy<Value = (Vec<usize>, Vec<bool>, Vec<usize>)> {
        (1usize..12).prop_flat_map(|n| {
            let parents: Vec<_> = (1..n).map(|i| 0..i).collect();
            let repeats = proptest::collection::vec(0..n, 0..2 * n);
            (parents, proptest::collection::vec(any::<bool>(), n), repeats).prop_flat_map(
                move |(parents, ends, repeats)| {
                    let order: Vec<usize> = (0..n).chain(repeats).collect();
                    (Just(parents), Just(ends), Just(order).prop_shuffle())
                },
            )
        })
    }

    #[test]
    fn a_failed_branch_fails_the_task_once_all_have_ended() {
        let mut ledger = Ledger::new("root");
        ledger.record("root", BranchEnd::Succeeded, ["a".to_owned(), "b".to_owned()]);
        ledger.record("a", BranchEnd::Failed, []);
        assert_eq!(ledger.verdict(), None);
        assert_eq!(ledger.open_branches(), BTreeSet::from(["b"]));
        ledger.record("b", BranchEnd::Succeeded, []);
        assert_eq!(ledger.verdict(), Some(BranchEnd::Failed));
    }

    #[test]
    fn a_branch_once_failed_stays_failed_in_either_order() {
        for ends in [
            [BranchEnd::Failed, BranchEnd::Succeeded],
            [BranchEnd::Succeeded, BranchEnd::Failed],
        ] {
            let mut ledger = Ledger::new("root");
            for end in ends {
                ledger.record("root", end, []);
            }
            assert_eq!(ledger.verdict(), Some(BranchEnd::Failed), "{ends:?}");
        }
    }

    #[test]
    fn records_of_other_tasks_do_not_count() {
        let mut ledger = Ledger::new("root");
        ledger.record("stranger", BranchEnd::Failed, []);
        assert_eq!(ledger.verdict(), None);
        ledger.record("root", BranchEnd::Succeeded, []);
        assert_eq!(ledger.verdict(), Some(BranchEnd::Succeeded));
    }

    proptest! {
        /// Any order, any repetition: the same verdict, and none before the last branch
        /// has ended.
        #[test]
        fn order_and_repetition_do_not_change_the_verdict((parents, ends, order) in history()) {
            let all = records(&parents, &ends);
            let expected = if ends.iter().all(|ok| *ok) { BranchEnd::Succeeded } else { BranchEnd::Failed };
            let mut ledger = Ledger::new("root");
            let mut seen = BTreeSet::new();
            for i in order {
                let (id, end, spawned) = &all[i];
                ledger.record(id, *end, spawned.clone());
                seen.insert(i);
                if seen.len() < all.len() {
                    prop_assert_eq!(ledger.verdict(), None, "a branch is still open");
                }
            }
            prop_assert_eq!(ledger.verdict(), Some(expected));
            prop_assert!(ledger.open_branches().is_empty());
        }
    }
}
