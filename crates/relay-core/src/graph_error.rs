//! Meta's Graph API error shape (spec §1.6): `{"error": {message, type, code, error_subcode,
//! is_transient, error_user_title, error_user_msg, error_data.blame_field_specs, fbtrace_id}}`.

use serde_json::{Value, json};

/// A Graph API error in Meta's shape: what the simulator answers, and what the relay's
/// Graph-compatible endpoint answers so that Meta's SDKs raise their usual exceptions.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphError {
    pub http_status: u16,
    pub code: i64,
    pub subcode: Option<i64>,
    pub error_type: &'static str,
    pub message: String,
    /// `error_user_title` and `error_user_msg`; boxed to keep `Result<_, GraphError>` small.
    pub user_text: Option<Box<(String, String)>>,
    pub blame_field_specs: Vec<Vec<String>>,
    pub is_transient: bool,
}

impl GraphError {
    pub fn new(http_status: u16, code: i64, message: impl Into<String>) -> Self {
        GraphError {
            http_status,
            code,
            subcode: None,
            error_type: "OAuthException",
            message: message.into(),
            user_text: None,
            blame_field_specs: Vec::new(),
            is_transient: false,
        }
    }

    /// Code 100 (invalid parameter) with `message` as the user text.
    pub fn invalid(message: impl Into<String>) -> Self {
        GraphError::new(400, 100, "Invalid parameter").with_user("Invalid parameter", message)
    }

    pub fn with_subcode(mut self, subcode: i64) -> Self {
        self.subcode = Some(subcode);
        self
    }

    pub fn with_type(mut self, error_type: &'static str) -> Self {
        self.error_type = error_type;
        self
    }

    pub fn with_user(mut self, title: impl Into<String>, msg: impl Into<String>) -> Self {
        self.user_text = Some(Box::new((title.into(), msg.into())));
        self
    }

    /// Adds one `error_data.blame_field_specs` entry.
    pub fn blame(mut self, path: &[&str]) -> Self {
        self.blame_field_specs
            .push(path.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn transient(mut self) -> Self {
        self.is_transient = true;
        self
    }

    /// The JSON body, in Meta's shape.
    pub fn body(&self, fbtrace_id: &str) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "is_transient": self.is_transient,
            "fbtrace_id": fbtrace_id,
        });
        let obj = error.as_object_mut().expect("built as an object");
        if let Some(subcode) = self.subcode {
            obj.insert("error_subcode".into(), json!(subcode));
        }
        if let Some(text) = &self.user_text {
            obj.insert("error_user_title".into(), json!(text.0));
            obj.insert("error_user_msg".into(), json!(text.1));
        }
        if !self.blame_field_specs.is_empty() {
            obj.insert(
                "error_data".into(),
                json!({ "blame_field_specs": self.blame_field_specs }),
            );
        }
        json!({ "error": error })
    }
}
