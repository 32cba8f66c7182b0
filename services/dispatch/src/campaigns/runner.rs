//! Runs the launched campaigns (docs/rules.md §12): each round it holds the running campaigns
//! under a lease (several replicas share them; a crashed one's are taken over when its lease
//! ends), checks the circuit breaker, and hands the next recipients to the send decision at
//! the number's pace. A recipient's message is keyed `campaign:<id>:<user>`, so a runner that
//! dies between a send and its record sends nothing twice: the next round's send of that
//! recipient answers the same message, which is recorded then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finestra_domain::campaign::{self as rules, Breaker, Health, Step};
use finestra_domain::template::Category;
use finestra_platform::Shutdown;
use finestra_platform::status::reason_of;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{SendMessageRequest, TemplateContent};
use futures::StreamExt as _;
use sqlx::PgPool;
use tonic::Code;

use super::audience::Member;
use super::store::{self, Held, Outcome, QueuedRow};
use super::{CampaignsApi, Plan, stored_plan};
use crate::api::DispatchApi;

/// How long a runner holds a campaign without renewing.
const LEASE_MICROS: i64 = 10_000_000;
/// How often the breaker looks at a campaign's health.
const BREAKER_EVERY: Duration = Duration::from_secs(2);
/// The newest sends the breaker judges the failure rate on.
const RECENT_SENDS: i64 = 100;
/// Sends of one campaign decided at once.
const CONCURRENT_SENDS: usize = 256;

/// Where a held campaign's pacing stands.
struct Pace {
    last: Instant,
    carry: i64,
    breaker_checked: Option<Instant>,
    /// When the campaign last became RUNNING as this pace knew it: a resume since (even one
    /// between two rounds) starts the pace afresh, the breaker first.
    resumed_at: Option<i64>,
    /// The last recipient decided (in user order): the next round reads after it.
    cursor: String,
}

impl Pace {
    fn new(every: Duration, resumed_at: Option<i64>) -> Self {
        Pace {
            // A campaign taken now starts with a round's worth.
            last: Instant::now()
                .checked_sub(every)
                .unwrap_or_else(Instant::now),
            carry: 0,
            breaker_checked: None,
            resumed_at,
            cursor: String::new(),
        }
    }
}

pub struct Runner {
    pub pool: PgPool,
    pub api: Arc<DispatchApi>,
    pub campaigns: Arc<CampaignsApi>,
    /// Tests share one database: each takes only its own tenants' campaigns.
    pub tenant_prefix: String,
    pub every: Duration,
    pub breaker: Breaker,
    /// This replica's id in the lease.
    pub id: String,
}

impl Runner {
    pub async fn run(self, shutdown: Shutdown) {
        let mut paces: HashMap<(String, String), Pace> = HashMap::new();
        loop {
            if let Err(e) = self.round(&mut paces).await {
                tracing::warn!(error = %e, "running campaigns failed; trying again");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    async fn round(
        &self,
        paces: &mut HashMap<(String, String), Pace>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let now = self.api.clock.now().micros();
        let held = store::hold_running(
            &self.pool,
            now,
            now + LEASE_MICROS,
            &self.id,
            &self.tenant_prefix,
        )
        .await?;
        paces.retain(|(t, c), _| {
            held.iter()
                .any(|h| &h.tenant_id == t && &h.campaign_id == c)
        });
        for campaign in held {
            let key = (campaign.tenant_id.clone(), campaign.campaign_id.clone());
            let pace = paces
                .entry(key)
                .or_insert_with(|| Pace::new(self.every, campaign.resumed_at));
            if pace.resumed_at != campaign.resumed_at {
                *pace = Pace::new(self.every, campaign.resumed_at);
            }
            if let Err(e) = self.advance(&campaign, pace, now).await {
                tracing::warn!(error = %e, campaign = %campaign.campaign_id,
                    "a campaign's round failed; trying again");
            }
        }
        Ok(())
    }

    /// One round of one campaign.
    async fn advance(
        &self,
        c: &Held,
        pace: &mut Pace,
        now: i64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if c.end_at.is_some_and(|end| now >= end) {
            return self.finish(c, "ENDED", now).await;
        }
        let plan = stored_plan(&c.request).map_err(|s| s.message().to_owned())?;
        let category = match self
            .campaigns
            .sendable_template(&c.tenant_id, &plan, self.api.clock.now())
            .await
        {
            Ok(template) => template.category,
            Err(s) => {
                let reason = reason_of(&s).unwrap_or_else(|| "TEMPLATE_NOT_APPROVED".into());
                return self.pause(c, &reason, now).await;
            }
        };
        let Some(number) = self.api.facts.number(&c.phone_number_id).await? else {
            return self.pause(c, "NOT_FOUND", now).await;
        };
        if pace
            .breaker_checked
            .is_none_or(|at| at.elapsed() >= BREAKER_EVERY)
        {
            pace.breaker_checked = Some(Instant::now());
            if let Some(reason) = self.breaker_trips(c).await? {
                return self.pause(c, reason, now).await;
            }
        }
        let elapsed = i64::try_from(pace.last.elapsed().as_micros()).unwrap_or(i64::MAX);
        pace.last = Instant::now();
        let per_second = number.throughput_per_second.max(1);
        let n = rules::slice(per_second, elapsed, &mut pace.carry, per_second);
        if n == 0 {
            return Ok(());
        }
        let queued =
            store::queued(&self.pool, &c.tenant_id, &c.campaign_id, &pace.cursor, n).await?;
        if queued.is_empty() {
            if !pace.cursor.is_empty() {
                // Past the last one: anything left queued lies behind the cursor.
                pace.cursor.clear();
                return Ok(());
            }
            if !store::any_queued(&self.pool, &c.tenant_id, &c.campaign_id).await? {
                return self.finish(c, "", now).await;
            }
            return Ok(());
        }
        if let Some(last) = queued.last() {
            pace.cursor.clone_from(&last.user_key);
        }
        let steps: Vec<(String, Result<Outcome, Step>)> = futures::stream::iter(queued)
            .map(|q| self.send(c, &plan, category, q))
            .buffer_unordered(CONCURRENT_SENDS)
            .collect()
            .await;
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut pause = None;
        let mut retried = 0;
        for (user, step) in steps {
            match step {
                Ok(outcome) => outcomes.push((user, outcome)),
                Err(Step::Exclude(reason)) => outcomes.push((user, Outcome::Excluded(reason))),
                Err(Step::Pause(reason)) => pause = Some(reason),
                Err(Step::Retry) => retried += 1,
            }
        }
        if retried > 0 || pause.is_some() {
            // Some stay queued behind the cursor: the next round reads from the start.
            pace.cursor.clear();
        }
        if retried > 0 {
            // Those recipients stay queued and lead the next round; the credit they used is
            // given back so the campaign keeps its pace once capacity returns.
            pace.carry = pace
                .carry
                .saturating_add(retried * 1_000_000)
                .min(per_second * 1_000_000);
        }
        let decided = i64::try_from(outcomes.len()).unwrap_or(0);
        store::record(&self.pool, &c.tenant_id, &c.campaign_id, &outcomes, now).await?;
        metrics::counter!("finestra_dispatch_campaign_sends_total")
            .increment(u64::try_from(decided).unwrap_or(0));
        if let Some(reason) = pause {
            return self.pause(c, &reason, now).await;
        }
        Ok(())
    }

    /// One recipient: the campaign's own rules, then the send decision under the
    /// recipient's key.
    async fn send(
        &self,
        c: &Held,
        plan: &Plan,
        category: Category,
        q: QueuedRow,
    ) -> (String, Result<Outcome, Step>) {
        let member = Member {
            attributes: q.attributes(),
            name: q.name.clone().unwrap_or_default(),
            opted_in: q.opt_in_at.is_some(),
            user: q.user_key,
        };
        let parameters = match plan.parameters_for(&member, category) {
            Ok(p) => p,
            Err(reason) => return (member.user, Err(Step::Exclude(reason))),
        };
        let key = format!("campaign:{}:{}", c.campaign_id, member.user);
        let sent = self
            .api
            .send_internal(SendMessageRequest {
                tenant_id: c.tenant_id.clone(),
                phone_number_id: c.phone_number_id.clone(),
                to: member.user.clone(),
                idempotency_key: key.clone(),
                send_at: None,
                send_at_local: String::new(),
                content: Some(Content::Template(TemplateContent {
                    name: plan.template_name.clone(),
                    language: plan.template_language.clone(),
                    parameters,
                })),
            })
            .await;
        let step = match sent {
            Ok(r) => Ok(Outcome::Accepted {
                message_id: r.message_id,
                price_micros: r.price_micros,
                free: r.free,
            }),
            Err(s) => {
                let reason = reason_of(&s).unwrap_or_default();
                if reason == "IDEMPOTENCY_CONFLICT" {
                    // The key's message exists with other parameters: the contact changed
                    // after a send whose record was lost. It was sent; it is not sent again.
                    self.sent_before(&c.tenant_id, &key).await
                } else {
                    Err(rules::step_of_refusal(
                        &reason,
                        s.code() == Code::Unavailable,
                    ))
                }
            }
        };
        (member.user, step)
    }

    async fn sent_before(&self, tenant_id: &str, key: &str) -> Result<Outcome, Step> {
        let message_id = crate::content::message_id(tenant_id, key);
        match crate::pg::get(&self.pool, tenant_id, &message_id).await {
            Ok(Some(m)) => Ok(Outcome::Accepted {
                message_id,
                price_micros: m.price_micros,
                free: m.free,
            }),
            _ => Err(Step::Retry),
        }
    }

    async fn breaker_trips(
        &self,
        c: &Held,
    ) -> Result<Option<&'static str>, Box<dyn std::error::Error + Send + Sync>> {
        let health = finestra_registry::campaign_health(
            &self.pool,
            &c.tenant_id,
            &c.phone_number_id,
            &c.template_name,
            &c.template_language,
        )
        .await?;
        let (finished, failed) = store::recent_outcomes(
            &self.pool,
            &c.tenant_id,
            &c.campaign_id,
            c.resumed_at.unwrap_or(0),
            RECENT_SENDS,
        )
        .await?;
        Ok(self.breaker.trips(&Health {
            number_quality: &health.number_quality,
            template_quality: &health.template_quality,
            recent_finished: u64::try_from(finished).unwrap_or(0),
            recent_failed: u64::try_from(failed).unwrap_or(0),
        }))
    }

    async fn pause(
        &self,
        c: &Held,
        reason: &str,
        now: i64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if store::set_state(
            &self.pool,
            &c.tenant_id,
            &c.campaign_id,
            &["RUNNING"],
            "PAUSED",
            reason,
            now,
        )
        .await?
        {
            tracing::info!(tenant = %c.tenant_id, campaign = %c.campaign_id, reason,
                "a campaign paused itself");
            metrics::counter!("finestra_dispatch_campaign_moves_total", "to" => "PAUSED")
                .increment(1);
        }
        Ok(())
    }

    async fn finish(
        &self,
        c: &Held,
        reason: &str,
        now: i64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if store::set_state(
            &self.pool,
            &c.tenant_id,
            &c.campaign_id,
            &["RUNNING"],
            "COMPLETED",
            reason,
            now,
        )
        .await?
        {
            metrics::counter!("finestra_dispatch_campaign_moves_total", "to" => "COMPLETED")
                .increment(1);
        }
        Ok(())
    }
}
