//! `capi-relay import --tenant T FILE`: a CSV or JSON Lines backfill, straight into the
//! database's outbox through the same validation, contact attribution and deduplication as
//! `POST /v1/events`. A running relay on the same database delivers the events.
//!
//! Each row gets an event id derived from its content (unless it has one), so a second run
//! reports duplicates and never sends twice. Every row is reported in the report file.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use chrono::DateTime;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{DbArgs, ValidationArgs};
use crate::{
    capture::Capture,
    config::Config,
    ingest::{EventResult, Ingestor},
    tenancy::{self, keys::Scope},
};

/// Rows per ingest call.
const CHUNK: usize = 500;
/// Meta refuses events older than 7 days.
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// Prefix of event ids derived from an imported row.
const ROW_ID_PREFIX: &str = "imp1-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tenant whose assets the events go to.
    #[arg(long)]
    pub tenant: String,
    /// A CSV file with a header row, or JSON Lines (one event per line).
    pub file: PathBuf,
    /// The file's format; by default from its extension (.csv, else JSON Lines).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// CSV column mapping: `field=Column,…` with event fields as dotted paths, e.g.
    /// `event_time=Date,contact.phone=Phone,custom_data.value=Total`. Columns not mapped are
    /// used under their own name when it is a dotted event path.
    #[arg(long)]
    pub map: Option<String>,
    /// A file with one `field = Column` per line (same meaning as --map; `#` comments).
    #[arg(long)]
    pub mapping_file: Option<PathBuf>,
    /// Check every row (contacts looked up, events validated) and store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the per-row report goes (JSON Lines); default FILE.report.jsonl.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub validation: ValidationArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

/// One row read: its line and the event, or why it cannot be one.
struct Row {
    line: usize,
    event: Result<Value, String>,
}

fn parse_mapping(text: &str, separator: char) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in text.split(separator) {
        let part = part.trim();
        if part.is_empty() || part.starts_with('#') {
            continue;
        }
        let (field, column) = part
            .split_once('=')
            .with_context(|| format!("mapping {part:?}: write field=Column"))?;
        out.push((field.trim().to_owned(), column.trim().to_owned()));
    }
    Ok(out)
}

/// Sets `path` (`a.b.c`) in `event` to `value`.
fn set_path(event: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut map = event;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        let child = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !child.is_object() {
            *child = Value::Object(Map::new());
        }
        map = child.as_object_mut().expect("just made an object");
    }
}

/// A CSV cell as JSON: empty cells are left out by the caller; times become Unix seconds.
fn cell(field: &str, text: &str) -> Value {
    if field == "event_time" {
        if let Ok(n) = text.parse::<i64>() {
            return json!(n);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return json!(t.timestamp());
        }
    }
    Value::String(text.to_owned())
}

fn read_csv(path: &std::path::Path, mapping: &[(String, String)]) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    for (_, column) in mapping {
        anyhow::ensure!(
            headers.contains(column),
            "the mapping names column {column:?}, which the header row does not have"
        );
    }
    // Which field each column fills: mapped ones, else the column's own name.
    let mut fields: BTreeMap<usize, String> = BTreeMap::new();
    for (i, h) in headers.iter().enumerate() {
        if let Some((field, _)) = mapping.iter().find(|(_, c)| c == h) {
            fields.insert(i, field.clone());
        } else if !mapping.iter().any(|(f, _)| f == h) {
            fields.insert(i, h.clone());
        }
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        // Line numbers count the header row, as an editor shows them.
        let line = n + 2;
        let event = match record {
            Ok(record) => {
                let mut event = Map::new();
                for (i, text) in record.iter().enumerate() {
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    if let Some(field) = fields.get(&i) {
                        set_path(&mut event, field, cell(field, text));
                    }
                }
                Ok(Value::Object(event))
            }
            Err(e) => Err(format!("not a CSV row: {e}")),
        };
        rows.push(Row { line, event });
    }
    Ok(rows)
}

fn read_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_text = line?;
        if line_text.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str::<Value>(&line_text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| {
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("a line must hold one event object".to_owned())
                }
            });
        rows.push(Row { line: n + 1, event });
    }
    Ok(rows)
}

/// The row's event id: its own, else one derived from its content and the tenant.
fn with_row_id(tenant: &str, mut event: Value) -> Value {
    let has_id = event
        .get("event_id")
        .is_some_and(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()) || v.is_number());
    if !has_id {
        // serde_json's maps are sorted: the same row always serialises the same.
        let digest = Sha256::new()
            .chain_update(tenant.as_bytes())
            .chain_update([0])
            .chain_update(event.to_string().as_bytes())
            .finalize();
        event["event_id"] = json!(format!("{ROW_ID_PREFIX}{}", hex::encode(&digest[..16])));
    }
    event
}

/// Reports progress: a bar on a terminal, a line every 10 % otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    next_line: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                    .expect("a valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            next_line: total.div_ceil(10).max(1),
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n as u64),
            None => {
                if self.done >= self.next_line || self.done == self.total {
                    eprintln!("progress: {}/{} rows", self.done, self.total);
                    while self.next_line <= self.done {
                        self.next_line += self.total.div_ceil(10).max(1);
                    }
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let format =
        args.format
            .unwrap_or_else(|| match args.file.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
                _ => Format::Jsonl,
            });
    let mut mapping = Vec::new();
    if let Some(path) = &args.mapping_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        mapping.extend(parse_mapping(&text, '\n')?);
    }
    if let Some(map) = &args.map {
        mapping.extend(parse_mapping(map, ',')?);
    }
    anyhow::ensure!(
        mapping.is_empty() || format == Format::Csv,
        "--map and --mapping-file apply to CSV files"
    );
    let rows = match format {
        Format::Csv => read_csv(&args.file, &mapping)?,
        Format::Jsonl => read_jsonl(&args.file)?,
    };

    let store = args.db.open().await?;
    tenancy::get_tenant(store.as_ref(), &args.tenant).await?;
    let config = Config {
        default_phone_region: args.validation.default_phone_region.map(|r| r.to_string()),
        ..Config::default()
    };
    let capture = Arc::new(Capture::new(store.clone(), &config));
    let ingestor = Ingestor::new(store.clone(), args.validation.options()).with_capture(capture);
    let scope = Scope {
        tenant: args.tenant.clone(),
        assets: None,
        key_id: "import".into(),
    };
    let report_path = args.report.clone().unwrap_or_else(|| {
        let mut p = args.file.clone().into_os_string();
        p.push(".report.jsonl");
        PathBuf::from(p)
    });
    let mut report = std::io::BufWriter::new(
        std::fs::File::create(&report_path)
            .with_context(|| format!("cannot write {}", report_path.display()))?,
    );

    let started = Instant::now();
    let now = chrono::Utc::now().timestamp();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut progress = Progress::new(rows.len());
    let accepted_word = if args.dry_run {
        "would_accept"
    } else {
        "accepted"
    };
    for chunk in rows.chunks(CHUNK) {
        // Rows that reach ingest, with their index in `chunk`.
        let mut events = Vec::new();
        let mut lines: Vec<Option<Value>> = vec![None; chunk.len()];
        for (i, row) in chunk.iter().enumerate() {
            match &row.event {
                Err(why) => {
                    lines[i] =
                        Some(json!({"line": row.line, "status": "rejected", "errors": [why]}));
                }
                Ok(event) => {
                    let event = with_row_id(&args.tenant, event.clone());
                    let time = event.get("event_time").and_then(Value::as_i64);
                    if time.is_some_and(|t| t < now - MAX_AGE_SECS) {
                        lines[i] = Some(json!({"line": row.line, "status": "too_old",
                            "event_id": event["event_id"],
                            "errors": ["event_time is older than Meta's 7-day limit; skipped"]}));
                    } else {
                        events.push((i, event));
                    }
                }
            }
        }
        let batch: Vec<Value> = events.iter().map(|(_, e)| e.clone()).collect();
        let answer = if batch.is_empty() {
            None
        } else if args.dry_run {
            Some(ingestor.ingest_dry_run(&batch, &scope).await?)
        } else {
            Some(ingestor.ingest(&batch, &scope, None).await?)
        };
        if let Some(answer) = answer {
            for ((i, event), result) in events.iter().zip(answer.results) {
                let line = chunk[*i].line;
                lines[*i] = Some(match result {
                    EventResult::Accepted {
                        event_id,
                        attribution,
                        warnings,
                        ..
                    } => json!({"line": line, "status": accepted_word, "event_id": event_id,
                               "attribution": attribution, "warnings": warnings}),
                    EventResult::Duplicate { event_id, .. } => {
                        json!({"line": line, "status": "duplicate", "event_id": event_id})
                    }
                    EventResult::Rejected { errors, .. } => {
                        let too_old = errors
                            .iter()
                            .any(|e| e.code == relay_core::IssueCode::EventTooOld);
                        json!({"line": line, "status": if too_old { "too_old" } else { "rejected" },
                               "event_id": event["event_id"], "errors": errors})
                    }
                });
            }
        }
        for line in lines.into_iter().flatten() {
            let status = match line["status"].as_str() {
                Some("accepted") => "accepted",
                Some("would_accept") => "would_accept",
                Some("duplicate") => "duplicate",
                Some("too_old") => "too_old",
                _ => "rejected",
            };
            *counts.entry(status).or_default() += 1;
            serde_json::to_writer(&mut report, &line)?;
            report.write_all(b"\n")?;
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    report.flush()?;
    let elapsed = started.elapsed().as_secs_f64();
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{} rows in {elapsed:.2} s ({:.0} rows/s){}: {}",
        rows.len(),
        rows.len() as f64 / elapsed.max(1e-9),
        if args.dry_run {
            ", dry run: nothing stored"
        } else {
            ""
        },
        summary.join(" ")
    );
    println!("report: {}", report_path.display());
    Ok(if counts.contains_key("rejected") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_and_dotted_paths_build_nested_events() {
        let m = parse_mapping("contact.phone = Phone\n# comment\nevent_time=Date", '\n').unwrap();
        assert_eq!(m[0], ("contact.phone".into(), "Phone".into()));
        assert!(parse_mapping("nonsense", ',').is_err());
        let mut e = Map::new();
        set_path(&mut e, "custom_data.value", json!("1.5"));
        set_path(&mut e, "custom_data.currency", json!("BRL"));
        assert_eq!(
            Value::Object(e),
            json!({"custom_data": {"value": "1.5", "currency": "BRL"}})
        );
        assert_eq!(
            cell("event_time", "2025-11-23T12:13:20Z"),
            json!(1763900000)
        );
        assert_eq!(cell("event_time", "1763900000"), json!(1763900000));
        assert_eq!(cell("custom_data.value", "10"), json!("10"));
    }

    #[test]
    fn row_ids_are_stable_per_content_and_tenant_and_a_given_id_is_kept() {
        let row = json!({"event_name": "Purchase", "event_time": 1});
        assert_eq!(with_row_id("a", row.clone()), with_row_id("a", row.clone()));
        assert_ne!(
            with_row_id("a", row.clone())["event_id"],
            with_row_id("b", row.clone())["event_id"]
        );
        let mut other = row.clone();
        other["event_time"] = json!(2);
        assert_ne!(
            with_row_id("a", row)["event_id"],
            with_row_id("a", other)["event_id"]
        );
        let given = json!({"event_id": "o-1"});
        assert_eq!(with_row_id("a", given)["event_id"], "o-1");
    }
}
