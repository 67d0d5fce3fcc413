//! The queue between the poller and the workers, and which worker runs next: few workers stay
//! hot, and a sleeping one is woken only when the awake ones will not get to the work soon
//! (Jetty's "eat what you kill", Go's scheduler).
//!
//! Counted without a lock:
//! - `awake`: workers not parked;
//! - `running`: awake workers not blocked on a backend (serving with the CPU, or looking for
//!   the next job);
//! - `looking`: awake workers without a job, which take the next one before they park.
//!
//! A worker that finishes a job takes the next queued one itself before it parks. A sleeping
//! worker is woken only while more jobs wait than workers look for one, fewer workers run than
//! there are cores, and fewer are awake than the hot set's limit: only then will no awake
//! worker take the job soon. A worker about to block on a backend ([`while_blocked`]) stops
//! counting as running, so a slow backend never holds jobs back: each request that blocks lets
//! another worker wake if work waits.
//!
//! The hot set's limit starts at four workers per core and follows the machine's CPUs
//! ([`CpuIdle`], sampled by the poller every 100 ms): while workers were held back by it and
//! the CPUs were idle a quarter of the time, it grows by half (the load waits on backends on
//! other machines: as many wake as it needs, up to `threads`); while the CPUs were busy it
//! shrinks back, and an awake worker beyond it parks when it finishes its job. With backends
//! (or the load) on this machine, more requests in flight would only lengthen their queues and
//! cost each request a wake-up and a colder cache: the pool stays at the few workers that keep
//! the cores busy, and each takes job after job without parking.
//!
//! Sleeping workers wait on a stack, the one that went idle last woken first (as Apache's event
//! MPM keeps them): its stack and caches are still warm, and the others stay asleep.
//!
//! Blocking the counts do not see (a lock, a slow disk), or workers all blocked on backends
//! while the CPUs are busy with something else, cannot strand a job for long: the poller wakes
//! a worker for each waiting job when none was taken for [`STALL`]
//! ([`JobQueue::nudge_if_stalled`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::cpu_idle::CpuIdle;
use super::head::RequestHead;
use super::response::Delivery;
use super::spool::RequestBody;
use super::stream::ClientStream;

/// Work for the pool.
pub(crate) enum Job {
    /// A complete request to serve. `input_while_busy` is set by the poller when more input
    /// arrives meanwhile.
    Serve {
        /// The poller that owns the connection, which takes it back.
        poller: usize,
        token: usize,
        stream: Arc<ClientStream>,
        peer: SocketAddr,
        head: RequestHead,
        body: RequestBody,
        input_while_busy: Arc<AtomicBool>,
        /// The first request of its connection.
        first: bool,
    },
    /// A delivery whose buffer the client has drained: read more from its source, write on.
    Refill { poller: usize, token: usize, stream: Arc<ClientStream>, delivery: Delivery },
}

/// How long jobs may wait with none taken before the poller wakes a worker regardless.
pub(crate) const STALL: Duration = Duration::from_millis(2);

/// A sleeping worker as the stack holds it.
struct Sleeper {
    thread: Thread,
    /// Set by the waker that took it off the stack (and counted it as running and looking):
    /// it need not look for itself there.
    woken: AtomicBool,
}

thread_local! {
    static ME: Arc<Sleeper> =
        Arc::new(Sleeper { thread: std::thread::current(), woken: AtomicBool::new(false) });
    /// The queue of the pool this thread works for (none on other threads).
    static WORKS_FOR: RefCell<Option<Arc<JobQueue>>> = const { RefCell::new(None) };
    /// Nested [`while_blocked`] calls count once.
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
    /// A [`begin_blocked_phase`] is open (it set `BLOCKED`).
    static PHASE: Cell<bool> = const { Cell::new(false) };
}

/// The jobs waiting for a worker, and the workers.
pub(crate) struct JobQueue {
    sender: Sender<Job>,
    receiver: Receiver<Job>,
    /// Sleeping workers, the most recently idle last.
    sleepers: Mutex<Vec<Arc<Sleeper>>>,
    closed: AtomicBool,
    running: AtomicUsize,
    looking: AtomicUsize,
    awake: AtomicUsize,
    /// Jobs taken so far (the poller's stall check).
    taken: AtomicU64,
    /// Running workers that keep every core busy.
    cores: usize,
    /// Awake workers past which no more are woken (the hot set's size now, see
    /// [`JobQueue::sample_cpu`]).
    limit: AtomicUsize,
    /// The least `limit` gets: four workers per core (or all, when there are fewer).
    floor: usize,
    /// Most workers there are.
    workers: usize,
    /// A worker would have been woken but for the limit, since the last sample.
    held_back: AtomicBool,
}

impl JobQueue {
    /// A queue for `workers` workers (counted as running until each first parks), keeping at
    /// most `cores` running while jobs wait.
    pub fn new(workers: usize, cores: usize) -> JobQueue {
        let cores = cores.max(1);
        // Unbounded: refills of deliveries must never be refused; the poller bounds serve jobs
        // itself with its count against the queue capacity.
        let (sender, receiver) = crossbeam_channel::unbounded();
        JobQueue {
            sender,
            receiver,
            sleepers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            running: AtomicUsize::new(workers),
            looking: AtomicUsize::new(0),
            awake: AtomicUsize::new(workers),
            taken: AtomicU64::new(0),
            cores,
            limit: AtomicUsize::new((4 * cores).min(workers.max(1))),
            floor: (4 * cores).min(workers.max(1)),
            workers: workers.max(1),
            held_back: AtomicBool::new(false),
        }
    }

    /// Makes the calling thread one of the workers (for [`while_blocked`]).
    pub fn enlist(self: &Arc<Self>) {
        WORKS_FOR.with(|w| *w.borrow_mut() = Some(Arc::clone(self)));
    }

    /// Queues a job, and wakes a worker if no awake one will take it soon.
    pub fn submit(&self, job: Job) {
        // The receiver lives as long as the queue: sending cannot fail.
        let _ = self.sender.send(job);
        // Paired with the fence of a worker going to sleep: it sees this job, or we see that
        // it stopped looking.
        fence(Ordering::SeqCst);
        self.wake_if_needed();
    }

    /// The next queued job, if any, without waiting (a worker's look; the poller's at stop,
    /// to drop what is still queued).
    pub fn try_take(&self) -> Option<Job> {
        self.receiver.try_recv().ok()
    }

    /// Wakes every worker so that they see the queue closed (at stop); they end once their
    /// current jobs are done and the queue is empty.
    pub fn close(&self) {
        let sleepers = {
            let mut sleepers = self.lock();
            self.closed.store(true, Ordering::SeqCst);
            for sleeper in sleepers.iter() {
                self.count_woken();
                sleeper.woken.store(true, Ordering::Release);
            }
            std::mem::take(&mut *sleepers)
        };
        for sleeper in sleepers {
            sleeper.thread.unpark();
        }
    }

    /// The calling worker's next job; `None` once the queue is closed and empty.
    pub fn next(&self) -> Option<Job> {
        let me = ME.with(Arc::clone);
        self.looking.fetch_add(1, Ordering::SeqCst);
        loop {
            // Past the hot set while the CPUs are busy: park, even if jobs wait (the others
            // take them).
            let retiring = self.retire();
            if !retiring {
                if let Some(job) = self.try_take() {
                    self.looking.fetch_sub(1, Ordering::SeqCst);
                    self.took();
                    return Some(job);
                }
                if self.closed.load(Ordering::SeqCst) {
                    self.looking.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
            }
            {
                let mut sleepers = self.lock();
                // Under the lock close() drains the stack with: a worker pushed after it would
                // sleep forever.
                if self.closed.load(Ordering::SeqCst) {
                    drop(sleepers);
                    if retiring {
                        self.awake.fetch_add(1, Ordering::SeqCst);
                    }
                    self.looking.fetch_sub(1, Ordering::SeqCst);
                    return self.try_take();
                }
                sleepers.push(Arc::clone(&me));
            }
            if !retiring {
                self.awake.fetch_sub(1, Ordering::SeqCst);
            }
            self.looking.fetch_sub(1, Ordering::SeqCst);
            self.running.fetch_sub(1, Ordering::SeqCst);
            // A job queued between the look above and the counts going down woke nobody (we
            // still counted as looking): look once more. An unpark that comes before the park
            // makes the park return at once.
            fence(Ordering::SeqCst);
            if let Some(job) = if retiring { None } else { self.try_take() } {
                if self.leave(&me) {
                    self.count_woken();
                }
                // Either way (a waker took us off the stack and counted us) we are awake,
                // running and looking: now we take a job.
                self.looking.fetch_sub(1, Ordering::SeqCst);
                self.took();
                return Some(job);
            }
            if !self.closed.load(Ordering::SeqCst) {
                // No timeout: a sleeper that woke by itself would take a job and join the hot
                // set, and in turn every worker would. A lost wake-up (there should be none)
                // is caught by the poller's stall check.
                std::thread::park();
            }
            if self.leave(&me) {
                // Not woken by a waker (spuriously, or closed): count ourselves back.
                self.count_woken();
            }
        }
    }

    /// Whether the caller, done with a job, should park rather than take the next: more are
    /// awake than the hot set's limit (it was lowered). When so, it no longer counts as awake.
    fn retire(&self) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let mut awake = self.awake.load(Ordering::SeqCst);
        while awake > limit {
            match self.awake.compare_exchange(awake, awake - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => awake = now,
            }
        }
        false
    }

    /// Sizes the hot set from the CPUs' idle time since the last sample (the poller's, about
    /// every 100 ms): while workers were held back and the CPUs were idle a quarter of the time
    /// or more, the limit grows by half (the load waits on something other than the CPUs:
    /// backends on other machines); while they were idle under a tenth, it shrinks by an
    /// eighth, down to four workers per core (more would only lengthen queues on this machine).
    /// In between it holds, so that a load at the edge does not swing it.
    pub fn sample_cpu(&self, gauge: &mut CpuIdle) {
        let Some(idle) = gauge.sample() else { return };
        let held_back = self.held_back.swap(false, Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        let next = if idle >= 0.25 && held_back {
            (limit + (limit / 2).max(1)).min(self.workers)
        } else if idle < 0.10 {
            (limit - (limit / 8).max(1)).max(self.floor)
        } else {
            limit
        };
        self.limit.store(next, Ordering::Relaxed);
    }

    /// The poller's safety net: jobs wait and none was taken since `watch` began `STALL` ago
    /// (every awake worker blocked where the counts cannot see): wake a worker regardless of
    /// the running count. Returns when to check again, if jobs wait.
    pub fn nudge_if_stalled(&self, watch: &mut StallWatch, now: Instant) -> Option<Instant> {
        if self.receiver.is_empty() {
            watch.since = None;
            return None;
        }
        let taken = self.taken.load(Ordering::Relaxed);
        match watch.since {
            Some(since) if watch.taken == taken => {
                if now.saturating_duration_since(since) >= STALL {
                    // Every awake worker is stuck: wake one per waiting job, and let them stay.
                    // The limit goes up first: a woken worker's first look is `retire`, and
                    // with the limit raised only after the wake it could park again unseen.
                    let waiting = self.receiver.len();
                    let wanted = (self.awake.load(Ordering::SeqCst) + waiting).min(self.workers);
                    self.limit.fetch_max(wanted, Ordering::SeqCst);
                    for _ in 0..waiting {
                        if !self.wake_one() {
                            break;
                        }
                    }
                    watch.since = Some(now);
                }
            }
            _ => {
                watch.taken = taken;
                watch.since = Some(now);
            }
        }
        watch.since.map(|since| since + STALL)
    }

    /// A job was taken: if more wait, perhaps another worker should come.
    fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        if !self.receiver.is_empty() {
            self.wake_if_needed();
        }
    }

    /// Wakes a sleeping worker when more jobs wait than workers look for one, fewer run than
    /// there are cores, and fewer are awake than the hot set's limit.
    fn wake_if_needed(&self) {
        let waiting = self.receiver.len();
        if waiting > self.looking.load(Ordering::SeqCst) && self.running.load(Ordering::SeqCst) < self.cores {
            if self.awake.load(Ordering::SeqCst) < self.limit.load(Ordering::Relaxed) {
                self.wake_one();
            } else {
                self.held_back.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Wakes the most recently idle worker, if one sleeps, counting it as running and looking
    /// from now (so that the next submit does not wake another for the same job).
    fn wake_one(&self) -> bool {
        let sleeper = {
            let mut sleepers = self.lock();
            let sleeper = sleepers.pop();
            // Under the lock: a worker that looks for itself on the stack and finds nothing
            // must find its flag set.
            if let Some(sleeper) = &sleeper {
                self.count_woken();
                sleeper.woken.store(true, Ordering::Release);
            }
            sleeper
        };
        match sleeper {
            Some(sleeper) => {
                sleeper.thread.unpark();
                true
            }
            None => false,
        }
    }

    fn count_woken(&self) {
        self.awake.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        self.looking.fetch_add(1, Ordering::SeqCst);
    }

    /// Takes this worker off the stack unless a waker did; true when it was still there.
    fn leave(&self, me: &Arc<Sleeper>) -> bool {
        if me.woken.swap(false, Ordering::Acquire) {
            return false;
        }
        let mut sleepers = self.lock();
        match sleepers.iter().rposition(|s| Arc::ptr_eq(s, me)) {
            Some(i) => {
                sleepers.remove(i);
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

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Sleeper>>> {
        self.sleepers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter_blocked(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        // Paired with submit's fence: it sees us blocked, or we see its job.
        fence(Ordering::SeqCst);
        self.wake_if_needed();
    }

    fn leave_blocked(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the poller remembers between stall checks.
#[derive(Debug, Default)]
pub(crate) struct StallWatch {
    taken: u64,
    since: Option<Instant>,
}

/// Starts a wait on a backend that outlasts this call (a request written, its answer not read
/// yet): the calling worker stops counting as running until [`end_blocked_phase`], and the
/// [`while_blocked`] calls in between count with it, so a write and the read of its answer touch
/// the shared counts once. Nothing on a thread that is no worker, or inside a counted wait.
pub(crate) fn begin_blocked_phase() {
    if BLOCKED.with(Cell::get) {
        return;
    }
    let worker = WORKS_FOR.with(|w| match &*w.borrow() {
        Some(queue) => {
            queue.enter_blocked();
            true
        }
        None => false,
    });
    if worker {
        BLOCKED.with(|b| b.set(true));
        PHASE.with(|p| p.set(true));
    }
}

/// Ends the phase [`begin_blocked_phase`] opened, if one is open.
pub(crate) fn end_blocked_phase() {
    if PHASE.with(|p| p.replace(false)) {
        BLOCKED.with(|b| b.set(false));
        WORKS_FOR.with(|w| {
            if let Some(queue) = &*w.borrow() {
                queue.leave_blocked();
            }
        });
    }
}

/// Runs `wait`, something that blocks on a backend (a read, a write, a connect) or on a slot,
/// with the calling worker not counted as running meanwhile: a job queued now may wake another
/// worker. On a thread that is no worker, just runs it.
///
/// ```ignore
/// let n = while_blocked(|| socket.read(&mut buf))?;
/// ```
pub fn while_blocked<R>(wait: impl FnOnce() -> R) -> R {
    struct Unblock;
    impl Drop for Unblock {
        fn drop(&mut self) {
            BLOCKED.with(|b| b.set(false));
            WORKS_FOR.with(|w| {
                if let Some(queue) = &*w.borrow() {
                    queue.leave_blocked();
                }
            });
        }
    }
    if BLOCKED.with(Cell::get) {
        return wait();
    }
    let worker = WORKS_FOR.with(|w| match &*w.borrow() {
        Some(queue) => {
            queue.enter_blocked();
            true
        }
        None => false,
    });
    if !worker {
        return wait();
    }
    BLOCKED.with(|b| b.set(true));
    let _unblock = Unblock;
    wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_counts_its_waits_once_and_ends_once() {
        let queue = Arc::new(JobQueue::new(1, 1));
        let running = |q: &JobQueue| q.running.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            s.spawn(|| {
                queue.enlist();
                assert_eq!(running(&queue), 1);
                begin_blocked_phase();
                assert_eq!(running(&queue), 0, "the write begins it");
                begin_blocked_phase();
                while_blocked(|| assert_eq!(running(&queue), 0, "the read inside counts with it"));
                assert_eq!(running(&queue), 0, "a wait inside does not end it");
                end_blocked_phase();
                assert_eq!(running(&queue), 1);
                end_blocked_phase();
                assert_eq!(running(&queue), 1, "ending twice is harmless");
                while_blocked(|| {
                    begin_blocked_phase();
                    assert_eq!(running(&queue), 0);
                });
                end_blocked_phase();
                assert_eq!(running(&queue), 1, "a phase begun inside a wait was that wait's");
            });
        });
        begin_blocked_phase();
        end_blocked_phase();
        assert_eq!(running(&queue), 1, "no worker, nothing counted");
    }
}
