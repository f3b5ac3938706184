//! Meta's answers counted for the dashboard's access-tier figures. Kept in memory and written in
//! one transaction a second: one write per Graph request would compete with the outbox's own
//! writes (on SQLite there is one writer).

use std::{sync::Arc, time::Duration};

use relay_store::Store;
use tokio_util::sync::CancellationToken;

/// How often the counted calls are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Calls kept while the database cannot take them; later ones are not counted (only a figure).
const MAX_PENDING: usize = 100_000;

/// Answered Graph calls not yet written: `(at_ms, delivered)`.
#[derive(Default)]
pub struct GraphCallLog {
    pending: std::sync::Mutex<Vec<(i64, bool)>>,
}

impl GraphCallLog {
    pub fn record(&self, at_ms: i64, ok: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push((at_ms, ok));
        }
    }

    fn take(&self) -> Vec<(i64, bool)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes what was counted; on failure the calls are kept for the next try.
    async fn flush(&self, store: &dyn Store) {
        let calls = self.take();
        if calls.is_empty() {
            return;
        }
        if let Err(e) = store.record_graph_calls(&calls).await {
            tracing::debug!(error = %e, calls = calls.len(), "graph calls not counted yet");
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let room = MAX_PENDING.saturating_sub(pending.len());
            pending.extend(calls.into_iter().take(room));
        }
    }
}

/// Writes the counted calls every second until `stop`, then once more.
pub async fn flush_loop(log: Arc<GraphCallLog>, store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => log.flush(store.as_ref()).await,
            () = stop.cancelled() => break,
        }
    }
    log.flush(store.as_ref()).await;
}
