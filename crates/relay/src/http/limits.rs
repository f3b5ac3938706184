//! Load limits of the HTTP API (`http.*` in the configuration): requests in flight, a byte
//! budget for large bodies, a smaller one for webhook bodies (read whole before their
//! signature can be checked), a deadline for reading a body, and a panic answered 500. Each
//! refusal is a 503 with `Retry-After`, so clients back off instead of piling up; the
//! connection limit and the header timeout live with the listener (`server.rs`).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{sync::Semaphore, time::Sleep};

use super::ApiError;
use crate::config::HttpConfig;

/// Bodies up to this size are not counted against `http.body_budget_bytes`: a single event
/// never waits behind a flood of large batches (their memory is bounded by the in-flight limit).
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// The `Retry-After` of every 503 the limits give, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;
/// The error text of a body that did not arrive within `http.body_read_timeout`; `error.rs`
/// recognises it to answer 408.
pub const BODY_TIMEOUT_MESSAGE: &str =
    "the request body did not arrive within http.body_read_timeout";

/// The semaphores and settings shared by every request.
#[derive(Clone)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    large_bodies: Arc<Semaphore>,
    body_budget_bytes: usize,
    body_budget_wait: Duration,
    body_read_timeout: Duration,
    /// The largest body a request without `Content-Length` may send.
    max_body_bytes: usize,
    unauthenticated: Arc<Semaphore>,
    unauthenticated_bytes: usize,
    max_webhook_bytes: usize,
}

impl Limits {
    pub fn new(config: &HttpConfig, max_body_bytes: usize, max_webhook_bytes: usize) -> Self {
        Limits {
            in_flight: Arc::new(Semaphore::new(config.max_requests_in_flight)),
            body_budget: Arc::new(Semaphore::new(permits(config.body_budget_bytes))),
            large_bodies: Arc::new(Semaphore::new(config.max_large_bodies)),
            body_budget_bytes: config.body_budget_bytes,
            body_budget_wait: config.body_budget_wait,
            body_read_timeout: config.body_read_timeout,
            max_body_bytes,
            unauthenticated: Arc::new(Semaphore::new(permits(config.unauthenticated_budget_bytes))),
            unauthenticated_bytes: config.unauthenticated_budget_bytes,
            max_webhook_bytes,
        }
    }
}

/// Semaphore permits for `bytes` (one per KiB, so any budget fits the semaphore's range).
fn permits(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

/// What a body may take of a budget: its declared length, or the largest allowed when it has
/// none (chunked), never more than the whole budget.
fn declared(request: &Request, max: usize, budget: usize) -> usize {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| if has_body(request) { max } else { 0 })
        .min(max)
        .min(budget)
}

fn has_body(request: &Request) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING)
}

/// 503 `overloaded` with `Retry-After`.
pub fn overloaded(message: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// The in-flight limit, the large-body budget and the body deadline, around every route but
/// the health checks (a probe must still answer when the relay sheds load).
pub async fn shed(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let Ok(_slot) = limits.in_flight.clone().try_acquire_owned() else {
        return overloaded(
            "too many requests in flight (http.max_requests_in_flight); retry after a second",
        );
    };
    let bytes = declared(&request, limits.max_body_bytes, limits.body_budget_bytes);
    let _budget = if bytes > SMALL_BODY_BYTES {
        let wanted = permits(bytes) as u32;
        let (budget, large) = (limits.body_budget.clone(), limits.large_bodies.clone());
        let acquire = async move {
            let slot = large.acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((slot, budget.acquire_many_owned(wanted).await?))
        };
        match tokio::time::timeout(limits.body_budget_wait, acquire).await {
            Ok(Ok(permits)) => Some(permits),
            _ => {
                return overloaded(
                    "too many large bodies in flight (http.body_budget_bytes, http.max_large_bodies); retry after a second",
                );
            }
        }
    } else {
        None
    };
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(limits.body_read_timeout)),
        })
    });
    let mut response = next.run(request).await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        // The rest of a slow body is not waited for: the connection goes.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The budget of webhook bodies, which anyone can send: a body that does not fit now is
/// answered 503 at once (Meta retries), so unsigned floods cannot hold memory.
pub async fn unauthenticated_budget(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let bytes = declared(
        &request,
        limits.max_webhook_bytes,
        limits.unauthenticated_bytes,
    );
    let Ok(_budget) = limits
        .unauthenticated
        .clone()
        .try_acquire_many_owned(permits(bytes) as u32)
    else {
        return overloaded(
            "too many webhook bodies in flight (http.unauthenticated_budget_bytes); retry after a second",
        );
    };
    next.run(request).await
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BODY_TIMEOUT_MESSAGE)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a handler that panicked: 500, and the process keeps serving (the panic itself
/// is logged by the panic hook).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the relay's log",
    )
    .into_response()
}

/// The route of [`test_panic`].
pub const TEST_PANIC_PATH: &str = "/v1/test/panic";

/// `GET /v1/test/panic` (only with `http.test_panic_route`, which tests set).
pub async fn test_panic() -> Response {
    panic!("test panic (http.test_panic_route)");
}
