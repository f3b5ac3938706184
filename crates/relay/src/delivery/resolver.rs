//! Group commit for delivery's records: the answers of many concurrent requests to Meta are
//! resolved in one transaction. With hundreds of datasets in flight a commit per answer was
//! the bottleneck (SQLite has one writer, and every commit is an fsync). A sender still waits
//! until its own answer is committed, and a group that fails is retried send by send, so one
//! send's error never fails another's.

use std::sync::Arc;

use relay_store::{Attempt, Resolution, ResolveRequest, Store, StoreError};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Most sends resolved in one transaction.
const MAX_GROUP_SENDS: usize = 256;
/// Most events resolved in one transaction (a group always takes at least one send).
const MAX_GROUP_EVENTS: usize = 16_000;

struct Job {
    send: ResolveRequest,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// A handle to the resolver task of a process; cheap to clone. The task ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Resolver {
    jobs: mpsc::Sender<Job>,
}

impl Resolver {
    /// Starts `writers` resolver tasks on the current runtime, each committing a group at a
    /// time ([`Store::parallel_writers`]; the stats rows are locked in key order, so parallel
    /// groups cannot deadlock).
    pub fn spawn(store: Arc<dyn Store>, writers: usize) -> Self {
        let (jobs, rx) = mpsc::channel(1024);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(store.clone(), rx.clone()));
        }
        Resolver { jobs }
    }

    /// [`Store::resolve`], committed together with the other sends waiting at the time.
    pub async fn resolve(
        &self,
        owner: &str,
        ids: &[i64],
        attempt: &Attempt,
        resolution: &Resolution,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            send: ResolveRequest {
                owner: owner.to_owned(),
                ids: ids.to_vec(),
                attempt: attempt.clone(),
                resolution: resolution.clone(),
            },
            reply,
        };
        let stopped = || StoreError::Unavailable("the delivery resolver has stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(store: Arc<dyn Store>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut next: Option<Job> = None;
    loop {
        let group = {
            let mut jobs = jobs.lock().await;
            let first = match next.take() {
                Some(job) => job,
                None => match jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut events = first.send.ids.len();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_SENDS {
                let Ok(job) = jobs.try_recv() else { break };
                if events + job.send.ids.len() > MAX_GROUP_EVENTS {
                    next = Some(job);
                    break;
                }
                events += job.send.ids.len();
                group.push(job);
            }
            group
        };
        commit(store.as_ref(), group).await;
    }
}

async fn commit(store: &dyn Store, group: Vec<Job>) {
    let sends: Vec<ResolveRequest> = group.iter().map(|j| j.send.clone()).collect();
    match store.resolve_many(&sends).await {
        Ok(counts) => {
            for (job, count) in group.into_iter().zip(counts) {
                let _ = job.reply.send(Ok(count));
            }
        }
        Err(e) if group.len() > 1 => {
            tracing::warn!(error = %e, sends = group.len(), "group resolve failed; resolving its sends one by one");
            for job in group {
                let result = store
                    .resolve_many(std::slice::from_ref(&job.send))
                    .await
                    .map(|counts| counts.first().copied().unwrap_or_default());
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            if let Some(job) = group.into_iter().next() {
                let _ = job.reply.send(Err(e));
            }
        }
    }
}
