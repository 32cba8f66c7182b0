//! The Cloud API's template management, as Meta serves it: `POST`, `GET` and `DELETE` on
//! `/{version}/{waba_id}/message_templates`, and `POST /{version}/{template_id}` to edit. The
//! token must be one registered for a number of the business account. A submission is checked
//! the way the network checks it (name, language, category, a body whose parameters run
//! `{{1}}`..`{{n}}`), stored PENDING, and reviewed later (`reviews`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use finestra_cloudapi::templates::{Content, Page, Paging};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sim;
use crate::cloud_api::{bearer, cloud_error, invalid_token, try_again, unknown_version};
use crate::store::{self, NewTemplate, StoreError};

type Answer = (StatusCode, Json<Value>);

const CATEGORIES: [&str; 3] = ["MARKETING", "UTILITY", "AUTHENTICATION"];

fn invalid(details: &str) -> Answer {
    cloud_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", details)
}

/// The request is allowed when its token is one of the business account's numbers'.
async fn authorise(sim: &Sim, headers: &HeaderMap, waba_id: &str) -> Result<(), Answer> {
    let numbers = store::waba_numbers(&sim.pool, sim.network(), waba_id)
        .await
        .map_err(|e| try_again("looking up a business account", &e))?;
    if numbers.is_empty() {
        return Err(invalid("unknown business account id"));
    }
    let token = bearer(headers);
    if numbers
        .iter()
        .any(|n| Some(n.access_token.as_str()) == token)
    {
        Ok(())
    } else {
        Err(invalid_token())
    }
}

/// The content of `components`, checked as the network checks a submission; with the body's
/// parameter count.
fn checked_content(
    name: &str,
    language: &str,
    components: &Value,
) -> Result<(String, i32), Answer> {
    let parts = components
        .as_array()
        .ok_or_else(|| invalid("components must be an array"))?;
    let content = Content::from_components(parts);
    if content.body.trim().is_empty() {
        return Err(invalid("a BODY component with text is required"));
    }
    let params = finestra_domain::template::validate(
        name,
        language,
        &content.body,
        &content.header,
        &content.footer,
    )
    .map_err(|e| invalid(&e.to_string()))?;
    Ok((
        components.to_string(),
        i32::try_from(params).unwrap_or(i32::MAX),
    ))
}

#[derive(Deserialize)]
pub(crate) struct Submission {
    #[serde(default)]
    name: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    components: Value,
}

pub(crate) async fn submit(
    State(sim): State<Arc<Sim>>,
    Path((version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(s): Json<Submission>,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    if let Err(answer) = authorise(&sim, &headers, &waba_id).await {
        return answer;
    }
    let category = s.category.to_ascii_uppercase();
    if !CATEGORIES.contains(&category.as_str()) {
        return invalid("category must be MARKETING, UTILITY or AUTHENTICATION");
    }
    let (components, parameter_count) = match checked_content(&s.name, &s.language, &s.components) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let created = store::create_template(
        &sim.pool,
        sim.network(),
        &NewTemplate {
            waba_id: &waba_id,
            name: &s.name,
            language: &s.language,
            category: &category,
            components: &components,
            parameter_count,
        },
    )
    .await;
    match created {
        Ok(t) => {
            sim.changed();
            metrics::counter!("finestra_simulator_templates_submitted_total").increment(1);
            (
                StatusCode::OK,
                Json(json!({ "id": t.template_id, "status": t.status, "category": t.category })),
            )
        }
        Err(StoreError::Duplicate { name, language }) => invalid(&format!(
            "Content in this language already exists: {name} ({language})"
        )),
        Err(StoreError::Db(e)) => try_again("storing a template", &e),
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: Option<i64>,
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Path((version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    if let Err(answer) = authorise(&sim, &headers, &waba_id).await {
        return answer;
    }
    let limit = q.limit.unwrap_or(25).clamp(1, 100);
    let rows = store::list_templates(
        &sim.pool,
        sim.network(),
        &waba_id,
        q.name.as_deref(),
        &q.after,
        limit + 1,
    )
    .await;
    let mut rows = match rows {
        Ok(rows) => rows,
        Err(e) => return try_again("listing templates", &e),
    };
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut page = Page {
        data: rows.iter().map(store::SimTemplate::listed).collect(),
        paging: None,
    };
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        page.paging = Some(Paging {
            cursors: finestra_cloudapi::templates::Cursors {
                before: first.template_id.clone(),
                after: last.template_id.clone(),
            },
            next: more.then(|| {
                format!(
                    "/{version}/{waba_id}/message_templates?after={}",
                    last.template_id
                )
            }),
        });
    }
    (
        StatusCode::OK,
        Json(serde_json::to_value(page).unwrap_or_default()),
    )
}

pub(crate) async fn delete(
    State(sim): State<Arc<Sim>>,
    Path((version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    if let Err(answer) = authorise(&sim, &headers, &waba_id).await {
        return answer;
    }
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return invalid("name is required");
    };
    let deleted = store::delete_templates(
        &sim.pool,
        sim.network(),
        &waba_id,
        name,
        q.get("hsm_id").map(String::as_str),
    )
    .await;
    match deleted {
        Ok(0) => cloud_error(
            StatusCode::NOT_FOUND,
            100,
            "Invalid parameter",
            "Message template not found",
        ),
        Ok(_) => {
            sim.changed();
            (StatusCode::OK, Json(json!({ "success": true })))
        }
        Err(e) => try_again("deleting templates", &e),
    }
}

#[derive(Deserialize)]
pub(crate) struct Edit {
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    components: Value,
}

/// New content for a submitted template: it goes back to review.
pub(crate) async fn edit(
    State(sim): State<Arc<Sim>>,
    Path((version, template_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(e): Json<Edit>,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    let found = match store::template(&sim.pool, sim.network(), &template_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return cloud_error(
                StatusCode::NOT_FOUND,
                100,
                "Invalid parameter",
                "Message template not found",
            );
        }
        Err(err) => return try_again("looking up a template", &err),
    };
    if let Err(answer) = authorise(&sim, &headers, &found.waba_id).await {
        return answer;
    }
    let category = e.category.map(|c| c.to_ascii_uppercase());
    if let Some(c) = &category
        && !CATEGORIES.contains(&c.as_str())
    {
        return invalid("category must be MARKETING, UTILITY or AUTHENTICATION");
    }
    let (components, parameter_count) =
        match checked_content(&found.name, &found.language, &e.components) {
            Ok(c) => c,
            Err(answer) => return answer,
        };
    let edited = store::edit_template(
        &sim.pool,
        sim.network(),
        &template_id,
        category.as_deref(),
        &components,
        parameter_count,
    )
    .await;
    match edited {
        Ok(Some(_)) => {
            sim.changed();
            (StatusCode::OK, Json(json!({ "success": true })))
        }
        Ok(None) => cloud_error(
            StatusCode::NOT_FOUND,
            100,
            "Invalid parameter",
            "Message template not found",
        ),
        Err(err) => try_again("editing a template", &err),
    }
}
