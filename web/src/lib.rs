//! The Voltshare dashboard: one axum [`Router`] that serves the dashboard
//! page (overview, market, settlements, my household, devices), a JSON API
//! over the clearing engine's read models documented as OpenAPI, a
//! server-sent-events stream of live power, and accounts with roles.
//!
//! Architecture invariants:
//! - Everything it shows comes through [`clearing::read::ReadModel`], held
//!   as `Arc<dyn ReadModel>` in [`AppState`]; the operator's few writes
//!   (approving an enrolment into the engine, changing the auction
//!   parameters) go through [`clearing::operator::Operator`], held the same
//!   way. So the router is tested with fakes and no database or socket.
//! - It never reads a clock directly: "now" comes from the
//!   [`protocol::Clock`] in the state, and the stream's cadence from
//!   `tokio::time::interval`.
//! - Errors leave through one type, [`AppError`], whose JSON body never
//!   carries storage internals; those are logged by the error-logging
//!   middleware instead.
//! - Every route is in [`routes::ROUTES`] with its access class, and the
//!   router is built from that list; the gate in front of each route
//!   enforces the class, so a handler never decides who may call it.
//! - A household never sees another's data: household routes answer 404
//!   for anybody else's `{household}`, and shared views mask other
//!   households' ids as `neighbour`.
//! - The page works offline: its HTML, CSS and JS are embedded in the binary
//!   and nothing is loaded from anywhere else (the page's Content Security
//!   Policy enforces it).

pub mod accounts;
mod api;
mod assets;
mod auth;
mod error;
pub mod market;
pub mod mine;
pub mod openapi;
pub mod params;
pub mod published;
pub mod routes;
mod state;
mod stream;
pub mod summary;

use axum::{Router, middleware};
use tower_http::trace::TraceLayer;

pub use accounts::{AccountStore, Role};
pub use api::{IntervalView, LiveView, SettlementView};
pub use error::AppError;
pub use routes::{Access, ROUTES, RouteSpec};
pub use state::{AppState, Settings};
pub use summary::Summary;

/// The dashboard's whole HTTP surface: the routes of [`ROUTES`], each behind
/// its access gate. Anything else is a 404 in the [`AppError`] JSON format,
/// and a wrong method a 405 in the same format.
pub fn app(state: AppState) -> Router {
    routes::build(&state)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(error::log_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
