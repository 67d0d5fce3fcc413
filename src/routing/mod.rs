//! Routes (issue 26): which of the config's `routes` takes a request, by host, path, method,
//! headers and query, with precedence by specificity ([`rank`]) and ties refused at load. Pure:
//! it reads a borrowed view of a request whose host and path are canonical already, and says
//! which route wins; pools and actions are carried out elsewhere.
//!
//! The public interface: [`RouteConfig`] (as written), [`RouteTable`] (`build`, `lookup`,
//! `explain`, `pools_named`, `warnings`), [`Route`] (as built), [`RequestView`], [`canonical_host`].
//! (Not to be confused with [`crate::router`], which sends `/lb/` to the management API.)

mod action;
mod checks;
mod conditions;
mod config;
mod explain;
mod host;
mod path;
mod punycode;
pub mod rank;
mod route;
mod split;
mod table;

use std::fmt;

pub use action::{is_valid_name, Action, HeaderEdits, Overrides, Redirect, Respond, Rewrite, SplitShare};
pub use checks::RouteWarning;
pub use conditions::{sole_parameter, Conditions, HeaderTest, Mismatch, QueryTest, Unmet};
pub use config::{deserialize_routes, HeaderMatchConfig, QueryMatchConfig, RouteConfig};
pub use explain::{Explained, Verdict};
pub use host::{canonical_host, HostPattern};
pub use path::{PathMatch, PathRegex};
pub use rank::Rank;
pub use route::Route;
pub use split::{client_key, split_pool};
pub use table::{RequestView, RouteTable};

/// Why a route table was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// One route is wrong by itself.
    Invalid {
        /// Its name.
        route: String,
        /// What is wrong.
        why: String,
    },
    /// Two routes have one name.
    Duplicate {
        /// The name.
        route: String,
    },
    /// Two routes are equally specific and can take the same request.
    Tie {
        /// The first in the file.
        first: String,
        /// The other.
        second: String,
        /// The host entry they share, as `host x` or `any host`.
        host: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Invalid { route, why } => write!(f, "route '{route}': {why}"),
            RouteError::Duplicate { route } => write!(f, "route name '{route}' is used twice"),
            RouteError::Tie { first, second, host } => write!(
                f,
                "routes '{first}' and '{second}' can take the same request and are equally specific \
                 ({host}, the same path matcher, as many matchers, the same priority): \
                 give one a higher \"priority\", or a matcher that tells them apart"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

#[cfg(test)]
mod tests;
