//! Strings a store can keep: no NUL character (PostgreSQL text cannot hold U+0000, and Meta
//! has no use for it) and a bounded length (a PostgreSQL index entry must stay under ~2,700
//! bytes). The HTTP layer checks every string of a request body with [`find_unstorable`]
//! before a store sees it.

use serde_json::Value;

/// Longest string in a checked body, in bytes: ids, names, labels.
pub const MAX_STRING_BYTES: usize = 1024;
/// Longest `access_token` (Meta's tokens are a few hundred characters; tokens are not indexed).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A string no store could keep: where it is (a JSON path, empty for the value itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unstorable {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Unstorable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = if self.path.is_empty() {
            "(the body)"
        } else {
            &self.path
        };
        write!(f, "{field}: {}", self.reason)
    }
}

/// Why `s` cannot be stored, if it cannot; `limit` is its longest length in bytes.
pub fn unstorable_reason(s: &str, limit: usize) -> Option<String> {
    if s.contains('\0') {
        Some("contains a NUL character (\\u0000), which cannot be stored or sent".into())
    } else if s.len() > limit {
        Some(format!(
            "is {} bytes long; at most {limit} are accepted",
            s.len()
        ))
    } else {
        None
    }
}

/// The first string or object key under `value` that no store could keep: one holding a NUL
/// character, or longer than [`MAX_STRING_BYTES`] ([`MAX_TOKEN_BYTES`] for an `access_token`).
pub fn find_unstorable(value: &Value) -> Option<Unstorable> {
    walk(value, &mut String::new(), MAX_STRING_BYTES)
}

fn walk(value: &Value, path: &mut String, limit: usize) -> Option<Unstorable> {
    let found = |reason, path: &str| {
        Some(Unstorable {
            // An over-long key would make an over-long message: the path is cut.
            path: path.chars().take(120).collect(),
            reason,
        })
    };
    match value {
        Value::String(s) => unstorable_reason(s, limit).and_then(|r| found(r, path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let bad = walk(item, path, limit);
            path.truncate(len);
            bad
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            // The key is named without its NUL, so the message stays printable.
            path.push_str(&key.replace('\0', "\\u0000"));
            let limit = if key == "access_token" {
                MAX_TOKEN_BYTES
            } else {
                MAX_STRING_BYTES
            };
            let bad = unstorable_reason(key, MAX_STRING_BYTES)
                .and_then(|r| found(r, path))
                .or_else(|| walk(item, path, limit));
            path.truncate(len);
            bad
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_first_unstorable_string_is_named_by_its_path() {
        assert_eq!(
            find_unstorable(&json!({"a": ["ok", 1, {"b": "fine"}]})),
            None
        );
        let bad = find_unstorable(&json!({"a": ["ok", {"b": "x\u{0}y"}]})).unwrap();
        assert_eq!(bad.path, "a[1].b");
        assert!(bad.reason.contains("NUL"));
        let bad = find_unstorable(&json!({"name": "n".repeat(1025)})).unwrap();
        assert_eq!(
            bad.to_string(),
            "name: is 1025 bytes long; at most 1024 are accepted"
        );
        assert_eq!(
            find_unstorable(&json!({"access_token": "t".repeat(4000)})),
            None
        );
        let bad = find_unstorable(&json!({"k\u{0}": 1})).unwrap();
        assert_eq!(bad.path, "k\\u0000");
    }
}
