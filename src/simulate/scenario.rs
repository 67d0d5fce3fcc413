//! What a simulation runs: the backends, the workload and the events, checked once, with
//! every refusal a one-line [`ScenarioError`].

use std::fmt;
use std::time::Duration;

use crate::balance::AlgorithmKind;
use crate::config::{is_valid_id, range_of};

/// An algorithm a simulation runs: one of lb-sync's, or the seed's weighted round robin, kept
/// for comparison (the seed guide shows no code for it; this is the usual implementation of
/// what it describes: each backend repeated `weight` times in a list, taken in turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// An algorithm of [`crate::balance`], as the proxy runs it.
    Real(AlgorithmKind),
    /// The seed's weighted round robin (`seed_weighted_round_robin`).
    SeedWeightedRoundRobin,
}

impl Contender {
    /// Its name on the command line and in the output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Contender::Real(kind) => kind.name(),
            Contender::SeedWeightedRoundRobin => "seed_weighted_round_robin",
        }
    }

    /// Parses one name; `all` is handled by [`parse_algorithms`].
    fn parse(name: &str) -> Result<Contender, ScenarioError> {
        if name == "seed_weighted_round_robin" {
            return Ok(Contender::SeedWeightedRoundRobin);
        }
        name.parse::<AlgorithmKind>().map(Contender::Real).map_err(|e| {
            let listed = e.to_string();
            ScenarioError(format!("{}, seed_weighted_round_robin or all)", listed.trim_end_matches(')')))
        })
    }
}

/// A comma-separated list of names, `all` standing for lb-sync's six.
///
/// ```
/// use lb_sync::balance::AlgorithmKind;
/// use lb_sync::simulate::{parse_algorithms, Contender};
/// assert_eq!(parse_algorithms("all").unwrap().len(), 6);
/// assert_eq!(
///     parse_algorithms("p2c,seed_weighted_round_robin").unwrap(),
///     [Contender::Real(AlgorithmKind::P2c), Contender::SeedWeightedRoundRobin]
/// );
/// assert!(parse_algorithms("random").is_err());
/// ```
pub fn parse_algorithms(text: &str) -> Result<Vec<Contender>, ScenarioError> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim) {
        let named = if name == "all" {
            AlgorithmKind::ALL.iter().map(|&k| Contender::Real(k)).collect()
        } else {
            vec![Contender::parse(name)?]
        };
        for contender in named {
            if !out.contains(&contender) {
                out.push(contender);
            }
        }
    }
    Ok(out)
}

/// Why a scenario was refused: one line, printed after `lb-sync simulate: ` (exit status 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

fn error(message: impl Into<String>) -> ScenarioError {
    ScenarioError(message.into())
}

/// Parses a duration: a number and a unit, `us`, `ms`, `s` or `m` (`5ms`, `1.5s`, `200us`).
///
/// ```
/// use std::time::Duration;
/// use lb_sync::simulate::parse_duration;
/// assert_eq!(parse_duration("5ms").unwrap(), Duration::from_millis(5));
/// assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert_eq!(
///     parse_duration("5 parsecs").unwrap_err().to_string(),
///     "malformed duration '5 parsecs' (expected a number and us, ms, s or m: 5ms, 1.5s)"
/// );
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ScenarioError> {
    let malformed = || error(format!("malformed duration '{text}' (expected a number and us, ms, s or m: 5ms, 1.5s)"));
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(malformed)?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| malformed())?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(malformed()),
    };
    let seconds = value * scale;
    // Up to a day: longer would be a typo, and nanoseconds stay far from overflow.
    if !seconds.is_finite() || seconds > 86_400.0 {
        return Err(malformed());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How service times vary around each backend's mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Always the mean.
    Fixed,
    /// Exponential (memoryless: many short, a few long), the usual model of a server.
    Exponential,
    /// Log-normal with this σ of the underlying normal (a heavier tail as σ grows), scaled so
    /// that its mean is the backend's.
    LogNormal(f64),
}

impl Distribution {
    /// `fixed`, `exponential`, `lognormal` (σ 1) or `lognormal:SIGMA`.
    ///
    /// ```
    /// use lb_sync::simulate::Distribution;
    /// assert_eq!(Distribution::parse("lognormal:0.5").unwrap(), Distribution::LogNormal(0.5));
    /// assert!(Distribution::parse("gaussian").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Distribution, ScenarioError> {
        let bad = || {
            error(format!(
                "unknown service time distribution '{text}' (expected fixed, exponential, lognormal or lognormal:SIGMA with SIGMA 0.01-3)"
            ))
        };
        match text {
            "fixed" => Ok(Distribution::Fixed),
            "exponential" => Ok(Distribution::Exponential),
            "lognormal" => Ok(Distribution::LogNormal(1.0)),
            _ => {
                let sigma: f64 = text.strip_prefix("lognormal:").and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                if (0.01..=3.0).contains(&sigma) {
                    Ok(Distribution::LogNormal(sigma))
                } else {
                    Err(bad())
                }
            }
        }
    }

    /// Its name as the output shows it.
    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Distribution::Fixed => "fixed".into(),
            Distribution::Exponential => "exponential".into(),
            Distribution::LogNormal(sigma) => format!("lognormal (sigma {sigma})"),
        }
    }
}

/// One backend of a simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    /// Its id (events and the output name it).
    pub id: String,
    /// Its weight.
    pub weight: u32,
    /// Its mean service time.
    pub service: Duration,
    /// Whether it is in the table at the start (a backend whose first event is `add` is not).
    pub present: bool,
}

/// When an event happens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum At {
    /// Just before request number N (counting from 0) is picked for.
    Request(u64),
    /// At this simulated time.
    Time(Duration),
}

/// What an event does to a backend (by its index in the backend list).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Leaves the table (the algorithm is rebuilt, as on a management API removal).
    Remove(usize),
    /// Joins the table (a fresh backend: nothing measured).
    Add(usize),
    /// Marked down by the health checks (stays in the table, is skipped).
    Down(usize),
    /// Marked up again.
    Up(usize),
    /// Its mean service time becomes this.
    Slow(usize, Duration),
}

impl Action {
    /// The backend it names.
    #[must_use]
    pub fn backend(self) -> usize {
        match self {
            Action::Remove(b) | Action::Add(b) | Action::Down(b) | Action::Up(b) | Action::Slow(b, _) => b,
        }
    }
}

/// One `--event`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When.
    pub at: At,
    /// What.
    pub action: Action,
    /// As given on the command line (the output names events by it).
    pub text: String,
}

/// Everything a simulation needs, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The algorithms to run, each on the same workload.
    pub algorithms: Vec<Contender>,
    /// The backends, in configured order.
    pub backends: Vec<BackendSpec>,
    /// Requests in all (>= 1).
    pub requests: u64,
    /// Distinct client addresses.
    pub clients: u32,
    /// Zipf exponent of the clients' popularity (0: uniform).
    pub zipf: f64,
    /// Requests in flight at most: in a closed loop, exactly this many (as `wrk -c`); with
    /// `load`, the proxy's workers (more wait for one).
    pub concurrency: usize,
    /// Open loop: Poisson arrivals at this share of the backends' total capacity. `None`:
    /// closed loop.
    pub load: Option<f64>,
    /// Requests a backend serves at once (more wait in its queue, first come first served).
    pub workers: usize,
    /// How service times vary.
    pub distribution: Distribution,
    /// The events, in command-line order.
    pub events: Vec<Event>,
    /// The seed of every random draw.
    pub seed: u64,
    /// Requests one backend may have at once (`backend_max_connections`); at its cap it is
    /// passed over like an unusable one.
    pub max_connections: usize,
    /// How long a request waits for a connection slot when every candidate is at its cap
    /// (`backend_queue_timeout`), then fails (`503`).
    pub queue_timeout: Duration,
    /// Panic mode: with nothing usable, any backend in the table.
    pub panic_mode: bool,
    /// peak_ewma's decay window.
    pub peak_ewma_window: Duration,
}

/// Most clients (the Zipf table holds one number per client).
pub const MAX_CLIENTS: u32 = 1_000_000;
/// Most requests in one run.
pub const MAX_REQUESTS: u64 = 100_000_000;
/// Most backends.
pub const MAX_BACKENDS: usize = 10_000;

/// The longest duration a scenario takes anywhere (service times, event times, the queue
/// timeout): as [`parse_duration`] and the config's timeouts allow.
const DAY: Duration = Duration::from_secs(86_400);

/// The refusal of a `--peak-ewma-window` of `shown` seconds: the command line words it the same
/// for a value that is not a duration at all (negative, NaN) as [`Scenario::validate`] does for
/// one out of range.
pub(crate) fn peak_ewma_window_refused(shown: impl fmt::Display) -> ScenarioError {
    error(format!("--peak-ewma-window must be {}, got {shown}", range_of("peak_ewma_window").describe()))
}

impl Scenario {
    /// Checks every bound, in one place: the command line builds a scenario and calls this,
    /// and so should a library user who builds one in code (what [`crate::simulate::run`]
    /// does with an unchecked one is undefined: it may panic or allocate without bound).
    /// The ranges that lb-sync's config also has (weights, `peak_ewma_window`,
    /// `backend_max_connections`, `backend_queue_timeout`) are taken from
    /// [`crate::config::RANGES`]; ids follow [`is_valid_id`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::simulate::{parse_algorithms, BackendSpec, Distribution, Scenario};
    /// let mut scenario = Scenario {
    ///     algorithms: parse_algorithms("p2c").unwrap(),
    ///     backends: vec![BackendSpec { id: "b1".into(), weight: 1, service: Duration::from_millis(10), present: true }],
    ///     requests: 1000,
    ///     clients: 100,
    ///     zipf: 0.0,
    ///     concurrency: 8,
    ///     load: None,
    ///     workers: 4,
    ///     distribution: Distribution::Exponential,
    ///     events: vec![],
    ///     seed: 1,
    ///     max_connections: 192,
    ///     queue_timeout: Duration::from_secs(5),
    ///     panic_mode: false,
    ///     peak_ewma_window: Duration::from_secs(10),
    /// };
    /// assert!(scenario.validate().is_ok());
    /// scenario.max_connections = 0;
    /// assert_eq!(scenario.validate().unwrap_err().to_string(), "--max-connections must be 1-1000000, got 0");
    /// ```
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.algorithms.is_empty() {
            return Err(error("no algorithm to simulate"));
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            return Err(error(format!("--requests must be 1-{MAX_REQUESTS}, got {}", self.requests)));
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(error(format!("--clients must be 1-{MAX_CLIENTS}, got {}", self.clients)));
        }
        if !(0.0..=5.0).contains(&self.zipf) {
            return Err(error(format!("--zipf must be 0 (uniform) to 5, got {}", self.zipf)));
        }
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(error(format!("--concurrency must be 1-100000, got {}", self.concurrency)));
        }
        if !(1..=100_000).contains(&self.workers) {
            return Err(error(format!("--workers must be 1-100000, got {}", self.workers)));
        }
        if let Some(load) = self.load {
            if !(load > 0.0 && load <= 10.0) {
                return Err(error(format!("--load must be above 0 and at most 10 (a share of capacity), got {load}")));
            }
        }
        let window = self.peak_ewma_window.as_secs_f64();
        if !range_of("peak_ewma_window").contains(window) {
            return Err(peak_ewma_window_refused(window));
        }
        let cap = range_of("backend_max_connections");
        if !cap.contains(self.max_connections as f64) {
            return Err(error(format!("--max-connections must be {}, got {}", cap.describe(), self.max_connections)));
        }
        let queue = range_of("backend_queue_timeout");
        if !queue.contains(self.queue_timeout.as_secs_f64()) {
            return Err(error(format!(
                "backend_queue_timeout must be {}, got {}",
                queue.describe(),
                self.queue_timeout.as_secs_f64()
            )));
        }
        self.validate_backends()?;
        self.validate_events()
    }

    fn validate_backends(&self) -> Result<(), ScenarioError> {
        if self.backends.is_empty() || self.backends.len() > MAX_BACKENDS {
            return Err(error(format!("1-{MAX_BACKENDS} backends are needed, got {}", self.backends.len())));
        }
        let weight = range_of("weight");
        for b in &self.backends {
            if !is_valid_id(&b.id) {
                return Err(error(format!("backend '{}': the id must be 1-64 of A-Z a-z 0-9 . _ ~ -", b.id)));
            }
            if !weight.contains(f64::from(b.weight)) {
                return Err(error(format!("backend {}: weight must be {}, got {}", b.id, weight.describe(), b.weight)));
            }
            if b.service.is_zero() {
                return Err(error(format!("backend {}: service time must be above 0", b.id)));
            }
            if b.service > DAY {
                return Err(error(format!("backend {}: service time must be at most 86400 s", b.id)));
            }
        }
        let mut ids: Vec<&str> = self.backends.iter().map(|b| b.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(error(format!("backend id '{}' is used twice", pair[0])));
        }
        Ok(())
    }

    fn validate_events(&self) -> Result<(), ScenarioError> {
        for e in &self.events {
            match e.at {
                At::Request(n) if n >= self.requests => {
                    return Err(error(format!(
                        "event '{}' is at request {n}, past the last one ({})",
                        e.text,
                        self.requests - 1
                    )));
                }
                At::Time(t) if t > DAY => {
                    return Err(error(format!("event '{}' is past a day", e.text)));
                }
                _ => {}
            }
            if e.action.backend() >= self.backends.len() {
                return Err(error(format!(
                    "event '{}' names backend {}, past the last one ({})",
                    e.text,
                    e.action.backend(),
                    self.backends.len() - 1
                )));
            }
            if let Action::Slow(_, d) = e.action {
                if d.is_zero() {
                    return Err(error(format!("event '{}': service time must be above 0", e.text)));
                }
                if d > DAY {
                    return Err(error(format!("event '{}': service time must be at most 86400 s", e.text)));
                }
            }
        }
        Ok(())
    }
}

/// Parses `--backend ID=WEIGHT` (or `ID`, weight 1).
///
/// ```
/// let (id, weight) = lb_sync::simulate::parse_backend("b1=3").unwrap();
/// assert_eq!((id.as_str(), weight), ("b1", 3));
/// assert!(lb_sync::simulate::parse_backend("b1=heavy").is_err());
/// ```
pub fn parse_backend(text: &str) -> Result<(String, u32), ScenarioError> {
    // The id is checked with the other bounds, by `Scenario::validate`.
    let (id, weight) = text.split_once('=').unwrap_or((text, "1"));
    let weight: u32 = weight.parse().map_err(|_| {
        error(format!("backend '{text}': weight '{weight}' is not a whole number (expected ID=WEIGHT)"))
    })?;
    Ok((id.to_string(), weight))
}

/// Mean service times as `--service` gives them: a default for the backends not named, and
/// (id, mean) for those named.
pub type Services = (Option<Duration>, Vec<(String, Duration)>);

/// Parses `--service`: comma-separated `ID=DURATION`, and at most one bare `DURATION` for the
/// backends not named.
///
/// ```
/// use std::time::Duration;
/// let (default, each) = lb_sync::simulate::parse_service("10ms,b3=100ms").unwrap();
/// assert_eq!(default, Some(Duration::from_millis(10)));
/// assert_eq!(each, [("b3".to_string(), Duration::from_millis(100))]);
/// ```
pub fn parse_service(text: &str) -> Result<Services, ScenarioError> {
    let mut default = None;
    let mut each = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((id, d)) => each.push((id.to_string(), parse_duration(d)?)),
            None => default = Some(parse_duration(part)?),
        }
    }
    Ok((default, each))
}

/// Parses `--event AT:ACTION:BACKEND` (`5000:remove:b2`, `2s:down:b1`, `1500:slow:b3=200ms`)
/// against the backend ids.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::simulate::{parse_event, Action, At};
/// let ids = ["b1".to_string(), "b2".to_string(), "b3".to_string()];
/// let e = parse_event("5000:remove:b2", &ids).unwrap();
/// assert_eq!((e.at, e.action), (At::Request(5000), Action::Remove(1)));
/// let e = parse_event("1.5s:slow:b3=200ms", &ids).unwrap();
/// assert_eq!((e.at, e.action), (At::Time(Duration::from_millis(1500)), Action::Slow(2, Duration::from_millis(200))));
/// assert_eq!(
///     parse_event("10:remove:b9", &ids).unwrap_err().to_string(),
///     "event '10:remove:b9' names no backend: b9 (backends: b1, b2, b3)"
/// );
/// ```
pub fn parse_event(text: &str, ids: &[String]) -> Result<Event, ScenarioError> {
    let shape = || {
        error(format!(
            "malformed event '{text}' (expected AT:ACTION:BACKEND, AT a request number or a time such as 2s, ACTION \
             remove, add, down, up or slow:ID=DURATION)"
        ))
    };
    let mut parts = text.splitn(3, ':');
    let (Some(at), Some(action), Some(target)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(shape());
    };
    let at = if at.chars().all(|c| c.is_ascii_digit()) && !at.is_empty() {
        At::Request(at.parse().map_err(|_| shape())?)
    } else {
        At::Time(parse_duration(at)?)
    };
    let (id, duration) = match (action, target.split_once('=')) {
        ("slow", Some((id, d))) => (id, Some(parse_duration(d)?)),
        ("slow", None) => return Err(shape()),
        (_, None) => (target, None),
        (_, Some(_)) => return Err(shape()),
    };
    let backend = ids
        .iter()
        .position(|b| b == id)
        .ok_or_else(|| error(format!("event '{text}' names no backend: {id} (backends: {})", ids.join(", "))))?;
    let action = match (action, duration) {
        ("remove", _) => Action::Remove(backend),
        ("add", _) => Action::Add(backend),
        ("down", _) => Action::Down(backend),
        ("up", _) => Action::Up(backend),
        ("slow", Some(d)) => Action::Slow(backend, d),
        _ => return Err(shape()),
    };
    Ok(Event { at, action, text: text.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, weight: u32) -> BackendSpec {
        BackendSpec { id: id.into(), weight, service: Duration::from_millis(10), present: true }
    }

    /// A scenario that passes, for each case to spoil one value of.
    fn good() -> Scenario {
        Scenario {
            algorithms: parse_algorithms("all").unwrap(),
            backends: vec![backend("b1", 1), backend("b2", 2)],
            requests: 1000,
            clients: 100,
            zipf: 0.0,
            concurrency: 8,
            load: None,
            workers: 4,
            distribution: Distribution::Exponential,
            events: vec![],
            seed: 1,
            max_connections: 192,
            queue_timeout: Duration::from_secs(5),
            panic_mode: false,
            peak_ewma_window: Duration::from_secs(10),
        }
    }

    fn event(at: At, action: Action) -> Event {
        Event { at, action, text: "e".into() }
    }

    #[test]
    fn a_scenario_built_in_code_is_refused_for_each_value_out_of_bounds() {
        assert_eq!(good().validate(), Ok(()));
        type Spoil = fn(&mut Scenario);
        let cases: &[(Spoil, &str)] = &[
            (|s| s.algorithms.clear(), "no algorithm to simulate"),
            (|s| s.requests = 0, "--requests must be 1-100000000, got 0"),
            (|s| s.requests = MAX_REQUESTS + 1, "--requests must be 1-100000000, got 100000001"),
            (|s| s.clients = 0, "--clients must be 1-1000000, got 0"),
            (|s| s.zipf = f64::NAN, "--zipf must be 0 (uniform) to 5, got NaN"),
            (|s| s.concurrency = 0, "--concurrency must be 1-100000, got 0"),
            (|s| s.workers = 100_001, "--workers must be 1-100000, got 100001"),
            (|s| s.load = Some(0.0), "--load must be above 0 and at most 10 (a share of capacity), got 0"),
            (|s| s.peak_ewma_window = Duration::ZERO, "--peak-ewma-window must be 0.001-3600 s, got 0"),
            (|s| s.peak_ewma_window = Duration::from_secs(3601), "--peak-ewma-window must be 0.001-3600 s, got 3601"),
            (|s| s.max_connections = 0, "--max-connections must be 1-1000000, got 0"),
            (|s| s.max_connections = 1_000_001, "--max-connections must be 1-1000000, got 1000001"),
            (|s| s.queue_timeout = DAY + Duration::from_secs(1), "backend_queue_timeout must be 0-86400 s, got 86401"),
            (|s| s.backends.clear(), "1-10000 backends are needed, got 0"),
            (|s| s.backends = vec![backend("b", 1); MAX_BACKENDS + 1], "1-10000 backends are needed, got 10001"),
            (|s| s.backends[0].id = "a/b".into(), "backend 'a/b': the id must be 1-64 of A-Z a-z 0-9 . _ ~ -"),
            (|s| s.backends[0].id = String::new(), "backend '': the id must be 1-64 of A-Z a-z 0-9 . _ ~ -"),
            (|s| s.backends[0].id = "x".repeat(65), "backend 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx': the id must be 1-64 of A-Z a-z 0-9 . _ ~ -"),
            (|s| s.backends[1].id = "b1".into(), "backend id 'b1' is used twice"),
            (|s| s.backends[0].weight = 0, "backend b1: weight must be 1-1000000, got 0"),
            (|s| s.backends[1].weight = 1_000_001, "backend b2: weight must be 1-1000000, got 1000001"),
            (|s| s.backends[0].service = Duration::ZERO, "backend b1: service time must be above 0"),
            (|s| s.backends[0].service = DAY + Duration::from_nanos(1), "backend b1: service time must be at most 86400 s"),
            (|s| s.events = vec![event(At::Request(1000), Action::Down(0))], "event 'e' is at request 1000, past the last one (999)"),
            (|s| s.events = vec![event(At::Time(DAY * 2), Action::Down(0))], "event 'e' is past a day"),
            (|s| s.events = vec![event(At::Request(1), Action::Remove(2))], "event 'e' names backend 2, past the last one (1)"),
            (|s| s.events = vec![event(At::Request(1), Action::Slow(0, Duration::ZERO))], "event 'e': service time must be above 0"),
            (|s| s.events = vec![event(At::Request(1), Action::Slow(0, DAY * 2))], "event 'e': service time must be at most 86400 s"),
        ];
        for (spoil, message) in cases {
            let mut s = good();
            spoil(&mut s);
            assert_eq!(s.validate(), Err(ScenarioError(message.to_string())), "{message}");
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let mut s = good();
        s.backends[0].weight = 1_000_000;
        s.backends[0].id = "x".repeat(64);
        s.peak_ewma_window = Duration::from_millis(1);
        s.max_connections = 1_000_000;
        s.queue_timeout = DAY;
        s.backends[1].service = DAY;
        s.events = vec![event(At::Request(999), Action::Slow(1, DAY)), event(At::Time(DAY), Action::Up(1))];
        assert_eq!(s.validate(), Ok(()));
        s.peak_ewma_window = Duration::from_secs(3600);
        s.max_connections = 1;
        s.queue_timeout = Duration::ZERO;
        assert_eq!(s.validate(), Ok(()));
    }
}
