//! `capi-relay send FILE`: validate, batch by 1,000, send to one dataset, print Meta's answers.
//!
//! A one-shot tool without the relay's outbox: it retries transient failures a few times but
//! never a timeout, where Meta may already have counted the events (it does not deduplicate
//! business-messaging events).

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use relay_core::MAX_EVENTS_PER_REQUEST;

use super::{GraphArgs, ValidationArgs, secret_from_env, validate};
use crate::{
    delivery::{GraphClient, RetryKind, SendOutcome},
    events_file,
};

/// Attempts per batch for retryable failures (timeouts excepted).
const MAX_ATTEMPTS: u32 = 3;
/// Longest wait between attempts, whatever Meta hints.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct SendArgs {
    /// JSON Lines, a {"data": [...]} file, a JSON array or one event; `-` reads stdin.
    pub file: PathBuf,

    /// The dataset (from the Dataset API) that receives the events.
    #[arg(long)]
    pub dataset_id: String,

    /// Name of the environment variable holding the access token (never the token itself).
    #[arg(long)]
    pub access_token_env: String,

    /// Route the events to Events Manager's Test Events tool. Meta still counts them.
    #[arg(long, env = "CAPI_RELAY_TEST_EVENT_CODE")]
    pub test_event_code: Option<String>,

    /// Send the valid events even when some are invalid (the invalid ones are listed).
    #[arg(long)]
    pub skip_invalid: bool,

    #[command(flatten)]
    pub graph: GraphArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let token = secret_from_env(&args.access_token_env)?;
    let text = validate::read_input(&args.file)?;
    let events = events_file::parse(&text).map_err(anyhow::Error::msg)?;
    let report = validate::check_all(&events, &args.validation, chrono::Utc::now().timestamp());
    print!("{}", report.text);
    if report.rejected > 0 && !args.skip_invalid {
        println!(
            "nothing sent: fix the rejected events, or pass --skip-invalid to send the valid ones"
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(code) = &args.test_event_code {
        println!("test_event_code {code} is set: Meta still counts these events for measurement");
    }
    let client = GraphClient::new(args.graph.config())?;
    let mut all_delivered = report.rejected == 0;
    for (n, batch) in report.valid.chunks(MAX_EVENTS_PER_REQUEST).enumerate() {
        let lines = format!(
            "lines {}-{}",
            batch.first().map_or(0, |b| b.0),
            batch.last().map_or(0, |b| b.0)
        );
        let payload: Vec<_> = batch.iter().map(|(_, event)| event).collect();
        let mut attempt = 1;
        loop {
            let sent = client
                .send_events(
                    &args.dataset_id,
                    &token,
                    &payload,
                    args.test_event_code.as_deref(),
                )
                .await;
            let retry_in = retry_wait(&sent.outcome, attempt);
            println!(
                "batch {} ({} events, {lines}) attempt {attempt}: {} [{} ms]",
                n + 1,
                payload.len(),
                describe(&sent.outcome),
                sent.latency.as_millis()
            );
            match (&sent.outcome, retry_in) {
                (SendOutcome::Delivered(_), _) => break,
                (_, Some(wait)) => {
                    println!("  retrying in {} s", wait.as_secs());
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => {
                    all_delivered = false;
                    break;
                }
            }
        }
    }
    Ok(if all_delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How long to wait before another attempt, or `None` to stop.
fn retry_wait(outcome: &SendOutcome, attempt: u32) -> Option<Duration> {
    match outcome {
        SendOutcome::Retryable { kind, .. } if *kind == RetryKind::Timeout => None,
        SendOutcome::Retryable { wait_hint, .. } if attempt < MAX_ATTEMPTS => {
            let backoff = Duration::from_secs(1 << attempt);
            Some(
                wait_hint
                    .unwrap_or(backoff)
                    .max(backoff)
                    .min(MAX_RETRY_WAIT),
            )
        }
        _ => None,
    }
}

/// One line about an outcome, with Meta's trace id for support requests.
pub fn describe(outcome: &SendOutcome) -> String {
    let mut line = String::new();
    match outcome {
        SendOutcome::Delivered(d) => {
            let _ = write!(line, "delivered, events_received={}", d.events_received);
            if let Some(trace) = &d.fbtrace_id {
                let _ = write!(line, " fbtrace_id={trace}");
            }
            for message in &d.messages {
                let _ = write!(line, "\n  meta message: {message}");
            }
        }
        SendOutcome::Retryable { kind, detail, .. } => {
            let _ = write!(line, "failed, retryable ({kind:?}): {}", detail.message);
            if let Some(trace) = detail.fbtrace_id() {
                let _ = write!(line, " fbtrace_id={trace}");
            }
            if *kind == RetryKind::Timeout {
                line.push_str(
                    "\n  not retried: Meta may have received these events and does not deduplicate them",
                );
            }
        }
        SendOutcome::Permanent { kind, detail } => {
            let _ = write!(
                line,
                "failed, permanent ({}): {}",
                kind.as_str(),
                detail.message
            );
            if let Some(trace) = detail.fbtrace_id() {
                let _ = write!(line, " fbtrace_id={trace}");
            }
        }
    }
    line
}
