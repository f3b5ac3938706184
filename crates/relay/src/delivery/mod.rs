//! Delivery to Meta: the Graph API client and the classification of every answer into a closed
//! set of outcomes. The outbox workers that drive it arrive with the relay service.

pub mod graph_client;
pub mod outcome;

pub use graph_client::{GraphClient, GraphConfig};
pub use outcome::{Delivered, PermanentKind, RetryKind, SendOutcome};
