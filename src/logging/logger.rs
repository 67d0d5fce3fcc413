//! The process's ordinary log (`log::info!` and friends) written through a [`LogWriter`]'s
//! thread, for `--log-file PATH`: the same non-blocking path as the access log.
//!
//! [`LogWriter`]: super::LogWriter

use std::fmt::Write as _;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

use super::timestamp::UtcTime;
use super::writer::LogHandle;

/// A `log::Log` that formats each record as
/// `2024-05-01T12:34:56.789Z WARN  lb_sync::health: backend b1 is down` (UTC) and queues it on a
/// [`LogHandle`]; a full queue drops the line rather than block the caller.
///
/// ```
/// use lb_sync::logging::{LogTarget, LogWriter, Logger};
///
/// let writer = LogWriter::start(LogTarget::Stderr)?;
/// let logger = Logger::new(writer.handle(), log::LevelFilter::Info);
/// // In main: logger.install().expect("no other logger"); then log::info!(...) goes to the writer.
/// # drop(logger);
/// writer.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Logger {
    handle: LogHandle,
    level: LevelFilter,
    /// The level for records of other crates (ureq, its TLS and DNS helpers): their internals
    /// are not this program's story.
    others: LevelFilter,
}

/// The prefix of this crate's log targets (module paths of the library and the binaries).
const OUR_TARGETS: &str = "lb_sync";

impl Logger {
    /// A logger passing records at `level` or more severe to `handle`.
    ///
    /// ```
    /// use log::Log;
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// let logger = lb_sync::logging::Logger::new(writer.handle(), log::LevelFilter::Warn);
    /// assert!(!logger.enabled(&log::Metadata::builder().level(log::Level::Info).build()));
    /// # writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(handle: LogHandle, level: LevelFilter) -> Logger {
        Logger { handle, level, others: level }
    }

    /// Records of other crates (targets not starting with `lb_sync`) pass only at `level` or
    /// more severe (and never below this logger's own level).
    ///
    /// ```
    /// use log::Log;
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::Stderr)?;
    /// let logger = lb_sync::logging::Logger::new(writer.handle(), log::LevelFilter::Debug)
    ///     .other_crates(log::LevelFilter::Warn);
    /// let at = |level, target| log::Metadata::builder().level(level).target(target).build();
    /// assert!(logger.enabled(&at(log::Level::Debug, "lb_sync::proxy")));
    /// assert!(!logger.enabled(&at(log::Level::Debug, "ureq::unit")));
    /// assert!(logger.enabled(&at(log::Level::Warn, "ureq::unit")));
    /// # writer.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn other_crates(mut self, level: LevelFilter) -> Logger {
        self.others = level;
        self
    }

    /// Makes this the process's logger (once per process; the logger lives until exit) and sets
    /// `log`'s maximum level to this logger's.
    ///
    /// ```no_run
    /// let writer = lb_sync::logging::LogWriter::start(lb_sync::logging::LogTarget::File("lb-sync.log".into()))?;
    /// lb_sync::logging::Logger::new(writer.handle(), log::LevelFilter::Info).install().expect("first logger");
    /// log::info!("listening");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn install(self) -> Result<(), SetLoggerError> {
        let level = self.level;
        log::set_logger(Box::leak(Box::new(self)))?;
        log::set_max_level(level);
        Ok(())
    }

    /// The line for `record` logged at `time`, without the newline.
    fn line(record: &Record<'_>, time: SystemTime) -> String {
        let mut line = String::with_capacity(96);
        UtcTime::from_system_time(time).write_rfc3339(&mut line);
        let _ = write!(line, " {:<5} {}: {}", record.level(), record.target(), record.args());
        line
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let level = if metadata.target().starts_with(OUR_TARGETS) { self.level } else { self.level.min(self.others) };
        metadata.level() <= level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.handle.send(Logger::line(record, SystemTime::now()));
        }
    }

    /// Bounded ([`WAIT_LIMIT`](super::WAIT_LIMIT)): a blocked log write must not hold whoever
    /// flushes.
    fn flush(&self) {
        self.handle.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::{LogTarget, LogWriter};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn lines_have_a_utc_time_level_and_target() {
        let time = UNIX_EPOCH + Duration::from_millis(1_714_566_896_789);
        let line = Logger::line(
            &Record::builder()
                .level(log::Level::Warn)
                .target("lb_sync::health")
                .args(format_args!("backend {} is down", "b1"))
                .build(),
            time,
        );
        assert_eq!(line, "2024-05-01T12:34:56.789Z WARN  lb_sync::health: backend b1 is down");
    }

    #[test]
    fn records_below_the_level_are_not_written() {
        let path = std::env::temp_dir().join(format!("lb-sync-logger-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let writer = LogWriter::start(LogTarget::File(path.clone())).unwrap();
        let logger = Logger::new(writer.handle(), LevelFilter::Info);
        for (level, text) in [(log::Level::Debug, "hidden"), (log::Level::Info, "shown"), (log::Level::Error, "bad")] {
            logger.log(&Record::builder().level(level).target("t").args(format_args!("{text}")).build());
        }
        logger.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        writer.stop();
        let ends: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(ends, ["INFO  t: shown", "ERROR t: bad"]);
        std::fs::remove_file(&path).unwrap();
    }
}
