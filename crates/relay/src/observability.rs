//! Prometheus metrics. Labels come only from closed sets (channel, outcome kind), never from
//! ids, so cardinality stays bounded.

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use relay_store::QueueStats;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (tests start many apps).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                3600.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when embedded; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// One ingested event's result: `accepted`, `duplicate` or `rejected`.
pub fn ingested(channel: &'static str, result: &'static str) {
    counter!("capi_relay_events_ingested_total", "channel" => channel, "result" => result)
        .increment(1);
}

pub fn delivered(channel: &'static str, count: u64) {
    counter!("capi_relay_events_delivered_total", "channel" => channel).increment(count);
}

pub fn retried(channel: &'static str, reason: &'static str, count: u64) {
    counter!("capi_relay_events_retried_total", "channel" => channel, "reason" => reason)
        .increment(count);
}

pub fn dead(channel: &'static str, reason: &'static str, count: u64) {
    counter!("capi_relay_events_dead_total", "channel" => channel, "reason" => reason)
        .increment(count);
}

/// Times from acceptance to Meta's acknowledgement of one request's events; the histogram is
/// looked up once per request.
pub fn delivery_latencies(latencies: impl Iterator<Item = Duration>) {
    let histogram = histogram!("capi_relay_delivery_latency_seconds");
    for latency in latencies {
        histogram.record(latency.as_secs_f64());
    }
}

/// Duration of one Graph API request, by outcome class.
pub fn graph_request(outcome: &'static str, latency: Duration) {
    histogram!("capi_relay_graph_request_duration_seconds", "outcome" => outcome)
        .record(latency.as_secs_f64());
}

/// Queue figures, computed when `/metrics` is scraped.
pub fn queue(stats: QueueStats, now_ms: i64) {
    gauge!("capi_relay_queue_depth").set(stats.depth as f64);
    gauge!("capi_relay_dead_letters").set(stats.dead as f64);
    let age = stats
        .oldest_accepted_at_ms
        .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
    gauge!("capi_relay_oldest_queued_event_age_seconds").set(age);
}

/// Interns a channel name to a static label.
pub fn channel_label(channel: &str) -> &'static str {
    match channel {
        "whatsapp" => "whatsapp",
        "messenger" => "messenger",
        "instagram" => "instagram",
        _ => "unknown",
    }
}

/// One webhook request's result: `stored`, `duplicate`, `bad_signature`, `not_configured`.
pub fn webhook_received(result: &'static str) {
    counter!("capi_relay_webhooks_received_total", "result" => result).increment(1);
}

/// One stored webhook parsed: `processed` or `failed` (kept, not understood).
pub fn webhook_processed(result: &'static str) {
    counter!("capi_relay_webhooks_processed_total", "result" => result).increment(1);
}

/// Ad touches captured, by channel.
pub fn touches_captured(channel: &'static str, count: u64) {
    counter!("capi_relay_touches_captured_total", "channel" => channel).increment(count);
}

/// Claims whose lease another owner took before their answer was recorded.
pub fn leases_lost(count: u64) {
    counter!("capi_relay_leases_lost_total").increment(count);
}

/// Heartbeats that could not renew the leases in flight.
pub fn lease_renewal_failed() {
    counter!("capi_relay_lease_renewal_failures_total").increment(1);
}

/// The delivery loop or a sender crashed and was recovered: `panic`, `sender_panic`.
pub fn delivery_restart(reason: &'static str) {
    counter!("capi_relay_delivery_restarts_total", "reason" => reason).increment(1);
}

/// Events leased as they were inserted and handed from ingest straight to a sender.
pub fn delivery_handed_over(events: usize) {
    counter!("capi_relay_delivery_handed_over_events_total").increment(events as u64);
}

/// Delivery errors that were backed off and retried: `database`.
pub fn delivery_error(kind: &'static str) {
    counter!("capi_relay_delivery_errors_total", "kind" => kind).increment(1);
}

/// Counts a Graph request in flight while it lives.
pub struct GraphInFlight(());

impl GraphInFlight {
    pub fn start() -> Self {
        gauge!("capi_relay_graph_requests_in_flight").increment(1.0);
        GraphInFlight(())
    }
}

impl Drop for GraphInFlight {
    fn drop(&mut self) {
        gauge!("capi_relay_graph_requests_in_flight").decrement(1.0);
    }
}
