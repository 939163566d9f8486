//! One model for a node's background work (after Garage's
//! `util/background`): a worker has a name and a status anyone may read,
//! and runs until its token is cancelled. All of them, and the short tasks
//! they or the coordinator spawn (probes, read repairs, replica calls a
//! request no longer waits for), run on one [`TaskTracker`], so shutdown
//! waits for that tracker to empty instead of guessing when the database
//! is no longer referenced. `GET /cluster` lists the statuses.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a worker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Doing a round of work.
    Busy,
    /// Waiting for the next round or for work to appear.
    Idle,
    /// Returned: cancelled, or nothing for it to do on this node.
    Stopped,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Busy,
            1 => State::Idle,
            _ => State::Stopped,
        }
    }
}

/// A worker's status, written by the worker, read by `/cluster`.
#[derive(Debug)]
pub struct Status {
    name: &'static str,
    state: AtomicU8,
    rounds: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `/cluster` shows of one worker.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub name: &'static str,
    pub state: State,
    pub rounds: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The handle a worker runs with: its cancellation and its status.
#[derive(Clone)]
pub struct Worker {
    status: Arc<Status>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Worker {
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub fn set(&self, state: State) {
        self.status.state.store(state as u8, Ordering::Relaxed);
    }

    /// Counts a finished round.
    pub fn round_done(&self) {
        self.status.rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failure the worker logged and will retry.
    pub fn failed(&self, error: impl std::fmt::Display) {
        self.status.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.status.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    /// Sleeps for `wait` as [`State::Idle`]; false if cancelled meanwhile.
    pub async fn idle(&self, wait: Duration) -> bool {
        self.set(State::Idle);
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(wait) => {
                self.set(State::Busy);
                true
            }
        }
    }

    /// Spawns a short task on the node's tracker (shutdown waits for it).
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.tasks.spawn(task);
    }
}

/// The node's workers and tracked tasks.
pub struct Workers {
    tasks: TaskTracker,
    cancel: CancellationToken,
    statuses: Mutex<Vec<Arc<Status>>>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::new()
    }
}

impl Workers {
    pub fn new() -> Workers {
        Workers { tasks: TaskTracker::new(), cancel: CancellationToken::new(), statuses: Mutex::default() }
    }

    /// Starts `name`: `run` gets its [`Worker`] handle and should return
    /// soon after [`Worker::cancelled`] fires.
    pub fn start<F, Fut>(&self, name: &'static str, run: F)
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let status = Arc::new(Status {
            name,
            state: AtomicU8::new(State::Busy as u8),
            rounds: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.push(status.clone());
        }
        let worker =
            Worker { status: status.clone(), cancel: self.cancel.child_token(), tasks: self.tasks.clone() };
        let work = run(worker);
        self.tasks.spawn(async move {
            work.await;
            status.state.store(State::Stopped as u8, Ordering::Relaxed);
        });
    }

    /// The tracker short tasks are spawned on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// A token cancelled at shutdown, for tasks that are not workers.
    pub fn token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    pub fn statuses(&self) -> Vec<StatusView> {
        let statuses = self.statuses.lock().map(|s| s.clone()).unwrap_or_default();
        statuses
            .iter()
            .map(|s| StatusView {
                name: s.name,
                state: State::from_u8(s.state.load(Ordering::Relaxed)),
                rounds: s.rounds.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// Cancels every worker and waits (at most `grace`) until every
    /// tracked task has ended; false if some were still running.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Cancels every worker without waiting (a node that failed to start).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancels every worker when dropped (a node dropped, not shut down).
    pub fn drop_guard(&self) -> tokio_util::sync::DropGuard {
        self.cancel.clone().drop_guard()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_workers_and_their_tasks() {
        let workers = Workers::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let tx = done_tx.clone();
        workers.start("looper", move |w| async move {
            while w.idle(Duration::from_millis(5)).await {
                w.round_done();
            }
            // Work after cancellation is still waited for.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send("looper");
        });
        let tx = done_tx.clone();
        workers.tasks().spawn(async move {
            tokio::time::sleep(Duration::from_millis(80)).await;
            let _ = tx.send("task");
        });
        drop(done_tx);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let seen = workers.statuses();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].name, "looper");
        assert!(seen[0].rounds > 0, "{seen:?}");
        assert!(workers.shutdown(Duration::from_secs(5)).await);
        let mut ended = Vec::new();
        while let Ok(name) = done_rx.try_recv() {
            ended.push(name);
        }
        ended.sort();
        assert_eq!(ended, ["looper", "task"], "shutdown returned before tracked work ended");
        assert_eq!(workers.statuses()[0].state, State::Stopped);
    }

    #[tokio::test]
    async fn shutdown_reports_a_task_that_outlives_the_grace() {
        let workers = Workers::new();
        workers.tasks().spawn(tokio::time::sleep(Duration::from_secs(30)));
        assert!(!workers.shutdown(Duration::from_millis(20)).await);
    }
}
