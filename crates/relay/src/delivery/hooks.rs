//! Fault injection for tests of the delivery supervisor: a test names a dataset of its own, and
//! the next claim of that dataset panics in its sender. Nothing here runs unless a test calls it.

use std::{collections::HashSet, sync::Mutex};

static PANIC_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Makes the next sender of `dataset_id` panic before it sends anything.
#[doc(hidden)]
pub fn panic_next_send(dataset_id: &str) {
    PANIC_ONCE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(dataset_id.to_owned());
}

/// Panics if a test asked for it for this dataset.
pub(crate) fn maybe_panic(dataset_id: &str) {
    let armed = PANIC_ONCE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .is_some_and(|set| set.remove(dataset_id));
    if armed {
        panic!("test hook: sender of dataset {dataset_id} panics");
    }
}
