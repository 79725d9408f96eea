//! Queries about a company another instance holds: this instance asks the group's other live
//! members (found through the consumer group, see [`crmflow_runtime::peers`]) and passes on the
//! first answer that is not "unknown company". The client sees one answer, from any instance.
//! Proxying rather than redirecting: the caller needs no route to every instance, and a
//! company's partition (which the connectors' partitioner chose) need not be known.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crmflow_runtime::Status;

use crate::ApiError;

/// Marks a forwarded request: the instance asked answers from its own partitions only.
pub const FORWARDED: &str = "x-crmflow-forwarded";

/// How long one instance may take to answer a forwarded query.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The middleware: a local "unknown company" answer is replaced by another instance's answer.
pub async fn unknown_companies(State(status): State<Status>, request: Request, next: Next) -> Response {
    let forwarded = request.headers().contains_key(FORWARDED);
    let path = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let response = next.run(request).await;
    if forwarded || response.status() != StatusCode::NOT_FOUND || !response.headers().contains_key(UNKNOWN_MARK) {
        return response;
    }
    let Some(peers) = status.peers() else { return response };
    let asked = tokio::task::spawn_blocking(move || {
        let urls =
            peers.others().map_err(|e| ApiError::Unavailable(format!("cannot find the other instances: {e}")))?;
        Ok::<_, ApiError>(urls.into_iter().find_map(|url| ask(&url, &path)))
    })
    .await;
    match asked {
        Ok(Ok(Some(answer))) => answer,
        Ok(Ok(None)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::Internal(format!("forwarding the query failed: {e}")).into_response(),
    }
}

/// The header an "unknown company" answer carries, so the middleware need not parse bodies.
pub(crate) const UNKNOWN_MARK: &str = "x-crmflow-unknown-company";

/// One instance's answer to the query, unless it does not hold the company either.
fn ask(base: &str, path: &str) -> Option<Response> {
    let url = format!("{base}{path}");
    let (code, content_type, body) = match ureq::get(&url).set(FORWARDED, "1").timeout(PEER_TIMEOUT).call() {
        Ok(r) => (r.status(), r.content_type().to_owned(), r.into_string().ok()?),
        Err(ureq::Error::Status(code, r)) => {
            if r.header(UNKNOWN_MARK).is_some() {
                return None;
            }
            (code, r.content_type().to_owned(), r.into_string().ok()?)
        }
        Err(e) => {
            tracing::warn!(%url, "forwarding a query: {e}");
            return None;
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(code).ok()?;
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Some(response)
}
