//! The one list of routes, and the gate every request passes.
//!
//! [`ROUTES`] is the whole HTTP surface: the router is built from it and the
//! authorization test walks it, so a new route cannot be added without
//! saying who may use it. Each route has an [`Access`] class, enforced by
//! [`gate`] before the handler runs:
//!
//! | access | no session | household | operator |
//! |---|---|---|---|
//! | `Public` | yes | yes | yes |
//! | `Aggregate` | if public aggregates are on, else 401 | yes | yes |
//! | `Member` | 401 | yes (own data only) | yes |
//! | `OwnHousehold` | 401 | only its own `{household}`, else 404 | yes |
//! | `Operator` | 401 | 403 | yes |
//!
//! A household asking for another's data gets 404, not 403, so that the
//! answer does not even confirm the other household exists. Shared views
//! (order book, trades, live power) mask other households' ids for
//! everybody but the operator: see [`Viewer::mask`].
//!
//! CSRF: every request that is not `GET`/`HEAD` must carry the token from
//! the `vs_csrf` cookie in an `X-CSRF-Token` header (double submit), and
//! when it has a session, that session's own token; a request whose
//! `Origin` is another site is refused. Cookies are `SameSite=Strict`
//! besides.

use crate::accounts::{Account, Role};
use crate::{
    AppError, AppState, api, assets, auth, market, mine, openapi, params, published, stream,
};
use axum::{
    Router,
    extract::{FromRequestParts, RawPathParams, Request, State},
    http::{HeaderMap, Method, header},
    middleware::{self, Next},
    response::Response,
    routing::{MethodRouter, get, post},
};

/// Who may use a route; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everybody: the page, its assets, health, the API document, login.
    Public,
    /// Community aggregates: public unless the operator turned that off.
    Aggregate,
    /// Any logged-in account; the handler shows a household only its own.
    Member,
    /// Data of the `{household}` in the path: that household or the operator.
    OwnHousehold,
    /// The operator only.
    Operator,
}

/// One route of the dashboard.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// axum path syntax, e.g. `/api/households/{household}/bills`.
    pub path: &'static str,
    pub access: Access,
    handler: fn() -> MethodRouter<AppState>,
}

macro_rules! route {
    ($method:ident, $path:expr, $access:ident, $router:ident ( $handler:path )) => {
        RouteSpec {
            method: Method::$method,
            path: $path,
            access: Access::$access,
            handler: || $router($handler),
        }
    };
}

/// Every route. The router is built from this list, and the authorization
/// test walks it.
pub static ROUTES: &[RouteSpec] = &[
    route!(GET, "/", Public, get(assets::index)),
    route!(GET, "/assets/app.js", Public, get(assets::app_js)),
    route!(GET, "/assets/app.css", Public, get(assets::app_css)),
    route!(GET, "/healthz", Public, get(api::healthz)),
    route!(GET, "/api/openapi.json", Public, get(openapi::document)),
    route!(GET, "/api/me", Public, get(auth::me)),
    route!(POST, "/api/login", Public, post(auth::login)),
    route!(GET, "/login/link", Public, get(auth::login_link)),
    route!(POST, "/api/logout", Member, post(auth::logout)),
    route!(GET, "/api/summary", Aggregate, get(api::summary)),
    route!(GET, "/api/intervals", Aggregate, get(api::intervals)),
    route!(
        GET,
        "/api/intervals/{interval}",
        Aggregate,
        get(market::interval_detail)
    ),
    route!(
        GET,
        "/api/intervals/{interval}/verify",
        Aggregate,
        get(market::verify)
    ),
    route!(
        GET,
        "/api/published/{interval}",
        Aggregate,
        get(published::published)
    ),
    route!(GET, "/api/settlements", Aggregate, get(api::settlements)),
    route!(GET, "/api/market/book", Aggregate, get(market::order_book)),
    route!(
        GET,
        "/api/market/params",
        Aggregate,
        get(params::market_params)
    ),
    route!(GET, "/api/params/changes", Operator, get(params::changes)),
    route!(POST, "/api/params", Operator, post(params::change)),
    route!(GET, "/api/rejects", Aggregate, get(api::rejects)),
    route!(GET, "/api/stream", Aggregate, get(stream::stream)),
    route!(GET, "/api/settings", Public, get(mine::get_settings)),
    route!(GET, "/api/live", Member, get(api::live)),
    route!(GET, "/api/devices", Member, get(mine::devices)),
    route!(
        GET,
        "/api/households/{household}/readings",
        OwnHousehold,
        get(mine::readings)
    ),
    route!(
        GET,
        "/api/households/{household}/orders",
        OwnHousehold,
        get(mine::orders)
    ),
    route!(
        GET,
        "/api/households/{household}/trades",
        OwnHousehold,
        get(mine::trades)
    ),
    route!(
        GET,
        "/api/households/{household}/bills",
        OwnHousehold,
        get(mine::bills_handler)
    ),
    route!(
        POST,
        "/api/enrolments",
        Member,
        post(mine::request_enrolment)
    ),
    route!(GET, "/api/enrolments", Operator, get(mine::enrolments)),
    route!(
        POST,
        "/api/enrolments/{id}/approve",
        Operator,
        post(mine::approve_enrolment)
    ),
    route!(
        POST,
        "/api/enrolments/{id}/reject",
        Operator,
        post(mine::reject_enrolment)
    ),
    route!(POST, "/api/settings", Operator, post(mine::put_settings)),
];

/// The session cookie: HttpOnly, SameSite=Strict.
pub const SESSION_COOKIE: &str = "vs_session";
/// The CSRF cookie, readable by the page's script (double submit).
pub const CSRF_COOKIE: &str = "vs_csrf";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who is asking, as the gate found out. Handlers take it as an extension.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub account: Option<Account>,
    /// The session's cookie token (for logout).
    pub(crate) token: Option<String>,
    /// The session's CSRF token.
    pub(crate) csrf: Option<String>,
}

impl Viewer {
    /// Whether the viewer is the operator.
    pub fn is_operator(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| a.role == Role::Operator)
    }

    /// The viewer's household, for a household account.
    pub fn household(&self) -> Option<&str> {
        self.account.as_ref().and_then(|a| a.household.as_deref())
    }

    /// Whether the viewer may see `household`'s own data.
    pub fn may_see(&self, household: &str) -> bool {
        self.is_operator() || self.household() == Some(household)
    }

    /// A household id as this viewer may see it: itself for the operator
    /// and for the household's own account, `neighbour` for everyone else.
    pub fn mask(&self, household: &str) -> String {
        if self.may_see(household) {
            household.to_owned()
        } else {
            "neighbour".to_owned()
        }
    }
}

/// Reads one cookie from the request headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Refuses cross-site state changes: an `Origin` header, when present, must
/// name the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

/// The gate in front of every route: resolves the session, checks CSRF on
/// state-changing methods, enforces the route's [`Access`] and hands the
/// [`Viewer`] to the handler.
async fn gate(
    State((state, access)): State<(AppState, Access)>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let (mut parts, body) = request.into_parts();
    let mut viewer = Viewer::default();
    if let (Some(token), Some(store)) = (cookie(&parts.headers, SESSION_COOKIE), &state.accounts)
        && let Some(session) = store.session(token).await?
    {
        viewer = Viewer {
            account: Some(session.account),
            token: Some(token.to_owned()),
            csrf: Some(session.csrf),
        };
    }
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let cookie_token = cookie(&parts.headers, CSRF_COOKIE);
        let ok = match (sent, cookie_token) {
            (Some(sent), Some(c)) if sent.len() >= 32 && same_secret(sent, c) => {
                viewer.csrf.as_deref().is_none_or(|s| same_secret(sent, s))
            }
            _ => false,
        };
        if !ok || !same_origin(&parts.headers) {
            // A state change without a session is first of all unauthorised
            // where the route needs one.
            if viewer.account.is_none() && access != Access::Public {
                return Err(AppError::Unauthorized);
            }
            return Err(AppError::Csrf);
        }
    }
    match access {
        Access::Public => {}
        Access::Aggregate => {
            if viewer.account.is_none() && !state.settings().public_aggregates {
                return Err(AppError::Unauthorized);
            }
        }
        Access::Member => {
            if viewer.account.is_none() {
                return Err(AppError::Unauthorized);
            }
        }
        Access::OwnHousehold => {
            if viewer.account.is_none() {
                return Err(AppError::Unauthorized);
            }
            let params = RawPathParams::from_request_parts(&mut parts, &())
                .await
                .map_err(|_| AppError::NotFound)?;
            let household = params
                .iter()
                .find(|(k, _)| *k == "household")
                .map(|(_, v)| v)
                .ok_or(AppError::NotFound)?;
            if !viewer.may_see(household) {
                return Err(AppError::NotFound);
            }
        }
        Access::Operator => {
            if viewer.account.is_none() {
                return Err(AppError::Unauthorized);
            }
            if !viewer.is_operator() {
                return Err(AppError::Forbidden("only the operator may do this"));
            }
        }
    }
    parts.extensions.insert(viewer);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// Builds the router's routes from [`ROUTES`], each behind the gate with
/// its access class.
pub(crate) fn build(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    for spec in ROUTES {
        let method_router = (spec.handler)().route_layer(middleware::from_fn_with_state(
            (state.clone(), spec.access),
            gate,
        ));
        // Routes that share a path (none today) are merged by axum.
        router = router.route(spec.path, method_router);
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.as_str(), r.path)),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn cookies_and_secrets() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; vs_csrf=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie(&h, "vs_csrf"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h));
        h.insert(header::HOST, "127.0.0.1:8080".parse().expect("header"));
        h.insert(
            header::ORIGIN,
            "http://127.0.0.1:8080".parse().expect("header"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            "http://evil.example".parse().expect("header"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn masking() {
        let household = Viewer {
            account: Some(Account {
                username: "a".into(),
                role: Role::Household,
                household: Some("h01".into()),
            }),
            ..Viewer::default()
        };
        assert_eq!(household.mask("h01"), "h01");
        assert_eq!(household.mask("h02"), "neighbour");
        assert_eq!(Viewer::default().mask("h01"), "neighbour");
    }
}
