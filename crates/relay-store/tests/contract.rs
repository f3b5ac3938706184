//! The storage contract, written once and run against SQLite and PostgreSQL.
//!
//! PostgreSQL runs when `CAPI_RELAY_TEST_POSTGRES_URL` is set; under CI (`CI` set) a missing URL
//! fails the tests instead of skipping them. Each test gets a fresh SQLite file or PG schema.

use std::{collections::HashSet, sync::Arc};

use relay_store::{
    ApiKeyRecord, Asset, AssetStatus, Attempt, AuditEntry, ClaimRequest, DEFAULT_TENANT,
    DeadLetterFilter, EventState, HandoffOffer, InsertOutcome, NewEvent, Resolution,
    ResolveRequest, Store, StoreError, Tenant,
    capture::{
        CaptureOptions, ContactKey, ForwardResolution, NewSighting, NewTouch, NewWebhook,
        ReprocessFilter, Requeued, WebhookFinish, WebhookInsert,
    },
};

struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Option<Db> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    let store = relay_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    Some(Db {
        store,
        _dir: Some(dir),
    })
}

async fn postgres() -> Option<Db> {
    let base = match std::env::var("CAPI_RELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CAPI_RELAY_TEST_POSTGRES_URL must be set in CI")
        }
        _ => {
            eprintln!(
                "CAPI_RELAY_TEST_POSTGRES_URL is not set: skipping a PostgreSQL contract test"
            );
            return None;
        }
    };
    let schema = format!("contract_{:016x}", rand::random::<u64>());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL is reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let store = relay_store::connect(&format!("{base}{sep}options=-c%20search_path%3D{schema}"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Some(Db { store, _dir: None })
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { if let Some(db) = super::sqlite().await { super::$name(db.store.clone()).await } })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { if let Some(db) = super::postgres().await { super::$name(db.store.clone()).await } })*
        }
    };
}

contract!(
    graph_calls_are_counted_in_batches_per_day_and_in_the_latest_window,
    hourly_stats_sum_the_five_minute_buckets_and_are_purged_by_whole_hours,
    a_paused_asset_resumes_with_its_token_and_its_held_events_are_claimed,
    migrations_can_run_twice_and_assets_round_trip,
    a_repeated_event_id_is_a_duplicate_only_within_its_dataset,
    inserted_ids_name_the_stored_rows_across_chunks_and_datasets,
    an_all_new_chunk_and_a_chunk_with_repeats_agree_in_one_batch,
    claims_take_only_due_events_of_active_assets_and_datasets,
    a_paused_asset_first_in_line_holds_back_no_other_asset_of_its_dataset,
    an_insert_leases_its_new_events_to_offers_of_datasets_with_nothing_else_due,
    events_handed_over_at_insert_resolve_and_release_as_claimed_ones_do,
    concurrent_claimers_never_share_an_event,
    an_expired_lease_moves_to_another_owner,
    due_datasets_are_listed_once_each_with_their_earliest_due_time,
    a_claim_takes_only_its_own_dataset_oldest_first,
    leases_are_renewed_counted_and_released_by_owner,
    many_claims_and_many_answers_commit_together_each_with_its_own_result,
    renewals_and_resolves_of_many_claims_side_by_side_never_fail,
    each_resolution_sets_state_and_records_the_attempt,
    an_event_keeps_every_attempt_through_retries_and_replays,
    dead_letters_are_listed_and_replayed_by_filter,
    dead_letter_pages_are_bounded_by_payload_size_and_continue_after_their_cursor,
    queue_stats_and_retention_purge,
    payloads_and_times_round_trip_exactly,
    tenants_own_their_assets_and_events,
    a_dataset_belongs_to_one_tenant_and_an_asset_id_to_one_channel,
    api_keys_are_found_by_hash_and_revoked,
    tokens_are_resealed_all_or_nothing,
    the_audit_trail_lists_newest_first,
    // Capture (issue #4).
    webhooks_are_stored_once_per_body_and_processed_or_kept_failed,
    a_webhook_retried_waits_until_due_and_a_failed_one_is_requeued_while_it_has_its_body,
    raw_bodies_are_removed_once_processed_and_forwarded_and_the_record_stays,
    forwards_are_claimed_once_retried_and_resolved,
    sightings_create_one_contact_per_customer_and_touches_never_overwrite,
    contacts_are_found_by_every_identity_and_linked_to_a_customer_id,
    capture_options_default_off_and_round_trip,
    capture_retention_purges_old_touches_contacts_and_webhooks,
    a_user_id_update_rekeys_the_contact_and_the_old_id_resolves_until_retention,
    // CRM (issue #13).
    crm_rules_are_unique_per_stage_and_removed_per_tenant,
    crm_webhooks_wait_for_active_integrations_and_stage_changes_keep_a_produced_outcome,
    crm_pipeline_assets_are_stored_with_the_integration_and_set_or_removed_later,
);

fn asset(id: &str, dataset: &str) -> Asset {
    Asset {
        tenant: DEFAULT_TENANT.into(),
        channel: "whatsapp".into(),
        asset_id: id.into(),
        dataset_id: dataset.into(),
        sealed_token: "token-1".into(),
        test_event_code: None,
        status: AssetStatus::Active,
        status_reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

fn event(dataset: &str, asset: &str, event_id: &str, accepted_at_ms: i64) -> NewEvent {
    NewEvent {
        tenant: DEFAULT_TENANT.into(),
        dataset_id: dataset.into(),
        asset_id: asset.into(),
        channel: "whatsapp".into(),
        event_id: event_id.into(),
        event_name: "Purchase".into(),
        event_time: accepted_at_ms / 1000,
        payload: format!("{{\"event_id\":\"{event_id}\"}}").into(),
        test_event_code: None,
        accepted_at_ms,
        conversation_id: None,
    }
}

fn attempt(outcome: &str, at: i64) -> Attempt {
    Attempt {
        attempted_at_ms: at,
        outcome: outcome.into(),
        http_status: Some(200),
        fbtrace_id: Some("trace".into()),
        message: None,
        latency_ms: 12,
    }
}

/// Claims due events of every due dataset, as the delivery loop does one dataset at a time.
async fn claim_due(
    store: &Arc<dyn Store>,
    owner: &str,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> relay_store::Result<Vec<relay_store::ClaimedEvent>> {
    let mut claimed = Vec::new();
    for due in store.due_datasets(now_ms, now_ms, limit).await? {
        let room = limit - claimed.len() as i64;
        if room <= 0 {
            break;
        }
        claimed.extend(
            store
                .claim_dataset(owner, &due.dataset_id, now_ms, lease_until_ms, room)
                .await?,
        );
    }
    Ok(claimed)
}

async fn seed(store: &Arc<dyn Store>, n: usize) -> Vec<i64> {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    let events: Vec<NewEvent> = (0..n)
        .map(|i| event("d1", "100", &format!("e{i}"), 1_000 + i as i64))
        .collect();
    store
        .insert_events(&events)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            InsertOutcome::Duplicate => panic!("fresh events are not duplicates"),
        })
        .collect()
}

async fn migrations_can_run_twice_and_assets_round_trip(store: Arc<dyn Store>) {
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    store.upsert_asset(&asset("200", "d2")).await.unwrap();
    assert_eq!(
        store.get_asset("100").await.unwrap(),
        Some(asset("100", "d1"))
    );
    assert_eq!(store.list_assets().await.unwrap().len(), 2);

    store
        .pause_asset("100", "auth: token expired", 5)
        .await
        .unwrap();
    let paused = store.get_asset("100").await.unwrap().unwrap();
    assert_eq!(paused.status, AssetStatus::Paused);
    assert_eq!(paused.status_reason.as_deref(), Some("auth: token expired"));
    store.set_asset_token("100", "token-2", 6).await.unwrap();
    let resumed = store.get_asset("100").await.unwrap().unwrap();
    assert_eq!(
        (
            resumed.status,
            resumed.sealed_token.as_str(),
            resumed.status_reason
        ),
        (AssetStatus::Active, "token-2", None)
    );
    assert!(matches!(
        store.set_asset_token("999", "t", 7).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_asset("999").await.unwrap(), None);
}

async fn a_repeated_event_id_is_a_duplicate_only_within_its_dataset(store: Arc<dyn Store>) {
    let first = store
        .insert_events(&[
            event("d1", "100", "a", 1),
            event("d1", "100", "b", 1),
            event("d1", "100", "a", 1),
        ])
        .await
        .unwrap();
    assert!(matches!(first[0], InsertOutcome::Inserted(_)));
    assert!(matches!(first[1], InsertOutcome::Inserted(_)));
    assert_eq!(
        first[2],
        InsertOutcome::Duplicate,
        "repeated within one call"
    );
    let again = store
        .insert_events(&[event("d1", "100", "a", 2), event("d2", "200", "a", 2)])
        .await
        .unwrap();
    assert_eq!(again[0], InsertOutcome::Duplicate);
    assert!(
        matches!(again[1], InsertOutcome::Inserted(_)),
        "another dataset may reuse the id"
    );
    assert_eq!(store.queue_stats().await.unwrap().depth, 3);
}

async fn inserted_ids_name_the_stored_rows_across_chunks_and_datasets(store: Arc<dyn Store>) {
    // Stored earlier, so they come back as duplicates in the middle of the big batch.
    let earlier = [event("d1", "100", "e7", 1), event("d2", "200", "e900", 1)];
    store.insert_events(&earlier).await.unwrap();
    // More rows than one multi-row insert takes, over two datasets, with repeats in the batch.
    let batch: Vec<NewEvent> = (0..1_200)
        .map(|i| {
            let dataset = if i % 3 == 0 { "d2" } else { "d1" };
            let asset = if dataset == "d2" { "200" } else { "100" };
            event(dataset, asset, &format!("e{}", i % 1_100), 10 + i as i64)
        })
        .collect();
    let outcomes = store.insert_events(&batch).await.unwrap();
    assert_outcomes_name_stored_rows(&store, &earlier, &batch, &outcomes).await;
}

async fn an_all_new_chunk_and_a_chunk_with_repeats_agree_in_one_batch(store: Arc<dyn Store>) {
    let earlier = [event("d1", "100", "stored", 1)];
    store.insert_events(&earlier).await.unwrap();
    // 600 new events (a whole chunk with no duplicate), then one stored earlier, then a
    // repeat of the batch's first event.
    let mut batch: Vec<NewEvent> = (0..600)
        .map(|i| event("d1", "100", &format!("n{i}"), 10 + i as i64))
        .collect();
    batch.push(event("d1", "100", "stored", 700));
    batch.push(event("d1", "100", "n0", 701));
    batch.push(event("d1", "100", "last", 702));
    let outcomes = store.insert_events(&batch).await.unwrap();
    assert_outcomes_name_stored_rows(&store, &earlier, &batch, &outcomes).await;
    let new = outcomes
        .iter()
        .filter(|o| matches!(o, InsertOutcome::Inserted(_)))
        .count();
    assert_eq!(new, 601);
}

/// Each first occurrence of a key not in `earlier` is `Inserted` with the id of its stored
/// row; every other event is a `Duplicate`.
async fn assert_outcomes_name_stored_rows(
    store: &Arc<dyn Store>,
    earlier: &[NewEvent],
    batch: &[NewEvent],
    outcomes: &[InsertOutcome],
) {
    assert_eq!(outcomes.len(), batch.len());
    let mut seen: std::collections::HashSet<(Arc<str>, Arc<str>)> = earlier
        .iter()
        .map(|e| (e.dataset_id.clone(), e.event_id.clone()))
        .collect();
    for (e, outcome) in batch.iter().zip(outcomes) {
        let key = (e.dataset_id.clone(), e.event_id.clone());
        let first_time = seen.insert(key);
        let stored = store
            .find_events(&e.event_id, Some(&e.dataset_id), None)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "{}/{}", e.dataset_id, e.event_id);
        match outcome {
            InsertOutcome::Inserted(id) => {
                assert!(first_time, "{}/{} inserted twice", e.dataset_id, e.event_id);
                assert_eq!(stored[0].id, *id, "the id names the stored row");
                assert_eq!(stored[0].accepted_at_ms, e.accepted_at_ms);
            }
            InsertOutcome::Duplicate => {
                assert!(!first_time, "{}/{} is new", e.dataset_id, e.event_id);
            }
        }
    }
}

async fn claims_take_only_due_events_of_active_assets_and_datasets(store: Arc<dyn Store>) {
    let ids = seed(&store, 5).await;
    assert!(
        claim_due(&store, "w", 999, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing due yet"
    );
    let claimed = claim_due(&store, "w", 1_002, 10_000, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..3].to_vec()
    );
    assert!(claimed.iter().all(|e| e.attempts == 1));
    let limited = claim_due(&store, "w", 5_000, 10_000, 1).await.unwrap();
    assert_eq!(limited.len(), 1);

    store.pause_asset("100", "auth", 0).await.unwrap();
    assert!(
        claim_due(&store, "w", 5_000, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "paused asset"
    );
    store.set_asset_token("100", "t", 0).await.unwrap();
    store.pause_dataset("d1", 6_000).await.unwrap();
    assert!(
        claim_due(&store, "w", 5_000, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "paused dataset"
    );
    assert_eq!(
        claim_due(&store, "w", 6_001, 20_000, 10)
            .await
            .unwrap()
            .len(),
        1,
        "pause over"
    );
}

async fn a_paused_asset_first_in_line_holds_back_no_other_asset_of_its_dataset(
    store: Arc<dyn Store>,
) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    store.upsert_asset(&asset("101", "d1")).await.unwrap();
    // The paused asset's events are the oldest, more than a claim takes.
    let mut events: Vec<NewEvent> = (0..5)
        .map(|i| event("d1", "100", &format!("p{i}"), 1_000 + i as i64))
        .collect();
    events.extend((0..3).map(|i| event("d1", "101", &format!("a{i}"), 2_000 + i as i64)));
    store.insert_events(&events).await.unwrap();
    store.pause_asset("100", "auth", 0).await.unwrap();
    let claimed = store
        .claim_dataset("w", "d1", 5_000, 10_000, 2)
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|e| &*e.event_id).collect();
    assert_eq!(ids, ["a0", "a1"], "the active asset's oldest events");
    let rest = store
        .claim_dataset("w2", "d1", 5_000, 10_000, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = rest.iter().map(|e| &*e.event_id).collect();
    assert_eq!(
        ids,
        ["a2"],
        "and then the rest of them, none of the paused asset's"
    );
}

fn offer(dataset: &str, owner: &str, limit: usize) -> HandoffOffer {
    HandoffOffer {
        dataset_id: dataset.into(),
        owner: owner.into(),
        limit,
    }
}

fn event_ids(events: &[relay_store::ClaimedEvent]) -> Vec<&str> {
    events.iter().map(|e| &*e.event_id).collect()
}

async fn an_insert_leases_its_new_events_to_offers_of_datasets_with_nothing_else_due(
    store: Arc<dyn Store>,
) {
    for (id, dataset) in [("100", "d1"), ("101", "d1"), ("200", "d2"), ("300", "d3")] {
        store.upsert_asset(&asset(id, dataset)).await.unwrap();
    }
    // d2 has an older event due; d3 is throttled; asset 101 is paused.
    store
        .insert_events(&[event("d2", "200", "old", 1_000)])
        .await
        .unwrap();
    store.pause_dataset("d3", 100_000).await.unwrap();
    store.pause_asset("101", "auth", 0).await.unwrap();
    let events = [
        event("d1", "100", "e1", 4_000),
        event("d1", "101", "paused", 4_000),
        event("d1", "100", "e1", 4_000),
        event("d1", "100", "e2", 4_001),
        event("d2", "200", "f1", 4_000),
        event("d1", "100", "e3", 4_002),
        event("d3", "300", "g1", 4_000),
    ];
    let offers = [
        offer("d1", "h1", 2),
        offer("d1", "h2", 5),
        offer("d2", "h3", 5),
        offer("d3", "h4", 5),
    ];
    let handed = store
        .insert_events_handing_off(&events, &offers, 5_000, 65_000)
        .await
        .unwrap();
    assert!(matches!(handed.outcomes[2], InsertOutcome::Duplicate));
    assert_eq!(
        handed
            .outcomes
            .iter()
            .filter(|o| matches!(o, InsertOutcome::Inserted(_)))
            .count(),
        6
    );
    assert_eq!(
        event_ids(&handed.claims[0]),
        ["e1", "e2"],
        "in order, up to the limit"
    );
    assert_eq!(
        event_ids(&handed.claims[1]),
        ["e3"],
        "no repeat, no paused asset's event"
    );
    assert!(handed.claims[2].is_empty(), "d2's older event goes first");
    assert!(handed.claims[3].is_empty(), "d3 is throttled");
    let e1 = &handed.claims[0][0];
    assert_eq!(handed.outcomes[0], InsertOutcome::Inserted(e1.id));
    assert_eq!(
        (e1.attempts, e1.accepted_at_ms, &*e1.payload, &*e1.asset_id),
        (1, 4_000, "{\"event_id\":\"e1\"}", "100")
    );
    let ids: Vec<i64> = handed.claims[0].iter().map(|e| e.id).collect();
    assert_eq!(store.count_leased("h1", &ids).await.unwrap(), 2);

    // No claim takes what was handed over; the rest is queued as usual.
    assert!(
        store
            .claim_dataset("w", "d1", 5_000, 65_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "d1's events are leased or paused"
    );
    let d2 = store
        .claim_dataset("w", "d2", 5_000, 65_000, 10)
        .await
        .unwrap();
    assert_eq!(event_ids(&d2), ["old", "f1"]);
    let d3 = store
        .claim_dataset("w", "d3", 200_000, 260_000, 10)
        .await
        .unwrap();
    assert_eq!(event_ids(&d3), ["g1"]);

    // With nothing due any more, d2 takes an offer.
    let more = store
        .insert_events_handing_off(
            &[event("d2", "200", "f2", 6_000)],
            &[offer("d2", "h5", 5)],
            6_000,
            66_000,
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&more.claims[0]), ["f2"]);
}

async fn events_handed_over_at_insert_resolve_and_release_as_claimed_ones_do(
    store: Arc<dyn Store>,
) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    let events: Vec<NewEvent> = (0..4)
        .map(|i| event("d1", "100", &format!("e{i}"), 1_000 + i))
        .collect();
    let handed = store
        .insert_events_handing_off(
            &events,
            &[offer("d1", "h1", 2), offer("d1", "h2", 2)],
            2_000,
            10_000,
        )
        .await
        .unwrap();
    let (first, second) = (&handed.claims[0], &handed.claims[1]);
    let first_ids: Vec<i64> = first.iter().map(|e| e.id).collect();
    let second_ids: Vec<i64> = second.iter().map(|e| e.id).collect();
    assert_eq!(
        store
            .renew_leases(&["h1".to_owned()], 30_000)
            .await
            .unwrap(),
        2
    );
    let resolved = store
        .resolve(
            "h1",
            &first_ids,
            &attempt("delivered", 3_000),
            &Resolution::Delivered {
                delivered_at_ms: 3_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(resolved, 2);
    let record = &store.find_events("e0", Some("d1"), None).await.unwrap()[0];
    assert_eq!(
        (record.state, record.attempts_count, record.attempts.len()),
        (EventState::Delivered, 1, 1)
    );

    // h2's lease ends at 10 s: before then nobody takes its events, after it they are due.
    assert!(
        claim_due(&store, "w", 9_000, 20_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.release_leases("h2", 9_500).await.unwrap(), 2);
    let again = claim_due(&store, "w", 9_500, 20_000, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), second_ids);
    assert!(
        again.iter().all(|e| e.attempts == 1),
        "a release does not count an attempt"
    );
}

async fn concurrent_claimers_never_share_an_event(store: Arc<dyn Store>) {
    let total = 600;
    seed(&store, total).await;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = claim_due(&store, &format!("w{worker}"), 10_000, 100_000, 25)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                mine.extend(claimed.into_iter().map(|e| e.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an event was claimed twice");
    assert_eq!(all.len(), total);
}

async fn an_expired_lease_moves_to_another_owner(store: Arc<dyn Store>) {
    let ids = seed(&store, 1).await;
    assert_eq!(
        claim_due(&store, "old", 2_000, 3_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        claim_due(&store, "new", 2_500, 9_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "lease still held"
    );
    let reclaimed = claim_due(&store, "new", 3_001, 9_000, 10).await.unwrap();
    assert_eq!((reclaimed.len(), reclaimed[0].attempts), (1, 2));
    let stale = store
        .resolve(
            "old",
            &ids,
            &attempt("delivered", 3_100),
            &Resolution::Delivered {
                delivered_at_ms: 3_100,
            },
        )
        .await
        .unwrap();
    assert_eq!(stale, 0, "the old owner no longer holds the event");
    let done = store
        .resolve(
            "new",
            &ids,
            &attempt("delivered", 3_200),
            &Resolution::Delivered {
                delivered_at_ms: 3_200,
            },
        )
        .await
        .unwrap();
    assert_eq!(done, 1);
}

async fn due_datasets_are_listed_once_each_with_their_earliest_due_time(store: Arc<dyn Store>) {
    for (asset_id, dataset) in [("100", "d1"), ("200", "d2"), ("300", "d3"), ("400", "d4")] {
        store.upsert_asset(&asset(asset_id, dataset)).await.unwrap();
    }
    let events = vec![
        event("d1", "100", "a", 1_000),
        event("d1", "100", "b", 1_500),
        event("d2", "200", "c", 2_000),
        event("d3", "300", "d", 1_200),
        event("d4", "400", "e", 1_100),
    ];
    store.insert_events(&events).await.unwrap();
    let list = |now: i64, before: i64| {
        let store = store.clone();
        async move {
            store
                // No dataset here holds a full claim of 1,000.
                .due_datasets(now, before, 1_000)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.dataset_id, d.due_at_ms))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(5_000, 5_000).await,
        [
            ("d1".into(), 1_000),
            ("d4".into(), 1_100),
            ("d3".into(), 1_200),
            ("d2".into(), 2_000)
        ],
        "each dataset once, earliest due first"
    );
    assert_eq!(
        list(5_000, 1_150).await,
        [("d1".into(), 1_000), ("d4".into(), 1_100)],
        "the linger: only datasets due by the given time"
    );
    // d1 holds two events due by 5,000: a full claim of 2 has no linger to wait out, a claim
    // of 3 has; d4, d3 and d2 hold one each.
    let full_claims = |full: i64| {
        let store = store.clone();
        async move {
            store
                .due_datasets(5_000, 900, full)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.dataset_id, d.due_at_ms))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(full_claims(2).await, [("d1".into(), 1_000)]);
    assert!(full_claims(3).await.is_empty());
    assert_eq!(
        store.due_datasets(1_200, 900, 2).await.unwrap().len(),
        0,
        "d1's second event is due only at 1,500"
    );
    store.pause_dataset("d2", 9_000).await.unwrap();
    store.pause_asset("300", "auth", 0).await.unwrap();
    assert_eq!(
        list(5_000, 5_000).await,
        [("d1".into(), 1_000), ("d4".into(), 1_100)],
        "a throttled dataset and a dataset whose only asset is paused wait"
    );
    let claimed = store
        .claim_dataset("w", "d4", 5_000, 15_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        list(5_000, 5_000).await,
        [("d1".into(), 1_000)],
        "a claimed dataset is not due while its lease holds"
    );
    assert_eq!(
        list(15_001, 15_001).await,
        [
            ("d1".into(), 1_000),
            ("d2".into(), 9_000),
            ("d4".into(), 15_000)
        ],
        "due again when the lease ends (and d2 when its throttling pause ends)"
    );
}

async fn a_claim_takes_only_its_own_dataset_oldest_first(store: Arc<dyn Store>) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    store.upsert_asset(&asset("200", "d2")).await.unwrap();
    let events: Vec<NewEvent> = (0..6)
        .map(|i| {
            let (d, a) = if i % 2 == 0 {
                ("d1", "100")
            } else {
                ("d2", "200")
            };
            event(d, a, &format!("e{i}"), 2_000 - i as i64 * 100)
        })
        .collect();
    store.insert_events(&events).await.unwrap();
    let claimed = store
        .claim_dataset("w", "d1", 5_000, 10_000, 2)
        .await
        .unwrap();
    let mut names: Vec<_> = claimed.iter().map(|e| e.event_id.as_str()).collect();
    names.sort();
    assert_eq!(names, ["e2", "e4"], "the two oldest of d1 only");
    assert!(
        claimed
            .iter()
            .all(|e| e.dataset_id == "d1" && e.attempts == 1)
    );
    let rest = store
        .claim_dataset("w2", "d1", 5_000, 10_000, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "the claimed ones are not taken twice");
    assert!(
        store
            .claim_dataset("w", "nope", 5_000, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn leases_are_renewed_counted_and_released_by_owner(store: Arc<dyn Store>) {
    let ids = seed(&store, 3).await;
    let a = store
        .claim_dataset("a", "d1", 5_000, 10_000, 2)
        .await
        .unwrap();
    let b = store
        .claim_dataset("b", "d1", 5_000, 10_000, 2)
        .await
        .unwrap();
    assert_eq!((a.len(), b.len()), (2, 1));
    assert_eq!(store.count_leased("a", &ids).await.unwrap(), 2);
    assert_eq!(store.count_leased("b", &ids).await.unwrap(), 1);
    assert_eq!(
        store
            .renew_leases(&["a".to_owned(), "nobody".to_owned()], 30_000)
            .await
            .unwrap(),
        2
    );
    // At 20 s b's lease has ended and a's, renewed, holds.
    let taken = claim_due(&store, "c", 20_000, 40_000, 10).await.unwrap();
    assert_eq!(
        taken.iter().map(|e| e.id).collect::<Vec<_>>(),
        b.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(taken[0].attempts, 2);
    assert_eq!(store.count_leased("b", &ids).await.unwrap(), 0, "b lost it");
    assert_eq!(store.release_leases("a", 21_000).await.unwrap(), 2);
    let again = claim_due(&store, "d", 21_000, 50_000, 10).await.unwrap();
    assert_eq!(again.len(), 2, "released events are due at once");
    assert!(
        again.iter().all(|e| e.attempts == 1),
        "a release does not count an attempt"
    );
}

async fn many_claims_and_many_answers_commit_together_each_with_its_own_result(
    store: Arc<dyn Store>,
) {
    for (asset_id, dataset) in [("100", "d1"), ("200", "d2"), ("300", "d3")] {
        store.upsert_asset(&asset(asset_id, dataset)).await.unwrap();
    }
    let events = [
        event("d1", "100", "a", 1_000),
        event("d1", "100", "b", 1_001),
        event("d1", "100", "c", 1_002),
        event("d2", "200", "x", 1_003),
        event("d2", "200", "y", 1_004),
    ];
    store.insert_events(&events).await.unwrap();
    let claims =
        [("o1", "d1", 10), ("o2", "d2", 1), ("o3", "d3", 5)].map(|(o, d, limit)| ClaimRequest {
            owner: o.into(),
            dataset_id: d.into(),
            limit,
        });
    let claimed = store.claim_datasets(&claims, 5_000, 50_000).await.unwrap();
    let names = |list: &[relay_store::ClaimedEvent]| -> Vec<String> {
        list.iter().map(|e| e.event_id.clone()).collect()
    };
    assert_eq!(claimed.len(), 3, "one list per claim, in order");
    assert_eq!(names(&claimed[0]), ["a", "b", "c"]);
    assert_eq!(names(&claimed[1]), ["x"], "its own limit, oldest first");
    assert!(claimed[2].is_empty(), "d3 has nothing due");

    let y = store.find_events("y", Some("d2"), None).await.unwrap()[0].id;
    let send = |owner: &str, ids: Vec<i64>, outcome: &str, resolution: Resolution| ResolveRequest {
        owner: owner.into(),
        ids,
        attempt: attempt(outcome, 6_000),
        resolution,
    };
    let delivered = Resolution::Delivered {
        delivered_at_ms: 6_000,
    };
    let sends = [
        send(
            "o1",
            claimed[0].iter().map(|e| e.id).collect(),
            "delivered",
            delivered.clone(),
        ),
        send(
            "o2",
            vec![claimed[1][0].id],
            "retryable:transient",
            Resolution::Retry {
                next_attempt_at_ms: 9_000,
            },
        ),
        // y was never claimed: this owner holds nothing, so nothing changes for it.
        send("stale", vec![y], "delivered", delivered.clone()),
        send("o3", Vec::new(), "delivered", delivered),
    ];
    let counts = store.resolve_many(&sends).await.unwrap();
    assert_eq!(counts, [3, 1, 0, 0], "each send's own count, in order");

    for id in ["a", "b", "c"] {
        let e = &store.find_events(id, Some("d1"), None).await.unwrap()[0];
        assert_eq!(e.state, EventState::Delivered);
        assert_eq!(e.attempts.len(), 1);
        assert_eq!(e.attempts[0].outcome, "delivered");
    }
    let x = &store.find_events("x", Some("d2"), None).await.unwrap()[0];
    assert_eq!(x.state, EventState::Retrying);
    assert_eq!(x.attempts[0].outcome, "retryable:transient");
    let y = &store.find_events("y", Some("d2"), None).await.unwrap()[0];
    assert_eq!(y.state, EventState::Queued);
    assert!(
        y.attempts.is_empty(),
        "a send that held nothing records no attempt"
    );

    // A group whose every send lost its lease changes nothing.
    let lost = [send(
        "gone",
        vec![y.id],
        "delivered",
        Resolution::Delivered {
            delivered_at_ms: 7_000,
        },
    )];
    assert_eq!(store.resolve_many(&lost).await.unwrap(), [0]);
}

/// The heartbeat renews every claim in flight while parallel resolvers record answers: on
/// PostgreSQL both lock rows of many claims, and unless they lock them in one order one of
/// them fails with "deadlock detected".
async fn renewals_and_resolves_of_many_claims_side_by_side_never_fail(store: Arc<dyn Store>) {
    const DATASETS: usize = 40;
    const PER_DATASET: usize = 50;
    for round in 0..3 {
        let mut events = Vec::new();
        for d in 0..DATASETS {
            let (asset_id, dataset) = (format!("{}", 1_000 + d), format!("d{d}"));
            store
                .upsert_asset(&asset(&asset_id, &dataset))
                .await
                .unwrap();
            events.extend((0..PER_DATASET).map(|i| {
                event(
                    &dataset,
                    &asset_id,
                    &format!("r{round}-{i}"),
                    1_000 + i as i64,
                )
            }));
        }
        store.insert_events(&events).await.unwrap();
        let claims: Vec<ClaimRequest> = (0..DATASETS)
            .map(|d| ClaimRequest {
                owner: format!("o{round}-{d}"),
                dataset_id: format!("d{d}"),
                limit: PER_DATASET as i64,
            })
            .collect();
        let claimed = store.claim_datasets(&claims, 5_000, 50_000).await.unwrap();
        let owners: Vec<String> = claims.iter().map(|c| c.owner.clone()).collect();
        let renewer = {
            let (store, owners) = (store.clone(), owners.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    store.renew_leases(&owners, 60_000).await?;
                }
                relay_store::Result::Ok(())
            })
        };
        // Four resolvers, each with every fourth claim, the newest rows first.
        let mut resolvers = Vec::new();
        for r in 0..4 {
            let sends: Vec<ResolveRequest> = (r..DATASETS)
                .step_by(4)
                .rev()
                .map(|d| ResolveRequest {
                    owner: owners[d].clone(),
                    ids: claimed[d].iter().rev().map(|e| e.id).collect(),
                    attempt: attempt("delivered", 6_000),
                    resolution: Resolution::Delivered {
                        delivered_at_ms: 6_000,
                    },
                })
                .collect();
            let store = store.clone();
            resolvers.push(tokio::spawn(
                async move { store.resolve_many(&sends).await },
            ));
        }
        for resolver in resolvers {
            let counts = resolver
                .await
                .unwrap()
                .expect("a resolve beside a renewal succeeds");
            assert!(
                counts.iter().all(|&n| n == PER_DATASET as u64),
                "{counts:?}"
            );
        }
        renewer
            .await
            .unwrap()
            .expect("a renewal beside resolves succeeds");
    }
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.depth, 0, "every event was delivered: {stats:?}");
}

async fn each_resolution_sets_state_and_records_the_attempt(store: Arc<dyn Store>) {
    let ids = seed(&store, 4).await;
    claim_due(&store, "w", 5_000, 50_000, 10).await.unwrap();
    let at = 6_000;
    store
        .resolve(
            "w",
            &ids[0..1],
            &attempt("delivered", at),
            &Resolution::Delivered {
                delivered_at_ms: at,
            },
        )
        .await
        .unwrap();
    store
        .resolve(
            "w",
            &ids[1..2],
            &attempt("retryable:transient", at),
            &Resolution::Retry {
                next_attempt_at_ms: 9_000,
            },
        )
        .await
        .unwrap();
    store
        .resolve(
            "w",
            &ids[2..3],
            &attempt("permanent:invalid_payload", at),
            &Resolution::Dead {
                reason: "Meta said no".into(),
                dead_at_ms: at,
            },
        )
        .await
        .unwrap();
    store
        .resolve(
            "w",
            &ids[3..4],
            &attempt("permanent:auth", at),
            &Resolution::Release { now_ms: at },
        )
        .await
        .unwrap();

    let get = |id: &str| {
        let store = store.clone();
        let id = id.to_owned();
        async move {
            store
                .find_events(&id, Some("d1"), None)
                .await
                .unwrap()
                .remove(0)
        }
    };
    let delivered = get("e0").await;
    assert_eq!(
        (delivered.state, delivered.delivered_at_ms),
        (EventState::Delivered, Some(at))
    );
    assert_eq!(delivered.attempts, vec![attempt("delivered", at)]);
    let retrying = get("e1").await;
    assert_eq!(
        (
            retrying.state,
            retrying.next_attempt_at_ms,
            retrying.attempts_count
        ),
        (EventState::Retrying, 9_000, 1)
    );
    let dead = get("e2").await;
    assert_eq!(
        (dead.state, dead.dead_reason.as_deref(), dead.dead_at_ms),
        (EventState::Dead, Some("Meta said no"), Some(at))
    );
    let released = get("e3").await;
    assert_eq!(
        (released.state, released.attempts_count),
        (EventState::Queued, 0),
        "release undoes the count"
    );
    assert_eq!(released.attempts.len(), 1, "but the attempt is on record");

    assert!(
        claim_due(&store, "w", 8_000, 50_000, 10)
            .await
            .unwrap()
            .iter()
            .all(|e| e.event_id == "e3")
    );
    let again = claim_due(&store, "w", 9_000, 50_000, 10).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["e1"]
    );
    assert_eq!(again[0].attempts, 2);
}

async fn an_event_keeps_every_attempt_through_retries_and_replays(store: Arc<dyn Store>) {
    let ids = seed(&store, 2).await;
    let outcomes = |store: Arc<dyn Store>, event_id: &'static str| async move {
        let r = store
            .find_events(event_id, None, None)
            .await
            .unwrap()
            .remove(0);
        r.attempts
            .iter()
            .map(|a| (a.outcome.clone(), a.attempted_at_ms))
            .collect::<Vec<_>>()
    };
    claim_due(&store, "w", 5_000, 50_000, 10).await.unwrap();
    let retry = Resolution::Retry {
        next_attempt_at_ms: 6_000,
    };
    let first = attempt("retryable:transient", 5_100);
    assert_eq!(store.resolve("w", &ids, &first, &retry).await.unwrap(), 2);
    claim_due(&store, "w", 6_000, 50_000, 10).await.unwrap();
    let delivered = Resolution::Delivered {
        delivered_at_ms: 6_100,
    };
    let dead = Resolution::Dead {
        reason: "refused".into(),
        dead_at_ms: 6_200,
    };
    store
        .resolve("w", &ids[..1], &attempt("delivered", 6_100), &delivered)
        .await
        .unwrap();
    store
        .resolve("w", &ids[1..], &attempt("permanent:other", 6_200), &dead)
        .await
        .unwrap();
    let e1 = DeadLetterFilter {
        event_ids: Some(vec!["e1".into()]),
        ..Default::default()
    };
    assert_eq!(store.replay_dead_letters(&e1, 7_000).await.unwrap(), 1);
    claim_due(&store, "w", 7_000, 50_000, 10).await.unwrap();
    store
        .resolve("w", &ids[1..], &attempt("delivered", 7_100), &delivered)
        .await
        .unwrap();

    assert_eq!(
        outcomes(store.clone(), "e0").await,
        [
            ("retryable:transient".to_string(), 5_100),
            ("delivered".to_string(), 6_100)
        ],
        "one request's attempt is shown for each event it carried"
    );
    assert_eq!(
        outcomes(store.clone(), "e1").await,
        [
            ("retryable:transient".to_string(), 5_100),
            ("permanent:other".to_string(), 6_200),
            ("delivered".to_string(), 7_100)
        ],
        "the attempt before a replay stays on record"
    );
    // A resolve whose leases are all gone records nothing.
    let stale = store
        .resolve("w", &ids, &attempt("delivered", 8_000), &delivered)
        .await
        .unwrap();
    assert_eq!(stale, 0);
    assert_eq!(outcomes(store.clone(), "e1").await.len(), 3);
}

async fn dead_letters_are_listed_and_replayed_by_filter(store: Arc<dyn Store>) {
    let ids = seed(&store, 3).await;
    claim_due(&store, "w", 5_000, 50_000, 10).await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        let dead = Resolution::Dead {
            reason: format!("reason {n}"),
            dead_at_ms: 6_000 + n as i64,
        };
        store
            .resolve("w", &[*id], &attempt("permanent:other", 6_000), &dead)
            .await
            .unwrap();
    }
    let all = store
        .list_dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["e2", "e1", "e0"],
        "newest first"
    );
    let one = DeadLetterFilter {
        event_ids: Some(vec!["e1".into()]),
        ..Default::default()
    };
    assert_eq!(store.list_dead_letters(&one).await.unwrap().len(), 1);
    let other_dataset = DeadLetterFilter {
        dataset_id: Some("d9".into()),
        ..Default::default()
    };
    assert!(
        store
            .list_dead_letters(&other_dataset)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(store.replay_dead_letters(&one, 7_000).await.unwrap(), 1);
    let replayed = store.find_events("e1", None, None).await.unwrap().remove(0);
    assert_eq!(
        (
            replayed.state,
            replayed.attempts_count,
            replayed.dead_reason
        ),
        (EventState::Queued, 0, None)
    );
    assert_eq!(
        claim_due(&store, "w", 7_000, 50_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let rest = DeadLetterFilter {
        asset_id: Some("100".into()),
        ..Default::default()
    };
    assert_eq!(store.replay_dead_letters(&rest, 7_000).await.unwrap(), 2);
    assert_eq!(store.queue_stats().await.unwrap().dead, 0);
}

async fn dead_letter_pages_are_bounded_by_payload_size_and_continue_after_their_cursor(
    store: Arc<dyn Store>,
) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    // Five dead letters of 3,000 payload characters; e3 died last, e0 first.
    let events: Vec<NewEvent> = (0..5)
        .map(|i| NewEvent {
            payload: format!("{{\"pad\":\"{}\"}}", "x".repeat(2_990)).into(),
            ..event("d1", "100", &format!("e{i}"), 1_000 + i as i64)
        })
        .collect();
    store.insert_events(&events).await.unwrap();
    let claimed = claim_due(&store, "w", 5_000, 50_000, 10).await.unwrap();
    for (n, e) in claimed.iter().enumerate() {
        let dead_at = if e.event_id == "e3" {
            9_000
        } else {
            6_000 + n as i64
        };
        let dead = Resolution::Dead {
            reason: "refused".into(),
            dead_at_ms: dead_at,
        };
        store
            .resolve("w", &[e.id], &attempt("permanent:other", dead_at), &dead)
            .await
            .unwrap();
    }
    let filter = DeadLetterFilter::default();
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_dead_letters_page(&filter, before, 7_000)
            .await
            .unwrap();
        assert!(page.items.len() <= 2, "7,000 characters hold two payloads");
        seen.extend(page.items.iter().map(|r| r.event_id.clone()));
        pages += 1;
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ["e3", "e4", "e2", "e1", "e0"],
        "newest death first, each once"
    );
    // One row always comes back, however large; `limit` still counts rows.
    let one = store
        .list_dead_letters_page(&filter, None, 10)
        .await
        .unwrap();
    assert_eq!((one.items.len(), one.next_before.is_some()), (1, true));
    let limited = DeadLetterFilter {
        limit: Some(3),
        ..Default::default()
    };
    let page = store
        .list_dead_letters_page(&limited, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.items[0].attempts.len() == 1, "with their attempts");
}

async fn queue_stats_and_retention_purge(store: Arc<dyn Store>) {
    let ids = seed(&store, 3).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.oldest_accepted_at_ms, stats.dead),
        (3, Some(1_000), 0)
    );
    claim_due(&store, "w", 5_000, 50_000, 10).await.unwrap();
    store
        .resolve(
            "w",
            &ids[..2],
            &attempt("delivered", 6_000),
            &Resolution::Delivered {
                delivered_at_ms: 6_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.queue_stats().await.unwrap().depth, 1);
    // e0 was accepted at 1000, e1 at 1001: only e0 is older than the cut-off; e2 is unfinished.
    assert_eq!(store.purge_finished(1_001).await.unwrap(), 1);
    assert!(
        store
            .find_events("e0", None, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.find_events("e1", None, None).await.unwrap().len(), 1);
    assert_eq!(
        store.purge_finished(i64::MAX).await.unwrap(),
        1,
        "never an event still in the queue"
    );
    assert_eq!(store.find_events("e2", None, None).await.unwrap().len(), 1);
    // A purged id may be accepted again: the deduplication window has passed.
    let again = store
        .insert_events(&[event("d1", "100", "e0", 9_000)])
        .await
        .unwrap();
    assert!(matches!(again[0], InsertOutcome::Inserted(_)));
}

async fn payloads_and_times_round_trip_exactly(store: Arc<dyn Store>) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    let payload = format!(
        "{{\"event_name\":\"Purchase\",\"user_data\":{{\"fn\":\"São Paulo – 정 ✓\"}},\"long\":\"{}\"}}",
        "x".repeat(20_000)
    );
    let far_future = 4_102_444_800_000_i64; // 2100-01-01 in ms
    let mut e = event("d1", "100", "unicode", far_future);
    e.payload = payload.as_str().into();
    e.test_event_code = Some("TEST123".into());
    e.event_time = 1_767_000_000;
    store.insert_events(&[e]).await.unwrap();
    let record = store
        .find_events("unicode", None, None)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(record.payload, payload);
    assert_eq!(
        (record.accepted_at_ms, record.event_time),
        (far_future, 1_767_000_000)
    );
    assert_eq!(record.test_event_code.as_deref(), Some("TEST123"));
    let claimed = claim_due(&store, "w", far_future, far_future + 1, 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].payload, payload);
    assert_eq!(
        store.recent_events(10).await.unwrap()[0].event_id,
        "unicode"
    );
}

fn tenant(name: &str) -> Tenant {
    Tenant {
        name: name.into(),
        test_event_code: None,
        created_at_ms: 10,
    }
}

/// Issue 12 A.3: two tenants on one dataset would see each other's event ids as `duplicate`.
async fn a_dataset_belongs_to_one_tenant_and_an_asset_id_to_one_channel(store: Arc<dyn Store>) {
    for name in ["acme", "beta"] {
        assert!(store.create_tenant(&tenant(name)).await.unwrap());
    }
    let of = |tenant: &str, id: &str, dataset: &str| Asset {
        tenant: tenant.into(),
        ..asset(id, dataset)
    };
    store
        .upsert_asset(&of("acme", "500", "shared"))
        .await
        .unwrap();
    // The same tenant may put several assets on its dataset.
    store
        .upsert_asset(&of("acme", "501", "shared"))
        .await
        .unwrap();

    let refused = store.upsert_asset(&of("beta", "600", "shared")).await;
    let Err(StoreError::Conflict(message)) = refused else {
        panic!("another tenant's dataset is refused: {refused:?}");
    };
    assert!(
        message.contains("dataset shared belongs to another tenant"),
        "{message}"
    );
    assert!(
        !message.contains("acme"),
        "the owner is not named: {message}"
    );
    // Nothing of the refused asset was stored, and beta can use a dataset of its own.
    assert_eq!(store.get_asset("600").await.unwrap(), None);
    store
        .upsert_asset(&of("beta", "600", "beta-own"))
        .await
        .unwrap();

    // Moving acme's assets elsewhere does not free the dataset: its events are still there.
    store
        .upsert_asset(&of("acme", "500", "acme-new"))
        .await
        .unwrap();
    store
        .upsert_asset(&of("acme", "501", "acme-new"))
        .await
        .unwrap();
    assert!(matches!(
        store.upsert_asset(&of("beta", "600", "shared")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_asset("600").await.unwrap().unwrap().dataset_id,
        "beta-own"
    );

    // An asset id registered on one channel is not silently replaced by another channel's.
    let before = store.get_asset("500").await.unwrap().unwrap();
    let mut instagram = of("acme", "500", "acme-ig");
    instagram.channel = "instagram".into();
    let refused = store.upsert_asset(&instagram).await;
    let Err(StoreError::Conflict(message)) = refused else {
        panic!("a channel collision is refused: {refused:?}");
    };
    assert!(
        message.contains("asset 500 is already registered as a whatsapp asset"),
        "{message}"
    );
    assert_eq!(store.get_asset("500").await.unwrap(), Some(before));
    // The refused registration claimed no dataset: beta may take `acme-ig`.
    store
        .upsert_asset(&of("beta", "601", "acme-ig"))
        .await
        .unwrap();

    // Two tenants registering one new dataset at the same moment: exactly one wins.
    for round in 0..5 {
        let dataset = format!("race-{round}");
        let (first, second) = (
            of("acme", &format!("70{round}"), &dataset),
            of("beta", &format!("80{round}"), &dataset),
        );
        let (a, b) = tokio::join!(store.upsert_asset(&first), store.upsert_asset(&second));
        assert!(a.is_ok() != b.is_ok(), "round {round}: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(loser, Err(StoreError::Conflict(_))), "{loser:?}");
    }
}

async fn tenants_own_their_assets_and_events(store: Arc<dyn Store>) {
    // The migration creates the default tenant, which owns everything from before tenancy.
    let default = store.get_tenant(DEFAULT_TENANT).await.unwrap().unwrap();
    assert_eq!(default.test_event_code, None);
    assert!(store.create_tenant(&tenant("acme")).await.unwrap());
    assert!(!store.create_tenant(&tenant("acme")).await.unwrap());
    store
        .set_tenant_test_event_code("acme", Some("TEST42"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_tenant("acme")
            .await
            .unwrap()
            .unwrap()
            .test_event_code,
        Some("TEST42".into())
    );
    assert!(matches!(
        store.set_tenant_test_event_code("nobody", None).await,
        Err(StoreError::NotFound(_))
    ));
    let names: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "default"]);

    let mut acme_asset = asset("300", "d3");
    acme_asset.tenant = "acme".into();
    acme_asset.test_event_code = Some("TESTA".into());
    store.upsert_asset(&acme_asset).await.unwrap();
    assert_eq!(
        store.get_asset("300").await.unwrap(),
        Some(acme_asset.clone())
    );
    // Another tenant cannot take the asset over, and the row is unchanged.
    let mut stolen = asset("300", "d9");
    stolen.tenant = DEFAULT_TENANT.into();
    assert!(matches!(
        store.upsert_asset(&stolen).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_asset("300").await.unwrap(), Some(acme_asset));

    let mut mine = event("d3", "300", "same-id", 1_000);
    mine.tenant = "acme".into();
    store
        .insert_events(&[mine, event("d1", "100", "same-id", 1_000)])
        .await
        .unwrap();
    assert_eq!(
        store
            .find_events("same-id", None, None)
            .await
            .unwrap()
            .len(),
        2
    );
    let acme = store
        .find_events("same-id", None, Some("acme"))
        .await
        .unwrap();
    assert_eq!((acme.len(), acme[0].tenant.as_str()), (1, "acme"));
    assert!(
        store
            .find_events("same-id", Some("d1"), Some("acme"))
            .await
            .unwrap()
            .is_empty()
    );

    // Dead letters are scoped by tenant and by a key's assets.
    let claimed = claim_due(&store, "w", 2_000, 9_000, 10).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let dead = Resolution::Dead {
        reason: "bad".into(),
        dead_at_ms: 2_000,
    };
    store
        .resolve("w", &ids, &attempt("permanent:invalid", 2_000), &dead)
        .await
        .unwrap();
    let scoped = |tenant: &str, assets: Option<Vec<String>>| DeadLetterFilter {
        tenant: Some(tenant.into()),
        within_assets: assets,
        ..DeadLetterFilter::default()
    };
    let listed = store
        .list_dead_letters(&scoped("acme", None))
        .await
        .unwrap();
    assert_eq!((listed.len(), listed[0].asset_id.as_str()), (1, "300"));
    let none = scoped("acme", Some(vec!["100".into()]));
    assert!(store.list_dead_letters(&none).await.unwrap().is_empty());
    assert_eq!(store.replay_dead_letters(&none, 3_000).await.unwrap(), 0);
    let empty = scoped("acme", Some(vec![]));
    assert_eq!(store.replay_dead_letters(&empty, 3_000).await.unwrap(), 0);
    assert_eq!(
        store
            .replay_dead_letters(&scoped("acme", None), 3_000)
            .await
            .unwrap(),
        1
    );
    let default_dead = store
        .list_dead_letters(&scoped(DEFAULT_TENANT, None))
        .await
        .unwrap();
    assert_eq!(
        default_dead.len(),
        1,
        "the other tenant's dead letter stays"
    );
}

async fn api_keys_are_found_by_hash_and_revoked(store: Arc<dyn Store>) {
    store.create_tenant(&tenant("acme")).await.unwrap();
    let key = ApiKeyRecord {
        id: "key_1".into(),
        tenant: "acme".into(),
        key_hash: "ab".repeat(32),
        label: Some("crm".into()),
        assets: Some(vec!["300".into(), "301".into()]),
        created_at_ms: 5,
        revoked_at_ms: None,
    };
    store.create_api_key(&key).await.unwrap();
    let mut all_assets = key.clone();
    all_assets.id = "key_2".into();
    all_assets.key_hash = "cd".repeat(32);
    all_assets.assets = None;
    store.create_api_key(&all_assets).await.unwrap();
    // The hash is unique.
    assert!(store.create_api_key(&key).await.is_err());

    assert_eq!(
        store.find_api_key(&key.key_hash).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.find_api_key("00").await.unwrap(), None);
    assert_eq!(store.list_api_keys(Some("acme")).await.unwrap().len(), 2);
    assert!(
        store
            .list_api_keys(Some(DEFAULT_TENANT))
            .await
            .unwrap()
            .is_empty()
    );

    let revoked = store.revoke_api_key("key_1", 50).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(50));
    // Revoking again keeps the first time.
    assert_eq!(
        store
            .revoke_api_key("key_1", 60)
            .await
            .unwrap()
            .revoked_at_ms,
        Some(50)
    );
    assert_eq!(
        store
            .find_api_key(&key.key_hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        Some(50)
    );
    assert!(matches!(
        store.revoke_api_key("key_9", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn tokens_are_resealed_all_or_nothing(store: Arc<dyn Store>) {
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    store.upsert_asset(&asset("200", "d2")).await.unwrap();
    let stale = vec![
        ("100".to_owned(), "token-1".to_owned(), "new-1".to_owned()),
        (
            "200".to_owned(),
            "not-the-stored-one".to_owned(),
            "new-2".to_owned(),
        ),
    ];
    assert!(matches!(
        store.reseal_tokens(&stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_asset("100").await.unwrap().unwrap().sealed_token,
        "token-1"
    );
    let fresh = vec![
        ("100".to_owned(), "token-1".to_owned(), "new-1".to_owned()),
        ("200".to_owned(), "token-1".to_owned(), "new-2".to_owned()),
    ];
    assert_eq!(store.reseal_tokens(&fresh).await.unwrap(), 2);
    assert_eq!(
        store.get_asset("200").await.unwrap().unwrap().sealed_token,
        "new-2"
    );
}

async fn the_audit_trail_lists_newest_first(store: Arc<dyn Store>) {
    store.create_tenant(&tenant("acme")).await.unwrap();
    for (i, (action, t)) in [
        ("tenant.create", Some("acme")),
        ("key.create", Some("acme")),
        ("master_key.rotate", None),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .append_audit(&AuditEntry {
                at_ms: 100 + i as i64,
                actor: "cli:ops".into(),
                action: action.into(),
                tenant: t.map(str::to_owned),
                target: Some(format!("target-{i}")),
                detail: Some("{\"label\":\"crm\"}".into()),
            })
            .await
            .unwrap();
    }
    let all = store.list_audit(None, 10).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["master_key.rotate", "key.create", "tenant.create"]
    );
    assert_eq!(all[1].detail.as_deref(), Some("{\"label\":\"crm\"}"));
    assert_eq!(store.list_audit(Some("acme"), 10).await.unwrap().len(), 2);
    assert_eq!(store.list_audit(None, 1).await.unwrap().len(), 1);
}

// ---- Capture (issue #4): webhooks, forwards, contacts, touches ----

fn webhook(body: &str, at: i64, forward: bool) -> NewWebhook {
    NewWebhook {
        body: body.as_bytes().to_vec(),
        body_sha256: format!("{:x}", body.len()) + body,
        signature: "sha256=00".into(),
        waba_hint: None,
        received_at_ms: at,
        forward,
    }
}

async fn webhooks_are_stored_once_per_body_and_processed_or_kept_failed(store: Arc<dyn Store>) {
    // Bytes that are not UTF-8 round-trip exactly.
    let mut raw = webhook("{\"a\":1}", 1_000, false);
    raw.body.push(0xff);
    let WebhookInsert::Inserted(first) = store.insert_webhook(&raw).await.unwrap() else {
        panic!("first insert is stored");
    };
    assert_eq!(
        store.insert_webhook(&raw).await.unwrap(),
        WebhookInsert::Duplicate
    );
    let WebhookInsert::Inserted(second) = store
        .insert_webhook(&webhook("{\"b\":2}", 2_000, false))
        .await
        .unwrap()
    else {
        panic!("another body is stored");
    };
    let pending = store.pending_webhooks(i64::MAX, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.id).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(pending[0].body, raw.body);
    store
        .finish_webhook(first, Some("whatsapp"), WebhookFinish::Processed, 3_000)
        .await
        .unwrap();
    store
        .finish_webhook(
            second,
            None,
            WebhookFinish::Failed {
                error: "the body is not JSON",
            },
            3_000,
        )
        .await
        .unwrap();
    assert!(
        store
            .pending_webhooks(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let failed = store.list_webhooks(Some("failed"), 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("the body is not JSON"));
    assert_eq!(store.list_webhooks(None, 10).await.unwrap().len(), 2);
}

async fn a_webhook_retried_waits_until_due_and_a_failed_one_is_requeued_while_it_has_its_body(
    store: Arc<dyn Store>,
) {
    let mut ids = Vec::new();
    for (body, at) in [
        ("{\"r\":1}", 1_000),
        ("{\"r\":2}", 2_000),
        ("{\"r\":3}", 3_000),
    ] {
        let WebhookInsert::Inserted(id) = store
            .insert_webhook(&webhook(body, at, false))
            .await
            .unwrap()
        else {
            panic!()
        };
        ids.push(id);
    }
    let retry = WebhookFinish::Retry {
        next_at_ms: 10_000,
        error: "try 1 met a store error",
    };
    store
        .finish_webhook(ids[0], None, retry, 4_000)
        .await
        .unwrap();
    let due = |now| {
        let store = store.clone();
        async move {
            let pending = store.pending_webhooks(now, 10).await.unwrap();
            pending
                .iter()
                .map(|p| (p.id, p.attempts))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        due(9_999).await,
        [(ids[1], 0), (ids[2], 0)],
        "waits until due"
    );
    assert_eq!(due(10_000).await, [(ids[0], 1), (ids[1], 0), (ids[2], 0)]);
    let shown = store.list_webhooks(Some("pending"), 10).await.unwrap();
    let first = shown.iter().find(|w| w.id == ids[0]).unwrap();
    assert_eq!(
        (first.attempts, first.next_attempt_at_ms),
        (1, Some(10_000))
    );
    assert_eq!(first.error.as_deref(), Some("try 1 met a store error"));

    for id in &ids {
        let failed = WebhookFinish::Failed { error: "gave up" };
        store
            .finish_webhook(*id, Some("whatsapp"), failed, 11_000)
            .await
            .unwrap();
    }
    // Only the ones named, and only failed ones.
    let only_second = ReprocessFilter {
        ids: vec![ids[1], 999_999],
        since_ms: None,
    };
    assert_eq!(
        store.requeue_failed_webhooks(&only_second).await.unwrap(),
        Requeued {
            requeued: 1,
            without_body: 0
        }
    );
    assert_eq!(due(i64::MAX).await, [(ids[1], 0)]);
    let requeued = &store.list_webhooks(Some("pending"), 10).await.unwrap()[0];
    assert_eq!(
        (requeued.error.as_deref(), requeued.processed_at_ms),
        (None, None)
    );
    assert_eq!(requeued.channel.as_deref(), Some("whatsapp"));
    // A failed body past its retention cannot be processed again: counted, not requeued.
    assert_eq!(
        store
            .remove_webhook_bodies(0, 11_000, 12_000)
            .await
            .unwrap(),
        2
    );
    let since = ReprocessFilter {
        ids: Vec::new(),
        since_ms: Some(1_500),
    };
    assert_eq!(
        store.requeue_failed_webhooks(&since).await.unwrap(),
        Requeued {
            requeued: 0,
            without_body: 1
        }
    );
    assert_eq!(
        store
            .requeue_failed_webhooks(&ReprocessFilter::default())
            .await
            .unwrap(),
        Requeued {
            requeued: 0,
            without_body: 2
        }
    );
}

async fn raw_bodies_are_removed_once_processed_and_forwarded_and_the_record_stays(
    store: Arc<dyn Store>,
) {
    let insert = |body: &'static str, forward: bool| {
        let store = store.clone();
        async move {
            match store
                .insert_webhook(&webhook(body, 1_000, forward))
                .await
                .unwrap()
            {
                WebhookInsert::Inserted(id) => id,
                WebhookInsert::Duplicate => panic!("{body} is new"),
            }
        }
    };
    let processed = insert("{\"wa_id\":\"5511987654321\"}", false);
    let processed = processed.await;
    let forwarded = insert("{\"fwd\":1}", true).await;
    let failed = insert("{\"failed\":1}", false).await;
    let pending = insert("{\"pending\":1}", false).await;
    for (id, finish) in [
        (processed, WebhookFinish::Processed),
        (forwarded, WebhookFinish::Processed),
        (failed, WebhookFinish::Failed { error: "not JSON" }),
    ] {
        store
            .finish_webhook(id, Some("whatsapp"), finish, 2_000)
            .await
            .unwrap();
    }
    // Processed ones finished by 1_999 only: nothing yet (a debug retention still holds them).
    assert_eq!(
        store.remove_webhook_bodies(1_999, 0, 5_000).await.unwrap(),
        0
    );
    // Processed and not waiting to be forwarded: removed. The failed one is kept for its
    // own retention, the pending and the unforwarded ones until they are done.
    assert_eq!(
        store.remove_webhook_bodies(2_000, 0, 5_000).await.unwrap(),
        1
    );
    let by_id = |list: &[relay_store::capture::WebhookRecord], id| {
        list.iter().find(|w| w.id == id).cloned().unwrap()
    };
    let list = store.list_webhooks(None, 10).await.unwrap();
    let gone = by_id(&list, processed);
    assert_eq!((gone.body, gone.body_removed_at_ms), (None, Some(5_000)));
    assert_eq!(
        (gone.state.as_str(), gone.channel.as_deref()),
        ("processed", Some("whatsapp"))
    );
    for id in [forwarded, failed, pending] {
        assert!(by_id(&list, id).body.is_some(), "{id} keeps its body");
    }
    // The sha256 stays: a redelivery of the removed body is still a duplicate.
    assert_eq!(
        store
            .insert_webhook(&webhook("{\"wa_id\":\"5511987654321\"}", 9_000, false))
            .await
            .unwrap(),
        WebhookInsert::Duplicate
    );
    let jobs = store.claim_forwards("o", 2_000, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    store
        .resolve_forward(forwarded, "o", &ForwardResolution::Done)
        .await
        .unwrap();
    assert_eq!(
        store
            .remove_webhook_bodies(2_000, 2_000, 6_000)
            .await
            .unwrap(),
        2
    );
    let list = store.list_webhooks(None, 10).await.unwrap();
    assert!(by_id(&list, forwarded).body.is_none());
    assert!(by_id(&list, failed).body.is_none());
    assert!(by_id(&list, pending).body.is_some());
}

async fn forwards_are_claimed_once_retried_and_resolved(store: Arc<dyn Store>) {
    store
        .insert_webhook(&webhook("{\"no\":1}", 1_000, false))
        .await
        .unwrap();
    let WebhookInsert::Inserted(id) = store
        .insert_webhook(&webhook("{\"fwd\":1}", 1_000, true))
        .await
        .unwrap()
    else {
        panic!()
    };
    let jobs = store.claim_forwards("a", 1_000, 5_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "only the webhook queued for forwarding");
    assert_eq!((jobs[0].id, jobs[0].attempts), (id, 1));
    assert_eq!(jobs[0].signature, "sha256=00");
    assert!(
        store
            .claim_forwards("b", 1_000, 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .resolve_forward(
            id,
            "a",
            &ForwardResolution::Retry {
                next_at_ms: 2_000,
                error: "HTTP 503".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_forwards("b", 1_500, 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.claim_forwards("b", 2_000, 9_000, 10).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    // A lease that ran out moves to another owner; the late owner's result is ignored.
    let taken = store.claim_forwards("c", 9_001, 20_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    store
        .resolve_forward(id, "b", &ForwardResolution::Done)
        .await
        .unwrap();
    store
        .resolve_forward(
            id,
            "c",
            &ForwardResolution::Dead {
                error: "HTTP 404".into(),
            },
        )
        .await
        .unwrap();
    let shown = store.list_webhooks(None, 10).await.unwrap();
    let fwd = shown.iter().find(|w| w.id == id).unwrap();
    assert_eq!(fwd.forward_state.as_deref(), Some("dead"));
    assert_eq!(fwd.forward_error.as_deref(), Some("HTTP 404"));
    assert!(
        store
            .claim_forwards("d", 99_000, 100_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn sighting(
    phone: Option<&str>,
    user: Option<&str>,
    touch: Option<(&str, i64, Option<&str>)>,
) -> NewSighting {
    let at = touch.map_or(1_000, |t| t.1);
    NewSighting {
        channel: "whatsapp".into(),
        asset_id: "100".into(),
        phone_hash: phone.map(str::to_owned),
        wa_user_id: user.map(str::to_owned),
        scoped_id: None,
        conversation_id: format!("cv1-{}", phone.or(user).unwrap()),
        seen_at_ms: at,
        touch: touch.map(|(mid, at, click)| NewTouch {
            message_id: mid.into(),
            touched_at_ms: at,
            click_id: click.map(str::to_owned),
            ad_id: Some("ad-1".into()),
            source_type: Some("ad".into()),
            headline: Some("Café".into()),
            ..NewTouch::default()
        }),
    }
}

async fn sightings_create_one_contact_per_customer_and_touches_never_overwrite(
    store: Arc<dyn Store>,
) {
    let a = store
        .record_sighting(&sighting(Some("h1"), None, Some(("m1", 1_000, Some("C1")))))
        .await
        .unwrap();
    assert!(a.touch_inserted);
    // A redelivery of the same message with other data changes nothing.
    let again = store
        .record_sighting(&sighting(
            Some("h1"),
            None,
            Some(("m1", 5_000, Some("OTHER"))),
        ))
        .await
        .unwrap();
    assert_eq!(again.contact_id, a.contact_id);
    assert!(!again.touch_inserted);
    // The same customer, now with a user id too, and a later touch without click id.
    let b = store
        .record_sighting(&sighting(
            Some("h1"),
            Some("US.1"),
            Some(("m2", 2_000, None)),
        ))
        .await
        .unwrap();
    assert_eq!(b.contact_id, a.contact_id);
    // A message without a referral only updates the contact.
    store
        .record_sighting(&sighting(Some("h1"), None, None))
        .await
        .unwrap();
    // A user id seen alone, a phone seen alone, then both together: the two contacts stay
    // apart and nothing fails (an identity is never moved from one contact to another).
    let by_user = store
        .record_sighting(&sighting(None, Some("US.2"), None))
        .await
        .unwrap();
    let by_phone = store
        .record_sighting(&sighting(Some("hx"), None, None))
        .await
        .unwrap();
    let both = store
        .record_sighting(&sighting(
            Some("hx"),
            Some("US.2"),
            Some(("m9", 4_000, Some("C9"))),
        ))
        .await
        .unwrap();
    assert!([by_user.contact_id, by_phone.contact_id].contains(&both.contact_id));
    for (key, id) in [
        (ContactKey::WaUserId("US.2".into()), by_user.contact_id),
        (ContactKey::PhoneHash("hx".into()), by_phone.contact_id),
    ] {
        let found = store.find_contact("whatsapp", "100", &key).await.unwrap();
        assert_eq!(found.map(|c| c.id), Some(id), "{key:?}");
    }
    let touches = store.contact_touches(a.contact_id).await.unwrap();
    assert_eq!(touches.len(), 2);
    assert_eq!(touches[0].touch.message_id, "m2", "newest first");
    assert_eq!(touches[1].touch.click_id.as_deref(), Some("C1"));
    assert_eq!(touches[1].touch.touched_at_ms, 1_000);
    assert_eq!(touches[1].touch.headline.as_deref(), Some("Café"));
    let other = store
        .record_sighting(&sighting(Some("h2"), None, None))
        .await
        .unwrap();
    assert_ne!(other.contact_id, a.contact_id);
    // Concurrent first sightings of one customer make one contact.
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .record_sighting(&sighting(
                    Some("h3"),
                    None,
                    Some((&format!("c{i}"), 3_000, Some("C"))),
                ))
                .await
                .unwrap()
                .contact_id
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.insert(h.await.unwrap());
    }
    assert_eq!(ids.len(), 1);
}

async fn contacts_are_found_by_every_identity_and_linked_to_a_customer_id(store: Arc<dyn Store>) {
    store
        .record_sighting(&sighting(Some("h1"), Some("US.1"), None))
        .await
        .unwrap();
    store
        .record_sighting(&sighting(Some("h2"), None, None))
        .await
        .unwrap();
    let by_phone = store
        .find_contact("whatsapp", "100", &ContactKey::PhoneHash("h1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_phone.conversation_id, "cv1-h1");
    assert_eq!(by_phone.wa_user_id.as_deref(), Some("US.1"));
    for key in [
        ContactKey::WaUserId("US.1".into()),
        ContactKey::ConversationId("cv1-h1".into()),
    ] {
        let found = store.find_contact("whatsapp", "100", &key).await.unwrap();
        assert_eq!(found.as_ref().map(|c| c.id), Some(by_phone.id), "{key:?}");
    }
    // Keyed by channel and asset: another asset does not see it.
    assert!(
        store
            .find_contact("whatsapp", "999", &ContactKey::PhoneHash("h1".into()))
            .await
            .unwrap()
            .is_none()
    );
    let linked = store
        .link_customer_id(
            "whatsapp",
            "100",
            &ContactKey::PhoneHash("h1".into()),
            "crm-1",
        )
        .await
        .unwrap();
    assert_eq!(linked.customer_id.as_deref(), Some("crm-1"));
    let found = store
        .find_contact("whatsapp", "100", &ContactKey::CustomerId("crm-1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, by_phone.id);
    // Linking again is fine; linking the id to another contact is a conflict.
    store
        .link_customer_id(
            "whatsapp",
            "100",
            &ContactKey::PhoneHash("h1".into()),
            "crm-1",
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .link_customer_id(
                "whatsapp",
                "100",
                &ContactKey::PhoneHash("h2".into()),
                "crm-1"
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .link_customer_id(
                "whatsapp",
                "100",
                &ContactKey::PhoneHash("nope".into()),
                "crm-2"
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn capture_options_default_off_and_round_trip(store: Arc<dyn Store>) {
    assert_eq!(
        store.capture_options("100").await.unwrap(),
        CaptureOptions::default()
    );
    let on = CaptureOptions {
        allow_unattributed: true,
        automatic_events: true,
    };
    store.set_capture_options("100", &on, 1).await.unwrap();
    assert_eq!(store.capture_options("100").await.unwrap(), on);
    let half = CaptureOptions {
        allow_unattributed: false,
        automatic_events: true,
    };
    store.set_capture_options("100", &half, 2).await.unwrap();
    assert_eq!(store.capture_options("100").await.unwrap(), half);
}

async fn capture_retention_purges_old_touches_contacts_and_webhooks(store: Arc<dyn Store>) {
    let old = store
        .record_sighting(&sighting(
            Some("old"),
            None,
            Some(("m-old", 1_000, Some("C"))),
        ))
        .await
        .unwrap();
    let mixed = store
        .record_sighting(&sighting(
            Some("mixed"),
            None,
            Some(("m-a", 1_000, Some("A"))),
        ))
        .await
        .unwrap();
    store
        .record_sighting(&sighting(
            Some("mixed"),
            None,
            Some(("m-b", 50_000, Some("B"))),
        ))
        .await
        .unwrap();
    let WebhookInsert::Inserted(done) = store
        .insert_webhook(&webhook("{\"old\":1}", 1_000, false))
        .await
        .unwrap()
    else {
        panic!()
    };
    store
        .finish_webhook(done, None, WebhookFinish::Processed, 1_000)
        .await
        .unwrap();
    store
        .insert_webhook(&webhook("{\"pending\":1}", 1_000, false))
        .await
        .unwrap();
    store
        .insert_webhook(&webhook("{\"forward\":1}", 1_000, true))
        .await
        .unwrap();
    store
        .insert_webhook(&webhook("{\"new\":1}", 50_000, false))
        .await
        .unwrap();

    let purged = store.purge_capture(10_000).await.unwrap();
    assert_eq!((purged.touches, purged.contacts), (2, 1));
    assert_eq!(
        purged.webhooks, 1,
        "pending and unforwarded deliveries are kept"
    );
    assert!(
        store
            .contact_touches(old.contact_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find_contact("whatsapp", "100", &ContactKey::PhoneHash("old".into()))
            .await
            .unwrap()
            .is_none()
    );
    let kept = store.contact_touches(mixed.contact_id).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].touch.message_id, "m-b");
    assert_eq!(store.list_webhooks(None, 10).await.unwrap().len(), 3);
}

/// Issue 12 D.10: WhatsApp business-scoped user ids rotate (`user_id_update`).
async fn a_user_id_update_rekeys_the_contact_and_the_old_id_resolves_until_retention(
    store: Arc<dyn Store>,
) {
    let find = |user: &'static str| {
        let store = store.clone();
        async move {
            store
                .find_contact("whatsapp", "100", &ContactKey::WaUserId(user.into()))
                .await
                .unwrap()
        }
    };
    let first = store
        .record_sighting(&sighting(
            None,
            Some("US.old"),
            Some(("m1", 1_000, Some("C1"))),
        ))
        .await
        .unwrap();
    assert!(
        store
            .rekey_wa_user_id("whatsapp", "100", "US.old", "US.new", 5_000)
            .await
            .unwrap()
    );
    let by_new = find("US.new").await.expect("the new id resolves");
    assert_eq!(by_new.id, first.contact_id);
    assert_eq!(by_new.wa_user_id.as_deref(), Some("US.new"));
    let by_old = find("US.old").await.expect("the old id still resolves");
    assert_eq!(by_old.id, first.contact_id);
    // A redelivered message under the old id joins the same contact; a repeat is harmless.
    let redelivered = store
        .record_sighting(&sighting(
            None,
            Some("US.old"),
            Some(("m2", 6_000, Some("C2"))),
        ))
        .await
        .unwrap();
    assert_eq!(redelivered.contact_id, first.contact_id);
    assert!(
        store
            .rekey_wa_user_id("whatsapp", "100", "US.old", "US.new", 5_000)
            .await
            .unwrap()
    );
    assert_eq!(find("US.new").await.unwrap().id, first.contact_id);
    // Unknown ids and other assets are untouched.
    assert!(
        !store
            .rekey_wa_user_id("whatsapp", "100", "US.nobody", "US.x", 5_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .find_contact("whatsapp", "200", &ContactKey::WaUserId("US.new".into()))
            .await
            .unwrap()
            .is_none()
    );

    // Messages under the new id arrived first and made their own contact: it is folded into
    // the one with the history, touches included.
    let history = store
        .record_sighting(&sighting(
            Some("h9"),
            Some("US.9"),
            Some(("m9", 2_000, Some("C9"))),
        ))
        .await
        .unwrap();
    let early = store
        .record_sighting(&sighting(None, Some("US.10"), Some(("m10", 8_000, None))))
        .await
        .unwrap();
    assert_ne!(history.contact_id, early.contact_id);
    assert!(
        store
            .rekey_wa_user_id("whatsapp", "100", "US.9", "US.10", 9_000)
            .await
            .unwrap()
    );
    let merged = find("US.10").await.unwrap();
    assert_eq!(merged.id, history.contact_id);
    assert_eq!(merged.phone_hash.as_deref(), Some("h9"));
    assert_eq!(merged.last_seen_at_ms, 8_000);
    let ids: Vec<String> = store
        .contact_touches(history.contact_id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.touch.message_id)
        .collect();
    assert_eq!(ids, ["m10", "m9"]);
    assert!(
        store
            .contact_touches(early.contact_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(find("US.9").await.unwrap().id, history.contact_id);

    // Retention: an id replaced before the cutoff stops resolving; the contact stays.
    let purged = store.purge_capture(5_500).await.unwrap();
    assert_eq!(purged.user_id_aliases, 1);
    assert!(
        find("US.old").await.is_none(),
        "the old id is past retention"
    );
    assert_eq!(find("US.new").await.unwrap().id, first.contact_id);
    assert_eq!(
        find("US.9").await.unwrap().id,
        history.contact_id,
        "replaced at 9 000"
    );
}

fn crm_rule(tenant: &str, pipeline: &str, stage: &str) -> relay_store::crm::CrmRule {
    relay_store::crm::CrmRule {
        id: 0,
        tenant: tenant.into(),
        source: "kommo".into(),
        pipeline_id: pipeline.into(),
        stage_id: stage.into(),
        event_name: "Purchase".into(),
        value: "deal".into(),
        currency: Some("BRL".into()),
        every_time: false,
        created_at_ms: 1,
    }
}

async fn crm_rules_are_unique_per_stage_and_removed_per_tenant(store: Arc<dyn Store>) {
    let first = store
        .add_crm_rule(&crm_rule("default", "any", "142"))
        .await
        .unwrap();
    assert!(first.id > 0);
    assert_eq!(first.currency.as_deref(), Some("BRL"));
    assert!(matches!(
        store.add_crm_rule(&crm_rule("default", "any", "142")).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .add_crm_rule(&crm_rule("default", "7", "142"))
        .await
        .unwrap();
    store
        .add_crm_rule(&crm_rule("other", "any", "142"))
        .await
        .unwrap();
    assert_eq!(
        store.list_crm_rules(Some("default")).await.unwrap().len(),
        2
    );
    assert_eq!(store.list_crm_rules(None).await.unwrap().len(), 3);
    // Another tenant cannot remove it.
    assert!(!store.remove_crm_rule("other", first.id).await.unwrap());
    assert!(store.remove_crm_rule("default", first.id).await.unwrap());
    assert!(!store.remove_crm_rule("default", first.id).await.unwrap());
}

async fn crm_pipeline_assets_are_stored_with_the_integration_and_set_or_removed_later(
    store: Arc<dyn Store>,
) {
    use relay_store::crm::CrmIntegration;
    let integration = |id: &str, secret: &str, pipelines: &[(&str, &str)]| CrmIntegration {
        id: id.into(),
        tenant: "default".into(),
        kind: "kommo".into(),
        base_url: "https://acme.kommo.com".into(),
        secret_sha256: secret.into(),
        sealed_token: "enc:v1:x".into(),
        asset_id: "100".into(),
        pipeline_assets: pipelines
            .iter()
            .map(|(p, a)| (p.to_string(), a.to_string()))
            .collect(),
        currency: None,
        account_id: "17769199".into(),
        subdomain: "acme".into(),
        status: "active".into(),
        status_reason: None,
        api_ok_at_ms: None,
        api_error: None,
        api_error_at_ms: None,
        last_webhook_at_ms: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let first = integration("kommo-1", "s1", &[("9217056", "200"), ("1", "300")]);
    store.create_crm_integration(&first).await.unwrap();
    store
        .create_crm_integration(&integration("kommo-2", "s2", &[("9217056", "400")]))
        .await
        .unwrap();
    assert_eq!(
        store.get_crm_integration("kommo-1").await.unwrap().unwrap(),
        first
    );
    let by_secret = store.find_crm_integration_by_secret("s2").await.unwrap();
    assert_eq!(
        by_secret
            .unwrap()
            .pipeline_assets
            .get("9217056")
            .map(String::as_str),
        Some("400")
    );

    // Replace one, add one, remove one; the other integration's stay.
    assert!(
        store
            .set_crm_pipeline_asset("kommo-1", "9217056", Some("500"), 2)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_crm_pipeline_asset("kommo-1", "77", Some("600"), 3)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_crm_pipeline_asset("kommo-1", "1", None, 4)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_crm_pipeline_asset("kommo-1", "1", None, 5)
            .await
            .unwrap()
    );
    let listed = store.list_crm_integrations(Some("default")).await.unwrap();
    let pipelines: Vec<Vec<(&str, &str)>> = listed
        .iter()
        .map(|i| {
            i.pipeline_assets
                .iter()
                .map(|(p, a)| (p.as_str(), a.as_str()))
                .collect()
        })
        .collect();
    assert_eq!(
        pipelines,
        vec![
            vec![("77", "600"), ("9217056", "500")],
            vec![("9217056", "400")]
        ]
    );
    assert_eq!(listed[0].updated_at_ms, 5);
    assert!(matches!(
        store
            .set_crm_pipeline_asset("kommo-9", "1", Some("100"), 6)
            .await,
        Err(relay_store::StoreError::NotFound(_))
    ));
}

async fn crm_webhooks_wait_for_active_integrations_and_stage_changes_keep_a_produced_outcome(
    store: Arc<dyn Store>,
) {
    use relay_store::crm::{CrmIntegration, CrmWebhookInsert, NewCrmWebhook, StageChangeRecord};
    let integration = CrmIntegration {
        id: "kommo-1".into(),
        tenant: "default".into(),
        kind: "kommo".into(),
        base_url: "https://acme.kommo.com".into(),
        secret_sha256: "abc".into(),
        sealed_token: "enc:v1:x".into(),
        asset_id: "100".into(),
        pipeline_assets: Default::default(),
        currency: None,
        account_id: "17769199".into(),
        subdomain: "acme".into(),
        status: "active".into(),
        status_reason: None,
        api_ok_at_ms: None,
        api_error: None,
        api_error_at_ms: None,
        last_webhook_at_ms: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    store.create_crm_integration(&integration).await.unwrap();
    assert_eq!(
        store
            .find_crm_integration_by_secret("abc")
            .await
            .unwrap()
            .unwrap()
            .id,
        "kommo-1"
    );
    let webhook = NewCrmWebhook {
        integration_id: "kommo-1".into(),
        body: "leads[status][0][id]=1".as_bytes().to_vec(),
        body_sha256: "h1".into(),
        received_at_ms: 1_000,
    };
    let CrmWebhookInsert::Inserted(id) = store.insert_crm_webhook(&webhook).await.unwrap() else {
        panic!("first insert");
    };
    assert_eq!(
        store.insert_crm_webhook(&webhook).await.unwrap(),
        CrmWebhookInsert::Duplicate
    );
    let got = store.get_crm_integration("kommo-1").await.unwrap().unwrap();
    assert_eq!(got.last_webhook_at_ms, Some(1_000));
    assert_eq!(store.due_crm_webhooks(2_000, 10).await.unwrap().len(), 1);
    // Not due before its time, nor while the token is refused.
    store
        .retry_crm_webhook(id, 5_000, "Kommo down")
        .await
        .unwrap();
    assert!(store.due_crm_webhooks(2_000, 10).await.unwrap().is_empty());
    store
        .set_crm_integration_status("kommo-1", "token_rejected", Some("HTTP 401"), 3_000)
        .await
        .unwrap();
    assert!(store.due_crm_webhooks(6_000, 10).await.unwrap().is_empty());
    store
        .set_crm_integration_token("kommo-1", "enc:v1:y", 4_000)
        .await
        .unwrap();
    let due = store.due_crm_webhooks(6_000, 10).await.unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    store
        .record_crm_api("kommo-1", Some("HTTP 503"), 6_000)
        .await
        .unwrap();
    store.record_crm_api("kommo-1", None, 7_000).await.unwrap();
    let got = store.get_crm_integration("kommo-1").await.unwrap().unwrap();
    assert_eq!((got.status.as_str(), got.status_reason), ("active", None));
    assert_eq!(
        (got.api_error.as_deref(), got.api_ok_at_ms),
        (Some("HTTP 503"), Some(7_000))
    );

    let record = |outcome: &str, at: i64| StageChangeRecord {
        tenant: "default".into(),
        integration: "kommo-1".into(),
        deal_id: "1".into(),
        pipeline_id: "9".into(),
        stage_id: "142".into(),
        entry_key: "100".into(),
        occurred_at_ms: 100_000,
        outcome: outcome.into(),
        event_name: Some("Purchase".into()),
        event_id: Some(format!("crm1-{outcome}")),
        detail: None,
        repeats: 0,
        first_seen_at_ms: at,
        last_seen_at_ms: at,
    };
    store
        .record_stage_change(&record("no_attribution", 8_000))
        .await
        .unwrap();
    store
        .record_stage_change(&record("produced", 9_000))
        .await
        .unwrap();
    store
        .record_stage_change(&record("duplicate", 10_000))
        .await
        .unwrap();
    let listed = store.list_stage_changes("default", None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].outcome.as_str(), listed[0].repeats),
        ("produced", 2)
    );
    assert_eq!(listed[0].event_id.as_deref(), Some("crm1-produced"));
    assert_eq!(listed[0].first_seen_at_ms, 8_000);
    assert!(
        store
            .list_stage_changes("other", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = store
        .stage_change_counts("default", "kommo-1")
        .await
        .unwrap();
    assert_eq!(
        (counts.seen, counts.repeats, counts.webhooks_pending),
        (1, 2, 1)
    );
    assert_eq!(counts.by_outcome, vec![("produced".to_owned(), 1)]);

    // Retention: a pending body is kept; processed ones and old records go.
    assert_eq!(store.purge_crm(20_000).await.unwrap(), (0, 1));
    store
        .finish_crm_webhook(id, "processed", None, 11_000)
        .await
        .unwrap();
    assert_eq!(store.purge_crm(20_000).await.unwrap(), (1, 0));
    assert!(
        store
            .list_crm_webhooks("kommo-1", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The dashboard's access-tier figures: calls written in batches, counted per UTC day.
async fn graph_calls_are_counted_in_batches_per_day_and_in_the_latest_window(
    store: Arc<dyn Store>,
) {
    const DAY: i64 = 86_400_000;
    let day0 = 20_000 * DAY;
    store.record_graph_calls(&[]).await.unwrap();
    store
        .record_graph_calls(&[(day0 + 1, true), (day0 + 2, false), (day0 + DAY + 5, true)])
        .await
        .unwrap();
    store
        .record_graph_calls(&[(day0 + DAY + 6, true), (day0 + DAY + 7, false)])
        .await
        .unwrap();
    let all = store.graph_call_stats(day0, 10).await.unwrap();
    assert_eq!((all.ok_since, all.failed_since), (3, 2));
    assert_eq!((all.recent, all.recent_failed), (5, 2));
    // From the second day: the first day's calls are left out of the per-day sums.
    let second = store.graph_call_stats(day0 + DAY + 1, 2).await.unwrap();
    assert_eq!((second.ok_since, second.failed_since), (2, 1));
    assert_eq!(
        (second.recent, second.recent_failed),
        (2, 1),
        "the latest 2: one ok, one failed"
    );
}

const HOUR: i64 = 3_600_000;

async fn hourly_stats_sum_the_five_minute_buckets_and_are_purged_by_whole_hours(
    store: Arc<dyn Store>,
) {
    use relay_store::dashboard::{StatsFilter, stats_table};
    store.upsert_asset(&asset("100", "d1")).await.unwrap();
    let base = 100 * HOUR;
    // Events across three hours, several per 5-minute bucket, some in one insert.
    let times: Vec<i64> = (0..36).map(|i| base + i * 290_000).collect();
    let events: Vec<NewEvent> = times
        .iter()
        .enumerate()
        .map(|(i, t)| event("d1", "100", &format!("h{i}"), *t))
        .collect();
    store.insert_events(&events[..20]).await.unwrap();
    store.insert_events(&events[20..]).await.unwrap();
    store.insert_events(&events[..3]).await.unwrap(); // duplicates
    let claimed = claim_due(&store, "w", base + 3 * HOUR, base + 5 * HOUR, 10)
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    // Counted in the bucket of the delivery, in the third hour.
    let delivered_at_ms = base + 2 * HOUR + 1_800_000;
    store
        .resolve(
            "w",
            &ids,
            &attempt("delivered", delivered_at_ms),
            &Resolution::Delivered { delivered_at_ms },
        )
        .await
        .unwrap();
    let filter = |from_ms, to_ms| StatsFilter {
        tenant: Some(DEFAULT_TENANT.into()),
        datasets: None,
        from_ms,
        to_ms,
    };
    for (from, to) in [
        (base, base + 3 * HOUR),
        (base + HOUR, base + 2 * HOUR),
        (base - HOUR, base + 5 * HOUR),
    ] {
        assert_eq!(stats_table(from, to, HOUR), "event_stats_hourly");
        // One ms short of the hour reads the 5-minute buckets, the same buckets.
        assert_eq!(stats_table(from, to - 1, HOUR), "event_stats");
        let hourly = store.stats_totals(&filter(from, to)).await.unwrap();
        let fine = store.stats_totals(&filter(from, to - 1)).await.unwrap();
        assert_eq!(
            hourly.iter().map(|r| r.counts.clone()).collect::<Vec<_>>(),
            fine.iter().map(|r| r.counts.clone()).collect::<Vec<_>>(),
            "{from}..{to}"
        );
        let series = store.stats_series(&filter(from, to), HOUR).await.unwrap();
        let fine_series = store
            .stats_series(&filter(from, to - 1), HOUR)
            .await
            .unwrap();
        assert_eq!(series, fine_series, "{from}..{to}");
    }
    let all = store
        .stats_totals(&filter(base, base + 3 * HOUR))
        .await
        .unwrap();
    assert_eq!(
        (
            all[0].counts.accepted,
            all[0].counts.duplicates,
            all[0].counts.delivered
        ),
        (36, 3, 10)
    );
    let first = store
        .stats_totals(&filter(base, base + HOUR))
        .await
        .unwrap();
    assert_eq!(
        first[0].counts.accepted, 13,
        "3,600,000 / 290,000 → 13 events in hour one"
    );

    // Purging at a time inside the second hour keeps that hour's sums whole.
    store
        .purge_dashboard(base + HOUR + 600_000, 0, 0)
        .await
        .unwrap();
    let kept = store
        .stats_totals(&filter(base, base + 3 * HOUR))
        .await
        .unwrap();
    assert_eq!(
        kept[0].counts.accepted,
        36 - 13,
        "hour one is gone, hour two is whole"
    );
}

async fn a_paused_asset_resumes_with_its_token_and_its_held_events_are_claimed(
    store: Arc<dyn Store>,
) {
    seed(&store, 2).await;
    store
        .pause_asset("100", "Meta: (#200) permission", 5)
        .await
        .unwrap();
    assert!(
        claim_due(&store, "w", 5_000, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let before = store.get_asset("100").await.unwrap().unwrap();
    assert!(store.resume_asset("100", 7).await.unwrap(), "it was paused");
    let after = store.get_asset("100").await.unwrap().unwrap();
    assert_eq!(
        (
            after.status,
            after.status_reason.as_deref(),
            after.updated_at_ms
        ),
        (AssetStatus::Active, None, 7)
    );
    assert_eq!(after.sealed_token, before.sealed_token, "the token is kept");
    assert_eq!(
        claim_due(&store, "w", 5_000, 10_000, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        !store.resume_asset("100", 8).await.unwrap(),
        "already active"
    );
    assert!(matches!(
        store.resume_asset("nope", 8).await,
        Err(StoreError::NotFound(_))
    ));
}
