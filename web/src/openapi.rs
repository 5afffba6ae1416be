//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the response types' `ToSchema` derives, and served at
//! `/api/openapi.json`. A test checks that every API route of
//! [`crate::routes::ROUTES`] is documented, so the two lists cannot drift.

use crate::{accounts, api, auth, error, market, mine, params, published, state, stream, summary};
use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use std::sync::LazyLock;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Voltshare dashboard API",
        description = "Community aggregates, the market, settlements and a household's own data. \
            Money is integer micro-units of the settlement currency, prices micro-units per kWh, \
            energy Wh, power W (`+` import, `−` export), times Unix ms. Errors are \
            `{\"error\": {\"code\", \"message\"}}`. Sessions use the `vs_session` cookie; \
            every POST needs the `vs_csrf` cookie's value in `X-CSRF-Token`."
    ),
    paths(
        api::healthz,
        api::summary,
        api::intervals,
        api::settlements,
        api::live,
        api::rejects,
        stream::stream,
        auth::me,
        auth::login,
        auth::logout,
        auth::login_link,
        market::order_book,
        market::interval_detail,
        market::verify,
        published::published,
        mine::readings,
        mine::orders,
        mine::trades,
        mine::bills_handler,
        mine::devices,
        mine::request_enrolment,
        mine::enrolments,
        mine::approve_enrolment,
        mine::reject_enrolment,
        mine::get_settings,
        mine::put_settings,
        params::market_params,
        params::changes,
        params::change,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        summary::Summary,
        summary::LiveTotals,
        summary::BookSummary,
        state::Settings,
        accounts::Role,
        accounts::EnrolmentRequest,
    ))
)]
struct ApiDoc;

/// The document as JSON text, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
});

/// The document as a value (tests).
pub fn document_json() -> serde_json::Value {
    serde_json::from_str(&DOCUMENT).unwrap_or(serde_json::Value::Null)
}

/// `GET /api/openapi.json`.
pub(crate) async fn document() -> Response {
    let mut r = DOCUMENT.as_str().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
