//! The dashboard's one error type and the middleware that logs it.
//!
//! Every failure leaves as `{"error": {"code": "...", "message": "..."}}`
//! with a fitting status. Storage failures become a generic 500: their
//! details travel to [`log_errors`] in a response extension and are logged
//! there with the request's method and path, never sent to the client.

use axum::{
    Json,
    extract::Request,
    http::{Method, StatusCode, Uri},
    middleware::Next,
    response::{IntoResponse, Response},
};
use clearing::read::ReadError;
use serde_json::json;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; the message says which parameter and why.
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("no such resource")]
    NotFound,
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The route needs a login (or public aggregates are switched off).
    #[error("login required")]
    Unauthorized,
    /// Wrong username or password, or a used or expired login link.
    #[error("invalid credentials")]
    BadCredentials,
    /// Logged in, but the role may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A state-changing request without a valid CSRF token or from another
    /// origin.
    #[error("missing or invalid CSRF token; reload the page and try again")]
    Csrf,
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The read model failed. The source is logged, not returned.
    #[error("read model failed: {0}")]
    Read(#[from] ReadError),
    /// The account store failed. The source is logged, not returned.
    #[error("account store failed: {0}")]
    Accounts(#[from] crate::accounts::AccountError),
    /// The engine's storage failed during an operator action. Logged, not
    /// returned.
    #[error("engine storage failed: {0}")]
    Engine(String),
}

impl From<clearing::operator::OperatorError> for AppError {
    fn from(e: clearing::operator::OperatorError) -> Self {
        use clearing::operator::OperatorError as E;
        match e {
            E::Invalid { .. } => AppError::BadRequest(e.to_string()),
            E::Conflict(m) => AppError::Conflict(m),
            E::Storage(m) => AppError::Engine(m),
        }
    }
}

/// The JSON body of every error (documentation of the format).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`,
    /// `invalid_credentials`, `forbidden`, `csrf`, `not_found`,
    /// `method_not_allowed`, `conflict` or `internal`.
    pub code: String,
    /// For people; never carries internals.
    pub message: String,
}

/// The internal detail of a 500, handed from [`AppError::into_response`] to
/// [`log_errors`] inside the response's extensions.
#[derive(Debug, Clone)]
struct InternalDetail(String);

impl AppError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Unauthorized | AppError::BadCredentials => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Read(_) | AppError::Accounts(_) | AppError::Engine(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable, machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Unauthorized => "unauthorized",
            AppError::BadCredentials => "invalid_credentials",
            AppError::Forbidden(_) => "forbidden",
            AppError::Csrf => "csrf",
            AppError::Conflict(_) => "conflict",
            AppError::Read(_) | AppError::Accounts(_) | AppError::Engine(_) => "internal",
        }
    }

    /// The message shown to the client: specific for client errors, generic
    /// for server errors.
    fn public_message(&self) -> String {
        match self {
            AppError::Read(_) | AppError::Accounts(_) | AppError::Engine(_) => {
                "internal error; the details are in the server log".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code(), "message": self.public_message() } });
        let mut response = (self.status(), Json(body)).into_response();
        let detail = match &self {
            AppError::Read(source) => Some(source.to_string()),
            AppError::Accounts(source) => Some(source.to_string()),
            AppError::Engine(source) => Some(source.clone()),
            _ => None,
        };
        if let Some(detail) = detail {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

/// Fallback for unknown paths.
pub(crate) async fn not_found() -> AppError {
    AppError::NotFound
}

/// Fallback for known paths with the wrong method.
pub(crate) async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

/// Logs the internal detail of every server error with the request it
/// belongs to, and strips it from the response.
pub(crate) async fn log_errors(request: Request, next: Next) -> Response {
    let method: Method = request.method().clone();
    let uri: Uri = request.uri().clone();
    let mut response = next.run(request).await;
    if let Some(InternalDetail(detail)) = response.extensions_mut().remove::<InternalDetail>() {
        tracing::error!(%method, path = uri.path(), status = response.status().as_u16(), error = %detail, "request failed");
    }
    response
}
