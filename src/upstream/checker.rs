//! Active health checks, from threads of their own: a scheduler decides which
//! backend is due and hands it to a bounded pool of prober threads, so one blackholed backend
//! delays nobody else's checks. Verdicts follow HAProxy's rise/fall: `fall` consecutive failed
//! probes mark a backend down, `rise` consecutive good ones bring it back. The verdict is an
//! atomic on the backend; no table lock is taken.
//!
//! How often (HAProxy's `inter`, `fastinter`, `downinter`): a backend known to be up is probed
//! every `interval`; one that is not (not probed yet, down, a failed probe pending, its breaker
//! not closed, or traffic could not connect to it since its last probe) every `fast_interval`,
//! so a backend that starts late or restarts is back within about `rise` × `fast_interval`.
//! The next probe is due that long after the previous one *finished*, so a backend that takes
//! its whole timeout to fail is not probed back to back.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::config::Scheme;
use crate::health::{probe, probe_tls, BreakerState, CheckResult, ProbeError};

use super::backend::{Backend, HealthState};
use super::membership::Membership;
use super::table::BackendTable;
use super::tls::UpstreamTls;

/// Health-check settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Path probed with `GET`. Default `/health`.
    pub path: String,
    /// Time between probes of a backend known to be up, with ±10 % jitter so probes do not
    /// align. Default 30 s.
    pub interval: Duration,
    /// Time between probes of a backend not known to be up (never slower than `interval`), with
    /// the same jitter. Default 1 s.
    pub fast_interval: Duration,
    /// Connect + answer deadline of one probe. Default 2 s.
    pub timeout: Duration,
    /// Good probes in a row that mark a down backend up. Default 2.
    pub rise: u32,
    /// Failed probes in a row that mark an up backend down. Default 3.
    pub fall: u32,
    /// Statuses that count as healthy. Default 200-399.
    pub expected: RangeInclusive<u16>,
    /// Prober threads (probes running at once). Default 8.
    pub probers: usize,
    /// What HTTPS backends' certificates are verified against (the HTTP client's). Default:
    /// the built-in roots.
    pub tls: Arc<UpstreamTls>,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            path: "/health".into(),
            interval: Duration::from_secs(30),
            fast_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            expected: 200..=399,
            probers: 8,
            tls: Arc::default(),
        }
    }
}

impl HealthConfig {
    /// The time from one probe of `backend` to the next: `interval` when it is known to be up,
    /// else `fast_interval` (or `interval` if that is shorter).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::config::BackendConfig;
    /// use lb_sync::upstream::{Backend, BackendPolicy, HealthConfig};
    /// let backend = Backend::new("b1".into(), &BackendConfig::new("127.0.0.1", 9, 1), &BackendPolicy::default(), Default::default()).unwrap();
    /// let config = HealthConfig::default();
    /// assert_eq!(config.interval_for(&backend), Duration::from_secs(1), "not probed yet");
    /// backend.set_healthy(true);
    /// assert_eq!(config.interval_for(&backend), Duration::from_secs(30), "up");
    /// backend.want_probe();
    /// assert_eq!(config.interval_for(&backend), Duration::from_secs(1), "traffic could not connect");
    /// ```
    pub fn interval_for(&self, backend: &Backend) -> Duration {
        if known_up(backend) {
            self.interval
        } else {
            self.fast_interval.min(self.interval)
        }
    }
}

/// Up by its last verdict, with no failed probe since, its breaker closed and no connect
/// failure seen by traffic since its last probe began.
fn known_up(backend: &Backend) -> bool {
    backend.health() == HealthState::Up
        && backend.rise_fall().failed_run() == 0
        && !backend.probe_wanted()
        && backend.breaker().state() == BreakerState::Closed
}

/// Applies one probe outcome to a backend's rise/fall counters; logs and returns a state change.
///
/// A backend not probed yet ([`HealthState::Unknown`]) takes the first verdict at once, up or
/// down (HAProxy's default `init-state up`: one failed check is enough to take a new server
/// down); after that, `rise` good or `fall` failed probes in a row change it.
pub fn apply_probe(backend: &Backend, config: &HealthConfig, result: &Result<u16, ProbeError>) -> Option<bool> {
    let before = backend.health();
    let failing_before = backend.rise_fall().failed_run() > 0;
    let (ok_run, fail_run) = backend.rise_fall().record(result.is_ok());
    if result.is_ok() && failing_before {
        // Back after failed probes (restarted): its breaker need not wait out a cool-down that
        // grew while it was dead. (A probe that always passed says nothing of the answers
        // that opened a breaker, 5xx ones say.)
        backend.breaker().probe_passed();
    }
    let change = match before {
        HealthState::Unknown => Some(result.is_ok()),
        HealthState::Up if fail_run >= config.fall => Some(false),
        HealthState::Down if ok_run >= config.rise => Some(true),
        _ => None,
    };
    if let Some(healthy) = change {
        backend.set_healthy(healthy);
        let first = if before == HealthState::Unknown { " (first check)" } else { "" };
        match (healthy, result) {
            (false, Err(why)) => {
                log::warn!(
                    "backend {} ({}) is DOWN after {fail_run} failed check(s){first}: {why}",
                    backend.id,
                    backend.addr
                )
            }
            (false, Ok(_)) => log::warn!("backend {} ({}) is DOWN{first}", backend.id, backend.addr),
            (true, _) if before == HealthState::Unknown => {
                log::info!("backend {} ({}) is UP{first}", backend.id, backend.addr)
            }
            (true, _) => {
                log::info!("backend {} ({}) is UP after {ok_run} good check(s)", backend.id, backend.addr);
                // Back by the checks' word: its traffic resumes now (ramping), not after its
                // breaker's trials.
                backend.breaker().reset();
                backend.recovered();
            }
        }
    }
    change
}

/// A running health checker; dropping it (or [`HealthChecker::stop`]) ends its threads.
pub struct HealthChecker {
    stop: Option<Sender<()>>,
    /// Set at stop: a prober takes no further job and leaves every verdict as it is.
    stopping: Arc<AtomicBool>,
    scheduler: Option<JoinHandle<()>>,
    probers: Vec<JoinHandle<()>>,
    /// Disconnected once every prober thread has ended (each holds a sender).
    probers_ended: Receiver<()>,
}

/// How long a stop waits for probes in progress before leaving them to end on their own (each
/// within its `timeout`): a stop is bounded whatever a backend does.
const PROBE_STOP_WAIT: Duration = Duration::from_millis(250);

/// One probe to run: the backend, and whether traffic asked for it.
struct Job {
    backend: Arc<Backend>,
    asked: bool,
}

impl HealthChecker {
    /// Starts checking every backend of `table` (including ones added later), and probing at
    /// once (within `fast_interval` of its previous probe) a backend traffic could not
    /// connect to ([`BackendTable::probe_requests`]).
    pub fn start(table: Arc<BackendTable>, config: HealthConfig) -> std::io::Result<HealthChecker> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<String>();
        let (ended_tx, probers_ended) = crossbeam_channel::bounded::<()>(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let config = Arc::new(config);
        let mut probers = Vec::new();
        for i in 0..config.probers.max(1) {
            let (jobs, done, config) = (job_rx.clone(), done_tx.clone(), Arc::clone(&config));
            let (stopping, ended) = (Arc::clone(&stopping), ended_tx.clone());
            let run = move || {
                prober(jobs, done, &config, &stopping);
                drop(ended);
            };
            probers.push(std::thread::Builder::new().name(format!("prober-{i}")).spawn(run)?);
        }
        let scheduler = move || schedule(&table, &config, &stop_rx, &job_tx, &done_rx);
        let scheduler = std::thread::Builder::new().name("health".into()).spawn(scheduler)?;
        Ok(HealthChecker { stop: Some(stop_tx), stopping, scheduler: Some(scheduler), probers, probers_ended })
    }

    /// Stops the scheduler and the probers. A probe in progress gets a moment to finish;
    /// one that takes longer (a backend that accepts and never answers) is left to end on its
    /// own within its timeout, changing nothing, so a stop never waits out a probe timeout.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.stop.take());
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.join();
        }
        let ended = self.probers_ended.recv_timeout(PROBE_STOP_WAIT);
        let probers = std::mem::take(&mut self.probers);
        if ended == Err(crossbeam_channel::RecvTimeoutError::Disconnected) {
            for prober in probers {
                let _ = prober.join();
            }
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn prober(jobs: Receiver<Job>, done: Sender<String>, config: &HealthConfig, stopping: &AtomicBool) {
    for Job { backend, asked } in jobs.iter() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let host = format!("{}:{}", backend.host, backend.port);
        let result = match backend.scheme {
            Scheme::Http => probe(backend.addr, &host, &config.path, config.timeout, &config.expected),
            Scheme::Https => {
                let tls = config.tls.client_config();
                probe_tls(backend.addr, tls, &backend.host, &host, &config.path, config.timeout, &config.expected)
            }
        };
        if stopping.load(Ordering::Acquire) {
            return;
        }
        backend.set_last_check(CheckResult {
            ok: result.is_ok(),
            detail: match &result {
                Ok(status) => format!("status {status}"),
                Err(why) => why.to_string(),
            },
            at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            took_ms: started.elapsed().as_millis() as u64,
        });
        if asked && result.is_ok() {
            // Traffic could not connect, and now a probe can: a restart (or a blip). A breaker
            // those connect failures opened need not wait out its cool-down; its trials decide.
            backend.breaker().probe_passed();
        }
        apply_probe(&backend, config, &result);
        let _ = done.send(backend.id.clone());
    }
}

/// A deterministic jitter factor in [0.9, 1.1), different per backend and per round.
fn jitter(id: &str, round: u64) -> f64 {
    let x = crate::balance::hash::hash64(format!("{id}/{round}").as_bytes()) % 2001;
    0.9 + 0.2 * x as f64 / 2000.0
}

/// Where one backend stands in the schedule.
#[derive(Clone)]
struct Slot {
    /// When its last probe finished (`None`: never probed, due now).
    last_done: Option<Instant>,
    /// Probes begun, for the jitter.
    round: u64,
    /// The jitter of this round's interval (computed once per probe, not once per look).
    jitter: f64,
    /// A probe of it is running.
    probing: bool,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot { last_done: None, round: 0, jitter: 1.0, probing: false }
    }
}

/// Every backend's slot, in the order of the table snapshot they were made for, and where to
/// find each by id (a finished probe names its backend). Rebuilt only when the table changes:
/// the scheduler looks at every slot each time a probe finishes, so a look must cost no
/// hashing or allocation (2,000 backends probed each second kept a core busy when it did).
struct Slots {
    snapshot: Option<Arc<Membership>>,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
}

impl Slots {
    /// Follows `snapshot`: a backend keeps its slot by id; a new one starts due now; a removed
    /// one's slot goes.
    fn follow(&mut self, snapshot: &Arc<Membership>) {
        if self.snapshot.as_ref().is_some_and(|current| Arc::ptr_eq(current, snapshot)) {
            return;
        }
        let slots: Vec<Slot> = snapshot
            .backends
            .iter()
            .map(|b| self.index.get(&b.id).map_or_else(Slot::default, |&i| self.slots[i].clone()))
            .collect();
        self.index = snapshot.backends.iter().enumerate().map(|(i, b)| (b.id.clone(), i)).collect();
        self.slots = slots;
        self.snapshot = Some(Arc::clone(snapshot));
    }

    /// A probe of backend `id` finished: its slot's index, if it is still in the table.
    fn finished(&mut self, id: &str) -> Option<usize> {
        let i = *self.index.get(id)?;
        let slot = &mut self.slots[i];
        slot.probing = false;
        slot.last_done = Some(Instant::now());
        Some(i)
    }
}

/// How much earlier than its due time a probe may start, at most: one look at the table
/// launches every probe due within it. Without it, jittered intervals make each backend due
/// at its own instant and every one costs a look at all of them (2,000 backends: 2,000 looks
/// of 2,000 slots a second); with it, about one look per 10 ms. It is also at most a 20th of
/// the backend's interval, so a probe starts early by less than half its jitter (±10 %).
const LOOK_AHEAD: Duration = Duration::from_millis(10);

/// When the backend of `slot` is due (now if never probed), and how early it may start.
fn due(slot: &Slot, backend: &Backend, config: &HealthConfig, now: Instant) -> (Instant, Duration) {
    let interval = config.interval_for(backend);
    let due = slot.last_done.map_or(now, |at| at + interval.mul_f64(slot.jitter));
    (due, (interval / 20).min(LOOK_AHEAD))
}

fn schedule(
    table: &BackendTable,
    config: &HealthConfig,
    stop: &Receiver<()>,
    jobs: &Sender<Job>,
    done: &Receiver<String>,
) {
    let asked = table.probe_requests().wakeups();
    let mut slots = Slots { snapshot: None, slots: Vec::new(), index: HashMap::new() };
    loop {
        let snapshot = table.snapshot();
        slots.follow(&snapshot);
        while let Ok(id) = done.try_recv() {
            slots.finished(&id);
        }
        let now = Instant::now();
        // The state of a backend (a breaker that opened, traffic asking) can make it due
        // sooner without a wake-up: looked at again at least this often.
        let mut next_wake = now + Duration::from_millis(500);
        for (backend, slot) in snapshot.backends.iter().zip(&mut slots.slots) {
            if slot.probing {
                continue;
            }
            let (due, early) = due(slot, backend, config, now);
            if due <= now + early {
                slot.probing = true;
                slot.round += 1;
                slot.jitter = jitter(&backend.id, slot.round);
                let job = Job { backend: Arc::clone(backend), asked: backend.take_probe_wanted() };
                if jobs.send(job).is_err() {
                    return;
                }
            } else {
                next_wake = next_wake.min(due);
            }
        }
        // Wait for the next due check, traffic asking, or the stop signal. A finished probe
        // needs no look at the others: only its own next check is new.
        loop {
            crossbeam_channel::select! {
                recv(stop) -> _ => return,
                recv(done) -> id => {
                    let Ok(id) = id else { return };
                    if let Some(i) = slots.finished(&id) {
                        let (due, _) = due(&slots.slots[i], &snapshot.backends[i], config, Instant::now());
                        next_wake = next_wake.min(due);
                    }
                }
                recv(asked) -> _ => break,
                default(next_wake.saturating_duration_since(Instant::now())) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::peak_ewma;
    use crate::config::BackendConfig;
    use crate::upstream::BackendPolicy;

    fn ramping_backend() -> Backend {
        let policy = BackendPolicy { slow_start: Duration::from_secs(60), ..BackendPolicy::default() };
        let backend = Backend::new("b".into(), &BackendConfig::new("127.0.0.1", 9, 1), &policy, Default::default());
        let backend = backend.unwrap();
        backend.record_answer(200, Duration::from_millis(5));
        backend
    }

    #[test]
    fn stop_does_not_wait_out_a_probe_a_backend_never_answers() {
        use crate::balance::AlgorithmKind;
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let backends = [("silent".to_string(), BackendConfig::new("127.0.0.1", port, 1))];
        let table =
            Arc::new(BackendTable::new(AlgorithmKind::RoundRobin, &backends, BackendPolicy::default()).unwrap());
        let config = HealthConfig { timeout: Duration::from_secs(30), ..HealthConfig::default() };
        let checker = HealthChecker::start(Arc::clone(&table), config).unwrap();
        // The probe is in progress once its connection is accepted; it is held open unanswered.
        let (_held, _) = silent.accept().unwrap();
        let stopping = Instant::now();
        checker.stop();
        let took = stopping.elapsed();
        assert!(took < Duration::from_secs(5), "stop waited {took:?} for a probe with a 30 s timeout");
        assert!(table.snapshot().backends[0].last_check().is_none(), "a probe cut short by the stop changes nothing");
    }

    #[test]
    fn up_again_after_failed_checks_ramps_from_a_fresh_estimate() {
        let backend = ramping_backend();
        let config = HealthConfig { rise: 2, fall: 1, ..HealthConfig::default() };
        assert_eq!(apply_probe(&backend, &config, &Ok(200)), Some(true));
        assert_eq!(apply_probe(&backend, &config, &Err(ProbeError::TimedOut)), Some(false));
        assert!(backend.response_time().estimate(peak_ewma::now()).is_some(), "kept while down");
        assert_eq!(backend.slow_start().permille(), 1000, "not ramping while down");
        assert_eq!(apply_probe(&backend, &config, &Ok(200)), None, "one of rise 2");
        assert_eq!(apply_probe(&backend, &config, &Ok(200)), Some(true));
        // 10 % at the start of a 60 s ramp: 100 ‰, a few more on a slow machine.
        assert!((100..200).contains(&backend.slow_start().permille()), "{}", backend.slow_start().permille());
        assert_eq!(backend.response_time().estimate(peak_ewma::now()), None, "forgotten");
    }

    #[test]
    fn slots_follow_the_table_by_id() {
        use crate::balance::AlgorithmKind;
        let wanted = |ids: &[&str]| -> Vec<(String, BackendConfig)> {
            ids.iter()
                .enumerate()
                .map(|(i, id)| (id.to_string(), BackendConfig::new("127.0.0.1", 9001 + i as u16, 1)))
                .collect()
        };
        let table =
            BackendTable::new(AlgorithmKind::RoundRobin, &wanted(&["a", "b"]), BackendPolicy::default()).unwrap();
        let mut slots = Slots { snapshot: None, slots: Vec::new(), index: HashMap::new() };
        slots.follow(&table.snapshot());
        slots.slots[1] = Slot { round: 3, probing: true, ..Slot::default() };
        // The same snapshot: nothing rebuilt.
        slots.follow(&table.snapshot());
        assert_eq!(slots.slots[1].round, 3);
        // "a" removed, "c" added, "b" moved to the front (and to another port: same id, same slot).
        let next = [("b".to_string(), BackendConfig::new("127.0.0.1", 9001, 1)), wanted(&["x", "c"])[1].clone()];
        table.reconcile(AlgorithmKind::RoundRobin, &next, BackendPolicy::default()).unwrap();
        slots.follow(&table.snapshot());
        assert_eq!(slots.slots.len(), 2);
        assert_eq!((slots.slots[0].round, slots.slots[0].probing), (3, true), "b kept its slot");
        assert_eq!((slots.slots[1].round, slots.slots[1].last_done), (0, None), "c is due now");
        assert_eq!(slots.finished("a"), None, "a's probe ends with its slot gone");
        assert_eq!(slots.finished("b"), Some(0));
        assert!(!slots.slots[0].probing && slots.slots[0].last_done.is_some());
    }

    #[test]
    fn a_probe_starts_early_by_at_most_a_twentieth_of_its_interval() {
        let backend = ramping_backend();
        let now = Instant::now();
        let slot = Slot { last_done: Some(now), ..Slot::default() };
        let config = |ms: u64| HealthConfig { fast_interval: Duration::from_millis(ms), ..HealthConfig::default() };
        // Not probed yet: not known up, so the fast interval applies.
        assert_eq!(
            due(&slot, &backend, &config(100), now),
            (now + Duration::from_millis(100), Duration::from_millis(5))
        );
        assert_eq!(due(&slot, &backend, &config(1000), now).1, LOOK_AHEAD);
        assert_eq!(due(&Slot::default(), &backend, &config(1000), now).0, now, "never probed: due now");
    }

    #[test]
    fn up_at_the_first_check_is_no_recovery() {
        let backend = ramping_backend();
        assert_eq!(apply_probe(&backend, &HealthConfig::default(), &Ok(200)), Some(true));
        assert_eq!(backend.slow_start().permille(), 1000);
        assert!(backend.response_time().estimate(peak_ewma::now()).is_some());
    }
}
