//! The routes and their handlers. Each query finds the one store that holds the company and
//! reads committed state from it only: a company's keys never mix with another's (see
//! `crmflow_store`'s key layout), and an unknown company is a 404, never someone else's data.

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crmflow_domain::LedgerEntry;
use crmflow_runtime::Status;
use crmflow_store::{CommittedSnapshot, CommittedView, ProvisionedUser};

use crate::ApiError;

/// How many of a user's latest activities come with them unless `?activities=` says otherwise.
const DEFAULT_ACTIVITIES: usize = 20;
/// The most activities one request may ask for.
const MAX_ACTIVITIES: usize = 1000;

/// The server's routes over a processor's status.
pub fn router(status: Status) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/companies/{company}/integrations/{integration}/users", get(users))
        .route("/v1/companies/{company}/integrations/{integration}/users/{crm_user_id}", get(user))
        .route("/v1/companies/{company}/integrations/{integration}/activities/{activity_id}", get(activity))
        .route(
            "/v1/companies/{company}/integrations/{integration}/records/{object_type}/{object_id}/explain",
            get(explain),
        )
        .fallback(|| async {
            ApiError::NotFound("no such endpoint: see /healthz, /readyz, /metrics, /v1/companies/…".into())
        })
        .layer(axum::middleware::from_fn_with_state(status.clone(), crate::forward::unknown_companies))
        .with_state(status)
}

async fn healthz(State(status): State<Status>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "phase": status.phase() }))
}

async fn readyz(State(status): State<Status>) -> Result<Response, ApiError> {
    let readiness = blocking(move || Ok(status.readiness())).await?;
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((code, Json(readiness)).into_response())
}

async fn metrics(State(status): State<Status>) -> Result<Response, ApiError> {
    let text = blocking(move || status.metrics_text().map_err(|e| ApiError::Internal(e.to_string()))).await?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// The integration's provisioned users; `?unassigned=true`: only those on no team, the list
/// admins work through to place them (their activities are ignored until then).
#[derive(Debug, Serialize)]
struct Users {
    company_id: String,
    integration_id: String,
    unassigned_only: bool,
    users: Vec<ProvisionedUser>,
}

async fn users(
    State(status): State<Status>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Users>, ApiError> {
    let Path((company_id, integration_id)) = path.map_err(bad_path)?;
    let mut query = parameters(query)?;
    let unassigned_only = match query.remove("unassigned").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("unassigned=`{other}`: use true or false"))),
    };
    no_more(query)?;
    blocking(move || {
        let users = status.query(|stores| {
            let views = snapshots(stores);
            let store = integration_store(&views, &company_id, &integration_id)?;
            let mut users = store.provisioned_users(&company_id, &integration_id)?;
            if unassigned_only {
                users.retain(|u| u.team_id.is_none());
            }
            Ok::<_, ApiError>(users)
        })??;
        Ok(Json(Users { company_id, integration_id, unassigned_only, users }))
    })
    .await
}

/// One provisioned user: their account, their team, and their latest accepted activities.
#[derive(Debug, Serialize)]
struct UserDetail {
    company_id: String,
    integration_id: String,
    #[serde(flatten)]
    user: ProvisionedUser,
    activities: Vec<Activity>,
}

/// An accepted activity, as its ledger entry says.
#[derive(Debug, Serialize)]
struct Activity {
    activity_id: String,
    #[serde(flatten)]
    entry: LedgerEntry,
}

async fn user(
    State(status): State<Status>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<UserDetail>, ApiError> {
    let Path((company_id, integration_id, crm_user_id)) = path.map_err(bad_path)?;
    let mut query = parameters(query)?;
    let limit = match query.remove("activities") {
        None => DEFAULT_ACTIVITIES,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n <= MAX_ACTIVITIES => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "activities=`{text}`: use a number from 0 to {MAX_ACTIVITIES}"
                )))
            }
        },
    };
    no_more(query)?;
    blocking(move || {
        status.query(|stores| {
            let views = snapshots(stores);
            let store = integration_store(&views, &company_id, &integration_id)?;
            let user = store.provisioned_user(&company_id, &integration_id, &crm_user_id)?.ok_or_else(|| {
                ApiError::NotFound(format!("CRM user `{crm_user_id}` has no account in integration `{integration_id}`"))
            })?;
            let activities = store
                .activities_of(&company_id, &user.user_id, limit)?
                .into_iter()
                .map(|(activity_id, entry)| Activity { activity_id, entry })
                .collect();
            Ok(Json(UserDetail {
                company_id: company_id.clone(),
                integration_id: integration_id.clone(),
                user,
                activities,
            }))
        })?
    })
    .await
}

async fn activity(
    State(status): State<Status>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path((company_id, integration_id, activity_id)) = path.map_err(bad_path)?;
    no_more(parameters(query)?)?;
    blocking(move || {
        status.query(|stores| {
            let views = snapshots(stores);
            let store = integration_store(&views, &company_id, &integration_id)?;
            let entry = store.activity(&company_id, &activity_id)?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "activity `{activity_id}` is not accepted now (never accepted, or retracted)"
                ))
            })?;
            let activity = Activity { activity_id: activity_id.clone(), entry };
            Ok(Json(json!({ "company_id": company_id, "integration_id": integration_id, "activity": activity })))
        })?
    })
    .await
}

async fn explain(
    State(status): State<Status>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path((company_id, integration_id, object_type, object_id)) = path.map_err(bad_path)?;
    no_more(parameters(query)?)?;
    blocking(move || {
        status.query(|stores| {
            let views = snapshots(stores);
            let store = integration_store(&views, &company_id, &integration_id)?;
            let kept = store.explanation(&company_id, &integration_id, &object_type, &object_id)?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no decision about {object_type} `{object_id}` is kept here: none was made yet, or it is older \
                     than the last `explain_capacity` traces, or it predates this instance's restore of the store"
                ))
            })?;
            Ok(Json(json!({ "explanation": kept.explanation })))
        })?
    })
    .await
}

/// One snapshot of each store: a query reads each store as one committed batch left it.
fn snapshots(stores: &[CommittedView]) -> Vec<CommittedSnapshot<'_>> {
    stores.iter().map(CommittedView::snapshot).collect()
}

/// The store of this instance that holds the company, if the integration is known there.
fn integration_store<'s, 'a>(
    stores: &'s [CommittedSnapshot<'a>],
    company_id: &str,
    integration_id: &str,
) -> Result<&'s CommittedSnapshot<'a>, ApiError> {
    let mut holder = None;
    for store in stores {
        if store.holds_company(company_id)? {
            holder = Some(store);
            break;
        }
    }
    let store = holder.ok_or_else(|| ApiError::UnknownCompany(company_id.to_owned()))?;
    if store.integration(company_id, integration_id)?.is_none() {
        return Err(ApiError::NotFound(format!(
            "integration `{integration_id}` of company `{company_id}` is unknown (no settings or workflows arrived)"
        )));
    }
    Ok(store)
}

/// Runs store work on the blocking pool: RocksDB reads block.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("the query failed: {e}")))?
}

fn bad_path(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

fn parameters(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<BTreeMap<String, String>, ApiError> {
    query.map(|Query(query)| query).map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

/// Refuses parameters the endpoint does not know, rather than ignoring a typo.
fn no_more(query: BTreeMap<String, String>) -> Result<(), ApiError> {
    match query.keys().next() {
        None => Ok(()),
        Some(name) => Err(ApiError::BadRequest(format!("unknown query parameter `{name}`"))),
    }
}
