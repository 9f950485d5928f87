//! Test-only fault points: named places in the product where a test can make the code panic,
//! wait or slow down, to prove what happens when it does.
//!
//! Production code marks a place with `failpoint::hit("name").await`. Without the `failpoints`
//! cargo feature (every normal build) [`hit`] is an empty `async fn` and the rest of this
//! module does not exist. With it, a test arms a point for this process:
//!
//! ```ignore
//! use wxpush::failpoint::{self, Action};
//! failpoint::set_times("worker.process", Action::Panic, 1); // the next hit panics, then off
//! // ... run the worker, observe ...
//! failpoint::clear_all();
//! ```
//!
//! The registry is global to the process: tests that arm points must not run concurrently
//! with other tests of the same binary that reach them (one test per file, or a lock).
//! A test file using it needs `required-features = ["failpoints"]` in its `[[test]]` entry.
//!
//! Points in the product (add yours here):
//! - `worker.process`: in `worker::process`, before the message is handled.
//! - `settle.dead_letter_confirmed`: in `worker::settle`, after a dead letter's publish was
//!   confirmed and before it is recorded `dead` in Redis and the message acked (a worker
//!   killed here leaves a copy of the dead letter to its redelivery).

/// Reached at a fault point: does what a test armed there, or nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &'static str) {}

#[cfg(feature = "failpoints")]
pub use armed::*;

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    use std::time::Duration;

    use tokio::sync::Notify;

    /// What an armed point does when it is reached.
    #[derive(Debug, Clone)]
    pub enum Action {
        /// Panics (with a message naming the point).
        Panic,
        /// Waits until the test calls `notify_one` (releases one waiter, or the next one to
        /// arrive) or `notify_waiters` (releases those waiting now).
        Pause(Arc<Notify>),
        /// Sleeps this long.
        Delay(Duration),
    }

    #[derive(Debug)]
    struct Point {
        action: Action,
        /// Hits left before the point disarms itself; `None`: every hit.
        left: Option<usize>,
    }

    #[derive(Debug, Default)]
    struct Registry {
        armed: HashMap<&'static str, Point>,
        hits: HashMap<&'static str, usize>,
    }

    static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

    fn registry() -> std::sync::MutexGuard<'static, Registry> {
        // A panic while holding the lock (none is possible here) must not disarm every test.
        REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms `name` for every hit until cleared.
    pub fn set(name: &'static str, action: Action) {
        registry().armed.insert(name, Point { action, left: None });
    }

    /// Arms `name` for its next `times` hits only.
    pub fn set_times(name: &'static str, action: Action, times: usize) {
        registry().armed.insert(
            name,
            Point {
                action,
                left: Some(times),
            },
        );
    }

    /// Disarms `name`.
    pub fn clear(name: &'static str) {
        registry().armed.remove(name);
    }

    /// Disarms every point and forgets the hit counts.
    pub fn clear_all() {
        let mut r = registry();
        r.armed.clear();
        r.hits.clear();
    }

    /// How often `name` was reached (armed or not) since the last [`clear_all`].
    pub fn hits(name: &'static str) -> usize {
        registry().hits.get(name).copied().unwrap_or(0)
    }

    /// Reached at a fault point: does what a test armed there, or nothing.
    pub async fn hit(name: &'static str) {
        let action = {
            let mut r = registry();
            *r.hits.entry(name).or_default() += 1;
            let Some(point) = r.armed.get_mut(name) else {
                return;
            };
            let action = point.action.clone();
            match &mut point.left {
                Some(1) => {
                    r.armed.remove(name);
                }
                Some(n) => *n -= 1,
                None => {}
            }
            action
        };
        match action {
            Action::Panic => panic!("failpoint `{name}`: armed to panic"),
            Action::Pause(notify) => notify.notified().await,
            Action::Delay(d) => tokio::time::sleep(d).await,
        }
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn armed_points_act_the_given_number_of_times() {
        // Names of its own: other unit tests never reach them.
        set_times("failpoint.test.once", Action::Panic, 1);
        let first = tokio::spawn(hit("failpoint.test.once")).await;
        assert!(first.unwrap_err().is_panic());
        hit("failpoint.test.once").await;
        assert_eq!(hits("failpoint.test.once"), 2);
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        set("failpoint.test.pause", Action::Pause(notify.clone()));
        let paused = tokio::spawn(hit("failpoint.test.pause"));
        notify.notify_one();
        paused.await.unwrap();
        clear("failpoint.test.pause");
        hit("failpoint.test.pause").await;
    }
}
