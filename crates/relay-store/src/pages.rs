//! Pages of large rows bounded by bytes as well as by rows, so that one listing can never build
//! a response of hundreds of megabytes. A supertrait of [`Store`](crate::Store), implemented
//! once for both backends by `impl_page_store!`.

use async_trait::async_trait;

use crate::{Result, capture::WebhookRecord};

/// One page and where the next starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `before` for the next page; `None` when this page reached the end.
    pub next_before: Option<i64>,
}

#[async_trait]
pub trait PageStore: Send + Sync + 'static {
    /// Webhooks newest first (optionally only in `state`, only older than id `before`): at most
    /// `limit` rows, and rows only while their bodies total at most `max_bytes` (always at least
    /// one). The bodies' sizes are read first, so no more than the page is ever loaded.
    async fn list_webhooks_page(
        &self,
        state: Option<&str>,
        before: Option<i64>,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Page<WebhookRecord>>;

    /// Dead letters matching `filter`, newest first (by `dead_at_ms`, then id), only those after
    /// the row `before` in that order: at most `filter.limit` (1,000 if unset) rows, and rows
    /// only while their payloads total at most `max_chars` characters (always at least one).
    async fn list_dead_letters_page(
        &self,
        filter: &crate::DeadLetterFilter,
        before: Option<i64>,
        max_chars: usize,
    ) -> Result<Page<crate::EventRecord>>;
}

macro_rules! impl_page_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::pages::PageStore for $store {
            async fn list_webhooks_page(
                &self,
                state: Option<&str>,
                before: Option<i64>,
                limit: i64,
                max_bytes: usize,
            ) -> $crate::Result<$crate::pages::Page<$crate::capture::WebhookRecord>> {
                use sqlx::Row;
                let filter = |b: &mut sqlx::QueryBuilder<$db>| {
                    b.push(" WHERE 1 = 1");
                    if let Some(state) = state {
                        b.push(" AND state = ").push_bind(state.to_owned());
                    }
                    if let Some(before) = before {
                        b.push(" AND id < ").push_bind(before);
                    }
                };
                // Sizes first: length() of a blob or bytea does not read the body.
                let mut b = sqlx::QueryBuilder::<$db>::new("SELECT id, CAST(length(body) AS BIGINT) AS size FROM webhooks");
                filter(&mut b);
                b.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
                let sizes = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let mut total = 0usize;
                let mut taken: Vec<i64> = Vec::new();
                for row in &sizes {
                    let id: i64 = row.try_get("id")?;
                    let size: i64 = row.try_get::<Option<i64>, _>("size")?.unwrap_or(0);
                    total += size.max(0) as usize;
                    if !taken.is_empty() && total > max_bytes {
                        break;
                    }
                    taken.push(id);
                }
                let (Some(&newest), Some(&oldest)) = (taken.first(), taken.last()) else {
                    return Ok($crate::pages::Page { items: Vec::new(), next_before: None });
                };
                let more = taken.len() < sizes.len() || sizes.len() as i64 == limit;
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, received_at_ms, state, error, processed_at_ms, forward_state, forward_attempts, forward_error, \
                     attempts, next_attempt_at_ms, channel, body, body_removed_at_ms FROM webhooks",
                );
                filter(&mut b);
                b.push(" AND id >= ").push_bind(oldest);
                b.push(" AND id <= ").push_bind(newest);
                b.push(" ORDER BY id DESC");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let items = rows
                    .iter()
                    .map(|row| {
                        let body: Vec<u8> = row.try_get("body")?;
                        let body_removed_at_ms: Option<i64> = row.try_get("body_removed_at_ms")?;
                        Ok($crate::capture::WebhookRecord {
                            id: row.try_get("id")?,
                            received_at_ms: row.try_get("received_at_ms")?,
                            state: row.try_get("state")?,
                            error: row.try_get("error")?,
                            processed_at_ms: row.try_get("processed_at_ms")?,
                            forward_state: row.try_get("forward_state")?,
                            forward_attempts: row.try_get("forward_attempts")?,
                            forward_error: row.try_get("forward_error")?,
                            attempts: row.try_get("attempts")?,
                            next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
                            channel: row.try_get("channel")?,
                            // A removed body is empty: shown as absent (see the Privacy section).
                            body: body_removed_at_ms
                                .is_none()
                                .then(|| String::from_utf8_lossy(&body).into_owned()),
                            body_removed_at_ms,
                        })
                    })
                    .collect::<$crate::Result<Vec<_>>>()?;
                Ok($crate::pages::Page {
                    items,
                    next_before: more.then_some(oldest),
                })
            }

            async fn list_dead_letters_page(
                &self,
                filter: &$crate::DeadLetterFilter,
                before: Option<i64>,
                max_chars: usize,
            ) -> $crate::Result<$crate::pages::Page<$crate::EventRecord>> {
                use sqlx::Row;
                let limit = filter.limit.unwrap_or(1000);
                // Sizes first, as for webhooks; a row-value comparison continues after `before`.
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT id, CAST(length({}) AS BIGINT) AS size FROM events WHERE state = 'dead'",
                    Self::PAYLOAD
                ));
                Self::push_filter(&mut b, filter);
                if let Some(before) = before {
                    b.push(" AND (dead_at_ms, id) < (SELECT dead_at_ms, id FROM events WHERE id = ")
                        .push_bind(before)
                        .push(")");
                }
                b.push(" ORDER BY dead_at_ms DESC, id DESC LIMIT ").push_bind(limit);
                let sizes = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let mut total = 0usize;
                let mut taken: Vec<i64> = Vec::new();
                for row in &sizes {
                    total += row.try_get::<Option<i64>, _>("size")?.unwrap_or(0).max(0) as usize;
                    if !taken.is_empty() && total > max_chars {
                        break;
                    }
                    taken.push(row.try_get("id")?);
                }
                let Some(&last) = taken.last() else {
                    return Ok($crate::pages::Page { items: Vec::new(), next_before: None });
                };
                let more = taken.len() < sizes.len() || sizes.len() as i64 == limit;
                let mut records = Vec::with_capacity(taken.len());
                for chunk in taken.chunks($crate::shared::BIND_CHUNK) {
                    let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM events WHERE id IN (",
                        Self::RECORD_COLUMNS
                    ));
                    let mut sep = b.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    b.push(")");
                    let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                    for row in &rows {
                        records.push($crate::shared::record_from_row(row)?);
                    }
                }
                let order: std::collections::HashMap<i64, usize> =
                    taken.iter().enumerate().map(|(n, id)| (*id, n)).collect();
                records.sort_by_key(|r| order.get(&r.id).copied().unwrap_or(usize::MAX));
                let items = self.with_attempts(records).await?;
                Ok($crate::pages::Page {
                    items,
                    next_before: more.then_some(last),
                })
            }
        }
    };
}

pub(crate) use impl_page_store;
