//! Fault injection for tests of delivery: a test names a dataset of its own, and the next claim
//! of that dataset panics in its sender, or the next recording of its delivered answer waits.
//! Nothing here runs unless a test calls it.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

static PANIC_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static SLOW_RESOLVE_ONCE: Mutex<Option<HashMap<String, Duration>>> = Mutex::new(None);

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

/// Makes the next delivered answer of `dataset_id` wait `delay` before it is recorded (a
/// database writer busy with ingest).
#[doc(hidden)]
pub fn slow_next_resolve(dataset_id: &str, delay: Duration) {
    SLOW_RESOLVE_ONCE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(dataset_id.to_owned(), delay);
}

/// Waits if a test asked for it for this dataset.
pub(crate) async fn maybe_slow_resolve(dataset_id: &str) {
    let delay = SLOW_RESOLVE_ONCE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|map| map.remove(dataset_id));
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}
