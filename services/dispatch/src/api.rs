//! The tenant-facing gRPC API: SendMessage (docs/rules.md §2's checks in order, then the tier
//! limit, then acceptance), GetMessage and ListMessages.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::fairness::{RateLimit, ShareRefusal};
use finestra_domain::send::{self, Facts as SendFacts, Outgoing, Refusal};
use finestra_domain::{Clock, Timestamp};
use finestra_platform::auth::{Authenticator, Scope};
use finestra_platform::paging;
use finestra_platform::status::Reason;
use finestra_platform::status::{
    self, invalid_argument, not_found, required, with_reason, with_reason_and_retry,
};
use finestra_proto::v1;
use finestra_proto::v1::dispatch_service_server::DispatchService;
use finestra_proto::v1::{
    CreateWebhookRequest, DeleteWebhookRequest, GetMessageRequest, ListDeadLettersRequest,
    ListDeadLettersResponse, ListMessagesRequest, ListMessagesResponse, ListWebhooksRequest,
    ListWebhooksResponse, Message, RedriveRequest, RedriveResponse, RotateWebhookSecretRequest,
    SendMessageRequest, SendMessageResponse, SendMessagesRequest, SendMessagesResponse,
    StreamEventsRequest, TenantEvent, Webhook,
};
use futures::StreamExt as _;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

use crate::accept::{Accepted, Acceptor, Pending, Refused};
use crate::admission::{self, Admission};
use crate::batch;
use crate::content;
use crate::facts::Facts;
use crate::hot::{Claim, Hot, TierVerdict};
use crate::pg::{self, MessageRow, NewMessage};
use crate::tenant_api;

/// The tier's rolling window (docs/rules.md §5).
pub(crate) const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;
const MAX_KEY_CHARS: usize = 128;

/// The request's idempotency key: required, at most MAX_KEY_CHARS characters.
fn idempotency_key(req: &SendMessageRequest) -> Result<String, Status> {
    let key = required("idempotency_key", &req.idempotency_key)?;
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(invalid_argument(
            "idempotency_key",
            format!("idempotency_key is longer than {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(key.to_owned())
}

pub struct DispatchApi {
    /// Sends being decided at once, shared by weight among the tenants sending (a tenant over
    /// its share is refused TENANT_RATE_LIMITED at once, everyone beyond the reserve
    /// BACKLOG_FULL) instead of queueing until every store times out.
    pub admission: Arc<Admission>,
    /// Woken when tenant events were recorded (streams wait on it).
    pub recorded: Arc<tokio::sync::Notify>,
    pub shutdown: finestra_platform::Shutdown,
    pub producer: rdkafka::producer::FutureProducer,
    pub outbound_topic: String,
    pub facts: Facts,
    pub hot: Hot,
    pub acceptor: Acceptor,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
    /// How long a repeated key waits for the first request with it to finish.
    pub replay_wait: Duration,
    /// The tasks requests leave behind (key bookkeeping, event streams): the drain waits
    /// for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// The network, for what a tenant asks of it beside sending (read receipts, blocks).
    pub provider: Arc<dyn finestra_provider::Provider>,
    /// Where files users sent are kept once fetched.
    pub media_store: Arc<dyn crate::media_store::MediaStore>,
    /// The marketing frequency cap of a tenant whose partner set none.
    pub marketing_cap: finestra_domain::frequency::FrequencyCap,
}

fn refusal_status(r: &Refusal, message_id: &str) -> Status {
    finestra_platform::status::refusal(r, &[("message_id", message_id)])
}

fn conflict(message_id: &str) -> Status {
    with_reason(
        Code::AlreadyExists,
        Reason::IdempotencyConflict,
        "this idempotency_key was used with a different request",
        &[("message_id", message_id)],
    )
}

/// Whether a recipient may name a Redis key or a Postgres row: a user key that is not a
/// plausible number never reaches the stores' key space.
fn plausible_user_key(recipient: &str) -> bool {
    !recipient.is_empty() && recipient.len() <= 32
}

/// A tenant over its rate or its share: refused at once, told when to come back.
fn tenant_rate_limited(tenant_id: &str, why: &str, retry_after: Duration) -> Status {
    admission::count(tenant_id, "refused");
    metrics::counter!("finestra_dispatch_refused_total", "reason" => "TENANT_RATE_LIMITED")
        .increment(1);
    with_reason_and_retry(
        Code::ResourceExhausted,
        Reason::TenantRateLimited,
        format!("{why}; retry with the same idempotency key after the RetryInfo delay"),
        &[("tenant_id", tenant_id)],
        retry_after,
    )
}

fn ts(micros: Option<i64>) -> Option<prost_types::Timestamp> {
    micros.map(finestra_proto::time::from_micros)
}

pub fn to_message(r: MessageRow) -> Message {
    Message {
        message_id: r.message_id,
        tenant_id: r.tenant_id,
        phone_number_id: r.phone_number_id,
        to: r.recipient,
        kind: r.kind,
        template_name: r.template_name,
        category: r.category,
        status: r.status,
        failure_reason: r.failure_reason,
        provider_error_code: r.error_code,
        provider_error_title: r.error_title,
        provider_message_id: r.provider_message_id.unwrap_or_default(),
        price_micros: r.price_micros,
        free: r.free,
        free_reason: r.free_reason,
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        accepted_at: ts(Some(r.accepted_at)),
        sent_at: ts(r.sent_at),
        delivered_at: ts(r.delivered_at),
        read_at: ts(r.read_at),
        failed_at: ts(r.failed_at),
        idempotency_key: r.idempotency_key,
    }
}

fn replayed(r: &MessageRow) -> SendMessageResponse {
    SendMessageResponse {
        message_id: r.message_id.clone(),
        status: r.status.clone(),
        replayed: true,
        price_micros: r.price_micros,
        currency: r.currency.clone(),
        free: r.free,
        free_reason: r.free_reason.clone(),
        category: r.category.clone(),
    }
}

impl DispatchApi {
    fn store_error(&self, context: &str, e: &dyn status::StoreFailure) -> Status {
        status::store(context, e)
    }

    /// The stored message of a key, compared with this request.
    async fn existing(
        &self,
        tenant_id: &str,
        message_id: &str,
        hash: &[u8],
    ) -> Result<Option<SendMessageResponse>, Status> {
        let row = pg::get(self.facts.pool(), tenant_id, message_id)
            .await
            .map_err(|e| self.store_error("reading a message", &e))?;
        match row {
            Some(r) if r.request_hash == hash => {
                if r.status == "ACCEPTED" {
                    self.requeue(tenant_id, message_id).await?;
                }
                Ok(Some(replayed(&r)))
            }
            Some(_) => Err(conflict(message_id)),
            None => Ok(None),
        }
    }

    async fn requeue(&self, tenant_id: &str, message_id: &str) -> Result<(), Status> {
        let Some(m) = pg::outbound_of(self.facts.pool(), tenant_id, message_id)
            .await
            .map_err(|e| self.store_error("reading a message", &e))?
        else {
            return Ok(());
        };
        crate::accept::requeue(&self.producer, &self.outbound_topic, &m)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "queueing a message again failed");
                Status::unavailable("the broker did not take the message; retry")
            })
    }

    /// Another request with this key is in flight: wait for its message (or for it to be
    /// refused, which frees the key).
    async fn wait_for_first(
        &self,
        tenant_id: &str,
        message_id: &str,
        hash: &[u8],
    ) -> Result<Option<SendMessageResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.replay_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(found) = self.existing(tenant_id, message_id, hash).await? {
                return Ok(Some(found));
            }
            match self.hot.claim(tenant_id, message_id, hash).await {
                Ok(Claim::New) => return Ok(None),
                Ok(Claim::Conflict) => return Err(conflict(message_id)),
                Ok(Claim::Same) => {}
                Err(e) => return Err(self.store_error("claiming an idempotency key", &e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(with_reason(
                    Code::Aborted,
                    Reason::InProgress,
                    "a request with this idempotency_key is still in progress; retry",
                    &[("message_id", message_id)],
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn tier(
        &self,
        tenant_id: &str,
        user: &str,
        now: Timestamp,
    ) -> Result<TierVerdict, Status> {
        let limit = self
            .facts
            .tier(tenant_id)
            .await
            .map_err(|e| self.store_error("reading the tier", &e))?;
        for _ in 0..3 {
            let verdict = self
                .hot
                .tier_admit(tenant_id, user, limit, now.micros())
                .await
                .map_err(|e| self.store_error("counting the tier", &e))?;
            if verdict != TierVerdict::NotLoaded {
                return Ok(verdict);
            }
            let users = pg::business_initiated_users(
                self.facts.pool(),
                tenant_id,
                now.micros() - DAY_MICROS,
            )
            .await
            .map_err(|e| self.store_error("rebuilding the tier", &e))?;
            self.hot
                .tier_load(tenant_id, &users)
                .await
                .map_err(|e| self.store_error("rebuilding the tier", &e))?;
        }
        Err(Status::unavailable("the tier counter could not be loaded"))
    }

    /// Counts a marketing template under the tenant's frequency cap (rebuilding the user's
    /// count from Postgres when Redis lost it).
    async fn frequency(
        &self,
        tenant_id: &str,
        user: &str,
        message_id: &str,
        now: Timestamp,
    ) -> Result<TierVerdict, Status> {
        let cap = self
            .facts
            .frequency_cap(tenant_id, self.marketing_cap)
            .await
            .map_err(|e| self.store_error("reading the frequency cap", &e))?;
        for _ in 0..3 {
            let verdict = self
                .hot
                .cap_admit(tenant_id, user, message_id, cap, now)
                .await
                .map_err(|e| self.store_error("counting the frequency cap", &e))?;
            if verdict != TierVerdict::NotLoaded {
                return Ok(verdict);
            }
            let sends = pg::marketing_sends(self.facts.pool(), tenant_id, user, cap.cutoff(now))
                .await
                .map_err(|e| self.store_error("rebuilding the frequency cap", &e))?;
            self.hot
                .cap_load(tenant_id, user, &sends, cap)
                .await
                .map_err(|e| self.store_error("rebuilding the frequency cap", &e))?;
        }
        Err(Status::unavailable("the frequency cap could not be loaded"))
    }

    /// Takes a refused marketing send out of its user's frequency count.
    async fn forget_marketing(&self, tenant_id: &str, user: &str, message_id: &str) {
        if let Err(e) = self.hot.cap_forget(tenant_id, user, message_id).await {
            tracing::warn!(error = %e, "taking a refused send out of the frequency cap failed");
        }
    }

    /// A send Finestra makes for a tenant itself (an opt-out answer): decided exactly as the
    /// tenant's own SendMessage.
    pub(crate) async fn send_internal(
        &self,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse, Status> {
        self.send_one(req).await
    }

    /// One SendMessage after authorization: the tenant's admission share, then the send
    /// (or, with a later `send_at`, its keeping for the scheduler).
    async fn send_one(&self, req: SendMessageRequest) -> Result<SendMessageResponse, Status> {
        if let Some(at) = self.send_time(&req).await? {
            return self.schedule(req, at).await;
        }
        let own = self
            .facts
            .limits(&req.tenant_id)
            .await
            .map_err(|e| self.store_error("reading a tenant's limits", &e))?;
        let limits = self.admission.effective(own);
        let _ticket = match self.admission.enter(&req.tenant_id, limits.weight).await {
            Ok(ticket) => ticket,
            Err(ShareRefusal::OverShare) => {
                return Err(tenant_rate_limited(
                    &req.tenant_id,
                    "the tenant holds its whole share of dispatch while other tenants send",
                    self.admission.settings.retry_over_share,
                ));
            }
            Err(ShareRefusal::Full) => {
                admission::count(&req.tenant_id, "refused");
                metrics::counter!("finestra_dispatch_refused_total", "reason" => "BACKLOG_FULL")
                    .increment(1);
                return Err(with_reason_and_retry(
                    Code::ResourceExhausted,
                    Reason::BacklogFull,
                    "dispatch is at capacity; retry with the same idempotency key shortly",
                    &[],
                    self.admission.settings.retry_over_share,
                ));
            }
        };
        let started = std::time::Instant::now();
        let tenant_id = req.tenant_id.clone();
        let answer = self.send(req, limits.rate()).await;
        if answer.is_ok() {
            admission::count(&tenant_id, "admitted");
        }
        metrics::histogram!("finestra_dispatch_send_seconds")
            .record(started.elapsed().as_secs_f64());
        answer
    }

    /// When the request asks to be sent later (docs/rules.md §2); `None`: now. A local time
    /// reads the recipient's contact for its time zone.
    async fn send_time(&self, req: &SendMessageRequest) -> Result<Option<i64>, Status> {
        let zone = if req.send_at_local.is_empty() {
            String::new()
        } else {
            let recipient = content::recipient(&req.to);
            let contact = crate::contacts::store::get_many(
                self.facts.pool(),
                &req.tenant_id,
                &[recipient.to_owned()],
            )
            .await
            .map_err(|e| self.store_error("reading the recipient's contact", &e))?;
            let attributes = contact.first().map(|c| c.attributes()).unwrap_or_default();
            crate::scheduled::recipient_zone(
                attributes.get("time_zone").map(String::as_str),
                recipient,
            )
        };
        crate::scheduled::scheduled_for(req, &zone, self.clock.now())
    }

    /// Checks what can be checked now (the number is the tenant's, the key, the content) and
    /// keeps the message for its time; the rules are decided when it goes.
    async fn schedule(
        &self,
        req: SendMessageRequest,
        send_at: i64,
    ) -> Result<SendMessageResponse, Status> {
        let number_id = required("phone_number_id", &req.phone_number_id)?;
        let key = idempotency_key(&req)?;
        let number = self
            .facts
            .number(number_id)
            .await
            .map_err(|e| self.store_error("reading a number", &e))?;
        if number.is_none_or(|n| n.tenant_id != req.tenant_id) {
            return Err(status::not_found("phone_number_id", number_id));
        }
        content::parse(&req)
            .map_err(|e| with_reason(Code::InvalidArgument, Reason::InvalidMessage, e.0, &[]))?;
        let message_id = content::message_id(&req.tenant_id, &key);
        crate::scheduled::schedule(
            self.facts.pool(),
            req,
            &message_id,
            send_at,
            self.clock.now(),
        )
        .await
    }

    async fn send(
        &self,
        req: SendMessageRequest,
        rate: RateLimit,
    ) -> Result<SendMessageResponse, Status> {
        let tenant_id = req.tenant_id.clone();
        let number_id = required("phone_number_id", &req.phone_number_id)?.to_owned();
        let key = idempotency_key(&req)?;
        let recipient = content::recipient(&req.to).to_owned();
        let parsed = content::parse(&req)
            .map_err(|e| with_reason(Code::InvalidArgument, Reason::InvalidMessage, e.0, &[]))?;
        let message_id = content::message_id(&tenant_id, &key);
        let hash = content::request_hash(&req);

        // The pair's window comes with the claim (one round trip).
        let pair =
            plausible_user_key(&recipient).then_some((number_id.as_str(), recipient.as_str()));
        let (claim, prefetched) = match self
            .hot
            .admit_and_claim(&tenant_id, &message_id, &hash, rate, pair)
            .await
            .map_err(|e| self.store_error("claiming an idempotency key", &e))?
        {
            crate::hot::Admitted::Claimed(claim, window) => (claim, window),
            crate::hot::Admitted::RateLimited { wait_micros } => {
                return Err(tenant_rate_limited(
                    &tenant_id,
                    "the tenant is over its SendMessage rate",
                    Duration::from_micros(u64::try_from(wait_micros).unwrap_or(1)),
                ));
            }
        };
        match claim {
            Claim::Conflict => return Err(conflict(&message_id)),
            Claim::Same => {
                if let Some(found) = self.wait_for_first(&tenant_id, &message_id, &hash).await? {
                    return Ok(found);
                }
            }
            // A new claim: decided afresh. Should Redis have lost an older claim, the stored
            // message still answers: the insert finds it (Accepted::Existing), and a refusal
            // looks for it below before it is returned.
            Claim::New => {}
        }
        let mut outcome = self
            .decide_and_accept(
                &req,
                &parsed,
                &recipient,
                prefetched,
                &number_id,
                &key,
                &message_id,
                &hash,
            )
            .await;
        if outcome.is_err()
            && let Some(found) = self.existing(&tenant_id, &message_id, &hash).await?
        {
            outcome = Ok(found);
        }
        // Off the request path: the Postgres row is the durable answer either way, and a lease
        // left behind expires by itself.
        if outcome.is_ok() {
            // The key answers this message for a day.
            self.hot.confirm(&tenant_id, &message_id);
        } else {
            // Nothing was sent: the key is free for a retry to be decided afresh.
            let hot = self.hot.clone();
            self.tasks.spawn(async move {
                if let Err(e) = hot.unclaim(&tenant_id, &message_id).await {
                    tracing::warn!(error = %e, "freeing an idempotency key in Redis failed");
                }
            });
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide_and_accept(
        &self,
        req: &SendMessageRequest,
        parsed: &content::Parsed,
        recipient: &str,
        prefetched: crate::hot::HotWindow,
        number_id: &str,
        key: &str,
        message_id: &str,
        hash: &[u8],
    ) -> Result<SendMessageResponse, Status> {
        let tenant_id = req.tenant_id.as_str();
        let tenant_active = self
            .facts
            .tenant(tenant_id)
            .await
            .map_err(|e| self.store_error("reading a tenant", &e))?
            .is_some_and(|t| t.active);
        let number = self
            .facts
            .number(number_id)
            .await
            .map_err(|e| self.store_error("reading a number", &e))?;
        let number_active = number
            .as_ref()
            .is_some_and(|n| n.tenant_id == tenant_id && n.active);
        let now = self.clock.now();
        let mut window = if number_active && plausible_user_key(recipient) {
            self.hot
                .window_after_claim(
                    prefetched,
                    self.facts.pool(),
                    tenant_id,
                    number_id,
                    recipient,
                )
                .await
                .map_err(|e| self.store_error("reading the window", &e))?
        } else {
            finestra_domain::WindowState::default()
        };
        // A free-form message the window service would refuse may answer a user message the
        // tenant was already told of (dispatch's event log runs ahead of the window service by
        // up to a batch): that message opened the window, whatever the window service says yet.
        if number_active
            && matches!(parsed.outgoing, Outgoing::FreeForm(_))
            && !window.is_open(now)
            && let Ok(user) = finestra_domain::UserKey::from_parts(recipient, "")
        {
            let wrote = crate::events::newest_inbound(
                self.facts.pool(),
                tenant_id,
                number_id,
                user.as_str(),
                now.micros(),
            )
            .await
            .map_err(|e| self.store_error("reading the user's last message", &e))?;
            if let Some(at) = wrote {
                window.on_user_message(Timestamp::from_micros(at), "", false, now);
            }
        }
        let contact = if number_active {
            self.facts
                .contact(tenant_id, recipient)
                .await
                .map_err(|e| self.store_error("reading the tenant's contacts", &e))?
        } else {
            crate::facts::ContactFacts::default()
        };
        let template = match &parsed.outgoing {
            Outgoing::Template { name, language, .. } if number_active => self
                .facts
                .template(tenant_id, name, language)
                .await
                .map_err(|e| self.store_error("reading a template", &e))?,
            _ => None,
        };
        let admitted = send::admit(
            &parsed.outgoing,
            &SendFacts {
                tenant_active,
                number_active,
                recipient: &req.to,
                window: &window,
                tenant_blocked: contact.blocked,
                tenant_opted_out: contact.opted_out,
                template,
                now,
            },
        )
        .map_err(|r| {
            metrics::counter!("finestra_dispatch_refused_total", "reason" => r.reason())
                .increment(1);
            refusal_status(&r, message_id)
        })?;
        let marketing = admitted.category == Some(finestra_domain::template::Category::Marketing);
        let mut cap_counted = false;
        if marketing {
            match self
                .frequency(tenant_id, recipient, message_id, now)
                .await?
            {
                TierVerdict::LimitReached => {
                    metrics::counter!("finestra_dispatch_refused_total", "reason" => "FREQUENCY_CAPPED")
                        .increment(1);
                    return Err(with_reason(
                        Code::FailedPrecondition,
                        Reason::FrequencyCapped,
                        "the user has received as many marketing templates as the tenant's \
                         frequency cap allows in its window",
                        &[("message_id", message_id)],
                    ));
                }
                TierVerdict::Counted => cap_counted = true,
                TierVerdict::AlreadyCounted | TierVerdict::NotLoaded => {}
            }
        }
        let mut counted = false;
        if admitted.business_initiated {
            match self.tier(tenant_id, recipient, now).await? {
                TierVerdict::LimitReached => {
                    metrics::counter!("finestra_dispatch_refused_total", "reason" => "TIER_LIMIT_REACHED")
                        .increment(1);
                    if cap_counted {
                        self.forget_marketing(tenant_id, recipient, message_id)
                            .await;
                    }
                    return Err(with_reason(
                        Code::ResourceExhausted,
                        Reason::TierLimitReached,
                        "the tenant's tier allows no more new users in the last 24 hours",
                        &[("message_id", message_id)],
                    ));
                }
                TierVerdict::Counted => counted = true,
                TierVerdict::AlreadyCounted | TierVerdict::NotLoaded => {}
            }
        }
        let template_name = match &parsed.outgoing {
            Outgoing::Template { name, .. } => name.clone(),
            Outgoing::FreeForm(_) => String::new(),
        };
        let body = finestra_cloudapi::send::body(
            recipient,
            &parsed.kind,
            parsed.object.clone(),
            message_id,
        );
        let message = NewMessage {
            tenant_id: tenant_id.to_owned(),
            message_id: message_id.to_owned(),
            idempotency_key: key.to_owned(),
            request_hash: hash.to_vec(),
            phone_number_id: number_id.to_owned(),
            recipient: recipient.to_owned(),
            kind: parsed.kind.clone(),
            template_name,
            category: admitted
                .category
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            body: body.to_string(),
            price_micros: 0,
            currency: String::new(),
            free: true,
            free_reason: String::new(),
            business_initiated: admitted.business_initiated,
            starts_fep: admitted.starts_fep,
            accepted_at: now.micros(),
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            message,
            csw_open: admitted.priced_window().csw_open,
            fep_open: admitted.priced_window().fep_open,
            traceparent: finestra_platform::trace::current(),
            reply,
        };
        let outcome = match self.acceptor.accept(pending).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(Refused::Unavailable("acceptance was cut short".into()))),
            Err(e) => Err(e),
        };
        // Only a refusal is surely not stored: a send cut short may have been (its retry then
        // finds it), so its counts stay (refused sooner, never allowed more).
        let refused = matches!(outcome, Err(Refused::Billing(_)));
        let result = match outcome {
            Ok(Accepted::New(m)) => {
                metrics::counter!("finestra_dispatch_accepted_total").increment(1);
                Ok(SendMessageResponse {
                    message_id: m.message_id,
                    status: "ACCEPTED".into(),
                    replayed: false,
                    price_micros: m.price_micros,
                    currency: m.currency,
                    free: m.free,
                    free_reason: m.free_reason,
                    category: m.category,
                })
            }
            Ok(Accepted::Existing) => self
                .existing(tenant_id, message_id, hash)
                .await?
                .ok_or_else(|| Status::unavailable("the message vanished; retry")),
            Err(Refused::Billing(status)) => {
                if let Some(reason) = status::reason_of(&status) {
                    let reason: &'static str = match reason.as_str() {
                        "INSUFFICIENT_FUNDS" => "INSUFFICIENT_FUNDS",
                        "IDEMPOTENCY_CONFLICT" => "IDEMPOTENCY_CONFLICT",
                        _ => "BILLING",
                    };
                    metrics::counter!("finestra_dispatch_refused_total", "reason" => reason)
                        .increment(1);
                }
                Err(status)
            }
            Err(Refused::Unavailable(why)) => Err(with_reason_and_retry(
                Code::Unavailable,
                Reason::StoreUnavailable,
                why,
                &[("message_id", message_id)],
                status::STORE_RETRY_AFTER,
            )),
        };
        if refused
            && counted
            && let Err(e) = self.hot.tier_undo(tenant_id, recipient, now.micros()).await
        {
            tracing::warn!(error = %e, "taking a refused send out of the tier count failed");
        }
        if refused && cap_counted {
            self.forget_marketing(tenant_id, recipient, message_id)
                .await;
        }
        result
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchApi {
    type StreamEventsStream = tokio_stream::wrappers::ReceiverStream<Result<TenantEvent, Status>>;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let start = tenant_api::stream_start(self.facts.pool(), &req).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        self.tasks.spawn(tenant_api::feed(
            self.facts.pool().clone(),
            req.tenant_id,
            start,
            self.recorded.clone(),
            self.shutdown.clone(),
            tx,
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn create_webhook(
        &self,
        request: Request<CreateWebhookRequest>,
    ) -> Result<Response<Webhook>, Status> {
        let req = self.auth.authorize(request, Scope::Admin).await?.request;
        let now = self.clock.now().micros();
        tenant_api::create_webhook(self.facts.pool(), req, now)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_webhooks(
        &self,
        request: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let webhooks = tenant_api::list_webhooks(self.facts.pool(), &req.tenant_id).await?;
        Ok(Response::new(ListWebhooksResponse { webhooks }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookSecretRequest>,
    ) -> Result<Response<Webhook>, Status> {
        let req = self.auth.authorize(request, Scope::Admin).await?.request;
        let now = self.clock.now().micros();
        tenant_api::rotate_secret(self.facts.pool(), req, now)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn delete_webhook(
        &self,
        request: Request<DeleteWebhookRequest>,
    ) -> Result<Response<Webhook>, Status> {
        let req = self.auth.authorize(request, Scope::Admin).await?.request;
        let now = self.clock.now().micros();
        tenant_api::delete_webhook(self.facts.pool(), &req.tenant_id, &req.endpoint_id, now)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        tenant_api::list_dead_letters(self.facts.pool(), &req)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn redrive(
        &self,
        request: Request<RedriveRequest>,
    ) -> Result<Response<RedriveResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Admin).await?.request;
        let now = self.clock.now().micros();
        let answer = tenant_api::redrive(self.facts.pool(), &req, now).await?;
        self.recorded.notify_waiters();
        Ok(Response::new(answer))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        self.send_one(req).await.map(Response::new)
    }

    async fn get_scheduled_message(
        &self,
        request: Request<v1::GetScheduledMessageRequest>,
    ) -> Result<Response<v1::ScheduledMessage>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        crate::scheduled::get(self.facts.pool(), &req.tenant_id, &req.message_id)
            .await
            .map(Response::new)
    }

    async fn cancel_scheduled_message(
        &self,
        request: Request<v1::CancelScheduledMessageRequest>,
    ) -> Result<Response<v1::ScheduledMessage>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        crate::scheduled::cancel(self.facts.pool(), &req.tenant_id, &req.message_id)
            .await
            .map(Response::new)
    }

    async fn send_messages(
        &self,
        request: Request<SendMessagesRequest>,
    ) -> Result<Response<SendMessagesResponse>, Status> {
        let batch = self.auth.authorize(request, Scope::Send).await?.request;
        batch::check_size(batch.messages.len())?;
        let tenant_id = batch.tenant_id;
        let results = futures::stream::iter(batch.messages)
            .map(|message| {
                let own = batch::own_message(&tenant_id, message);
                async move {
                    match own {
                        Ok(message) => self.send_one(message).await,
                        Err(refused) => Err(refused.into()),
                    }
                }
            })
            .buffered(batch::CONCURRENCY)
            .map(batch::result)
            .collect()
            .await;
        Ok(Response::new(SendMessagesResponse { results }))
    }

    async fn upload_media(
        &self,
        request: Request<v1::UploadMediaRequest>,
    ) -> Result<Response<v1::UploadMediaResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        crate::media_api::upload(
            &self.facts,
            self.provider.as_ref(),
            self.media_store.as_ref(),
            req,
        )
        .await
        .map(Response::new)
    }

    type GetMediaStream = tokio_stream::wrappers::ReceiverStream<Result<v1::MediaChunk, Status>>;

    async fn get_media(
        &self,
        request: Request<v1::GetMediaRequest>,
    ) -> Result<Response<Self::GetMediaStream>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        crate::media_api::get(self.facts.pool(), self.media_store.clone(), req)
            .await
            .map(Response::new)
    }

    async fn mark_read(
        &self,
        request: Request<v1::MarkReadRequest>,
    ) -> Result<Response<v1::MarkReadResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        crate::network_api::mark_read(&self.facts, self.provider.as_ref(), req)
            .await
            .map(Response::new)
    }

    async fn block_users(
        &self,
        request: Request<v1::BlockUsersRequest>,
    ) -> Result<Response<v1::BlockUsersResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        crate::network_api::block_users(&self.facts, self.provider.as_ref(), req)
            .await
            .map(Response::new)
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let id = required("message_id", &req.message_id)?;
        let row = pg::get(self.facts.pool(), &req.tenant_id, id)
            .await
            .map_err(|e| self.store_error("reading a message", &e))?
            .ok_or_else(|| not_found("message_id", id))?;
        Ok(Response::new(to_message(row)))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let after = if after.is_empty() {
            None
        } else {
            let (at, id) = after.split_once('/').ok_or_else(|| {
                invalid_argument("page_token", "page_token is not one this service issued")
            })?;
            let at: i64 = at.parse().map_err(|_| {
                invalid_argument("page_token", "page_token is not one this service issued")
            })?;
            Some((at, id.to_owned()))
        };
        if !req.status.is_empty()
            && finestra_domain::delivery::Progress::parse(&req.status).is_none()
        {
            return Err(invalid_argument(
                "status",
                "status is one of ACCEPTED, SENT, DELIVERED, READ, FAILED",
            ));
        }
        let filter = pg::ListFilter {
            phone_number_id: req.phone_number_id.clone(),
            recipient: content::recipient(&req.to).to_owned(),
            status: req.status.to_ascii_uppercase(),
            from: req.from.as_ref().map(finestra_proto::time::to_micros),
            until: req.until.as_ref().map(finestra_proto::time::to_micros),
            after,
        };
        let rows = pg::list(self.facts.pool(), &req.tenant_id, &filter, size + 1)
            .await
            .map_err(|e| self.store_error("listing messages", &e))?;
        let keyed: Vec<(String, MessageRow)> = rows
            .into_iter()
            .map(|r| (format!("{}/{}", r.accepted_at, r.message_id), r))
            .collect();
        let (page, next_page_token) = paging::paginate(keyed, size, |(k, _)| k);
        Ok(Response::new(ListMessagesResponse {
            messages: page.into_iter().map(|(_, r)| to_message(r)).collect(),
            next_page_token,
        }))
    }
}
