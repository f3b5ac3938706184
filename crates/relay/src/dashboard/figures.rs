//! The numbers behind every dashboard page, computed once for the HTML pages and their JSON
//! twins under `/v1/stats`. Reads only the store's maintained counts and indexed lists; the time
//! is passed in.

use std::collections::BTreeMap;

use relay_store::{
    AssetStatus, DEFAULT_TENANT, EventRecord, Store, StoreError,
    dashboard::{
        LATENCY_BOUNDS_MS, LogFilter, RefusalRecord, STATS_BUCKET_MS, SeriesPoint, StatCounts,
        StatsFilter, StatsRow, bucket_of,
    },
};
use serde::Serialize;

/// What a viewer may see: one tenant (optionally only some assets), or every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// `None`: every tenant (the operator's "all tenants" view).
    pub tenant: Option<String>,
    /// Only these assets of the tenant (a key limited to some assets).
    pub assets: Option<Vec<String>>,
}

/// The window picker's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Window {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    Month,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl Window {
    pub const ALL: [Window; 4] = [Window::Hour, Window::Day, Window::Week, Window::Month];

    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Window::Hour => "last hour",
            Window::Day => "last 24 hours",
            Window::Week => "last 7 days",
            Window::Month => "last 30 days",
        }
    }

    pub fn ms(self) -> i64 {
        match self {
            Window::Hour => HOUR_MS,
            Window::Day => DAY_MS,
            Window::Week => 7 * DAY_MS,
            Window::Month => 30 * DAY_MS,
        }
    }

    /// The chart's bar width.
    pub fn step_ms(self) -> i64 {
        match self {
            Window::Hour => STATS_BUCKET_MS,
            Window::Day => HOUR_MS,
            Window::Week => 6 * HOUR_MS,
            Window::Month => DAY_MS,
        }
    }

    /// `[from, to)` ending with the bucket that holds `now_ms`: a 5-minute bucket for the last
    /// hour, the hour for longer windows (so they read the store's hourly sums).
    pub fn range(self, now_ms: i64) -> (i64, i64) {
        let to = match self {
            Window::Hour => bucket_of(now_ms) + STATS_BUCKET_MS,
            _ => hour_end(now_ms),
        };
        (to - self.ms(), to)
    }
}

/// The end of the hour holding `now_ms`: ranges ending there read hourly sums.
fn hour_end(now_ms: i64) -> i64 {
    now_ms.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS
}

/// Counts with the totals people read first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub received: i64,
    #[serde(flatten)]
    pub counts: StatCounts,
}

impl Figures {
    fn of(counts: StatCounts) -> Figures {
        Figures {
            received: counts.received(),
            counts,
        }
    }
}

/// An ingest→ack percentile read from the latency histogram: the bucket's upper bound.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    /// At most this many milliseconds; `None` when above the last bound (1 h).
    pub at_most_ms: Option<i64>,
    /// "≤ 500 ms", "> 1 h".
    pub label: String,
}

/// The `q`-th quantile (0..1) of a latency histogram, `None` with no deliveries.
pub fn percentile(latency: &[i64], q: f64) -> Option<Percentile> {
    let total: i64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(match LATENCY_BOUNDS_MS.get(i) {
                Some(&bound) => Percentile {
                    at_most_ms: Some(bound),
                    label: format!("≤ {}", duration_label(bound)),
                },
                None => Percentile {
                    at_most_ms: None,
                    label: "> 1 h".into(),
                },
            });
        }
    }
    None
}

/// "250 ms", "2 s", "5 min", "1 h".
pub fn duration_label(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{} s", ms / 1_000)
    } else if ms < HOUR_MS {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} h", ms / HOUR_MS)
    }
}

/// One row of a breakdown table (per tenant, dataset, event name or channel).
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub key: String,
    /// The tenant, in the operator's per-dataset table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub current: Figures,
    pub previous: Figures,
    /// Last received in the last 30 days (whatever the window).
    pub last_received_ms: Option<i64>,
    /// Received in the last 7 days: TikTok's and Meta's "active".
    pub active_7d: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub last_received_ms: Option<i64>,
    pub last_delivered_ms: Option<i64>,
}

/// The overview page and `GET /v1/stats/overview`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub window: Window,
    pub from_ms: i64,
    pub to_ms: i64,
    pub tenant: Option<String>,
    pub dataset_id: Option<String>,
    pub current: Figures,
    pub previous: Figures,
    pub p50: Option<Percentile>,
    pub p95: Option<Percentile>,
    /// Bars of `step_ms`: events delivered and failed (failed attempts plus dead letters).
    pub series: Vec<SeriesPoint>,
    pub step_ms: i64,
    pub by_tenant: Vec<Breakdown>,
    pub by_dataset: Vec<Breakdown>,
    pub by_event_name: Vec<Breakdown>,
    pub by_channel: Vec<Breakdown>,
    pub freshness: Freshness,
}

/// The datasets a viewer's stats are limited to: those of its allowed assets, and the one
/// asked for. `None`: no limit beyond the tenant.
async fn datasets_for(
    store: &dyn Store,
    who: &Who,
    dataset: Option<&str>,
) -> Result<Option<Vec<String>>, StoreError> {
    let mut allowed: Option<Vec<String>> = None;
    if let Some(assets) = &who.assets {
        let mut datasets: Vec<String> = store
            .list_assets()
            .await?
            .into_iter()
            .filter(|a| Some(&a.tenant) == who.tenant.as_ref() && assets.contains(&a.asset_id))
            .map(|a| a.dataset_id)
            .collect();
        datasets.sort();
        datasets.dedup();
        allowed = Some(datasets);
    }
    Ok(match (allowed, dataset) {
        (None, None) => None,
        (None, Some(d)) => Some(vec![d.to_owned()]),
        (Some(a), None) => Some(a),
        (Some(a), Some(d)) => Some(a.into_iter().filter(|x| x == d).collect()),
    })
}

fn group<F: Fn(&StatsRow) -> (Option<String>, String)>(
    rows: &[StatsRow],
    key: F,
) -> BTreeMap<(Option<String>, String), StatCounts> {
    let mut out: BTreeMap<(Option<String>, String), StatCounts> = BTreeMap::new();
    for r in rows {
        out.entry(key(r)).or_default().add(&r.counts);
    }
    out
}

fn breakdown<F: Fn(&StatsRow) -> (Option<String>, String) + Copy>(
    current: &[StatsRow],
    previous: &[StatsRow],
    month: &[StatsRow],
    now_ms: i64,
    key: F,
) -> Vec<Breakdown> {
    let (cur, prev, last) = (group(current, key), group(previous, key), group(month, key));
    let mut keys: Vec<&(Option<String>, String)> = cur.keys().chain(prev.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<Breakdown> = keys
        .into_iter()
        .map(|k| {
            let last_received_ms = last.get(k).and_then(|c| c.last_received_ms);
            Breakdown {
                key: k.1.clone(),
                tenant: k.0.clone(),
                current: Figures::of(cur.get(k).cloned().unwrap_or_default()),
                previous: Figures::of(prev.get(k).cloned().unwrap_or_default()),
                last_received_ms,
                active_7d: last_received_ms.is_some_and(|t| t >= now_ms - 7 * DAY_MS),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.current
            .received
            .cmp(&a.current.received)
            .then(a.key.cmp(&b.key))
    });
    rows
}

pub async fn overview(
    store: &dyn Store,
    who: &Who,
    window: Window,
    dataset: Option<&str>,
    now_ms: i64,
) -> Result<Overview, StoreError> {
    let (from, to) = window.range(now_ms);
    let datasets = datasets_for(store, who, dataset).await?;
    let filter = |from_ms, to_ms| StatsFilter {
        tenant: who.tenant.clone(),
        datasets: datasets.clone(),
        from_ms,
        to_ms,
    };
    let current = store.stats_totals(&filter(from, to)).await?;
    let previous = store
        .stats_totals(&filter(from - window.ms(), from))
        .await?;
    let month = if window == Window::Month {
        current.clone()
    } else {
        let month_to = hour_end(now_ms);
        store
            .stats_last_seen(&filter(month_to - Window::Month.ms(), month_to))
            .await?
    };
    let series = store
        .stats_series(&filter(from, to), window.step_ms())
        .await?;
    let sum = |rows: &[StatsRow]| {
        let mut c = StatCounts::default();
        for r in rows {
            c.add(&r.counts);
        }
        c
    };
    let (cur, prev, last) = (sum(&current), sum(&previous), sum(&month));
    let operator_view = who.tenant.is_none();
    Ok(Overview {
        window,
        from_ms: from,
        to_ms: to,
        tenant: who.tenant.clone(),
        dataset_id: dataset.map(str::to_owned),
        p50: percentile(&cur.latency, 0.50),
        p95: percentile(&cur.latency, 0.95),
        current: Figures::of(cur),
        previous: Figures::of(prev),
        series: fill_series(series, from, to, window.step_ms()),
        step_ms: window.step_ms(),
        by_tenant: if operator_view {
            breakdown(&current, &previous, &month, now_ms, |r| {
                (None, r.tenant.clone())
            })
        } else {
            Vec::new()
        },
        by_dataset: breakdown(&current, &previous, &month, now_ms, |r| {
            (
                operator_view.then(|| r.tenant.clone()),
                r.dataset_id.clone(),
            )
        }),
        by_event_name: breakdown(&current, &previous, &month, now_ms, |r| {
            (None, r.event_name.clone())
        }),
        by_channel: breakdown(&current, &previous, &month, now_ms, |r| {
            (None, r.channel.clone())
        }),
        freshness: Freshness {
            last_received_ms: last.last_received_ms,
            last_delivered_ms: last.last_delivered_ms,
        },
    })
}

/// Every bar of the window, empty ones included, so the chart's time axis is even.
fn fill_series(points: Vec<SeriesPoint>, from: i64, to: i64, step: i64) -> Vec<SeriesPoint> {
    let start = from.div_euclid(step) * step;
    let mut by_time: BTreeMap<i64, SeriesPoint> =
        points.into_iter().map(|p| (p.bucket_ms, p)).collect();
    let mut out = Vec::new();
    let mut t = start;
    while t < to {
        out.push(by_time.remove(&t).unwrap_or(SeriesPoint {
            bucket_ms: t,
            ..SeriesPoint::default()
        }));
        t += step;
    }
    out
}

/// One entry of the events log: an accepted event or a refusal.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntry {
    Event(EventRecord),
    Refused(RefusalRecord),
}

impl LogEntry {
    pub fn time_ms(&self) -> i64 {
        match self {
            LogEntry::Event(e) => e.accepted_at_ms,
            LogEntry::Refused(r) => r.received_at_ms,
        }
    }

    /// Position in newest-first order: time, then accepted events before refusals, then id.
    fn order_key(&self) -> (i64, u8, i64) {
        match self {
            LogEntry::Event(e) => (e.accepted_at_ms, 1, e.id),
            LogEntry::Refused(r) => (r.received_at_ms, 0, r.id),
        }
    }

    /// The pagination cursor that continues after this entry.
    pub fn cursor(&self) -> String {
        let (t, kind, id) = self.order_key();
        format!("{t}.{kind}.{id}")
    }
}

/// A page of the events log and the cursor of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    pub next: Option<String>,
}

/// A position in the log: time, kind (1 = accepted event, 0 = refusal), row id.
pub type Cursor = (i64, u8, i64);

/// Parses a cursor made by [`LogEntry::cursor`].
pub fn parse_cursor(s: &str) -> Option<(i64, u8, i64)> {
    let mut parts = s.split('.');
    let t = parts.next()?.parse().ok()?;
    let kind = parts.next()?.parse().ok()?;
    let id = parts.next()?.parse().ok()?;
    (parts.next().is_none() && kind <= 1).then_some((t, kind, id))
}

/// Newest first, accepted events and refusals merged; `filter.before` is set from `cursor`.
pub async fn log_page(
    store: &dyn Store,
    mut filter: LogFilter,
    cursor: Option<(i64, u8, i64)>,
) -> Result<LogPage, StoreError> {
    let limit = filter.limit.clamp(1, 500);
    filter.limit = limit + 1;
    // Events (kind 1) come before refusals (kind 0) at the same time.
    let mut events_filter = filter.clone();
    let mut refused_filter = filter;
    if let Some((t, kind, id)) = cursor {
        events_filter.before = Some(if kind == 1 { (t, id) } else { (t, i64::MIN) });
        refused_filter.before = Some(if kind == 1 { (t, i64::MAX) } else { (t, id) });
    }
    let mut entries: Vec<LogEntry> = store
        .list_log_events(&events_filter)
        .await?
        .into_iter()
        .map(LogEntry::Event)
        .chain(
            store
                .list_refusals(&refused_filter)
                .await?
                .into_iter()
                .map(LogEntry::Refused),
        )
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.order_key()));
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    let next = more.then(|| entries.last().map(LogEntry::cursor)).flatten();
    Ok(LogPage { entries, next })
}

/// Delivered `Purchase` events of one dataset in the last 7 days, against Kommo's 10.
#[derive(Debug, Clone, Serialize)]
pub struct PurchaseReadiness {
    pub dataset_id: String,
    pub purchases_delivered_7d: i64,
    pub target: i64,
    pub ready: bool,
}

/// Share of accepted events sent with a click id, per channel.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub channel: String,
    pub accepted: i64,
    pub with_click_id: i64,
    /// Percent, `None` without events.
    pub share_pct: Option<f64>,
}

/// Progress towards Meta's Marketing API "Full access" tier, from this relay's Graph calls.
#[derive(Debug, Clone, Serialize)]
pub struct AccessTier {
    pub successful_calls_15d: i64,
    pub failed_calls_15d: i64,
    pub required_calls: i64,
    /// Calls looked at for the error rate (the last 500 or fewer).
    pub recent_calls: i64,
    pub recent_failed: i64,
    pub error_rate_pct: Option<f64>,
    pub max_error_rate_pct: f64,
    pub meets_calls: bool,
    pub meets_error_rate: bool,
    /// The older thresholds quoted by Meta's Feb-2026 guide, shown as history.
    pub previous_required_calls: i64,
    pub previous_max_error_rate_pct: f64,
}

/// Conversations an ad started in the window, per channel, and the share later converted.
#[derive(Debug, Clone, Serialize)]
pub struct AdStarted {
    pub channel: String,
    pub started: i64,
    pub converted: i64,
    /// Percent, `None` without ad-started conversations.
    pub share_pct: Option<f64>,
}

/// One event name's CRM coverage.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageRow {
    /// Empty when the stage change recorded no event name (e.g. the deal had no contact).
    pub event_name: String,
    pub mapped: i64,
    pub delivered: i64,
    pub share_pct: Option<f64>,
}

/// Event coverage against the 75 % Kommo's article asks for, as the relay can compute it: of
/// the CRM stage changes a rule maps to a conversion, the share whose event Meta accepted.
#[derive(Debug, Clone, Serialize)]
pub struct EventCoverage {
    /// `false` with no mapped stage change in the window (or for a key limited to some
    /// assets: stage changes are not tied to an asset until they become events).
    pub computable: bool,
    /// Why not, when not computable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_computable_because: Option<&'static str>,
    pub mapped: i64,
    pub delivered: i64,
    pub share_pct: Option<f64>,
    pub target_pct: f64,
    pub meets_target: bool,
    pub by_event_name: Vec<CoverageRow>,
    /// How the figure is computed.
    pub how: &'static str,
    /// Why Meta's own event coverage is not the same figure.
    pub meta_note: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub window: Window,
    pub attribution: Vec<Coverage>,
    /// Share of ad-started conversations later converted, per channel.
    pub ad_started: Vec<AdStarted>,
    pub purchase_readiness: Vec<PurchaseReadiness>,
    pub event_coverage: EventCoverage,
    pub access_tier: AccessTier,
}

/// Kommo's article: at least 10 qualified purchase events unlock purchase optimisation.
pub const PURCHASE_TARGET: i64 = 10;
/// Meta's 2026-05 thresholds for Full access: 500 successful calls in 15 days, < 15 % errors
/// over the last 500 requests.
pub const TIER_CALLS: i64 = 500;
pub const TIER_MAX_ERROR_PCT: f64 = 15.0;
pub const TIER_WINDOW_CALLS: i64 = 500;

/// Kommo's article: aim for 75 % event coverage.
pub const COVERAGE_TARGET_PCT: f64 = 75.0;

pub const EVENT_COVERAGE_HOW: &str = "Of the CRM stage changes first seen in the window that a \
    rule maps to a conversion (every stage change except unmapped stages), the share whose event \
    Meta accepted. Stage changes that produced no event (no contact, no click id, too old, \
    refused) and events not yet delivered count against it.";

pub const EVENT_COVERAGE_NOTE: &str = "Meta's own event coverage in Events Manager compares a \
    dataset's Pixel (browser) events with the server events that share their deduplication keys. \
    Business-messaging events have no browser counterpart, so the relay measures coverage of the \
    conversions your CRM reports instead.";

const NO_CRM_CHANGES: &str = "no CRM stage change mapped to a conversion in this window: connect \
    a CRM (capi-relay crm …) and map its stages to events";
const LIMITED_KEY: &str = "this sign-in is limited to some assets, and stage changes are tied \
    to an asset only once they become events";

pub async fn quality(
    store: &dyn Store,
    who: &Who,
    window: Window,
    now_ms: i64,
) -> Result<Quality, StoreError> {
    let (from, to) = window.range(now_ms);
    let datasets = datasets_for(store, who, None).await?;
    let filter = |from_ms, to_ms| StatsFilter {
        tenant: who.tenant.clone(),
        datasets: datasets.clone(),
        from_ms,
        to_ms,
    };
    let rows = store.stats_totals(&filter(from, to)).await?;
    let mut by_channel: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.channel.is_empty()) {
        let e = by_channel.entry(r.channel.clone()).or_default();
        e.0 += r.counts.accepted;
        e.1 += r.counts.with_click_id;
    }
    let attribution = by_channel
        .into_iter()
        .map(|(channel, (accepted, with_click_id))| Coverage {
            channel,
            accepted,
            with_click_id,
            share_pct: (accepted > 0).then(|| 100.0 * with_click_id as f64 / accepted as f64),
        })
        .collect();
    let week_to = hour_end(now_ms);
    let week = store
        .stats_totals(&filter(week_to - 7 * DAY_MS, week_to))
        .await?;
    let mut purchases: BTreeMap<String, i64> = BTreeMap::new();
    for r in week.iter().filter(|r| !r.dataset_id.is_empty()) {
        let n = purchases.entry(r.dataset_id.clone()).or_default();
        if r.event_name == "Purchase" {
            *n += r.counts.delivered;
        }
    }
    let purchase_readiness = purchases
        .into_iter()
        .map(|(dataset_id, n)| PurchaseReadiness {
            dataset_id,
            purchases_delivered_7d: n,
            target: PURCHASE_TARGET,
            ready: n >= PURCHASE_TARGET,
        })
        .collect();
    let scope = LogFilter {
        tenant: who.tenant.clone(),
        within_assets: who.assets.clone(),
        since_ms: Some(from),
        until_ms: Some(to),
        ..LogFilter::default()
    };
    let pct = |part: i64, whole: i64| (whole > 0).then(|| 100.0 * part as f64 / whole as f64);
    let ad_started = store
        .ad_conversations(&scope)
        .await?
        .into_iter()
        .map(|a| AdStarted {
            share_pct: pct(a.converted, a.started),
            channel: a.channel,
            started: a.started,
            converted: a.converted,
        })
        .collect();
    let crm = if who.assets.is_some() {
        Vec::new()
    } else {
        store.crm_coverage(&scope).await?
    };
    let (mapped, delivered) = crm
        .iter()
        .fold((0, 0), |(m, d), r| (m + r.mapped, d + r.delivered));
    let share_pct = pct(delivered, mapped);
    let event_coverage = EventCoverage {
        computable: mapped > 0,
        not_computable_because: if who.assets.is_some() {
            Some(LIMITED_KEY)
        } else {
            (mapped == 0).then_some(NO_CRM_CHANGES)
        },
        mapped,
        delivered,
        share_pct,
        target_pct: COVERAGE_TARGET_PCT,
        meets_target: share_pct.is_some_and(|p| p >= COVERAGE_TARGET_PCT),
        by_event_name: crm
            .into_iter()
            .map(|r| CoverageRow {
                share_pct: pct(r.delivered, r.mapped),
                event_name: r.event_name,
                mapped: r.mapped,
                delivered: r.delivered,
            })
            .collect(),
        how: EVENT_COVERAGE_HOW,
        meta_note: EVENT_COVERAGE_NOTE,
    };
    let calls = store
        .graph_call_stats(now_ms - 15 * DAY_MS, TIER_WINDOW_CALLS)
        .await?;
    let error_rate_pct =
        (calls.recent > 0).then(|| 100.0 * calls.recent_failed as f64 / calls.recent as f64);
    Ok(Quality {
        window,
        attribution,
        ad_started,
        purchase_readiness,
        event_coverage,
        access_tier: AccessTier {
            successful_calls_15d: calls.ok_since,
            failed_calls_15d: calls.failed_since,
            required_calls: TIER_CALLS,
            recent_calls: calls.recent,
            recent_failed: calls.recent_failed,
            error_rate_pct,
            max_error_rate_pct: TIER_MAX_ERROR_PCT,
            meets_calls: calls.ok_since >= TIER_CALLS,
            meets_error_rate: error_rate_pct.is_some_and(|r| r < TIER_MAX_ERROR_PCT),
            previous_required_calls: 1_500,
            previous_max_error_rate_pct: 10.0,
        },
    })
}

/// One group of the errors page.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRow {
    /// `refused` (at ingest, never sent) or `dead` (Meta refused it, or retries ran out).
    pub kind: &'static str,
    pub reason: String,
    pub count: i64,
    pub last_at_ms: i64,
    pub explanation: String,
    pub fix: String,
    /// The newest sample's dashboard path.
    pub sample: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    pub window: Window,
    pub groups: Vec<ErrorRow>,
}

pub async fn errors(
    store: &dyn Store,
    who: &Who,
    window: Window,
    now_ms: i64,
) -> Result<Errors, StoreError> {
    let (from, _) = window.range(now_ms);
    let filter = LogFilter {
        tenant: who.tenant.clone(),
        within_assets: who.assets.clone(),
        since_ms: Some(from),
        ..LogFilter::default()
    };
    let (refused, dead) = store.error_groups(&filter).await?;
    let mut groups: Vec<ErrorRow> = refused
        .into_iter()
        .map(|g| {
            let (explanation, fix) = super::explain::issue(&g.reason);
            ErrorRow {
                kind: "refused",
                sample: format!("/ui/refused/{}", g.sample_id),
                reason: g.reason,
                count: g.count,
                last_at_ms: g.last_at_ms,
                explanation: explanation.into(),
                fix: fix.into(),
            }
        })
        .collect();
    // Dead reasons carry Meta's message; grouped by their kind so ids in messages do not split them.
    let mut by_kind: BTreeMap<String, ErrorRow> = BTreeMap::new();
    for g in dead {
        let kind = super::explain::dead_kind(&g.reason);
        let row = by_kind.entry(kind.clone()).or_insert_with(|| {
            let (explanation, fix) = super::explain::dead(&kind);
            ErrorRow {
                kind: "dead",
                reason: kind.clone(),
                count: 0,
                last_at_ms: 0,
                explanation: explanation.into(),
                fix: fix.into(),
                sample: String::new(),
            }
        });
        row.count += g.count;
        if g.last_at_ms >= row.last_at_ms {
            row.last_at_ms = g.last_at_ms;
            row.sample = format!("/ui/events/{}", g.sample_id);
        }
    }
    groups.extend(by_kind.into_values());
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    Ok(Errors { window, groups })
}

/// One asset on the sources page.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRow {
    pub tenant: String,
    pub channel: String,
    pub asset_id: String,
    pub dataset_id: String,
    pub status: &'static str,
    pub status_reason: Option<String>,
    /// What to run to resume a paused asset with a new token (a revoked or expired one).
    pub fix_command: Option<String>,
    /// What to run (or the Resume button does) once access was fixed on Meta's side and the
    /// current token is good again.
    pub resume_command: Option<String>,
    pub test_event_code: Option<String>,
    pub updated_at_ms: i64,
}

/// Webhook capture per channel (relay-wide: webhooks arrive before they are tied to a tenant).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookHealth {
    pub channel: String,
    pub received: i64,
    pub failed: i64,
    pub pending: i64,
    pub last_received_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sources {
    pub assets: Vec<SourceRow>,
    /// Only for the operator (webhooks are not stored per tenant).
    pub webhooks: Option<Vec<WebhookHealth>>,
    /// Tenant-wide test codes in force.
    pub tenant_test_codes: Vec<(String, String)>,
}

/// Webhooks looked at for the health table.
const WEBHOOKS_SAMPLED: i64 = 1_000;

pub async fn sources(store: &dyn Store, who: &Who) -> Result<Sources, StoreError> {
    let assets = store
        .list_assets()
        .await?
        .into_iter()
        .filter(|a| who.tenant.as_ref().is_none_or(|t| *t == a.tenant))
        .filter(|a| who.assets.as_ref().is_none_or(|x| x.contains(&a.asset_id)))
        .map(|a| {
            let paused = a.status == AssetStatus::Paused;
            SourceRow {
                fix_command: paused.then(|| {
                    format!(
                        "capi-relay assets set-token --asset-id {} --access-token-file NEW_TOKEN_FILE",
                        a.asset_id
                    )
                }),
                resume_command: paused
                    .then(|| format!("capi-relay assets resume --asset-id {}", a.asset_id)),
                status: if paused { "paused" } else { "active" },
                tenant: a.tenant,
                channel: a.channel,
                asset_id: a.asset_id,
                dataset_id: a.dataset_id,
                status_reason: a.status_reason,
                test_event_code: a.test_event_code,
                updated_at_ms: a.updated_at_ms,
            }
        })
        .collect();
    let webhooks = if who.tenant.is_none() {
        let mut by_channel: BTreeMap<String, WebhookHealth> = BTreeMap::new();
        for w in store.list_webhooks(None, WEBHOOKS_SAMPLED).await? {
            // Kept on the record once processed; the body (removed then) says it before.
            let channel = w
                .channel
                .clone()
                .unwrap_or_else(|| webhook_channel(w.body.as_deref().unwrap_or_default()));
            let h = by_channel
                .entry(channel.clone())
                .or_insert_with(|| WebhookHealth {
                    channel,
                    ..WebhookHealth::default()
                });
            h.received += 1;
            match w.state.as_str() {
                "failed" => {
                    h.failed += 1;
                    if h.last_error.is_none() {
                        h.last_error = w.error.clone();
                    }
                }
                "pending" => h.pending += 1,
                _ => {}
            }
            h.last_received_ms = h.last_received_ms.max(Some(w.received_at_ms));
        }
        Some(by_channel.into_values().collect())
    } else {
        None
    };
    let tenant_test_codes = store
        .list_tenants()
        .await?
        .into_iter()
        .filter(|t| who.tenant.as_ref().is_none_or(|x| *x == t.name))
        .filter_map(|t| Some((t.name, t.test_event_code?)))
        .collect();
    Ok(Sources {
        assets,
        webhooks,
        tenant_test_codes,
    })
}

/// The channel of a webhook body from its `object` (the body itself is never shown: it holds
/// customers' messages and phone numbers).
fn webhook_channel(body: &str) -> String {
    let object = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("object").and_then(|o| o.as_str()).map(str::to_owned));
    match object.as_deref() {
        Some("whatsapp_business_account") => "whatsapp",
        Some("page") => "messenger",
        Some("instagram") => "instagram",
        _ => "unknown",
    }
    .into()
}

/// Test codes in force for the viewer: its tenant's and its assets' (`(scope, code)`).
pub async fn active_test_codes(
    store: &dyn Store,
    who: &Who,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut codes = Vec::new();
    for t in store.list_tenants().await? {
        if who.tenant.as_ref().is_none_or(|x| *x == t.name)
            && let Some(code) = t.test_event_code
        {
            codes.push((format!("tenant {}", t.name), code));
        }
    }
    for a in store.list_assets().await? {
        if who.tenant.as_ref().is_none_or(|x| *x == a.tenant)
            && who.assets.as_ref().is_none_or(|x| x.contains(&a.asset_id))
            && let Some(code) = a.test_event_code
        {
            codes.push((format!("asset {}", a.asset_id), code));
        }
    }
    Ok(codes)
}

/// The default tenant's name, for the sandbox's link.
pub const SANDBOX_TENANT: &str = DEFAULT_TENANT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_bounds() {
        let mut h = [0i64; 11];
        assert!(percentile(&h, 0.5).is_none());
        h[1] = 90; // ≤ 500 ms
        h[4] = 10; // ≤ 5 s
        assert_eq!(percentile(&h, 0.5).unwrap().at_most_ms, Some(500));
        assert_eq!(percentile(&h, 0.9).unwrap().at_most_ms, Some(500));
        assert_eq!(percentile(&h, 0.95).unwrap().at_most_ms, Some(5_000));
        h[10] = 1_000;
        let p = percentile(&h, 0.95).unwrap();
        assert_eq!((p.at_most_ms, p.label.as_str()), (None, "> 1 h"));
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        assert_eq!(parse_cursor("1700.1.42"), Some((1700, 1, 42)));
        assert_eq!(parse_cursor("1700.2.42"), None);
        assert_eq!(parse_cursor("x"), None);
        assert_eq!(parse_cursor("1.1.1.1"), None);
    }

    #[test]
    fn windows_end_with_the_current_bucket() {
        let (from, to) = Window::Hour.range(1_000_000);
        assert_eq!(to, 1_200_000);
        assert_eq!(to - from, HOUR_MS);
        // Longer windows end with the hour, so they read the hourly sums.
        let (from, to) = Window::Day.range(1_000_000);
        assert_eq!(to, HOUR_MS);
        assert_eq!(to - from, DAY_MS);
    }
}
