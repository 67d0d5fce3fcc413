//! Which worker takes the next job: the one that went idle last (LIFO, as Apache's event MPM
//! keeps its idle workers). Its stack and caches are still warm, the others stay asleep, and a
//! large pool costs memory only for the workers a load really needs. Workers park at once when
//! there is no job, instead of spinning and yielding as a blocking channel receive does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

/// The idle workers, most recently idle last.
#[derive(Default)]
pub(crate) struct IdleWorkers {
    stack: Mutex<Vec<Thread>>,
    closed: AtomicBool,
}

impl IdleWorkers {
    /// Wakes the most recently idle worker, if any (the poller, after queueing a job).
    pub fn wake_one(&self) {
        let thread = self.stack.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(thread) = thread {
            thread.unpark();
        }
    }

    /// Wakes every worker so they see the queue closed (at stop).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for thread in self.stack.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            thread.unpark();
        }
    }

    /// The next job for this worker; `None` once the queue is closed and empty.
    pub fn next<T>(&self, jobs: &Receiver<T>) -> Option<T> {
        loop {
            match jobs.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let me = std::thread::current();
            self.stack.lock().unwrap_or_else(|e| e.into_inner()).push(me.clone());
            // A job queued between the look above and the push would wake nobody: look again.
            // An unpark that comes before the park makes the park return at once.
            match jobs.try_recv() {
                Ok(job) => {
                    self.remove(&me);
                    return Some(job);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            // Bounded, so a lost wake-up (there should be none) costs a second at most.
            std::thread::park_timeout(Duration::from_secs(1));
            self.remove(&me);
        }
    }

    fn remove(&self, me: &Thread) {
        let mut stack = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = stack.iter().rposition(|t| t.id() == me.id()) {
            stack.remove(i);
        }
    }
}
