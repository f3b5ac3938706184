//! Leases of the claims in flight. Every claim has a lease owner of its own
//! (`<process>-c<n>`); a heartbeat renews the leases of the live claims, and a request to Meta
//! starts only while its claim's lease outlasts the request's timeout by a margin. So a lease
//! can never run out under a live sender: if renewals fail (the database is unreachable), the
//! sender stops starting requests before its lease can expire, and another relay may take the
//! events only after every request this one started has ended.
//!
//! The validity kept here is conservative: a renewal counts from the time it was sent, not the
//! time the database answered.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Time kept between the end of the longest request and the end of its lease.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Leases {
    process: String,
    next: AtomicU64,
    /// Live claims: lease owner → the time its lease is known to hold until.
    live: Mutex<HashMap<String, i64>>,
}

impl Leases {
    pub fn new(process_owner: String) -> Self {
        Leases {
            process: process_owner,
            next: AtomicU64::new(0),
            live: Mutex::default(),
        }
    }

    /// A lease owner for the next claim; it becomes live with [`Leases::claimed`].
    pub fn next_owner(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-c{n}", self.process)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claim was taken with a lease until `until_ms`.
    pub fn claimed(&self, owner: &str, until_ms: i64) {
        self.lock().insert(owner.to_owned(), until_ms);
    }

    /// The claim is over: its events are resolved or released.
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }

    /// Whether a request with this `timeout` may start at `now_ms` under `owner`'s lease.
    pub fn may_send(&self, owner: &str, now_ms: i64, timeout: Duration) -> bool {
        let needed = (timeout + LEASE_MARGIN).as_millis() as i64;
        self.lock()
            .get(owner)
            .is_some_and(|until| until - now_ms > needed)
    }

    /// Owners to renew.
    pub fn live_owners(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A renewal sent with `until_ms` was committed for `owners` (those still live).
    pub fn renewed(&self, owners: &[String], until_ms: i64) {
        let mut live = self.lock();
        for owner in owners {
            if let Some(until) = live.get_mut(owner) {
                *until = (*until).max(until_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_request_starts_only_while_the_lease_outlasts_its_timeout() {
        let leases = Leases::new("p".into());
        let owner = leases.next_owner();
        leases.claimed(&owner, 10_000);
        assert!(leases.may_send(&owner, 0, TIMEOUT));
        assert!(leases.may_send(&owner, 3_999, TIMEOUT));
        assert!(
            !leases.may_send(&owner, 4_000, TIMEOUT),
            "5 s + 1 s margin left"
        );
        leases.renewed(std::slice::from_ref(&owner), 14_000);
        assert!(leases.may_send(&owner, 7_999, TIMEOUT));
        leases.forget(&owner);
        assert!(
            !leases.may_send(&owner, 0, TIMEOUT),
            "a finished claim sends nothing"
        );
    }

    #[test]
    fn a_late_renewal_never_shortens_a_lease_and_skips_finished_claims() {
        let leases = Leases::new("p".into());
        let (a, b) = (leases.next_owner(), leases.next_owner());
        assert_ne!(a, b);
        leases.claimed(&a, 20_000);
        leases.renewed(&[a.clone(), b.clone()], 15_000);
        assert!(leases.may_send(&a, 13_000, TIMEOUT));
        assert_eq!(leases.live_owners(), [a]);
    }
}
