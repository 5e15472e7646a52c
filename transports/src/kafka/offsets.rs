//! Which offset of one partition may be committed.
//!
//! Records of a partition are handed to several workers at once and settle in any order.
//! Kafka keeps one committed offset per partition ("everything below this is done"), so
//! committing the offset after the latest acked record would, after a crash, skip records
//! still being worked on. The tracker commits only up to the lowest unsettled record.

use std::collections::BTreeSet;

/// Settlement state of the records of one partition that this process has received.
#[derive(Debug, Default, Clone)]
pub(crate) struct OffsetTracker {
    /// One past the highest offset tracked; `None` before the first record.
    next: Option<i64>,
    /// Received and not yet settled.
    unsettled: BTreeSet<i64>,
    /// Settled, at or above the commit offset (kept only for depth; pruned as it advances).
    settled: BTreeSet<i64>,
}

impl OffsetTracker {
    /// Starts tracking `offset`. Records of a partition arrive in increasing offset order;
    /// an offset at or below one already tracked (a replay the consumer should not see)
    /// is refused with `false` so it cannot move the commit offset backwards.
    pub(crate) fn track(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.unsettled.insert(offset);
        self.next = Some(offset.saturating_add(1));
        true
    }

    /// Marks `offset` settled. Returns the new commit offset when it moved; `None` when it
    /// did not (a record below is still open) or `offset` is not tracked or already settled.
    pub(crate) fn settle(&mut self, offset: i64) -> Option<i64> {
        let before = self.commit_offset();
        if !self.unsettled.remove(&offset) {
            return None;
        }
        self.settled.insert(offset);
        let after = self.commit_offset()?;
        self.settled = self.settled.split_off(&after);
        (Some(after) != before).then_some(after)
    }

    /// The offset to commit (the next one a new owner of the partition should read): every
    /// tracked record below it is settled. `None` before the first record.
    pub(crate) fn commit_offset(&self) -> Option<i64> {
        self.unsettled.first().copied().or(self.next)
    }

    /// Records received and not yet settled.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// How many offsets at or above `committed` (the group's offset as the broker has it)
    /// are settled here: what a lag computed from `committed` counts although the work is
    /// done. Offsets below the local commit offset count as settled even where no record
    /// was tracked (compacted or control records), because the lag counts those too.
    pub(crate) fn settled_since(&self, committed: i64) -> u64 {
        let Some(floor) = self.commit_offset() else {
            return 0;
        };
        let below_floor = u64::try_from(floor.saturating_sub(committed)).unwrap_or(0);
        let above = self.settled.range(committed.max(floor)..).count() as u64;
        below_floor + above
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracking(offsets: impl IntoIterator<Item = i64>) -> OffsetTracker {
        let mut t = OffsetTracker::default();
        for o in offsets {
            assert!(t.track(o));
        }
        t
    }

    #[test]
    fn nothing_to_commit_before_the_first_record() {
        let t = OffsetTracker::default();
        assert_eq!(t.commit_offset(), None);
        assert_eq!(t.settled_since(0), 0);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn in_order_settlement_advances_one_by_one() {
        let mut t = tracking(10..13);
        assert_eq!(t.commit_offset(), Some(10));
        assert_eq!(t.settle(10), Some(11));
        assert_eq!(t.settle(11), Some(12));
        assert_eq!(t.settle(12), Some(13));
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn never_commits_past_unfinished_work() {
        let mut t = tracking(0..5);
        assert_eq!(t.settle(3), None, "0 is still open");
        assert_eq!(t.settle(1), None);
        assert_eq!(t.settle(4), None);
        assert_eq!(t.commit_offset(), Some(0));
        assert_eq!(t.settle(0), Some(2), "1 was done, 2 is open");
        assert_eq!(t.settle(2), Some(5), "3 and 4 were done");
    }

    #[test]
    fn unknown_or_repeated_settlements_change_nothing() {
        let mut t = tracking([7]);
        assert_eq!(t.settle(99), None);
        assert_eq!(t.settle(7), Some(8));
        assert_eq!(t.settle(7), None, "settled twice");
        assert_eq!(t.commit_offset(), Some(8));
    }

    #[test]
    fn gaps_between_records_are_skipped() {
        // Offsets 3 and 4 never arrive (compaction, transaction markers).
        let mut t = tracking([2, 5, 6]);
        assert_eq!(t.settle(5), None);
        assert_eq!(t.settle(2), Some(6));
        assert_eq!(t.settle(6), Some(7));
    }

    #[test]
    fn replays_cannot_move_the_offset_back() {
        let mut t = tracking([4, 5]);
        assert!(!t.track(4));
        assert!(!t.track(1));
        assert!(t.track(9));
        assert_eq!(t.unsettled(), 3);
    }

    #[test]
    fn settled_since_counts_what_the_lag_still_holds() {
        let mut t = tracking(0..6);
        t.settle(0);
        t.settle(1);
        t.settle(4);
        // Local commit offset 2; the broker still has 0 (commit in flight).
        assert_eq!(t.commit_offset(), Some(2));
        assert_eq!(t.settled_since(0), 3, "0, 1 below the floor and 4 above");
        assert_eq!(t.settled_since(2), 1, "the broker has the commit");
        assert_eq!(
            t.settled_since(5),
            0,
            "a broker offset past 4 (another owner's commit)"
        );
        t.settle(2);
        t.settle(3);
        t.settle(5);
        assert_eq!(t.commit_offset(), Some(6));
        assert_eq!(t.settled_since(0), 6);
        assert_eq!(t.settled_since(6), 0);
    }
}
