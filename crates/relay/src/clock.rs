//! Time, passed in: delivery asks a [`Clock`] for "now" instead of reading the system clock,
//! so leases, linger, backoff and the 7-day guard can be tested with a [`ManualClock`].

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// A source of wall-clock Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The clock every process shares.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(AtomicI64::new(start_ms))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The system's wall clock in Unix milliseconds, where no clock is passed in (CLI commands,
/// HTTP handlers).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The shared system clock.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}
