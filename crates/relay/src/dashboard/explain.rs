//! Plain-language explanations and fixes for the errors page: the relay's validation codes, the
//! kinds of dead letters, and Meta's Graph API error codes.

/// `(explanation, fix)` for a validation error code (an `IssueCode` in snake_case).
pub fn issue(code: &str) -> (&'static str, &'static str) {
    match code {
        "not_an_object" => (
            "The event is not a JSON object.",
            "Send each event as an object inside \"data\": [ … ].",
        ),
        "missing_field" => (
            "A field Meta requires is absent (event_name, event_time, action_source, the channel's ids …).",
            "Add the field named in the error; the event detail shows which one.",
        ),
        "invalid_type" => (
            "A field has the wrong JSON type (for example a list where a string is expected).",
            "Send the type the error names; ids may be strings or numbers.",
        ),
        "invalid_value" => (
            "A field has a value Meta does not accept (an empty string, a NUL character, a negative value …).",
            "Correct the value at the path named in the error.",
        ),
        "unsupported_action_source" => (
            "action_source is not business_messaging: this relay only sends business-messaging events.",
            "Send action_source \"business_messaging\" (or leave it out).",
        ),
        "missing_identity" => (
            "The channel's identity is incomplete: WhatsApp needs the WABA id and a ctwa_clid; Messenger and Instagram need the page or account id and the scoped user id.",
            "Capture the click id from the webhook (capi-relay does so when webhooks are set up) or send a conversion by contact.",
        ),
        "conflicting_fields" => (
            "Two fields that mean the same thing disagree.",
            "Send one of them, or the same value in both.",
        ),
        "web_event_name" => (
            "A website event name with no business-messaging equivalent.",
            "Use one of Meta's 14 business-messaging event names (Purchase, LeadSubmitted, …).",
        ),
        "custom_event_name" => (
            "An event name that is neither a business-messaging nor a website name.",
            "Use a standard name, or start the relay with allow_custom_event_names.",
        ),
        "event_too_old" => (
            "event_time is older than Meta's 7-day limit; Meta would refuse it.",
            "Send conversions within 7 days; check the CRM's clock and time zone (event_time is Unix seconds, UTC).",
        ),
        "event_in_future" => (
            "event_time is in the future beyond the allowed clock skew.",
            "Send Unix seconds, not milliseconds, and check the sender's clock.",
        ),
        "invalid_currency" => (
            "The currency is not an ISO 4217 code.",
            "Send a three-letter code such as BRL, USD or EUR.",
        ),
        "unknown_asset" => (
            "The business asset (WABA, Page or Instagram account) is not registered for this key.",
            "Onboard it: capi-relay assets onboard --tenant T --channel … --asset-id …",
        ),
        "no_attribution" => (
            "A conversion by contact for which no ad click or scoped id is known.",
            "Check that Meta's webhooks reach the relay for this asset, or allow unattributed events for it.",
        ),
        _ => (
            "The relay refused the event before sending it to Meta.",
            "Open the sample event: its errors name the field and the reason.",
        ),
    }
}

/// The kind of a dead letter from its stored reason (which carries Meta's message).
pub fn dead_kind(reason: &str) -> String {
    if reason.starts_with("gave up after") {
        return "retries_exhausted".into();
    }
    if reason.contains("is no longer registered") {
        return "unknown_asset".into();
    }
    if let Some(rest) = reason.strip_prefix("Meta refused the event (")
        && let Some(end) = rest.find(')')
    {
        return rest[..end].to_owned();
    }
    reason
        .split([':', ' '])
        .next()
        .filter(|k| !k.is_empty())
        .unwrap_or("other")
        .to_owned()
}

/// `(explanation, fix)` for a kind of dead letter.
pub fn dead(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "retries_exhausted" => (
            "Meta or the network kept failing (timeouts, 5xx, throttling) until the retry schedule ran out.",
            "Check Sources & health and Meta's status; then replay the dead letters from their event pages.",
        ),
        "invalid_payload" => (
            "Meta refused the event's content (Graph error 100: an invalid parameter).",
            "Open the sample: Meta's message names the parameter. Fix the sender, then send the event again.",
        ),
        "event_too_old" => (
            "The event reached Meta more than 7 days after event_time.",
            "Deliver sooner: paused assets and long outages age events. Such events cannot be replayed.",
        ),
        "count_mismatch" => (
            "Meta acknowledged a different number of events than were sent.",
            "Replay the events; if it repeats, report it with the fbtrace_id shown on the event page.",
        ),
        "unknown_asset" => (
            "The event's asset was removed before it could be sent.",
            "Register the asset again, then replay.",
        ),
        _ => (
            "Meta refused the event for a reason the relay does not retry.",
            "Open the sample for Meta's message and fbtrace_id.",
        ),
    }
}

/// Meta's Graph API error codes as they appear in attempts, in words.
pub const META_CODES: [(&str, &str, &str); 10] = [
    (
        "1",
        "Unknown error",
        "Transient on Meta's side; the relay retries.",
    ),
    (
        "2",
        "Service temporarily unavailable",
        "Transient; the relay retries.",
    ),
    (
        "4",
        "Application request limit reached",
        "The app is over its rate limit; the relay waits and retries.",
    ),
    (
        "10",
        "Permission denied",
        "The token lacks a permission on the dataset; the asset is paused until a token with access is set.",
    ),
    (
        "17",
        "User request limit reached",
        "Rate limit for the token's user; the relay waits and retries.",
    ),
    (
        "100",
        "Invalid parameter",
        "The payload has a field Meta does not accept; the message names it.",
    ),
    (
        "190",
        "Access token invalid or expired",
        "Generate a new system-user token and set it with `assets set-token`; the asset resumes.",
    ),
    (
        "200",
        "Permission error",
        "The token's user has no access to the dataset; grant it in Business Manager.",
    ),
    (
        "613",
        "Calls to this API have exceeded the rate limit",
        "The relay pauses the dataset and retries.",
    ),
    (
        "80004",
        "Too many calls to this ad account",
        "Meta's business-use-case limit; the relay waits and retries.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_reasons_group_by_kind() {
        assert_eq!(
            dead_kind("Meta refused the event (invalid_payload): Invalid parameter"),
            "invalid_payload"
        );
        assert_eq!(
            dead_kind("gave up after 12 attempts; last error: timeout"),
            "retries_exhausted"
        );
        assert_eq!(dead_kind("unknown_asset: asset 1 is gone"), "unknown_asset");
        assert_eq!(dead_kind(""), "other");
    }
}
