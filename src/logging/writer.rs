//! Writing log lines off the request path: workers hand lines to a bounded channel, one thread
//! writes them through a `BufWriter` and flushes when the channel is momentarily empty, so a
//! request never waits on a lock around `write(2)` nor on a slow disk. When the channel is full
//! the line is dropped and counted: a worker never blocks on logging.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

/// Lines that may wait for the log thread before more are dropped: at ~200 bytes a line, about
/// 3 MiB, several seconds of a busy balancer's access log while a disk stalls.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// What the log thread buffers before it writes even with lines still queued.
const BUFFER_BYTES: usize = 64 * 1024;

/// How long [`LogWriter::stop`], [`LogWriter::reopen`] and [`LogHandle::flush`] wait for the
/// log thread: a write that blocks (a stalled disk, a stderr pipe nobody reads, a terminal
/// paused with Ctrl-S) must not hold a stop or a reload forever.
pub const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// Where a [`LogWriter`] writes.
///
/// ```
/// use lb_sync::logging::LogTarget;
/// assert_eq!("-".parse::<LogTarget>(), Ok(LogTarget::Stderr));
/// assert_eq!("/var/log/lb/access.log".parse::<LogTarget>(), Ok(LogTarget::File("/var/log/lb/access.log".into())));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// The process's standard error.
    Stderr,
    /// A file, opened for appending and created if missing.
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = String;

    /// `-` or `stderr` is [`LogTarget::Stderr`]; anything else is a file path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "" => Err("empty log path".into()),
            "-" | "stderr" => Ok(LogTarget::Stderr),
            path => Ok(LogTarget::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::Stderr => f.write_str("stderr"),
            LogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl LogTarget {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::File(path) => Box::new(open_append(path)?),
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

/// Counts kept by a [`LogWriter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogWriterStats {
    /// Lines taken into the log thread's buffer, which is written out whenever the queue is
    /// empty (a line buffered when the disk fails, or the process crashes, may still be lost).
    pub written: u64,
    /// Lines dropped because the channel was full or the writer stopped.
    pub dropped: u64,
    /// Lines lost to a failed write (disk full, closed pipe).
    pub write_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn read(&self) -> LogWriterStats {
        LogWriterStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

enum Message {
    Line(String),
    /// Write and flush everything before it, then answer.
    Flush(Sender<()>),
    /// Flush, then open the file again (after logrotate moved it), then answer.
    Reopen(Sender<io::Result<()>>),
    Stop,
}

/// The cheap, cloneable sending side of a [`LogWriter`], one per worker or logger.
///
/// ```
/// use lb_sync::logging::{LogTarget, LogWriter};
///
/// let writer = LogWriter::start(LogTarget::Stderr)?;
/// let handle = writer.handle();
/// std::thread::spawn(move || handle.send("from a worker".to_string())).join().unwrap();
/// writer.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LogHandle {
    sender: Sender<Message>,
    counters: Arc<Counters>,
    target: Arc<LogTarget>,
}

impl LogHandle {
    /// Queues one line (the newline is added by the writer); never blocks. `false` when it was
    /// dropped: the channel was full, or the writer stopped.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// assert!(writer.handle().send("hello".into()));
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send(&self, line: String) -> bool {
        match self.sender.try_send(Message::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits until every line queued before the call is written and flushed, up to
    /// [`WAIT_LIMIT`]. Blocks: for shutdown, tests and `log::Log::flush`, not for the request
    /// path. `false` when the writer has stopped or did not get there in time.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// assert!(writer.handle().flush());
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn flush(&self) -> bool {
        self.flush_within(WAIT_LIMIT)
    }

    /// [`flush`](Self::flush), waiting at most `limit`.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// assert!(writer.handle().flush_within(std::time::Duration::from_secs(1)));
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn flush_within(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let (done, wait) = bounded(1);
        self.sender.send_deadline(Message::Flush(done), end).is_ok() && wait.recv_deadline(end).is_ok()
    }

    /// Flushes, then has the log thread open its file again by its path (after logrotate renamed
    /// it, new lines go to a new file; every line queued before goes to the old one). Nothing
    /// happens for stderr. Waits at most `limit` for the log thread; on an error the thread
    /// goes on writing to the file it had.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// writer.handle().reopen_within(std::time::Duration::from_secs(1))?;
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reopen_within(&self, limit: Duration) -> io::Result<()> {
        let end = Instant::now() + limit;
        let (done, wait) = bounded(1);
        let stopped = || io::Error::other("the log writer has stopped");
        let busy = || io::Error::new(io::ErrorKind::TimedOut, "the log writer is busy (a write is blocked)");
        self.sender.send_deadline(Message::Reopen(done), end).map_err(|e| match e {
            crossbeam_channel::SendTimeoutError::Timeout(_) => busy(),
            crossbeam_channel::SendTimeoutError::Disconnected(_) => stopped(),
        })?;
        match wait.recv_deadline(end) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(busy()),
            Err(RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }

    /// Where this handle's lines go.
    ///
    /// ```
    /// use lb_sync::logging::{LogTarget, LogWriter};
    /// let writer = LogWriter::start(LogTarget::Stderr)?;
    /// assert_eq!(writer.handle().target(), &LogTarget::Stderr);
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    /// Whether both handles send to the same writer.
    ///
    /// ```
    /// use lb_sync::logging::{LogTarget, LogWriter};
    /// let (one, other) = (LogWriter::start(LogTarget::Stderr)?, LogWriter::start(LogTarget::Stderr)?);
    /// assert!(one.handle().same_writer(&one.handle()));
    /// assert!(!one.handle().same_writer(&other.handle()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn same_writer(&self, other: &LogHandle) -> bool {
        self.sender.same_channel(&other.sender)
    }

    /// The counts so far.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// assert_eq!(writer.handle().stats().dropped, 0);
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> LogWriterStats {
        self.counters.read()
    }
}

/// The log thread and its channel.
///
/// ```
/// use lb_sync::logging::{LogTarget, LogWriter};
///
/// let path = std::env::temp_dir().join(format!("lb-sync-doc-{}.log", std::process::id()));
/// let writer = LogWriter::start(LogTarget::File(path.clone()))?;
/// writer.handle().send("one".into());
/// writer.handle().send("two".into());
/// let stats = writer.stop();
/// assert_eq!(stats.written, 2);
/// assert_eq!(std::fs::read_to_string(&path)?, "one\ntwo\n");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LogWriter {
    handle: LogHandle,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the log thread ends, so a stop can wait for it with a deadline.
    ended: Receiver<()>,
}

impl LogWriter {
    /// Opens the target (a file for appending, created if missing) and starts the log thread
    /// with a channel of [`DEFAULT_CAPACITY`] lines. Fails only when the file cannot be opened.
    ///
    /// ```
    /// use lb_sync::logging::{LogTarget, LogWriter};
    /// assert!(LogWriter::start(LogTarget::File("/nonexistent-dir/x.log".into())).is_err());
    /// ```
    pub fn start(target: LogTarget) -> io::Result<LogWriter> {
        LogWriter::with_capacity(target, DEFAULT_CAPACITY)
    }

    /// [`start`](Self::start) with a channel of `capacity` lines (at least 1).
    ///
    /// ```
    /// use lb_sync::logging::{LogTarget, LogWriter};
    /// let writer = LogWriter::with_capacity(LogTarget::Stderr, 4)?;
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_capacity(target: LogTarget, capacity: usize) -> io::Result<LogWriter> {
        let sink = target.open()?;
        LogWriter::spawn(target, sink, capacity)
    }

    /// Starts the log thread writing to `sink`; `target` is what [`reopen`](Self::reopen) opens.
    fn spawn(target: LogTarget, sink: Box<dyn Write + Send>, capacity: usize) -> io::Result<LogWriter> {
        let (sender, receiver) = bounded(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let target = Arc::new(target);
        let thread_target = Arc::clone(&target);
        let (ending, ended) = bounded::<()>(0);
        let thread = std::thread::Builder::new().name("lb-log".into()).spawn(move || {
            let _ending = ending;
            write_loop(&thread_target, sink, &receiver, &thread_counters)
        })?;
        Ok(LogWriter { handle: LogHandle { sender, counters, target }, thread: Some(thread), ended })
    }

    /// A sending handle; clone it into each thread that logs.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// let handle = writer.handle();
    /// assert!(handle.send("x".into()));
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    /// Flushes, then opens the file again by its path: after `logrotate` renamed it, new lines
    /// go to a new file. Nothing happens for stderr. Waits up to [`WAIT_LIMIT`] (see
    /// [`LogHandle::reopen_within`]).
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// writer.reopen()?;
    /// writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reopen(&self) -> io::Result<()> {
        self.handle.reopen_within(WAIT_LIMIT)
    }

    /// Writes and flushes every line queued so far, stops the thread and returns the counts.
    /// Lines sent afterwards through a handle are dropped and counted. Waits at most
    /// [`WAIT_LIMIT`]: a log thread blocked on a write is left behind (the process's exit ends
    /// it), with what it still held unwritten.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// let handle = writer.handle();
    /// writer.stop();
    /// assert!(!handle.send("too late".into()));
    /// assert_eq!(handle.stats().dropped, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop(self) -> LogWriterStats {
        self.stop_within(WAIT_LIMIT)
    }

    /// [`stop`](Self::stop), waiting at most `limit` for the log thread.
    ///
    /// ```
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// writer.handle().send("last words".into());
    /// assert_eq!(writer.stop_within(std::time::Duration::from_secs(1)).written, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop_within(mut self, limit: Duration) -> LogWriterStats {
        self.stop_thread(limit);
        self.handle.stats()
    }

    fn stop_thread(&mut self, limit: Duration) {
        if let Some(thread) = self.thread.take() {
            // Waits for room behind the lines queued, then for the thread to write them.
            let end = Instant::now() + limit;
            let _ = self.handle.sender.send_deadline(Message::Stop, end);
            if self.ended.recv_deadline(end) == Err(RecvTimeoutError::Disconnected) {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.stop_thread(WAIT_LIMIT);
    }
}

/// The log thread: block for a message, take every other one already queued, then flush once,
/// so a burst of lines costs one `write(2)` and a quiet moment leaves nothing in the buffer.
fn write_loop(target: &LogTarget, sink: Box<dyn Write + Send>, receiver: &Receiver<Message>, counters: &Counters) {
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, sink);
    let mut reported_error = false;
    let mut write_line = |out: &mut BufWriter<Box<dyn Write + Send>>, line: &str| {
        match out
            .write_all(line.as_bytes())
            .and_then(|()| if line.ends_with('\n') { Ok(()) } else { out.write_all(b"\n") })
        {
            Ok(()) => counters.written.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                // Once: a full disk would otherwise print a line for every line lost.
                if !std::mem::replace(&mut reported_error, true) {
                    eprintln!("lb-sync: writing the log to {target} failed: {e} (lost lines are counted)");
                }
                counters.write_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    };
    let mut stopping = false;
    let mut next = receiver.recv().ok();
    while let Some(message) = next {
        match message {
            Message::Line(line) => write_line(&mut out, &line),
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
            Message::Reopen(done) => {
                let _ = out.flush();
                let result = match target {
                    LogTarget::Stderr => Ok(()),
                    LogTarget::File(path) => open_append(path).map(|file| {
                        out = BufWriter::with_capacity(BUFFER_BYTES, Box::new(file));
                    }),
                };
                let _ = done.send(result);
            }
            // Lines already queued behind the stop (sent while it ran) are still written.
            Message::Stop => stopping = true,
        }
        next = match receiver.try_recv() {
            Ok(message) => Some(message),
            Err(TryRecvError::Empty) if stopping => None,
            Err(TryRecvError::Empty) => {
                // A failed flush keeps the bytes buffered for the next try; when the buffer then
                // cannot take a line, that line is counted in write_errors.
                let _ = out.flush();
                receiver.recv().ok()
            }
            Err(TryRecvError::Disconnected) => None,
        };
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn temp_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lb-sync-writer-{}-{name}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn appends_to_a_file_it_creates() {
        let path = temp_path("append");
        std::fs::write(&path, "kept\n").unwrap();
        let writer = LogWriter::start(LogTarget::File(path.clone())).unwrap();
        let handle = writer.handle();
        assert!(handle.send("first".into()));
        assert!(handle.send("second\n".into()), "a line that ends in a newline gets no second one");
        assert!(handle.flush());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\nfirst\nsecond\n", "flushed without stopping");
        assert!(handle.send("third".into()));
        let stats = writer.stop();
        assert_eq!(stats, LogWriterStats { written: 3, dropped: 0, write_errors: 0 });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\nfirst\nsecond\nthird\n");
        std::fs::remove_file(&path).unwrap();

        let created = temp_path("created");
        LogWriter::start(LogTarget::File(created.clone())).unwrap().stop();
        assert!(created.exists(), "opening creates the file");
        std::fs::remove_file(&created).unwrap();
    }

    #[test]
    fn eight_threads_lose_no_line_and_lines_stay_whole() {
        let path = temp_path("threads");
        let writer = LogWriter::with_capacity(LogTarget::File(path.clone()), 100_000).unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (handle, barrier) = (writer.handle(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..5000).filter(|i| handle.send(format!("thread {t} line {i} {}", "x".repeat(100)))).count()
                })
            })
            .collect();
        let sent: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let stats = writer.stop();
        assert_eq!(sent, 40_000, "the channel had room for every line");
        assert_eq!(stats.written, 40_000);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 40_000);
        assert!(text.lines().all(|l| l.starts_with("thread ") && l.ends_with(&"x".repeat(100))));
        std::fs::remove_file(&path).unwrap();
    }

    /// A sink whose first write waits until the test lets it go, to hold the log thread still.
    struct GatedSink {
        entered: Sender<()>,
        release: Receiver<()>,
        gate_passed: bool,
        written: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for GatedSink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if !std::mem::replace(&mut self.gate_passed, true) {
                let _ = self.entered.send(());
                let _ = self.release.recv();
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (entered, entered_wait) = bounded(1);
        let (release_send, release) = bounded(1);
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = GatedSink { entered, release, gate_passed: false, written: Arc::clone(&written) };
        let writer = LogWriter::spawn(LogTarget::Stderr, Box::new(sink), 1).unwrap();
        let handle = writer.handle();
        assert!(handle.send("first".into()));
        // The log thread took the line and, the channel being empty, is stuck flushing it.
        entered_wait.recv().unwrap();
        let started = std::time::Instant::now();
        let accepted: Vec<bool> = (0..10).map(|i| handle.send(format!("line {i}"))).collect();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "sending never blocked");
        assert_eq!(accepted, [true, false, false, false, false, false, false, false, false, false], "one slot");
        assert_eq!(handle.stats().dropped, 9);
        release_send.send(()).unwrap();
        let stats = writer.stop();
        assert_eq!(stats, LogWriterStats { written: 2, dropped: 9, write_errors: 0 });
        assert_eq!(String::from_utf8(written.lock().unwrap().clone()).unwrap(), "first\nline 0\n");
    }

    #[test]
    fn a_blocked_write_holds_neither_a_stop_nor_a_reopen_nor_a_flush_past_its_limit() {
        let (entered, entered_wait) = bounded(1);
        let (release_send, release) = bounded(1);
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = GatedSink { entered, release, gate_passed: false, written: Arc::clone(&written) };
        let writer = LogWriter::spawn(LogTarget::Stderr, Box::new(sink), 16).unwrap();
        let handle = writer.handle();
        assert!(handle.send("stuck".into()));
        entered_wait.recv().unwrap();
        let limit = Duration::from_millis(200);
        assert!(!handle.flush_within(limit), "a flush cannot finish while the write is blocked");
        let busy = handle.reopen_within(limit).unwrap_err();
        assert_eq!(busy.kind(), io::ErrorKind::TimedOut, "{busy}");
        let started = Instant::now();
        writer.stop_within(limit);
        assert!(started.elapsed() < Duration::from_secs(2), "the stop waited {:?}", started.elapsed());
        // Let the thread left behind finish.
        release_send.send(()).unwrap();
        assert!(wait_for(|| written.lock().unwrap().starts_with(b"stuck\n")));
    }

    fn wait_for(check: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let path = temp_path("rotate");
        let rotated = path.with_extension("log.1");
        let writer = LogWriter::start(LogTarget::File(path.clone())).unwrap();
        writer.handle().send("before".into());
        std::fs::rename(&path, &rotated).unwrap();
        writer.reopen().unwrap();
        writer.handle().send("after".into());
        writer.stop();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "before\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&rotated).unwrap();
    }

    #[test]
    fn targets_by_name() {
        assert_eq!("stderr".parse(), Ok(LogTarget::Stderr));
        assert!("".parse::<LogTarget>().is_err());
        assert_eq!(LogTarget::File("/tmp/a.log".into()).to_string(), "/tmp/a.log");
    }
}
