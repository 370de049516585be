//! [`WatchCursor`]: what a resuming watch has delivered, so that no event is delivered
//! twice or out of order across reconnects.
//!
//! Several events can share one revision (a transaction, a prefix delete), and the node
//! may split a revision's events over frames. So the cursor remembers the last revision
//! seen and how many of its events were delivered; a resume restarts at that revision and
//! skips the events already delivered, unless the revision is known complete (the node
//! said so with a `Progress` message, or a later revision was seen), in which case it
//! restarts at the next revision.

use aspen_core::Event;

/// Delivery state of one watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchCursor {
    /// Revision the caller asked to start from (0: from now).
    requested_start: u64,
    /// Last revision any event was delivered from, or known to be complete.
    last_revision: u64,
    /// Events of `last_revision` delivered so far.
    delivered_at_last: u64,
    /// True when every event of `last_revision` has been delivered.
    last_complete: bool,
    /// True once a position is known (an event, `Started` or `Progress` was seen).
    positioned: bool,
    /// Events of `last_revision` still to skip after a resume.
    skip_at_last: u64,
}

impl WatchCursor {
    /// A cursor for a watch starting at `start_revision` (0: from now).
    pub fn new(start_revision: u64) -> Self {
        WatchCursor {
            requested_start: start_revision,
            last_revision: 0,
            delivered_at_last: 0,
            last_complete: true,
            positioned: false,
            skip_at_last: 0,
        }
    }

    /// The revision the next Watch request asks for, and readies the cursor to skip what
    /// was already delivered of it.
    pub fn resume_from(&mut self) -> u64 {
        if !self.positioned {
            return self.requested_start;
        }
        if self.last_complete {
            self.skip_at_last = 0;
            self.last_revision + 1
        } else {
            self.skip_at_last = self.delivered_at_last;
            self.last_revision
        }
    }

    /// The node registered the watch starting at `start_revision`.
    pub fn started(&mut self, start_revision: u64) {
        if !self.positioned && start_revision > 0 {
            self.last_revision = start_revision - 1;
            self.last_complete = true;
            self.positioned = true;
        }
    }

    /// Every event up to `revision` has been sent.
    pub fn progress(&mut self, revision: u64) {
        if revision >= self.last_revision {
            if revision > self.last_revision {
                self.delivered_at_last = 0;
            }
            self.last_revision = revision;
            self.last_complete = true;
            self.positioned = true;
            self.skip_at_last = 0;
        }
    }

    /// Whether `event` is new and should be delivered; records it when it is.
    pub fn accept(&mut self, event: &Event) -> bool {
        let rev = event.revision();
        if self.positioned && rev < self.last_revision {
            return false;
        }
        if self.positioned && rev == self.last_revision {
            if self.last_complete {
                return false;
            }
            if self.skip_at_last > 0 {
                self.skip_at_last -= 1;
                return false;
            }
            self.delivered_at_last += 1;
            return true;
        }
        self.last_revision = rev;
        self.delivered_at_last = 1;
        self.last_complete = false;
        self.positioned = true;
        self.skip_at_last = 0;
        true
    }

    /// The last revision any event was delivered from (0 before the first).
    pub fn last_revision(&self) -> u64 {
        self.last_revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_core::{EventKind, KeyValue};

    fn ev(key: &str, rev: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![],
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: None,
            },
        }
    }

    #[test]
    fn a_fresh_watch_resumes_from_what_was_asked() {
        assert_eq!(WatchCursor::new(0).resume_from(), 0);
        assert_eq!(WatchCursor::new(42).resume_from(), 42);
    }

    #[test]
    fn started_fixes_the_position_of_a_watch_from_now() {
        let mut c = WatchCursor::new(0);
        c.started(10);
        assert_eq!(c.resume_from(), 10);
    }

    #[test]
    fn events_of_one_revision_are_all_delivered() {
        let mut c = WatchCursor::new(1);
        assert!(c.accept(&ev("a", 5)));
        assert!(c.accept(&ev("b", 5)));
        assert!(c.accept(&ev("c", 6)));
    }

    #[test]
    fn old_and_repeated_events_are_skipped() {
        let mut c = WatchCursor::new(1);
        assert!(c.accept(&ev("a", 5)));
        assert!(c.accept(&ev("b", 6)));
        assert!(!c.accept(&ev("a", 5)));
        assert!(!c.accept(&ev("x", 4)));
    }

    #[test]
    fn resume_after_a_complete_revision_starts_at_the_next() {
        let mut c = WatchCursor::new(1);
        c.accept(&ev("a", 5));
        c.progress(5);
        assert_eq!(c.resume_from(), 6);
        assert!(!c.accept(&ev("a", 5)));
        assert!(c.accept(&ev("b", 6)));
    }

    #[test]
    fn resume_mid_revision_skips_only_what_was_delivered() {
        let mut c = WatchCursor::new(1);
        assert!(c.accept(&ev("a", 5)));
        assert!(c.accept(&ev("b", 5)));
        // The stream broke; revision 5 may have had more events.
        assert_eq!(c.resume_from(), 5);
        assert!(!c.accept(&ev("a", 5)));
        assert!(!c.accept(&ev("b", 5)));
        assert!(c.accept(&ev("c", 5)));
        assert!(c.accept(&ev("d", 7)));
        assert_eq!(c.last_revision(), 7);
    }

    #[test]
    fn progress_moves_an_idle_watch_forward() {
        let mut c = WatchCursor::new(0);
        c.started(3);
        c.progress(9);
        assert_eq!(c.resume_from(), 10);
        assert!(!c.accept(&ev("a", 9)));
    }
}
