//! Delivery to Meta: the Graph API client, the classification of every answer into a closed
//! set of outcomes, the retry policy, batching, and the outbox loop that drives them:
//! [`dispatcher`] (which dataset to claim, supervised), [`scheduler`] (fairness and in-flight
//! limits, pure), [`lease`] (leases that cannot run out under a live sender), [`sender`] (one
//! claim's requests and their records), [`resolver`] (their records group-committed),
//! [`handoff`] (full requests from ingest, leased as they are inserted).

pub mod batch;
pub mod dispatcher;
pub mod graph_calls;
pub mod graph_client;
pub mod handoff;
pub mod hooks;
pub mod lease;
pub mod outcome;
pub mod resolver;
pub mod retry;
pub mod scheduler;
pub mod sender;

pub use graph_client::{GraphClient, GraphConfig};
pub use outcome::{Delivered, PermanentKind, RetryKind, SendOutcome};
