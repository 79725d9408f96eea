//! Errors as HTTP answers: a status and a JSON body `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The error code of a company no partition here holds: the forwarding looks for it.
pub(crate) const UNKNOWN_COMPANY: &str = "unknown_company";

/// A request that cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (a bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing here under that name (an unknown integration, user or activity).
    #[error("{0}")]
    NotFound(String),
    /// No partition of this instance holds the company (another instance may: see
    /// [`crate::forward`]).
    #[error("company `{0}` is unknown here")]
    UnknownCompany(String),
    /// Not answerable now (not running yet, or stopping).
    #[error("{0}")]
    Unavailable(String),
    /// The state store failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::UnknownCompany(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::UnknownCompany(_) => UNKNOWN_COMPANY,
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crmflow_store::StoreError> for ApiError {
    fn from(error: crmflow_store::StoreError) -> Self {
        tracing::error!("query failed: {error}");
        ApiError::Internal(error.to_string())
    }
}

impl From<crmflow_runtime::status::NotRunning> for ApiError {
    fn from(error: crmflow_runtime::status::NotRunning) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::UnknownCompany(_) = self {
            response.headers_mut().insert(crate::forward::UNKNOWN_MARK, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
