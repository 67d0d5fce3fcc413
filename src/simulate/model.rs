//! The discrete-event model of one algorithm: requests arrive, are picked for through the real
//! pick path ([`failover::pick`] over the real algorithm), wait for a worker of their backend,
//! are served, finish; in simulated time, so a million requests take a fraction of a second
//! and in-flight counts, least connections and peak EWMA behave as they would under load.
//!
//! Every random number is a function of (seed, what it is for, request number): request N has
//! the same client, the same relative size and (open loop) the same arrival time under every
//! algorithm, so differences between algorithms are theirs, not the dice's.

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use crate::balance::failover::{self, Standing};
use crate::balance::hash::hash64;
use crate::balance::random::splitmix64;
use crate::balance::{Algorithm, AlgorithmKind, Member, PickContext, ResponseTime, ResponseTimes};

use super::report::{AlgorithmReport, BackendReport, EventReport, Remap, Series};
use super::scenario::{Action, At, Contender, Distribution, Scenario};
use super::seed_wrr::SeedWeightedRoundRobin;

/// Streams of random numbers, one per use.
const CLIENT: u64 = 1;
const SIZE: u64 = 2;
const SIZE_2: u64 = 3;
const ARRIVAL: u64 = 4;

/// The random number for `stream` and `k`, uniform in (0, 1).
fn unit(seed: u64, stream: u64, k: u64) -> f64 {
    let x = splitmix64(splitmix64(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03)) ^ k);
    ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// The client address of client `c`: 10.0.0.0 + c (ip_hash hashes its 4 bytes, as the proxy
/// hashes a real IPv4 client's).
pub(crate) fn client_ip(c: u32) -> [u8; 4] {
    (0x0a00_0000u32 + c).to_be_bytes()
}

/// Who sends request `k`: uniform, or by a Zipf popularity table (cumulative weights).
pub(crate) struct Clients {
    count: u32,
    cumulative: Vec<f64>,
}

impl Clients {
    pub(crate) fn new(count: u32, zipf: f64) -> Clients {
        let cumulative = if zipf > 0.0 {
            let mut sum = 0.0;
            (1..=count)
                .map(|rank| {
                    sum += 1.0 / f64::from(rank).powf(zipf);
                    sum
                })
                .collect()
        } else {
            Vec::new()
        };
        Clients { count, cumulative }
    }

    pub(crate) fn of(&self, seed: u64, k: u64) -> u32 {
        let u = unit(seed, CLIENT, k);
        if self.cumulative.is_empty() {
            return ((u * f64::from(self.count)) as u32).min(self.count - 1);
        }
        let target = u * self.cumulative[self.cumulative.len() - 1];
        (self.cumulative.partition_point(|&c| c < target) as u32).min(self.count - 1)
    }
}

/// Request `k`'s size relative to the mean service time (mean 1).
fn relative_size(distribution: Distribution, seed: u64, k: u64) -> f64 {
    match distribution {
        Distribution::Fixed => 1.0,
        Distribution::Exponential => -unit(seed, SIZE, k).ln(),
        Distribution::LogNormal(sigma) => {
            // Box-Muller; μ = -σ²/2 makes the mean 1.
            let (u1, u2) = (unit(seed, SIZE, k), unit(seed, SIZE_2, k));
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (sigma * z - sigma * sigma / 2.0).exp()
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Job {
    number: u64,
    client: u32,
    arrived: u64,
    dispatched: u64,
}

#[derive(Clone, Copy, Debug)]
enum Happening {
    Arrival(u64),
    Finish(usize, Job),
    Timed(usize),
}

/// A heap entry: ordered by time, then by the order it was scheduled in (determinism).
struct Entry {
    at: u64,
    seq: u64,
    what: Happening,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated backend: its server (workers and a queue) and what the balancer knows of it.
struct Node {
    id: String,
    weight: u32,
    mean_ns: f64,
    present: bool,
    healthy: bool,
    busy: usize,
    queue: VecDeque<Job>,
    in_flight: usize,
    response_time: ResponseTime,
    picks: u64,
    latencies: Vec<u64>,
    /// ∫ in_flight dt, in request-nanoseconds, up to `since`.
    area: f64,
    since: u64,
    max_in_flight: usize,
    expected: f64,
}

impl Node {
    fn set_in_flight(&mut self, now: u64, in_flight: usize) {
        self.area += self.in_flight as f64 * (now - self.since) as f64;
        self.since = now;
        self.in_flight = in_flight;
        self.max_in_flight = self.max_in_flight.max(in_flight);
    }

    fn usable(&self) -> bool {
        self.present && self.healthy
    }
}

/// The members of the current table as the pick path sees them.
struct View<'a> {
    nodes: &'a [Node],
    members: &'a [usize],
    now: u64,
    reads: &'a Cell<u64>,
}

impl View<'_> {
    fn node(&self, i: usize) -> &Node {
        &self.nodes[self.members[i]]
    }
}

impl Standing for View<'_> {
    fn enabled(&self, i: usize) -> bool {
        self.node(i).present
    }
    fn healthy(&self, i: usize) -> bool {
        self.node(i).healthy
    }
    /// The simulated backends never fail a request, so no breaker opens.
    fn breaker_allows(&self, _: usize) -> bool {
        true
    }
    /// Slow start ramps by wall-clock time: not modelled (every offer is admitted).
    fn ramp_admits(&self, _: usize) -> bool {
        true
    }
}

impl ResponseTimes for View<'_> {
    fn of(&self, i: usize) -> &ResponseTime {
        self.reads.set(self.reads.get() + 1);
        &self.node(i).response_time
    }
    fn now(&self) -> u64 {
        self.now
    }
}

/// Where a pick left a request.
enum Placed {
    Sent,
    /// Every candidate is at its connection cap: wait for a slot.
    Wait,
    /// Nothing usable: `503`.
    Refused,
}

/// Which clients a backend had before an event took it away (for "came back").
struct Away {
    backend: usize,
    ketama: Vec<u32>,
    modulo: Vec<u32>,
}

/// One algorithm's run.
pub(crate) struct Model<'s> {
    scenario: &'s Scenario,
    contender: Contender,
    clients: Clients,
    keep_series: bool,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<Entry>>,
    nodes: Vec<Node>,
    members: Vec<usize>,
    algorithm: Box<dyn Algorithm>,
    rebuilds: u64,
    /// Requests issued so far (the next request's number).
    issued: u64,
    /// Requests holding a worker (sent, or waiting for a connection slot).
    active: usize,
    /// Open loop: arrived, waiting for a worker.
    backlog: VecDeque<Job>,
    /// Waiting for a connection slot (every candidate at its cap).
    waiting_slot: VecDeque<Job>,
    /// Admitted next, in order (a loop, not recursion: a million refusals in a row must not
    /// grow the stack).
    ready: VecDeque<Job>,
    request_events: Vec<(u64, usize)>,
    next_request_event: usize,
    reads: Cell<u64>,
    picks: u64,
    failed_refused: u64,
    failed_timeout: u64,
    segment: u64,
    last_pick: Option<usize>,
    run: u64,
    longest: (u64, usize),
    rate: f64,
    events: Vec<EventReport>,
    away: Vec<Away>,
    series_window: u64,
    series: Vec<Vec<u32>>,
}

impl<'s> Model<'s> {
    pub(crate) fn new(scenario: &'s Scenario, contender: Contender, keep_series: bool) -> Model<'s> {
        let nodes: Vec<Node> = scenario
            .backends
            .iter()
            .map(|b| Node {
                id: b.id.clone(),
                weight: b.weight,
                mean_ns: b.service.as_nanos() as f64,
                present: b.present,
                healthy: true,
                busy: 0,
                queue: VecDeque::new(),
                in_flight: 0,
                response_time: ResponseTime::new(scenario.peak_ewma_window),
                picks: 0,
                latencies: Vec::new(),
                area: 0.0,
                since: 0,
                max_in_flight: 0,
                expected: 0.0,
            })
            .collect();
        // Capacity of the table at the start: requests per nanosecond.
        let capacity: f64 =
            nodes.iter().filter(|n| n.present).map(|n| scenario.workers as f64 / n.mean_ns).sum::<f64>();
        let rate = scenario.load.map_or(0.0, |load| load * capacity);
        let mut request_events: Vec<(u64, usize)> = scenario
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.at {
                At::Request(n) => Some((n, i)),
                At::Time(_) => None,
            })
            .collect();
        request_events.sort_by_key(|&(n, i)| (n, i));
        let series_window = scenario.requests.div_ceil(100).max(1);
        let mut model = Model {
            scenario,
            contender,
            clients: Clients::new(scenario.clients, scenario.zipf),
            keep_series,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            nodes,
            members: Vec::new(),
            algorithm: Box::new(SeedWeightedRoundRobin::new(&[])),
            rebuilds: 0,
            issued: 0,
            active: 0,
            backlog: VecDeque::new(),
            waiting_slot: VecDeque::new(),
            ready: VecDeque::new(),
            request_events,
            next_request_event: 0,
            reads: Cell::new(0),
            picks: 0,
            failed_refused: 0,
            failed_timeout: 0,
            segment: 0,
            last_pick: None,
            run: 0,
            longest: (0, 0),
            rate,
            events: Vec::new(),
            away: Vec::new(),
            series_window,
            series: Vec::new(),
        };
        model.rebuild();
        model
    }

    fn schedule(&mut self, at: u64, what: Happening) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { at, seq: self.seq, what }));
    }

    /// The algorithm over the backends now in the table, as the proxy rebuilds it on every
    /// membership change (random ones reseeded from the run's seed: reproducible).
    fn rebuild(&mut self) {
        self.members = (0..self.nodes.len()).filter(|&i| self.nodes[i].present).collect();
        let members: Vec<Member> =
            self.members.iter().map(|&i| Member::new(self.nodes[i].id.clone(), self.nodes[i].weight)).collect();
        let seed = splitmix64(self.scenario.seed ^ splitmix64(self.rebuilds));
        self.rebuilds += 1;
        self.algorithm = match self.contender {
            Contender::Real(kind) => kind.build_seeded(&members, seed),
            Contender::SeedWeightedRoundRobin => Box::new(SeedWeightedRoundRobin::new(&members)),
        };
    }

    /// Runs the whole workload and reports.
    pub(crate) fn run(mut self) -> AlgorithmReport {
        for (i, e) in self.scenario.events.iter().enumerate() {
            if let At::Time(t) = e.at {
                self.schedule(t.as_nanos() as u64, Happening::Timed(i));
            }
        }
        match self.scenario.load {
            None => {
                let first = (self.scenario.concurrency as u64).min(self.scenario.requests);
                for _ in 0..first {
                    self.issue(0);
                }
            }
            Some(_) => {
                let at = self.interarrival(0);
                self.schedule(at, Happening::Arrival(0));
            }
        }
        self.drain_ready();
        while let Some(Reverse(entry)) = self.heap.pop() {
            if self.issued == self.scenario.requests && self.active == 0 && self.backlog.is_empty() {
                // Only timed events past the end are left.
                break;
            }
            self.now = entry.at;
            match entry.what {
                Happening::Arrival(k) => {
                    if k + 1 < self.scenario.requests {
                        let at = self.now + self.interarrival(k + 1);
                        self.schedule(at, Happening::Arrival(k + 1));
                    }
                    self.issue(self.now);
                }
                Happening::Finish(node, job) => self.finish(node, job),
                Happening::Timed(i) => self.apply(i),
            }
            self.drain_ready();
        }
        self.report()
    }

    fn interarrival(&self, k: u64) -> u64 {
        (-unit(self.scenario.seed, ARRIVAL, k).ln() / self.rate) as u64
    }

    /// Request number `issued` arrives now: its events first, then a worker if one is free.
    fn issue(&mut self, now: u64) {
        let number = self.issued;
        while let Some(&(n, i)) = self.request_events.get(self.next_request_event) {
            if n > number {
                break;
            }
            self.next_request_event += 1;
            self.apply(i);
        }
        self.issued += 1;
        let job = Job { number, client: self.clients.of(self.scenario.seed, number), arrived: now, dispatched: 0 };
        if self.active < self.scenario.concurrency {
            self.active += 1;
            self.ready.push_back(job);
        } else {
            self.backlog.push_back(job);
        }
    }

    fn drain_ready(&mut self) {
        while let Some(job) = self.ready.pop_front() {
            match self.place(job) {
                Placed::Sent => {}
                Placed::Wait => self.waiting_slot.push_back(job),
                Placed::Refused => {
                    self.failed_refused += 1;
                    self.done();
                }
            }
        }
    }

    /// A request holding a worker is over (answered or failed): the worker takes the next.
    fn done(&mut self) {
        self.active -= 1;
        match self.scenario.load {
            None => {
                if self.issued < self.scenario.requests {
                    self.issue(self.now);
                }
            }
            Some(_) => {
                if let Some(job) = self.backlog.pop_front() {
                    self.active += 1;
                    self.ready.push_back(job);
                }
            }
        }
    }

    /// One pick through the real path; a backend at its connection cap is passed over.
    fn pick(&self, client: u32, capped: bool) -> Option<usize> {
        let key = client_ip(client);
        let view = View { nodes: &self.nodes, members: &self.members, now: self.now, reads: &self.reads };
        let in_flight = |i: usize| {
            self.reads.set(self.reads.get() + 1);
            view.node(i).in_flight
        };
        let peak = matches!(self.contender, Contender::Real(AlgorithmKind::PeakEwma));
        let ctx = PickContext {
            hash_key: &key,
            in_flight: &in_flight,
            response_times: peak.then_some(&view as &dyn ResponseTimes),
        };
        let cap = self.scenario.max_connections;
        let mut accept = |i: usize| !capped || view.node(i).in_flight < cap;
        failover::pick(self.algorithm.as_ref(), &ctx, self.scenario.panic_mode, &view, &mut accept)
            .map(|(i, _)| self.members[i])
    }

    fn place(&mut self, mut job: Job) -> Placed {
        let Some(n) = self.pick(job.client, true) else {
            // The proxy asks again without the caps: candidates left means wait for a slot.
            return if self.pick(job.client, false).is_some() { Placed::Wait } else { Placed::Refused };
        };
        self.count_pick(n);
        job.dispatched = self.now;
        let now = self.now;
        let node = &mut self.nodes[n];
        node.set_in_flight(now, node.in_flight + 1);
        if node.busy < self.scenario.workers {
            node.busy += 1;
            self.start_service(n, job);
        } else {
            node.queue.push_back(job);
        }
        Placed::Sent
    }

    fn start_service(&mut self, n: usize, job: Job) {
        let size = relative_size(self.scenario.distribution, self.scenario.seed, job.number);
        let took = (self.nodes[n].mean_ns * size).max(1.0) as u64;
        self.schedule(self.now + took, Happening::Finish(n, job));
    }

    fn count_pick(&mut self, n: usize) {
        self.picks += 1;
        self.segment += 1;
        self.nodes[n].picks += 1;
        if self.last_pick == Some(n) {
            self.run += 1;
        } else {
            self.last_pick = Some(n);
            self.run = 1;
        }
        if self.run > self.longest.0 {
            self.longest = (self.run, n);
        }
        if self.keep_series {
            let window = ((self.picks - 1) / self.series_window) as usize;
            if self.series.len() <= window {
                self.series.push(vec![0; self.nodes.len()]);
            }
            self.series[window][n] += 1;
        }
    }

    fn finish(&mut self, n: usize, job: Job) {
        let now = self.now;
        let node = &mut self.nodes[n];
        node.latencies.push(now - job.arrived);
        node.response_time.observe(std::time::Duration::from_nanos(now - job.dispatched), now);
        node.set_in_flight(now, node.in_flight - 1);
        match node.queue.pop_front() {
            Some(next) => self.start_service(n, next),
            None => node.busy -= 1,
        }
        self.done();
        // A slot freed: the requests waiting for one try again, in order.
        let timeout = self.scenario.queue_timeout.as_nanos() as u64;
        while let Some(job) = self.waiting_slot.pop_front() {
            if now - job.arrived > timeout {
                self.failed_timeout += 1;
                self.done();
                continue;
            }
            match self.place(job) {
                Placed::Sent => {}
                Placed::Wait => {
                    self.waiting_slot.push_front(job);
                    break;
                }
                Placed::Refused => {
                    self.failed_refused += 1;
                    self.done();
                }
            }
        }
    }

    /// The expected picks of the segment that ends now, shared by weight among the usable.
    fn close_segment(&mut self) {
        let total: f64 = self.nodes.iter().filter(|n| n.usable()).map(|n| f64::from(n.weight)).sum();
        if total > 0.0 {
            let picks = self.segment as f64;
            for node in self.nodes.iter_mut().filter(|n| n.usable()) {
                node.expected += picks * f64::from(node.weight) / total;
            }
        }
        self.segment = 0;
    }

    fn apply(&mut self, index: usize) {
        let event = &self.scenario.events[index];
        let action = event.action;
        let hashing = self.contender == Contender::Real(AlgorithmKind::IpHash) && !matches!(action, Action::Slow(..));
        let before = hashing.then(|| self.mappings());
        self.close_segment();
        let b = action.backend();
        let mut changed = true;
        match action {
            Action::Remove(_) => {
                changed = self.nodes[b].present;
                self.nodes[b].present = false;
                if changed {
                    self.rebuild();
                }
            }
            Action::Add(_) => {
                changed = !self.nodes[b].present;
                if changed {
                    let node = &mut self.nodes[b];
                    node.present = true;
                    node.healthy = true;
                    // A fresh backend, as the proxy's: nothing measured yet.
                    node.response_time.forget();
                    self.rebuild();
                }
            }
            Action::Down(_) => {
                changed = self.nodes[b].healthy;
                self.nodes[b].healthy = false;
            }
            Action::Up(_) => {
                changed = !self.nodes[b].healthy;
                if changed {
                    self.nodes[b].healthy = true;
                    self.nodes[b].response_time.forget();
                }
            }
            Action::Slow(_, mean) => self.nodes[b].mean_ns = mean.as_nanos() as f64,
        }
        let remap = before.filter(|_| changed).map(|before| self.remap(b, action, before));
        self.events.push(EventReport {
            text: event.text.clone(),
            request: self.issued,
            time_ns: self.now,
            changed,
            remap,
        });
    }

    /// Every client's backend now: by ip_hash through the pick path (ketama), and by the seed's
    /// `hash(ip) % n` over the usable backends in configured order.
    fn mappings(&self) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
        let usable: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].usable()).collect();
        let mut ketama = Vec::with_capacity(self.scenario.clients as usize);
        let mut modulo = Vec::with_capacity(self.scenario.clients as usize);
        for c in 0..self.scenario.clients {
            ketama.push(self.pick(c, false));
            let h = hash64(&client_ip(c));
            modulo.push((!usable.is_empty()).then(|| usable[(h % usable.len() as u64) as usize]));
        }
        (ketama, modulo)
    }

    fn remap(&mut self, b: usize, action: Action, before: (Vec<Option<usize>>, Vec<Option<usize>>)) -> Remap {
        let after = self.mappings();
        let clients = f64::from(self.scenario.clients);
        let moved =
            |x: &[Option<usize>], y: &[Option<usize>]| x.iter().zip(y).filter(|(p, q)| p != q).count() as f64 / clients;
        let on = |map: &[Option<usize>]| -> Vec<u32> {
            (0..map.len()).filter(|&c| map[c] == Some(b)).map(|c| c as u32).collect()
        };
        let mut remap = Remap {
            ketama_moved: moved(&before.0, &after.0),
            modulo_moved: moved(&before.1, &after.1),
            ketama_back: None,
            modulo_back: None,
        };
        match action {
            Action::Remove(_) | Action::Down(_) => {
                self.away.retain(|a| a.backend != b);
                self.away.push(Away { backend: b, ketama: on(&before.0), modulo: on(&before.1) });
            }
            Action::Add(_) | Action::Up(_) => {
                if let Some(pos) = self.away.iter().position(|a| a.backend == b) {
                    let away = self.away.remove(pos);
                    let back = |list: &[u32], map: &[Option<usize>]| {
                        let home = list.iter().filter(|&&c| map[c as usize] == Some(b)).count();
                        home as f64 / list.len().max(1) as f64
                    };
                    remap.ketama_back = Some(back(&away.ketama, &after.0));
                    remap.modulo_back = Some(back(&away.modulo, &after.1));
                }
            }
            Action::Slow(..) => {}
        }
        remap
    }

    fn report(mut self) -> AlgorithmReport {
        self.close_segment();
        let end = self.now;
        let picks = self.picks.max(1) as f64;
        let mut all: Vec<u64> = Vec::with_capacity(self.picks as usize);
        let mut backends = Vec::with_capacity(self.nodes.len());
        let mut max_deviation: f64 = 0.0;
        for node in &mut self.nodes {
            node.set_in_flight(end, node.in_flight);
            all.extend_from_slice(&node.latencies);
            let share = node.picks as f64 / picks;
            let expected = node.expected / picks;
            max_deviation = max_deviation.max((share - expected).abs());
            backends.push(BackendReport {
                id: node.id.clone(),
                weight: node.weight,
                expected_share: expected,
                share,
                requests: node.picks,
                in_flight_mean: if end > 0 { node.area / end as f64 } else { 0.0 },
                in_flight_max: node.max_in_flight,
                p50_ns: percentile(&mut node.latencies, 0.50),
                p99_ns: percentile(&mut node.latencies, 0.99),
            });
        }
        let (p50_ns, p99_ns) = (percentile(&mut all, 0.50), percentile(&mut all, 0.99));
        let series = self.keep_series.then(|| {
            all.sort_unstable();
            let cdf = (0..=200)
                .filter_map(|i| {
                    let q = f64::from(i) / 200.0;
                    let index = ((all.len() as f64 - 1.0) * q).round() as usize;
                    all.get(index).map(|&ns| (ns, q))
                })
                .collect();
            Series { window: self.series_window, picks: std::mem::take(&mut self.series), latency_cdf: cdf }
        });
        AlgorithmReport {
            name: self.contender.name().to_string(),
            backends,
            max_deviation,
            longest_run: self.longest.0,
            longest_run_backend: self.nodes.get(self.longest.1).map_or(String::new(), |n| n.id.clone()),
            completed: all.len() as u64,
            failed_refused: self.failed_refused,
            failed_timeout: self.failed_timeout,
            p50_ns,
            p99_ns,
            simulated_ns: end,
            reads_per_pick: self.reads.get() as f64 / picks,
            events: self.events,
            series,
        }
    }
}

/// The `q` quantile (nearest rank) of `values`, reordering them; 0 when empty.
fn percentile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    *values.select_nth_unstable(rank).1
}
