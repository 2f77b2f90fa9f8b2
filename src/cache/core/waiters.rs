//! The core's waiters, indexed by id and by deadline, so that an event costs
//! the same with ten thousand waiters as with one: the due ones are taken
//! from the front of the deadline index, the next deadline is its first.

use std::collections::{BTreeMap, BTreeSet};

use super::{Time, WaiterId};

/// One caller waiting for a token.
#[cfg_attr(test, derive(Clone))]
pub(super) struct Waiter {
    pub(super) deadline: Time,
    /// The token the caller's request was refused with, if it is a replay.
    pub(super) not: Option<u64>,
}

#[derive(Default)]
#[cfg_attr(test, derive(Clone))]
pub(super) struct Waiters {
    by_id: BTreeMap<WaiterId, Waiter>,
    by_deadline: BTreeSet<(Time, WaiterId)>,
}

impl Waiters {
    pub(super) fn insert(&mut self, id: WaiterId, waiter: Waiter) {
        self.by_deadline.insert((waiter.deadline, id));
        if let Some(old) = self.by_id.insert(id, waiter) {
            self.by_deadline.remove(&(old.deadline, id));
        }
    }

    pub(super) fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let waiter = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(waiter.deadline, id));
        Some(waiter)
    }

    /// Every waiter's id, and none left.
    pub(super) fn take_all(&mut self) -> Vec<WaiterId> {
        self.by_deadline.clear();
        std::mem::take(&mut self.by_id).into_keys().collect()
    }

    pub(super) fn ids(&self) -> Vec<WaiterId> {
        self.by_id.keys().copied().collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (WaiterId, &Waiter)> {
        self.by_id.iter().map(|(id, waiter)| (*id, waiter))
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The waiters whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: Time) -> Vec<(WaiterId, Option<u64>)> {
        (self.by_deadline.iter())
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| (*id, self.by_id[id].not))
            .collect()
    }

    pub(super) fn earliest(&self) -> Option<Time> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }
}
