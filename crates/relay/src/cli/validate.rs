//! `capi-relay validate FILE`: offline validation with line numbers.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use relay_core::{Issue, validate_event};

use super::ValidationArgs;
use crate::events_file::{self, FileEvent};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// JSON Lines, a {"data": [...]} file, a JSON array or one event; `-` reads stdin.
    pub file: PathBuf,

    #[command(flatten)]
    pub validation: ValidationArgs,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let text = read_input(&args.file)?;
    let events = events_file::parse(&text).map_err(anyhow::Error::msg)?;
    let report = check_all(&events, &args.validation, chrono::Utc::now().timestamp());
    print!("{}", report.text);
    Ok(if report.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads a file, or stdin for `-`.
pub fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read events from stdin")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// The outcome of validating a file.
pub struct Report {
    pub text: String,
    pub valid: Vec<(usize, relay_core::MetaEvent)>,
    pub rejected: usize,
}

/// Validates every event and renders the per-line report.
pub fn check_all(events: &[FileEvent], validation: &ValidationArgs, now: i64) -> Report {
    use std::fmt::Write;

    let options = validation.options();
    let mut text = String::new();
    let (mut valid, mut rejected, mut warnings) = (Vec::new(), 0, 0);
    for event in events {
        let line = event.line;
        let value = match &event.value {
            Ok(value) => value,
            Err(reason) => {
                rejected += 1;
                let _ = writeln!(
                    text,
                    "line {line}: rejected\n  error [invalid_json] {reason}"
                );
                continue;
            }
        };
        match validate_event(value, &options, now) {
            Ok(ok) => {
                let _ = writeln!(
                    text,
                    "line {line}: ok {} {} event_id={}{}",
                    ok.event.event_name,
                    ok.event.messaging_channel,
                    ok.event.event_id,
                    if ok.event_id_derived {
                        " (derived)"
                    } else {
                        ""
                    }
                );
                write_issues(&mut text, "warning", &ok.warnings);
                warnings += ok.warnings.len();
                valid.push((line, ok.event));
            }
            Err(bad) => {
                rejected += 1;
                let _ = writeln!(text, "line {line}: rejected");
                write_issues(&mut text, "error", &bad.errors);
                write_issues(&mut text, "warning", &bad.warnings);
                warnings += bad.warnings.len();
            }
        }
    }
    let _ = writeln!(
        text,
        "{} {}: {} valid, {rejected} rejected, {warnings} {}",
        events.len(),
        plural(events.len(), "event"),
        valid.len(),
        plural(warnings, "warning"),
    );
    Report {
        text,
        valid,
        rejected,
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn write_issues(text: &mut String, level: &str, issues: &[Issue]) {
    use std::fmt::Write;
    for issue in issues {
        let _ = writeln!(text, "  {level} {issue}");
    }
}
