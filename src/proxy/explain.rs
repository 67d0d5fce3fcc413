//! `--debug`: why each request went where it went, at debug level under the target
//! `lb_sync::decision`: the algorithm's choice, the backends passed over and why, and each retry
//! and why (or why not). Nothing here runs unless debug logging is on.

use crate::pools::Pool;
use crate::upstream::{Backend, ForwardError, Membership, PickKind};

use super::Outbound;

const TARGET: &str = "lb_sync::decision";

fn on() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Debug)
}

/// `b1 (disabled), b3 (circuit open)`: the backends a pick passed over, with the reason, and
/// those already tried by this request.
fn passed_over(membership: &Membership, chosen: Option<&Backend>, tried: &[*const Backend]) -> String {
    let mut parts = Vec::new();
    for backend in &membership.backends {
        if chosen.is_some_and(|c| std::ptr::eq(c, &**backend)) {
            continue;
        }
        if tried.contains(&std::sync::Arc::as_ptr(backend)) {
            parts.push(format!("{} (tried already)", backend.id));
        } else if let Some(why) = backend.unusable_reason() {
            parts.push(format!("{} ({why})", backend.id));
        }
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// `pool api: ` before the algorithm of a named pool (the default pool's lines read as before pools).
fn named(pool: &Pool) -> String {
    if pool.name == crate::config::DEFAULT_POOL {
        String::new()
    } else {
        format!("pool {}: ", pool.name)
    }
}

/// A pick: which backend the algorithm chose and what it passed over.
pub(super) fn picked(
    pool: &Pool,
    membership: &Membership,
    out: &Outbound,
    backend: &Backend,
    kind: PickKind,
    tried: &[*const Backend],
) {
    if !on() {
        return;
    }
    let how = match kind {
        PickKind::Usable => "",
        PickKind::BreakersIgnored => " (only open circuits were left: ignoring them)",
        PickKind::Panic => " (panic mode: nothing usable, trying any enabled backend)",
    };
    log::debug!(
        target: TARGET,
        "{} {} {}: try {}: {}{} chose {} ({}){how}; passed over: {}",
        out.request_id,
        out.method,
        out.target,
        tried.len() + 1,
        named(pool),
        pool.table.algorithm(),
        backend.id,
        backend.addr,
        passed_over(membership, Some(backend), tried),
    );
}

/// No candidate is left.
pub(super) fn nothing_left(pool: &Pool, membership: &Membership, out: &Outbound, tried: &[*const Backend]) {
    if on() {
        log::debug!(
            target: TARGET,
            "{} {} {}: {}{} has no candidate left; passed over: {}",
            out.request_id,
            out.method,
            out.target,
            named(pool),
            pool.table.algorithm(),
            passed_over(membership, None, tried),
        );
    }
}

/// A try failed; `retry` says whether another backend gets the request.
pub(super) fn failed(out: &Outbound, backend: &Backend, error: &ForwardError, retry: bool) {
    if !on() {
        return;
    }
    let next = if !retry {
        "not retrying: the backend may have acted on it and the method is not idempotent or the body is too large to send again"
    } else if error.never_sent() {
        "retrying on another backend: the request never reached this one"
    } else {
        "retrying on another backend: the method is idempotent and the body can be sent again"
    };
    log::debug!(target: TARGET, "{} {} {}: {} failed ({error}); {next}", out.request_id, out.method, out.target, backend.id);
}

/// A retry the budget refused.
pub(super) fn budget_spent(out: &Outbound) {
    if on() {
        log::debug!(
            target: TARGET,
            "{} {} {}: not retrying: the retry budget is spent",
            out.request_id,
            out.method,
            out.target
        );
    }
}
