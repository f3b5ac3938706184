//! Delivery to Meta: the Graph API client, the classification of every answer into a closed
//! set of outcomes, the retry policy, batching, and the outbox workers that drive them.

pub mod batch;
pub mod graph_client;
pub mod outcome;
pub mod retry;
pub mod worker;

pub use graph_client::{GraphClient, GraphConfig};
pub use outcome::{Delivered, PermanentKind, RetryKind, SendOutcome};
