//! A writer of Prometheus's text exposition format 0.0.4, the body of a `GET /metrics`.
//!
//! Each family is opened once ([`TextEncoder::counter`], [`gauge`](TextEncoder::gauge),
//! [`histogram`](TextEncoder::histogram)), which writes its `# HELP` and `# TYPE` lines; its
//! samples follow through the returned [`FamilyEncoder`], so a family's samples are contiguous by
//! construction. Names are checked, label values escaped (`\\`, `\"`, `\n`), and a family or
//! series written twice is an error rather than a scrape that Prometheus rejects.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

use super::histogram::HistogramSnapshot;

/// The `Content-Type` of a body written by [`TextEncoder`].
///
/// ```
/// assert!(lb_sync::metrics::prometheus::CONTENT_TYPE.contains("version=0.0.4"));
/// ```
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request-latency bounds in seconds, for `_bucket{le=...}`: Prometheus's defaults (5 ms to
/// 10 s) with 1 and 2.5 ms below for fast backends and 30 and 60 s above for the request timeout.
///
/// ```
/// let bounds = lb_sync::metrics::prometheus::LATENCY_BOUNDS_SECONDS;
/// assert!(bounds.windows(2).all(|w| w[0] < w[1]));
/// ```
pub const LATENCY_BOUNDS_SECONDS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The kind of a metric family, as its `# TYPE` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (reset at restart); its name ends in `_total`.
    Counter,
    /// Any value that can go up and down.
    Gauge,
    /// Cumulative `_bucket{le=...}` counts with `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    /// The word in the `# TYPE` line.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::prometheus::MetricKind::Gauge.as_str(), "gauge");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Why a family or sample was not written; nothing of it is in the output.
#[derive(Clone, Debug, PartialEq)]
pub enum ExpositionError {
    /// Not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    InvalidMetricName(String),
    /// Not `[a-zA-Z_][a-zA-Z0-9_]*`, starts with the reserved `__`, or is `le` on a histogram.
    InvalidLabelName(String),
    /// A label named twice in one sample.
    DuplicateLabel(String),
    /// The family, or a name its samples use (`x_count` of histogram `x`), was written before.
    DuplicateFamily(String),
    /// The same labels twice in one family.
    DuplicateSeries(String),
    /// A gauge sample on a histogram family, or the other way round.
    WrongKind {
        /// The family's name.
        family: String,
        /// What the family was opened as.
        kind: MetricKind,
    },
    /// A counter that is negative or NaN, or histogram buckets that are not increasing bounds
    /// with non-decreasing counts at most the total.
    InvalidValue(String),
}

impl fmt::Display for ExpositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpositionError::InvalidMetricName(name) => write!(f, "invalid metric name {name:?}"),
            ExpositionError::InvalidLabelName(name) => write!(f, "invalid label name {name:?}"),
            ExpositionError::DuplicateLabel(name) => write!(f, "label {name:?} given twice"),
            ExpositionError::DuplicateFamily(name) => write!(f, "metric {name:?} written twice"),
            ExpositionError::DuplicateSeries(series) => write!(f, "series {series} written twice"),
            ExpositionError::WrongKind { family, kind } => {
                write!(f, "{family} is a {}, not that kind of sample", kind.as_str())
            }
            ExpositionError::InvalidValue(why) => write!(f, "invalid value: {why}"),
        }
    }
}

impl std::error::Error for ExpositionError {}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
///
/// ```
/// use lb_sync::metrics::prometheus::is_valid_metric_name;
/// assert!(is_valid_metric_name("lb_requests_total"));
/// assert!(!is_valid_metric_name("2xx") && !is_valid_metric_name("lb-requests") && !is_valid_metric_name(""));
/// ```
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`
/// (reserved for Prometheus's own labels).
///
/// ```
/// use lb_sync::metrics::prometheus::is_valid_label_name;
/// assert!(is_valid_label_name("backend"));
/// assert!(!is_valid_label_name("__name__") && !is_valid_label_name("a:b"));
/// ```
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Writes a label value between the quotes: `\`, `"` and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `# HELP` text: only `\` and newline are escaped there (quotes are not).
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value the way Go's `ParseFloat` reads it back (`+Inf`, `-Inf`, `NaN`).
fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Rust prints the shortest text that reads back as the same f64, and whole numbers
        // without a fraction: "10", "0.005".
        let _ = write!(out, "{value}");
    }
}

/// Builds a Prometheus text exposition, family by family.
///
/// ```
/// use lb_sync::metrics::prometheus::TextEncoder;
///
/// let mut encoder = TextEncoder::new();
/// encoder.counter("lb_requests", "Requests answered.")?.sample(&[("backend", "b1")], 12.0)?;
/// encoder.gauge("lb_backends_usable", "Backends that can take requests.")?.sample(&[], 3.0)?;
/// let text = encoder.finish();
/// let lines: Vec<&str> = text.lines().collect();
/// assert_eq!(lines, [
///     "# HELP lb_requests_total Requests answered.",
///     "# TYPE lb_requests_total counter",
///     "lb_requests_total{backend=\"b1\"} 12",
///     "# HELP lb_backends_usable Backends that can take requests.",
///     "# TYPE lb_backends_usable gauge",
///     "lb_backends_usable 3",
/// ]);
/// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
/// ```
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
    /// Every sample name written so far (`x`, `x_bucket`, `x_sum`, `x_count` for histogram `x`),
    /// so that no two families claim the same one.
    names: HashSet<String>,
}

impl TextEncoder {
    /// An empty exposition.
    ///
    /// ```
    /// assert_eq!(lb_sync::metrics::prometheus::TextEncoder::new().finish(), "");
    /// ```
    pub fn new() -> TextEncoder {
        TextEncoder::default()
    }

    /// Opens a counter family; `_total` is appended to `name` when it does not end with it.
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// encoder.counter("lb_retries", "Retries made.")?.sample(&[], 4.0)?;
    /// assert!(encoder.finish().ends_with("lb_retries_total 4\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn counter(&mut self, name: &str, help: &str) -> Result<FamilyEncoder<'_>, ExpositionError> {
        let name = if name.ends_with("_total") { name.to_string() } else { format!("{name}_total") };
        self.open(name, MetricKind::Counter, help)
    }

    /// Opens a gauge family.
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// encoder.gauge("lb_in_flight", "Requests being forwarded.")?.sample(&[("backend", "b1")], 2.0)?;
    /// assert!(encoder.finish().ends_with("lb_in_flight{backend=\"b1\"} 2\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn gauge(&mut self, name: &str, help: &str) -> Result<FamilyEncoder<'_>, ExpositionError> {
        self.open(name.to_string(), MetricKind::Gauge, help)
    }

    /// Opens a histogram family; its samples are `name_bucket`, `name_sum` and `name_count`.
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// encoder.histogram("lb_request_duration_seconds", "Time to answer.")?.buckets(&[], &[0.1], &[3], 0.2, 4)?;
    /// assert!(encoder.finish().contains("lb_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn histogram(&mut self, name: &str, help: &str) -> Result<FamilyEncoder<'_>, ExpositionError> {
        self.open(name.to_string(), MetricKind::Histogram, help)
    }

    /// The exposition text, ready to be served with [`CONTENT_TYPE`].
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// encoder.gauge("up", "Whether the balancer is up.")?.sample(&[], 1.0)?;
    /// assert!(encoder.finish().ends_with("up 1\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn finish(self) -> String {
        self.out
    }

    fn open(&mut self, name: String, kind: MetricKind, help: &str) -> Result<FamilyEncoder<'_>, ExpositionError> {
        if !is_valid_metric_name(&name) {
            return Err(ExpositionError::InvalidMetricName(name));
        }
        let claimed: Vec<String> = match kind {
            MetricKind::Histogram => {
                ["", "_bucket", "_sum", "_count"].iter().map(|suffix| format!("{name}{suffix}")).collect()
            }
            MetricKind::Counter | MetricKind::Gauge => vec![name.clone()],
        };
        if let Some(taken) = claimed.iter().find(|n| self.names.contains(*n)) {
            return Err(ExpositionError::DuplicateFamily(taken.clone()));
        }
        self.names.extend(claimed);
        self.out.push_str("# HELP ");
        self.out.push_str(&name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
        Ok(FamilyEncoder { encoder: self, name, kind, series: HashSet::new() })
    }
}

/// Writes the samples of one family opened on a [`TextEncoder`].
#[derive(Debug)]
pub struct FamilyEncoder<'a> {
    encoder: &'a mut TextEncoder,
    name: String,
    kind: MetricKind,
    /// The label sets written so far, as rendered: one series each.
    series: HashSet<String>,
}

impl FamilyEncoder<'_> {
    /// The family's name as written (a counter's with `_total`).
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// assert_eq!(encoder.counter("lb_requests", "Requests.")?.name(), "lb_requests_total");
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one counter or gauge sample. A counter must not be negative or NaN.
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// encoder.gauge("lb_backend_up", "1 when usable.")?
    ///     .sample(&[("backend", "b1"), ("address", "10.0.0.1:80")], 1.0)?
    ///     .sample(&[("backend", "b\"2"), ("address", "10.0.0.2:80")], 0.0)?;
    /// assert!(encoder.finish().ends_with("lb_backend_up{backend=\"b\\\"2\",address=\"10.0.0.2:80\"} 0\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> Result<&mut Self, ExpositionError> {
        match self.kind {
            MetricKind::Histogram => {
                return Err(ExpositionError::WrongKind { family: self.name.clone(), kind: self.kind })
            }
            MetricKind::Counter if value.is_nan() || value < 0.0 => {
                return Err(ExpositionError::InvalidValue(format!("counter {} = {value}", self.name)))
            }
            MetricKind::Counter | MetricKind::Gauge => {}
        }
        let rendered = self.new_series(labels)?;
        let out = &mut self.encoder.out;
        out.push_str(&self.name);
        push_braced(out, &rendered);
        out.push(' ');
        write_value(out, value);
        out.push('\n');
        Ok(self)
    }

    /// Writes one histogram series from a [`HistogramSnapshot`] (sum in seconds) with buckets at
    /// `bounds_seconds` (finite, increasing; `+Inf` is added).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::metrics::{prometheus::TextEncoder, Histogram};
    ///
    /// let latency = Histogram::new();
    /// latency.record(Duration::from_millis(20));
    /// let mut encoder = TextEncoder::new();
    /// encoder.histogram("lb_request_duration_seconds", "Time to answer.")?
    ///     .histogram(&[("backend", "b1")], &latency.snapshot(), &[0.01, 0.1])?;
    /// let text = encoder.finish();
    /// assert!(text.contains("lb_request_duration_seconds_bucket{backend=\"b1\",le=\"0.01\"} 0\n"));
    /// assert!(text.contains("lb_request_duration_seconds_bucket{backend=\"b1\",le=\"0.1\"} 1\n"));
    /// assert!(text.ends_with("lb_request_duration_seconds_sum{backend=\"b1\"} 0.02\nlb_request_duration_seconds_count{backend=\"b1\"} 1\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
        bounds_seconds: &[f64],
    ) -> Result<&mut Self, ExpositionError> {
        let cumulative = snapshot.cumulative(bounds_seconds);
        self.buckets(labels, bounds_seconds, &cumulative, snapshot.sum().as_secs_f64(), snapshot.count())
    }

    /// Writes one histogram series from raw numbers: `cumulative[i]` observations at most
    /// `bounds[i]` (finite, increasing; the `+Inf` bucket is `count`), their `sum` and `count`.
    ///
    /// ```
    /// let mut encoder = lb_sync::metrics::prometheus::TextEncoder::new();
    /// let mut family = encoder.histogram("lb_body_bytes", "Response body sizes.")?;
    /// assert!(family.buckets(&[], &[10.0, 100.0], &[5, 2], 1.0, 6).is_err(), "counts must not decrease");
    /// assert!(family.buckets(&[("le", "1")], &[10.0], &[5], 1.0, 6).is_err(), "le is the histogram's own");
    /// family.buckets(&[], &[10.0, 100.0], &[2, 5], 300.0, 6)?;
    /// assert!(encoder.finish().ends_with("lb_body_bytes_bucket{le=\"100\"} 5\nlb_body_bytes_bucket{le=\"+Inf\"} 6\nlb_body_bytes_sum 300\nlb_body_bytes_count 6\n"));
    /// # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
    /// ```
    pub fn buckets(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) -> Result<&mut Self, ExpositionError> {
        if self.kind != MetricKind::Histogram {
            return Err(ExpositionError::WrongKind { family: self.name.clone(), kind: self.kind });
        }
        if bounds.len() != cumulative.len() {
            return Err(ExpositionError::InvalidValue(format!("{} bounds, {} counts", bounds.len(), cumulative.len())));
        }
        if !bounds.iter().all(|b| b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ExpositionError::InvalidValue(format!("bounds {bounds:?} are not finite and increasing")));
        }
        if cumulative.windows(2).any(|w| w[0] > w[1]) || cumulative.last().is_some_and(|&last| last > count) {
            return Err(ExpositionError::InvalidValue(format!("counts {cumulative:?} of {count} are not cumulative")));
        }
        if let Some((name, _)) = labels.iter().find(|(name, _)| *name == "le") {
            return Err(ExpositionError::InvalidLabelName(name.to_string()));
        }
        let rendered = self.new_series(labels)?;
        let out = &mut self.encoder.out;
        let mut le = String::new();
        for (bound, in_bucket) in bounds.iter().map(Some).chain([None]).zip(cumulative.iter().chain([&count])) {
            le.clear();
            match bound {
                Some(bound) => write_value(&mut le, *bound),
                None => le.push_str("+Inf"),
            }
            out.push_str(&self.name);
            out.push_str("_bucket{");
            out.push_str(&rendered);
            if !rendered.is_empty() {
                out.push(',');
            }
            let _ = writeln!(out, "le=\"{le}\"}} {in_bucket}");
        }
        for (suffix, value) in [("_sum", sum), ("_count", count as f64)] {
            out.push_str(&self.name);
            out.push_str(suffix);
            push_braced(out, &rendered);
            out.push(' ');
            write_value(out, value);
            out.push('\n');
        }
        Ok(self)
    }

    /// Checks and renders a label set (`a="x",b="y"`), refusing one this family already has.
    fn new_series(&mut self, labels: &[(&str, &str)]) -> Result<String, ExpositionError> {
        let mut rendered = String::new();
        for (i, (name, value)) in labels.iter().enumerate() {
            if !is_valid_label_name(name) {
                return Err(ExpositionError::InvalidLabelName(name.to_string()));
            }
            if labels[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ExpositionError::DuplicateLabel(name.to_string()));
            }
            if i > 0 {
                rendered.push(',');
            }
            rendered.push_str(name);
            rendered.push_str("=\"");
            escape_label_value(&mut rendered, value);
            rendered.push('"');
        }
        if !self.series.insert(rendered.clone()) {
            return Err(ExpositionError::DuplicateSeries(format!("{}{{{rendered}}}", self.name)));
        }
        Ok(rendered)
    }
}

/// Writes `{labels}`, or nothing for an empty label set.
fn push_braced(out: &mut String, rendered_labels: &str) {
    if !rendered_labels.is_empty() {
        out.push('{');
        out.push_str(rendered_labels);
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// One sample as read back by [`parse`].
    #[derive(Debug, PartialEq)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    type Labels = Vec<(String, String)>;

    /// A strict reader of what the encoder writes, so the format test can fail without promtool:
    /// HELP and TYPE once per family and before its samples, samples contiguous and named for
    /// their family's kind, label values unescaped, histogram buckets cumulative up to `+Inf`
    /// which equals `_count`.
    fn parse(text: &str) -> Result<Vec<Sample>, String> {
        let mut samples = Vec::new();
        let mut kinds: HashMap<String, String> = HashMap::new();
        let mut helped = HashSet::new();
        let mut finished_families = HashSet::new();
        let mut current: Option<String> = None;
        // Per histogram series (family + labels without le): the last bucket's bound and count,
        // and the +Inf bucket's count.
        let mut last_bucket: HashMap<String, (f64, f64)> = HashMap::new();
        let mut inf_bucket: HashMap<String, f64> = HashMap::new();
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the last line has no newline".into());
        }
        for (number, line) in text.lines().enumerate() {
            let at = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (keyword, name, tail) = (words.next(), words.next().unwrap_or(""), words.next().unwrap_or(""));
                if !is_valid_metric_name(name) {
                    return Err(at("bad metric name"));
                }
                if current.as_deref() != Some(name) {
                    if let Some(previous) = current.replace(name.to_string()) {
                        finished_families.insert(previous);
                    }
                }
                if finished_families.contains(name) {
                    return Err(at("family reopened"));
                }
                match keyword {
                    Some("HELP") => {
                        if !helped.insert(name.to_string()) {
                            return Err(at("second HELP"));
                        }
                        let mut chars = tail.chars();
                        while let Some(c) = chars.next() {
                            if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                                return Err(at("bad escape in HELP"));
                            }
                        }
                    }
                    Some("TYPE") => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                            return Err(at("unknown type"));
                        }
                        if kinds.insert(name.to_string(), tail.to_string()).is_some() {
                            return Err(at("second TYPE"));
                        }
                        if tail == "counter" && !name.ends_with("_total") {
                            return Err(at("counter without _total"));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            // name{label="value",...} value
            let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
            let name = &line[..name_end];
            if !is_valid_metric_name(name) {
                return Err(at("bad metric name"));
            }
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(inner) = rest.strip_prefix('{') {
                (labels, rest) = parse_labels(inner).map_err(&at)?;
            }
            let value_text = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value"))?;
            let value_text = value_text.split(' ').next().unwrap_or("");
            let value = match value_text {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                text => text.parse::<f64>().map_err(|_| at("bad value"))?,
            };
            let family = current.clone().ok_or_else(|| at("sample before any TYPE"))?;
            let kind = kinds.get(&family).map(String::as_str).ok_or_else(|| at("sample before its TYPE"))?;
            let suffix = name.strip_prefix(family.as_str()).ok_or_else(|| at("sample outside its family"))?;
            let has_le = labels.iter().any(|(l, _)| l == "le");
            match (kind, suffix) {
                ("counter" | "gauge" | "untyped", "") if !has_le => {}
                ("histogram", "_bucket") => {
                    let le = labels.iter().find(|(l, _)| l == "le").ok_or_else(|| at("bucket without le"))?;
                    let bound = match le.1.as_str() {
                        "+Inf" => f64::INFINITY,
                        text => text.parse::<f64>().map_err(|_| at("bad le"))?,
                    };
                    let series = format!("{family}{:?}", labels.iter().filter(|(l, _)| l != "le").collect::<Vec<_>>());
                    let (last_bound, last_count) = last_bucket.get(&series).copied().unwrap_or((f64::MIN, 0.0));
                    if bound <= last_bound || value < last_count {
                        return Err(at("buckets not increasing and cumulative"));
                    }
                    if bound.is_infinite() {
                        inf_bucket.insert(series.clone(), value);
                    }
                    last_bucket.insert(series, (bound, value));
                }
                ("histogram", "_sum") if !has_le => {}
                ("histogram", "_count") if !has_le => {
                    let series = format!("{family}{:?}", labels.iter().collect::<Vec<_>>());
                    if inf_bucket.get(&series) != Some(&value) {
                        return Err(at("_count differs from the +Inf bucket (or it is missing)"));
                    }
                }
                _ => return Err(at("sample name or labels do not fit the family's type")),
            }
            samples.push(Sample { name: name.to_string(), labels, value });
        }
        Ok(samples)
    }

    /// Reads `a="x",b="y"}` (after the `{`): the labels, unescaped, and what follows the `}`.
    fn parse_labels(mut rest: &str) -> Result<(Labels, &str), &'static str> {
        let mut labels = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let equals = rest.find('=').ok_or("label without =")?;
            let name = &rest[..equals];
            if !is_valid_label_name(name) && name != "le" {
                return Err("bad label name");
            }
            rest = rest[equals + 1..].strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape in label value"),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.push((name.to_string(), value));
            rest = &rest[close + 1..];
            match rest.strip_prefix(',') {
                Some(after) => rest = after,
                None if rest.starts_with('}') => {}
                None => return Err("expected , or } after a label"),
            }
        }
    }

    /// A family of every kind, labels that need escaping, and a histogram from a snapshot.
    fn sample_exposition() -> String {
        let latency = Histogram::new();
        for ms in [2, 20, 20, 200] {
            latency.record(Duration::from_millis(ms));
        }
        let mut encoder = TextEncoder::new();
        encoder
            .counter("lb_requests", "Requests answered, by backend and status class.")
            .unwrap()
            .sample(&[("backend", "b1"), ("code", "2xx")], 10.0)
            .unwrap()
            .sample(&[("backend", "we\"ird\\id\nx"), ("code", "5xx")], 2.0)
            .unwrap();
        encoder
            .gauge("lb_backend_in_flight", "Requests being forwarded.\nOne per worker.")
            .unwrap()
            .sample(&[("backend", "b1")], 3.0)
            .unwrap();
        encoder
            .gauge("lb_backend_weight_ratio", "A gauge with odd values.")
            .unwrap()
            .sample(&[("v", "nan")], f64::NAN)
            .unwrap()
            .sample(&[("v", "inf")], f64::INFINITY)
            .unwrap()
            .sample(&[("v", "half")], 0.5)
            .unwrap();
        encoder
            .histogram("lb_request_duration_seconds", "Time from request head to response head.")
            .unwrap()
            .histogram(&[("backend", "b1")], &latency.snapshot(), &[0.005, 0.05, 0.5])
            .unwrap()
            .histogram(&[("backend", "b2")], &Histogram::new().snapshot(), &[0.005, 0.05, 0.5])
            .unwrap();
        encoder.finish()
    }

    #[test]
    fn renders_every_kind_exactly() {
        let expected = "\
# HELP lb_requests_total Requests answered, by backend and status class.
# TYPE lb_requests_total counter
lb_requests_total{backend=\"b1\",code=\"2xx\"} 10
lb_requests_total{backend=\"we\\\"ird\\\\id\\nx\",code=\"5xx\"} 2
# HELP lb_backend_in_flight Requests being forwarded.\\nOne per worker.
# TYPE lb_backend_in_flight gauge
lb_backend_in_flight{backend=\"b1\"} 3
# HELP lb_backend_weight_ratio A gauge with odd values.
# TYPE lb_backend_weight_ratio gauge
lb_backend_weight_ratio{v=\"nan\"} NaN
lb_backend_weight_ratio{v=\"inf\"} +Inf
lb_backend_weight_ratio{v=\"half\"} 0.5
# HELP lb_request_duration_seconds Time from request head to response head.
# TYPE lb_request_duration_seconds histogram
lb_request_duration_seconds_bucket{backend=\"b1\",le=\"0.005\"} 1
lb_request_duration_seconds_bucket{backend=\"b1\",le=\"0.05\"} 3
lb_request_duration_seconds_bucket{backend=\"b1\",le=\"0.5\"} 4
lb_request_duration_seconds_bucket{backend=\"b1\",le=\"+Inf\"} 4
lb_request_duration_seconds_sum{backend=\"b1\"} 0.242
lb_request_duration_seconds_count{backend=\"b1\"} 4
lb_request_duration_seconds_bucket{backend=\"b2\",le=\"0.005\"} 0
lb_request_duration_seconds_bucket{backend=\"b2\",le=\"0.05\"} 0
lb_request_duration_seconds_bucket{backend=\"b2\",le=\"0.5\"} 0
lb_request_duration_seconds_bucket{backend=\"b2\",le=\"+Inf\"} 0
lb_request_duration_seconds_sum{backend=\"b2\"} 0
lb_request_duration_seconds_count{backend=\"b2\"} 0
";
        assert_eq!(sample_exposition(), expected);
    }

    #[test]
    fn the_sample_parses_back_and_passes_promtool() {
        let text = sample_exposition();
        let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples.len(), 2 + 1 + 3 + 2 * 6);
        assert_eq!(
            samples[1].labels,
            [("backend".to_string(), "we\"ird\\id\nx".to_string()), ("code".to_string(), "5xx".to_string())],
            "label values unescape to what was given"
        );
        assert!(samples[3].value.is_nan() && samples[4].value == f64::INFINITY);

        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("promtool is not on PATH: skipped `promtool check metrics` (the format was parsed back)");
                return;
            }
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics failed ({}):\n{}{}\n{text}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        for bad in [
            "lb_x 1\n",                                       // no TYPE
            "# TYPE lb_x gauge\nlb_x{a=\"1\" 1\n",            // unclosed labels
            "# TYPE lb_x gauge\nlb_x{a=\"\\t\"} 1\n",         // bad escape
            "# TYPE lb_x gauge\n# TYPE lb_x gauge\nlb_x 1\n", // second TYPE
            "# TYPE lb_x counter\nlb_x 1\n",                  // counter without _total
            "# TYPE lb_h histogram\nlb_h_bucket{le=\"1\"} 2\nlb_h_bucket{le=\"+Inf\"} 1\nlb_h_count 1\n",
            "# TYPE lb_h histogram\nlb_h_bucket{le=\"+Inf\"} 2\nlb_h_count 3\n",
            "# TYPE lb_x gauge\nlb_x 1\n# TYPE lb_y gauge\nlb_y 1\n# HELP lb_x again\n",
            "# TYPE lb_x gauge\nlb_x one\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let good = "# TYPE lb_x gauge\nlb_x{a=\"1\",b=\"2\"} 1\nlb_x{} 2\n";
        assert_eq!(parse(good).unwrap().len(), 2);
    }

    #[test]
    fn names_labels_and_values_are_checked() {
        let mut encoder = TextEncoder::new();
        assert_eq!(encoder.gauge("lb-x", "").unwrap_err(), ExpositionError::InvalidMetricName("lb-x".into()));
        let mut family = encoder.gauge("lb_x", "x").unwrap();
        assert!(matches!(family.sample(&[("0a", "v")], 1.0), Err(ExpositionError::InvalidLabelName(_))));
        assert!(matches!(family.sample(&[("__name__", "v")], 1.0), Err(ExpositionError::InvalidLabelName(_))));
        assert!(matches!(family.sample(&[("a", "1"), ("a", "2")], 1.0), Err(ExpositionError::DuplicateLabel(_))));
        family.sample(&[("a", "1")], 1.0).unwrap();
        assert!(matches!(family.sample(&[("a", "1")], 2.0), Err(ExpositionError::DuplicateSeries(_))));
        assert!(matches!(family.buckets(&[], &[], &[], 0.0, 0), Err(ExpositionError::WrongKind { .. })));
        assert!(matches!(encoder.gauge("lb_x", "again"), Err(ExpositionError::DuplicateFamily(_))));
        let mut counter = encoder.counter("lb_c_total", "c").unwrap();
        assert!(matches!(counter.sample(&[], -1.0), Err(ExpositionError::InvalidValue(_))));
        encoder.gauge("lb_h_count", "clashes with histogram lb_h").unwrap();
        assert_eq!(encoder.histogram("lb_h", "h").unwrap_err(), ExpositionError::DuplicateFamily("lb_h_count".into()));
        let mut histogram = encoder.histogram("lb_h2", "h").unwrap();
        assert!(matches!(histogram.sample(&[], 1.0), Err(ExpositionError::WrongKind { .. })));
        for (bounds, counts, count) in [
            (&[1.0, 1.0][..], &[1, 1][..], 1),
            (&[f64::INFINITY][..], &[1][..], 1),
            (&[1.0][..], &[2][..], 1),
            (&[1.0, 2.0][..], &[1][..], 1),
        ] {
            assert!(matches!(
                histogram.buckets(&[], bounds, counts, 0.0, count),
                Err(ExpositionError::InvalidValue(_))
            ));
        }
        // Nothing of a refused sample was written.
        let text = encoder.finish();
        assert!(parse(&text).is_ok(), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 1, "{text}");
    }
}
