//! Logging in and out: password login (argon2), one-time login links made
//! with `voltshare web link`, and `/api/me`, which also hands the page its
//! CSRF token.
//!
//! Cookies: the session cookie is `HttpOnly; SameSite=Strict; Path=/`, and
//! `Secure` when the dashboard is served over TLS. The CSRF cookie is the
//! same minus `HttpOnly`, because the page's script must read it to echo it
//! in the `X-CSRF-Token` header.

use crate::accounts::Role;
use crate::routes::{CSRF_COOKIE, SESSION_COOKIE, Viewer, cookie};
use crate::{AppError, AppState};
use axum::{
    Extension, Json,
    extract::{Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who is logged in, and the CSRF token for state-changing requests.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub authenticated: bool,
    pub username: Option<String>,
    pub role: Option<Role>,
    /// The household of a household account.
    pub household: Option<String>,
    /// Echo this in `X-CSRF-Token` on every POST.
    pub csrf_token: String,
    /// Whether accounts are enabled on this dashboard.
    pub accounts_enabled: bool,
}

/// `POST /api/login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `GET /login/link` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LinkQuery {
    /// The one-time token from `voltshare web link`.
    pub token: Option<String>,
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value. Only our own hex tokens go in, so no escaping is
/// needed.
fn set_cookie(
    name: &str,
    value: &str,
    http_only: bool,
    secure: bool,
    max_age: Duration,
) -> HeaderValue {
    let mut c = format!(
        "{name}={value}; Path=/; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    );
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// A fresh random CSRF token (hex).
fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

const CSRF_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The CSRF token this browser should use, and the cookie to set when it
/// has none yet.
pub(crate) fn csrf_for(
    state: &AppState,
    headers: &HeaderMap,
    viewer: &Viewer,
) -> (String, Option<HeaderValue>) {
    if let Some(csrf) = &viewer.csrf {
        return (csrf.clone(), None);
    }
    match cookie(headers, CSRF_COOKIE) {
        Some(c) if c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (c.to_owned(), None)
        }
        _ => {
            let t = new_token();
            let header = set_cookie(CSRF_COOKIE, &t, false, secure(state, headers), CSRF_MAX_AGE);
            (t, Some(header))
        }
    }
}

fn me_of(state: &AppState, viewer: &Viewer, csrf: String) -> Me {
    let a = viewer.account.as_ref();
    Me {
        authenticated: a.is_some(),
        username: a.map(|a| a.username.clone()),
        role: a.map(|a| a.role),
        household: a.and_then(|a| a.household.clone()),
        csrf_token: csrf,
        accounts_enabled: state.accounts.is_some(),
    }
}

/// `GET /api/me`.
#[utoipa::path(get, path = "/api/me", tag = "accounts",
    responses((status = 200, description = "The viewer and its CSRF token", body = Me)))]
pub(crate) async fn me(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
) -> Response {
    let (csrf, set) = csrf_for(&state, &headers, &viewer);
    let mut response = Json(me_of(&state, &viewer, csrf)).into_response();
    if let Some(set) = set {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Starts a session for `username` and answers with its cookies.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    account: crate::accounts::Account,
    mut response: Response,
) -> Result<Response, AppError> {
    let store = state.accounts.as_ref().ok_or(AppError::BadCredentials)?;
    let session = store.create_session(&account.username).await?;
    let sec = secure(state, headers);
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session.token, true, sec, session.max_age),
    );
    // A new CSRF token per session, so one seen before login is useless after.
    h.append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &session.csrf, false, sec, session.max_age),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::info!(user = %account.username, role = ?account.role, "login");
    Ok(response)
}

/// `POST /api/login`: password login.
#[utoipa::path(post, path = "/api/login", tag = "accounts", request_body = LoginRequest,
    params(("X-CSRF-Token" = String, Header, description = "the token from the vs_csrf cookie")),
    responses(
        (status = 200, description = "Logged in; session cookie set", body = Me),
        (status = 400, description = "Malformed body", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong username or password", body = crate::error::ErrorBody),
        (status = 403, description = "Missing CSRF token", body = crate::error::ErrorBody)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(req) = body.map_err(|rejection| {
        tracing::debug!(%rejection, "bad login body");
        AppError::BadRequest("expected a JSON body {\"username\": …, \"password\": …}".into())
    })?;
    let store = state.accounts.as_ref().ok_or(AppError::BadCredentials)?;
    let account = store
        .check_password(&req.username, &req.password)
        .await?
        .ok_or(AppError::BadCredentials)?;
    let viewer = Viewer {
        account: Some(account.clone()),
        ..Viewer::default()
    };
    // The body's CSRF token is filled in below from the new session.
    let session_response =
        start_session(&state, &headers, account, StatusCode::OK.into_response()).await?;
    let csrf = session_response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("vs_csrf="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let (parts, _) = session_response.into_parts();
    let body = Json(me_of(&state, &viewer, csrf));
    Ok((parts, body).into_response())
}

/// `POST /api/logout`.
#[utoipa::path(post, path = "/api/logout", tag = "accounts",
    params(("X-CSRF-Token" = String, Header, description = "the session's CSRF token")),
    responses(
        (status = 204, description = "Logged out; cookies cleared"),
        (status = 401, description = "Not logged in", body = crate::error::ErrorBody),
        (status = 403, description = "Missing CSRF token", body = crate::error::ErrorBody)))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let (Some(store), Some(token)) = (&state.accounts, &viewer.token) {
        store.end_session(token).await?;
    }
    let sec = secure(&state, &headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", true, sec, Duration::ZERO),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, "", false, sec, Duration::ZERO),
    );
    Ok(response)
}

/// `GET /login/link?token=…`: redeems a one-time login link and goes to the
/// dashboard (to the login page with a message when the link is no good).
#[utoipa::path(get, path = "/login/link", tag = "accounts", params(LinkQuery),
    responses(
        (status = 303, description = "Logged in (to /#/household) or not (to /#/login)")))]
pub(crate) async fn login_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LinkQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let account = match &state.accounts {
        Some(store) => store.redeem_login_link(&token).await?,
        None => None,
    };
    let redirect = |to: &'static str| {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(to));
        r
    };
    match account {
        None => Ok(redirect("/#/login/expired")),
        Some(account) => {
            let to = if account.role == Role::Operator {
                "/#/overview"
            } else {
                "/#/household"
            };
            start_session(&state, &headers, account, redirect(to)).await
        }
    }
}
