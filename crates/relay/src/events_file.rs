//! Reading event files for the CLI: JSON Lines (one event per line), a `{"data": [...]}` file
//! as sent to Meta, a JSON array, or a single event. Each event keeps its line number.

use serde::Deserialize;
use serde_json::{Value, value::RawValue};

/// One event read from a file.
#[derive(Debug)]
pub struct FileEvent {
    /// 1-based line where the event starts.
    pub line: usize,
    /// The event, or why its text is not JSON.
    pub value: Result<Value, String>,
}

/// Reads every event of `text`, whatever the supported layout.
pub fn parse(text: &str) -> Result<Vec<FileEvent>, String> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err("the file holds no events".into());
    }
    // A whole-file JSON document: {"data": [...]}, [...], or one (possibly multi-line) event.
    let items = serde_json::from_str::<DataFile<'_>>(text)
        .map(|file| file.data)
        .or_else(|_| serde_json::from_str::<Vec<&RawValue>>(text));
    if let Ok(items) = items {
        return Ok(items
            .into_iter()
            .map(|raw| FileEvent {
                line: line_of(text, raw.get()),
                value: serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
            })
            .collect());
    }
    if let Ok(single) = serde_json::from_str::<Value>(text)
        && single.is_object()
    {
        return Ok(vec![FileEvent {
            line: line_of(text, trimmed),
            value: Ok(single),
        }]);
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| FileEvent {
            line: i + 1,
            value: serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}")),
        })
        .collect())
}

/// `{"data": [...]}`; other top-level keys (`partner_agent`, …) are ignored.
#[derive(Deserialize)]
struct DataFile<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// Line number of `slice`, a sub-slice of `text`.
fn line_of(text: &str, slice: &str) -> usize {
    let offset = (slice.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_their_line_numbers_and_bad_lines_are_reported() {
        let text = "{\"a\":1}\n\n{\"b\":2}\nnot json\n";
        let events = parse(text).unwrap();
        assert_eq!(events.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3, 4]);
        assert!(
            events[2]
                .value
                .as_ref()
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn data_files_report_the_line_where_each_event_starts() {
        let text = "{\n  \"data\": [\n    {\"a\": 1},\n    {\n      \"b\": 2\n    }\n  ],\n  \"partner_agent\": \"x\"\n}\n";
        let events = parse(text).unwrap();
        assert_eq!(events.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(events[1].value.as_ref().unwrap()["b"], 2);
    }

    #[test]
    fn arrays_and_single_pretty_events_are_read() {
        assert_eq!(parse("[{\"a\":1},\n{\"a\":2}]").unwrap().len(), 2);
        let single = parse("{\n \"event_name\": \"Purchase\"\n}\n").unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].line, 1);
    }

    #[test]
    fn empty_files_are_an_error() {
        assert!(parse("  \n").is_err());
    }
}
