//! The history's clock: one small thread that wakes just after each whole second (unix time)
//! and calls its tick with that second. It reads counters the requests keep anyway, so the
//! data path does nothing for the history.

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{RecvTimeoutError, Sender};

/// How long after a whole second the tick runs: the clock has surely passed it (a wake-up a
/// hair early would otherwise read the second before), and late enough to miss nothing
/// counted in it. Requests counted in this margin land in the second before: 0.2 % of them.
const AFTER_THE_SECOND: Duration = Duration::from_millis(2);

/// The sampling thread. Stops when [`stop`](Self::stop)ped or dropped.
///
/// ```
/// use std::sync::mpsc;
/// let (seconds, ticked) = mpsc::channel();
/// let sampler = lb_sync::ops::history::Sampler::start(move |second| {
///     let _ = seconds.send(second);
/// })
/// .unwrap();
/// let first = ticked.recv().unwrap(); // at once: the second it started in
/// let next = ticked.recv().unwrap(); // just after the next second began
/// assert!(next > first);
/// sampler.stop();
/// ```
pub struct Sampler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The whole second (unix time) it is now, and how long until the next one begins.
fn clock() -> (u64, Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (now.as_secs(), Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos())))
}

impl Sampler {
    /// Starts the thread: `tick(now)` at once, then `tick(second)` just after each whole
    /// second begins (after a stall, or when the clock is set, the second it is then).
    pub fn start(mut tick: impl FnMut(u64) + Send + 'static) -> io::Result<Sampler> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new().name("history".into()).spawn(move || {
            tick(clock().0);
            loop {
                match stopped.recv_timeout(clock().1 + AFTER_THE_SECOND) {
                    Err(RecvTimeoutError::Timeout) => tick(clock().0),
                    _ => return,
                }
            }
        })?;
        Ok(Sampler { stop: Some(stop), thread: Some(thread) })
    }

    /// Stops the thread (a tick under way finishes first).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shut();
    }
}
