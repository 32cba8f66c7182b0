//! Template campaigns (docs/rules.md §12), served by dispatch, which owns them: created as a
//! draft, quoted with the send decision's own code, launched (the audience fixed as
//! recipients), run by [`runner::Runner`] at the number's pace, paused, resumed, cancelled,
//! watched and exported.

pub mod audience;
pub mod quote;
pub mod runner;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::campaign::{self as rules, Action, Param, State};
use finestra_domain::contacts as contact_rules;
use finestra_domain::frequency::FrequencyCap;
use finestra_domain::{Clock, Timestamp};
use finestra_platform::Shutdown;
use finestra_platform::auth::{AuthedChannel, Authenticator, Scope};
use finestra_platform::paging;
use finestra_platform::status::{self, Reason, invalid_argument, not_found, required};
use finestra_proto::time::{from_micros, to_micros};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::campaign_service_server::CampaignService;
use finestra_proto::v1::{
    Campaign, CampaignActionRequest, CampaignProgress, CampaignQuote, CampaignRecipient,
    CreateCampaignRequest, GetCampaignRequest, ListCampaignRecipientsRequest,
    ListCampaignRecipientsResponse, ListCampaignsRequest, ListCampaignsResponse,
    QuoteCampaignRequest,
};
use prost::Message as _;
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status};

use crate::facts::Facts;
use audience::Audience;
use store::{CampaignRow, ProgressRow};

/// Most users a campaign names itself (larger audiences are segments).
pub const MAX_USERS: usize = 10_000;
/// Most template parameters.
const MAX_PARAMETERS: usize = 32;
/// How far ahead a campaign may start.
const MAX_AHEAD_MICROS: i64 = 30 * 24 * 3_600 * 1_000_000;
/// How often a watch looks at its campaign.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub struct CampaignsApi {
    pub pool: PgPool,
    pub facts: Facts,
    pub hot: crate::hot::Hot,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
    /// Prices a quote (billing's PriceBatch).
    pub billing: BillingServiceClient<AuthedChannel>,
    /// The frequency cap of a tenant whose partner set none.
    pub marketing_cap: FrequencyCap,
    pub shutdown: Shutdown,
}

/// A campaign's request, checked and read: what the quote and the runner work from.
#[derive(Clone, Debug)]
pub struct Plan {
    pub campaign_id: String,
    pub phone_number_id: String,
    pub template_name: String,
    pub template_language: String,
    pub parameters: Vec<Param>,
    pub audience: Audience,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
}

/// Checks a create request (the number's ownership and the segment are checked by the API)
/// and reads it into a plan; its times are checked against `now` when given (a stored
/// campaign's were checked when it was created).
pub fn plan_of(req: &CreateCampaignRequest, now: Option<Timestamp>) -> Result<Plan, Status> {
    if !crate::contacts::is_client_id(&req.campaign_id) {
        return Err(invalid_argument(
            "campaign_id",
            "an id is 1-64 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if !contact_rules::is_label(&req.name) {
        return Err(invalid_argument(
            "name",
            "a name has at most 256 bytes and no control characters",
        ));
    }
    let phone_number_id = required("phone_number_id", &req.phone_number_id)?;
    let template_name = required("template_name", &req.template_name)?;
    let template_language = required("template_language", &req.template_language)?;
    if req.parameters.len() > MAX_PARAMETERS
        || req
            .parameters
            .iter()
            .any(|p| p.is_empty() || p.len() > 1_024)
    {
        return Err(invalid_argument(
            "parameters",
            format!("at most {MAX_PARAMETERS} parameters, each 1 to 1,024 bytes"),
        ));
    }
    let audience = match (req.segment_id.is_empty(), &req.filter, req.users.is_empty()) {
        (false, None, true) => Audience::Segment(req.segment_id.clone()),
        (true, Some(f), true) => Audience::Filter(crate::contacts::filter_of(f)?),
        (true, None, false) => {
            if req.users.len() > MAX_USERS {
                return Err(invalid_argument(
                    "users",
                    format!("at most {MAX_USERS} users; a larger audience is a segment"),
                ));
            }
            let mut users = req
                .users
                .iter()
                .map(|u| crate::contacts::user_key("users", u, ""))
                .collect::<Result<Vec<_>, _>>()?;
            users.sort_unstable();
            users.dedup();
            Audience::Users(users)
        }
        _ => {
            return Err(invalid_argument(
                "segment_id",
                "exactly one of segment_id, filter and users names the audience",
            ));
        }
    };
    let start_at = req.start_at.as_ref().map(to_micros);
    let end_at = req.end_at.as_ref().map(to_micros);
    if let Some(now) = now.map(Timestamp::micros) {
        if start_at.is_some_and(|s| s > now + MAX_AHEAD_MICROS) {
            return Err(invalid_argument(
                "start_at",
                "a campaign starts at most 30 days ahead",
            ));
        }
        if let Some(end) = end_at
            && end <= start_at.unwrap_or(now).max(now)
        {
            return Err(invalid_argument(
                "end_at",
                "the end time is after the start time and after now",
            ));
        }
    }
    Ok(Plan {
        campaign_id: req.campaign_id.clone(),
        phone_number_id: phone_number_id.to_owned(),
        template_name: template_name.to_owned(),
        template_language: template_language.to_owned(),
        parameters: rules::parse_params(&req.parameters),
        audience,
        start_at,
        end_at,
    })
}

/// A stored campaign's plan (it was checked when created).
pub fn stored_plan(request: &[u8]) -> Result<Plan, Status> {
    let req = CreateCampaignRequest::decode(request)
        .map_err(|e| status::internal("decoding a campaign", &e))?;
    plan_of(&req, None)
}

/// A campaign's progress from its recipients grouped by state, reason and message status.
pub fn progress_of(rows: &[ProgressRow]) -> CampaignProgress {
    let mut p = CampaignProgress::default();
    for r in rows {
        p.recipients += r.recipients;
        match r.state.as_str() {
            "QUEUED" => p.queued += r.recipients,
            "EXCLUDED" => {
                p.excluded_total += r.recipients;
                *p.excluded.entry(r.reason.clone()).or_default() += r.recipients;
            }
            _ => {
                p.accepted += r.recipients;
                let status = r.status.as_deref().unwrap_or("ACCEPTED");
                match status {
                    "SENT" => p.sent += r.recipients,
                    "DELIVERED" => {
                        p.sent += r.recipients;
                        p.delivered += r.recipients;
                    }
                    "READ" => {
                        p.sent += r.recipients;
                        p.delivered += r.recipients;
                        p.read += r.recipients;
                    }
                    "FAILED" => p.failed += r.recipients,
                    _ => {}
                }
                // The network charges a template when it is delivered; until then its price
                // is held reserved, and a failed one is released.
                match status {
                    "DELIVERED" | "READ" => p.cost_micros += r.price_micros,
                    "ACCEPTED" | "SENT" => p.reserved_micros += r.price_micros,
                    _ => {}
                }
                if let Some(c) = &r.currency
                    && !c.is_empty()
                {
                    p.currency.clone_from(c);
                }
            }
        }
    }
    p
}

fn campaign_of(
    tenant_id: &str,
    row: &CampaignRow,
    progress: Option<CampaignProgress>,
) -> Result<Campaign, Status> {
    let req = CreateCampaignRequest::decode(row.request.as_slice())
        .map_err(|e| status::internal("decoding a campaign", &e))?;
    Ok(Campaign {
        tenant_id: tenant_id.to_owned(),
        campaign_id: row.campaign_id.clone(),
        name: req.name,
        phone_number_id: row.phone_number_id.clone(),
        template_name: row.template_name.clone(),
        template_language: row.template_language.clone(),
        parameters: req.parameters,
        segment_id: req.segment_id,
        filter: req.filter,
        users: req.users,
        start_at: row.start_at.map(from_micros),
        end_at: row.end_at.map(from_micros),
        state: row.state.clone(),
        state_reason: row.state_reason.clone(),
        progress,
        created_at: Some(from_micros(row.created_at)),
        launched_at: row.launched_at.map(from_micros),
        finished_at: row.finished_at.map(from_micros),
    })
}

impl CampaignsApi {
    async fn row(&self, tenant_id: &str, campaign_id: &str) -> Result<CampaignRow, Status> {
        row(&self.pool, tenant_id, campaign_id).await
    }

    async fn campaign(&self, tenant_id: &str, row: &CampaignRow) -> Result<Campaign, Status> {
        with_progress(&self.pool, tenant_id, row).await
    }

    /// Makes `action`; repeating the move a campaign just made answers it again.
    async fn act(&self, req: &CampaignActionRequest, action: Action) -> Result<Campaign, Status> {
        let now = self.clock.now();
        for _ in 0..3 {
            let row = self.row(&req.tenant_id, &req.campaign_id).await?;
            let from = State::parse(&row.state)
                .ok_or_else(|| Status::internal("a campaign in an unknown state"))?;
            let to = from.after(action).map_err(|e| {
                status::with_reason(
                    Code::FailedPrecondition,
                    Reason::InvalidTransition,
                    e.to_string(),
                    &[
                        ("campaign_id", req.campaign_id.as_str()),
                        ("state", from.as_str()),
                    ],
                )
            })?;
            if to == from {
                return self.campaign(&req.tenant_id, &row).await;
            }
            let reason = if to == State::Paused {
                "PAUSED_BY_TENANT"
            } else {
                ""
            };
            let moved = if action == Action::Launch {
                self.launch(&req.tenant_id, &row, now).await?
            } else {
                store::set_state(
                    &self.pool,
                    &req.tenant_id,
                    &req.campaign_id,
                    &[from.as_str()],
                    to.as_str(),
                    reason,
                    now.micros(),
                )
                .await
                .map_err(|e| status::store("moving a campaign", &e))?
            };
            if moved {
                metrics::counter!("finestra_dispatch_campaign_moves_total", "to" => to.as_str())
                    .increment(1);
                let row = self.row(&req.tenant_id, &req.campaign_id).await?;
                return self.campaign(&req.tenant_id, &row).await;
            }
            // Another call or the runner moved it meanwhile: decide again on what it is now.
        }
        Err(status::with_reason(
            Code::Aborted,
            Reason::InProgress,
            "the campaign is changing; try again",
            &[("campaign_id", req.campaign_id.as_str())],
        ))
    }

    /// DRAFT → RUNNING with its audience fixed, in one transaction.
    async fn launch(
        &self,
        tenant_id: &str,
        row: &CampaignRow,
        now: Timestamp,
    ) -> Result<bool, Status> {
        let plan = stored_plan(&row.request)?;
        self.sendable_template(tenant_id, &plan, now).await?;
        let store_error = |e: sqlx::Error| status::store("launching a campaign", &e);
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let moved = store::set_state(
            &mut *tx,
            tenant_id,
            &row.campaign_id,
            &["DRAFT"],
            "RUNNING",
            "",
            now.micros(),
        )
        .await
        .map_err(store_error)?;
        if !moved {
            return Ok(false);
        }
        let added = audience::fix(
            &mut tx,
            &self.pool,
            tenant_id,
            &row.campaign_id,
            &plan.audience,
            now,
        )
        .await?;
        tx.commit().await.map_err(store_error)?;
        metrics::counter!("finestra_dispatch_campaign_recipients_total").increment(added);
        Ok(true)
    }

    async fn tenants_number(&self, tenant_id: &str, phone_number_id: &str) -> Result<(), Status> {
        match self
            .facts
            .number(phone_number_id)
            .await
            .map_err(|e| status::store("reading a number", &e))?
        {
            Some(n) if n.tenant_id == tenant_id => Ok(()),
            _ => Err(not_found("phone_number_id", phone_number_id)),
        }
    }
}

#[tonic::async_trait]
impl CampaignService for CampaignsApi {
    async fn create_campaign(
        &self,
        request: Request<CreateCampaignRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        let now = self.clock.now();
        let plan = plan_of(&req, Some(now))?;
        self.tenants_number(&req.tenant_id, &plan.phone_number_id)
            .await?;
        if let Audience::Segment(id) = &plan.audience {
            crate::contacts::saved_filter(&self.pool, &req.tenant_id, id).await?;
        }
        let request = req.encode_to_vec();
        let created = store::create(
            &self.pool,
            &store::NewCampaign {
                tenant_id: &req.tenant_id,
                campaign_id: &plan.campaign_id,
                phone_number_id: &plan.phone_number_id,
                template_name: &plan.template_name,
                template_language: &plan.template_language,
                request: &request,
                start_at: plan.start_at,
                end_at: plan.end_at,
                now: now.micros(),
            },
        )
        .await
        .map_err(|e| status::store("creating a campaign", &e))?;
        let row = self.row(&req.tenant_id, &plan.campaign_id).await?;
        if !created && row.request != request {
            return Err(status::with_reason(
                Code::AlreadyExists,
                Reason::IdempotencyConflict,
                "this campaign_id names another campaign",
                &[("campaign_id", plan.campaign_id.as_str())],
            ));
        }
        Ok(Response::new(self.campaign(&req.tenant_id, &row).await?))
    }

    async fn get_campaign(
        &self,
        request: Request<GetCampaignRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let row = self.row(&req.tenant_id, &req.campaign_id).await?;
        Ok(Response::new(self.campaign(&req.tenant_id, &row).await?))
    }

    async fn list_campaigns(
        &self,
        request: Request<ListCampaignsRequest>,
    ) -> Result<Response<ListCampaignsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let rows = store::list(&self.pool, &req.tenant_id, &after, size + 1)
            .await
            .map_err(|e| status::store("listing campaigns", &e))?;
        let (page, next_page_token) = paging::paginate(rows, size, |r| &r.campaign_id);
        let mut campaigns = Vec::with_capacity(page.len());
        for row in &page {
            campaigns.push(self.campaign(&req.tenant_id, row).await?);
        }
        Ok(Response::new(ListCampaignsResponse {
            campaigns,
            next_page_token,
        }))
    }

    async fn quote_campaign(
        &self,
        request: Request<QuoteCampaignRequest>,
    ) -> Result<Response<CampaignQuote>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let row = self.row(&req.tenant_id, &req.campaign_id).await?;
        let plan = stored_plan(&row.request)?;
        let started = std::time::Instant::now();
        let quote = self.quote(&req.tenant_id, &plan, req.detail).await?;
        metrics::histogram!("finestra_dispatch_campaign_quote_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(quote))
    }

    async fn launch_campaign(
        &self,
        request: Request<CampaignActionRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        Ok(Response::new(self.act(&req, Action::Launch).await?))
    }

    async fn pause_campaign(
        &self,
        request: Request<CampaignActionRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        Ok(Response::new(self.act(&req, Action::Pause).await?))
    }

    async fn resume_campaign(
        &self,
        request: Request<CampaignActionRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        Ok(Response::new(self.act(&req, Action::Resume).await?))
    }

    async fn cancel_campaign(
        &self,
        request: Request<CampaignActionRequest>,
    ) -> Result<Response<Campaign>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        Ok(Response::new(self.act(&req, Action::Cancel).await?))
    }

    type WatchCampaignStream = tokio_stream::wrappers::ReceiverStream<Result<Campaign, Status>>;

    async fn watch_campaign(
        &self,
        request: Request<GetCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let row = self.row(&req.tenant_id, &req.campaign_id).await?;
        let first = self.campaign(&req.tenant_id, &row).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let pool = self.pool.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !State::parse(&last.state).is_some_and(State::is_final) {
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let now = match watched(&pool, &req.tenant_id, &req.campaign_id).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if now != last {
                    if tx.send(Ok(now.clone())).await.is_err() {
                        return;
                    }
                    last = now;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn list_campaign_recipients(
        &self,
        request: Request<ListCampaignRecipientsRequest>,
    ) -> Result<Response<ListCampaignRecipientsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        self.row(&req.tenant_id, &req.campaign_id).await?;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let rows = store::recipients(
            &self.pool,
            &req.tenant_id,
            &req.campaign_id,
            &after,
            size + 1,
        )
        .await
        .map_err(|e| status::store("listing a campaign's recipients", &e))?;
        let (page, next_page_token) = paging::paginate(rows, size, |r| &r.user_key);
        Ok(Response::new(ListCampaignRecipientsResponse {
            recipients: page
                .into_iter()
                .map(|r| CampaignRecipient {
                    user: r.user_key,
                    state: r.state,
                    reason: r.reason,
                    message_id: r.message_id.unwrap_or_default(),
                    status: r.status.unwrap_or_default(),
                    price_micros: r.price_micros,
                    free: r.free,
                    failure_reason: r.failure_reason.unwrap_or_default(),
                })
                .collect(),
            next_page_token,
        }))
    }
}

async fn row(pool: &PgPool, tenant_id: &str, campaign_id: &str) -> Result<CampaignRow, Status> {
    store::get(pool, tenant_id, campaign_id)
        .await
        .map_err(|e| status::store("reading a campaign", &e))?
        .ok_or_else(|| not_found("campaign_id", campaign_id))
}

/// The campaign with its progress once launched.
async fn with_progress(
    pool: &PgPool,
    tenant_id: &str,
    row: &CampaignRow,
) -> Result<Campaign, Status> {
    let progress = if let Some(launched_at) = row.launched_at {
        let rows = store::progress(pool, tenant_id, &row.campaign_id, launched_at)
            .await
            .map_err(|e| status::store("reading a campaign's progress", &e))?;
        Some(progress_of(&rows))
    } else {
        None
    };
    campaign_of(tenant_id, row, progress)
}

/// The campaign as a watch sends it.
async fn watched(pool: &PgPool, tenant_id: &str, campaign_id: &str) -> Result<Campaign, Status> {
    with_progress(pool, tenant_id, &row(pool, tenant_id, campaign_id).await?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, reason: &str, status: Option<&str>, n: i64, price: i64) -> ProgressRow {
        ProgressRow {
            state: state.into(),
            reason: reason.into(),
            status: status.map(Into::into),
            recipients: n,
            price_micros: price,
            currency: status.map(|_| "EUR".to_owned()),
        }
    }

    #[test]
    fn progress_counts_each_status_in_every_stage_it_passed() {
        let p = progress_of(&[
            row("QUEUED", "", None, 5, 0),
            row("EXCLUDED", "USER_BLOCKED", None, 2, 0),
            row("EXCLUDED", "NO_OPT_IN", None, 1, 0),
            row("ACCEPTED", "", Some("ACCEPTED"), 3, 90),
            row("ACCEPTED", "", Some("SENT"), 1, 30),
            row("ACCEPTED", "", Some("DELIVERED"), 4, 120),
            row("ACCEPTED", "", Some("READ"), 2, 60),
            row("ACCEPTED", "", Some("FAILED"), 1, 30),
        ]);
        assert_eq!(p.recipients, 19);
        assert_eq!(p.queued, 5);
        assert_eq!(p.accepted, 11);
        assert_eq!((p.sent, p.delivered, p.read, p.failed), (7, 6, 2, 1));
        assert_eq!(p.excluded_total, 3);
        assert_eq!(p.excluded["USER_BLOCKED"], 2);
        assert_eq!(p.cost_micros, 180, "delivered and read are charged");
        assert_eq!(p.reserved_micros, 120, "accepted and sent are held");
        assert_eq!(p.currency, "EUR");
    }

    #[test]
    fn a_plan_needs_one_audience_and_sane_times() {
        let now = Timestamp::from_secs(1_764_000_000);
        let base = CreateCampaignRequest {
            tenant_id: "t".into(),
            campaign_id: "spring-1".into(),
            phone_number_id: "pn".into(),
            template_name: "offer".into(),
            template_language: "it".into(),
            parameters: vec!["{{name}}".into()],
            users: vec![
                "+39 347 000 0002".into(),
                "393470000001".into(),
                "393470000002".into(),
            ],
            ..CreateCampaignRequest::default()
        };
        let plan = plan_of(&base, Some(now)).expect("valid");
        match plan.audience {
            Audience::Users(u) => assert_eq!(u, vec!["393470000001", "393470000002"]),
            other => panic!("{other:?}"),
        }
        let both = CreateCampaignRequest {
            segment_id: "vip".into(),
            ..base.clone()
        };
        assert_eq!(
            plan_of(&both, Some(now)).unwrap_err().code(),
            Code::InvalidArgument
        );
        let none = CreateCampaignRequest {
            users: vec![],
            ..base.clone()
        };
        assert_eq!(
            plan_of(&none, Some(now)).unwrap_err().code(),
            Code::InvalidArgument
        );
        let bad_id = CreateCampaignRequest {
            campaign_id: "a b".into(),
            ..base.clone()
        };
        assert_eq!(
            plan_of(&bad_id, Some(now)).unwrap_err().code(),
            Code::InvalidArgument
        );
        let ends_before_start = CreateCampaignRequest {
            start_at: Some(from_micros(now.micros() + 10_000_000)),
            end_at: Some(from_micros(now.micros() + 5_000_000)),
            ..base.clone()
        };
        assert_eq!(
            plan_of(&ends_before_start, Some(now)).unwrap_err().code(),
            Code::InvalidArgument
        );
        let far = CreateCampaignRequest {
            start_at: Some(from_micros(now.micros() + MAX_AHEAD_MICROS + 1)),
            ..base
        };
        assert_eq!(
            plan_of(&far, Some(now)).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
