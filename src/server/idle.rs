//! Which worker takes the next job: the one that went idle last (LIFO, as Apache's event MPM
//! keeps its idle workers). Its stack and caches are still warm, the others stay asleep, and a
//! large pool costs memory only for the workers a load really needs. Workers park at once when
//! there is no job, instead of spinning and yielding as a blocking channel receive does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

/// An idle worker as the stack holds it.
struct Sleeper {
    thread: Thread,
    /// Set by the waker that took it off the stack: it need not look for itself there (a scan
    /// of the whole stack under the lock, which the poller and every worker contend for).
    woken: AtomicBool,
}

thread_local! {
    static ME: Arc<Sleeper> =
        Arc::new(Sleeper { thread: std::thread::current(), woken: AtomicBool::new(false) });
}

/// The idle workers, most recently idle last.
#[derive(Default)]
pub(crate) struct IdleWorkers {
    stack: Mutex<Vec<Arc<Sleeper>>>,
    closed: AtomicBool,
}

impl IdleWorkers {
    /// Wakes the most recently idle worker, if any (the poller, after queueing a job).
    pub fn wake_one(&self) {
        let sleeper = {
            let mut stack = self.stack.lock().unwrap_or_else(|e| e.into_inner());
            let sleeper = stack.pop();
            // Under the lock: a worker that looks for itself on the stack and finds nothing
            // must find its flag set.
            if let Some(sleeper) = &sleeper {
                sleeper.woken.store(true, Ordering::Relaxed);
            }
            sleeper
        };
        if let Some(sleeper) = sleeper {
            sleeper.thread.unpark();
        }
    }

    /// Wakes every worker so they see the queue closed (at stop).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut stack = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        for sleeper in stack.drain(..) {
            sleeper.woken.store(true, Ordering::Relaxed);
            sleeper.thread.unpark();
        }
    }

    /// The next job for this worker; `None` once the queue is closed and empty.
    pub fn next<T>(&self, jobs: &Receiver<T>) -> Option<T> {
        let me = ME.with(Arc::clone);
        loop {
            match jobs.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            self.stack.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&me));
            // A job queued between the look above and the push would wake nobody: look again.
            // An unpark that comes before the park makes the park return at once.
            match jobs.try_recv() {
                Ok(job) => {
                    if !self.leave(&me) {
                        // A waker took us off the stack for a job meanwhile, and we took one
                        // already: pass its wake-up on, or that job would wait for a worker.
                        self.wake_one();
                    }
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
            self.leave(&me);
        }
    }

    /// Takes this worker off the stack unless a waker did; true when it was still there.
    fn leave(&self, me: &Arc<Sleeper>) -> bool {
        if me.woken.swap(false, Ordering::Acquire) {
            return false;
        }
        let mut stack = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        match stack.iter().rposition(|s| Arc::ptr_eq(s, me)) {
            Some(i) => {
                stack.remove(i);
                true
            }
            // Popped between the swap above and the lock: the waker set the flag under the
            // lock, so it is set now; clear it.
            None => {
                me.woken.store(false, Ordering::Relaxed);
                false
            }
        }
    }
}
