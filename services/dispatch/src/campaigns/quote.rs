//! A campaign's quote (docs/rules.md §12): every recipient decided as the runner would
//! decide it now, with the same code: the campaign's own rules (parameters, opt-in), then
//! `send::admit` over the same facts a send reads (the window, the tenant's contacts, the
//! template), then the frequency cap; what passes is priced by billing's pricing code
//! (PriceBatch, the card in force and the partner's markup). A hundred thousand recipients
//! are read in a few bulk reads: the contacts by page, the windows by `MGET`, the frequency
//! cap's record in one query, and one price per (market, window) pair.

use std::collections::{BTreeMap, HashMap};

use finestra_domain::Timestamp;
use finestra_domain::campaign::{self as rules, ContactView, QuoteOutcome, Tally};
use finestra_domain::pricing::market_of;
use finestra_domain::send::{self, Facts as SendFacts, Outgoing, TemplateFacts};
use finestra_domain::template::Category;
use finestra_platform::status::{self, Reason, with_reason};
use finestra_proto::time::from_micros;
use finestra_proto::v1::{
    CampaignQuote, MarketQuote, PriceBatchRequest, PriceItem, RecipientQuote,
};
use tonic::{Code, Status};

use super::audience::Member;
use super::{CampaignsApi, Plan};

/// Recipients a quote answers line by line at most.
pub const MAX_DETAIL: usize = 10_000;

/// One recipient decided, before pricing.
enum Decided {
    Excluded(String),
    /// Admitted: priced in this window.
    Admitted {
        csw_open: bool,
        fep_open: bool,
        business_initiated: bool,
    },
}

impl CampaignsApi {
    pub(super) async fn quote(
        &self,
        tenant_id: &str,
        plan: &Plan,
        detail: bool,
    ) -> Result<CampaignQuote, Status> {
        let now = self.clock.now();
        self.sendable_account(tenant_id, &plan.phone_number_id)
            .await?;
        let template = self.sendable_template(tenant_id, plan, now).await?;
        let category = template.category;
        let members = super::audience::members(&self.pool, tenant_id, &plan.audience, now).await?;
        if detail && members.len() > MAX_DETAIL {
            return Err(status::invalid_argument(
                "detail",
                format!("lines are answered for at most {MAX_DETAIL} recipients"),
            ));
        }
        let users: Vec<String> = members.iter().map(|m| m.user.clone()).collect();
        let windows = self
            .hot
            .windows(&self.pool, tenant_id, &plan.phone_number_id, &users)
            .await
            .map_err(|e| status::store("reading the windows", &e))?;
        let cap = self
            .facts
            .frequency_cap(tenant_id, self.marketing_cap)
            .await
            .map_err(|e| status::store("reading the frequency cap", &e))?;
        let mut marketing: HashMap<String, Vec<i64>> = HashMap::new();
        if category == Category::Marketing {
            for (user, at) in
                super::store::marketing_sends(&self.pool, tenant_id, &users, cap.cutoff(now))
                    .await
                    .map_err(|e| status::store("reading the frequency cap's record", &e))?
            {
                marketing.entry(user).or_default().push(at);
            }
        }

        let mut decided = Vec::with_capacity(members.len());
        for (member, window) in members.iter().zip(&windows) {
            let contact = self
                .facts
                .contact(tenant_id, &member.user)
                .await
                .map_err(|e| status::store("reading the tenant's contacts", &e))?;
            let facts = SendFacts {
                tenant_active: true,
                number_active: true,
                recipient: &member.user,
                window,
                tenant_blocked: contact.blocked,
                tenant_opted_out: contact.opted_out,
                template: Some(template),
                now,
            };
            let sends = marketing.get(&member.user).map_or(&[][..], Vec::as_slice);
            decided.push(decide(plan, member, &facts, category, || {
                cap.admits(sends, now)
            }));
        }
        let prices = self
            .prices(tenant_id, &members, &decided, category, now)
            .await?;

        let mut tally = Tally::default();
        let mut business_initiated = 0;
        let mut lines = Vec::new();
        let mut currency = String::new();
        let mut card_version = String::new();
        for (member, d) in members.iter().zip(&decided) {
            let outcome = match d {
                Decided::Excluded(reason) => QuoteOutcome::Excluded(reason.clone()),
                Decided::Admitted {
                    csw_open,
                    fep_open,
                    business_initiated: counted,
                } => {
                    business_initiated += i64::from(*counted);
                    let key = (market_of(&member.user), *csw_open, *fep_open);
                    match prices.get(&key) {
                        Some(Ok(q)) => {
                            currency.clone_from(&q.currency);
                            card_version.clone_from(&q.card_version);
                            if q.free {
                                QuoteOutcome::Free(q.free_reason.clone())
                            } else {
                                QuoteOutcome::Charged {
                                    market: key.0,
                                    price: q.price_micros,
                                }
                            }
                        }
                        Some(Err(reason)) => QuoteOutcome::Excluded(reason.clone()),
                        None => QuoteOutcome::Excluded("NOT_PRICED".to_owned()),
                    }
                }
            };
            tally.add(&outcome);
            if detail {
                lines.push(line_of(&member.user, &outcome));
            }
        }
        let tier_remaining = match self
            .facts
            .tier(tenant_id)
            .await
            .map_err(|e| status::store("reading the tier", &e))?
        {
            None => -1,
            Some(limit) => {
                let used = crate::pg::business_initiated_users(
                    &self.pool,
                    tenant_id,
                    now.micros() - crate::api::DAY_MICROS,
                )
                .await
                .map_err(|e| status::store("reading the tier's users", &e))?
                .len();
                (limit - i64::try_from(used).unwrap_or(i64::MAX)).max(0)
            }
        };
        Ok(CampaignQuote {
            campaign_id: plan.campaign_id.clone(),
            category: category.as_str().to_owned(),
            recipients: count(tally.recipients),
            free: count(tally.free),
            charged: count(tally.charged),
            total_price_micros: tally.total_price,
            currency,
            card_version,
            markets: tally
                .by_market
                .iter()
                .map(|(market, (n, price))| MarketQuote {
                    market: (*market).to_owned(),
                    recipients: count(*n),
                    price_micros: *price,
                })
                .collect(),
            excluded_total: count(tally.excluded_total()),
            excluded: tally
                .excluded
                .into_iter()
                .map(|(k, v)| (k, count(v)))
                .collect(),
            business_initiated,
            tier_remaining,
            priced_at: Some(from_micros(now.micros())),
            lines,
        })
    }

    /// Whether the tenant and the number may send at all (a quote of a suspended tenant or
    /// number refuses as its sends would, instead of pricing what cannot go).
    pub(super) async fn sendable_account(
        &self,
        tenant_id: &str,
        phone_number_id: &str,
    ) -> Result<(), Status> {
        let tenant_active = self
            .facts
            .tenant(tenant_id)
            .await
            .map_err(|e| status::store("reading a tenant", &e))?
            .is_some_and(|t| t.active);
        if !tenant_active {
            return Err(with_reason(
                Code::FailedPrecondition,
                Reason::TenantSuspended,
                "the tenant is suspended",
                &[("tenant_id", tenant_id)],
            ));
        }
        match self
            .facts
            .number(phone_number_id)
            .await
            .map_err(|e| status::store("reading a number", &e))?
        {
            Some(n) if n.tenant_id == tenant_id && n.active => Ok(()),
            Some(n) if n.tenant_id == tenant_id => Err(with_reason(
                Code::FailedPrecondition,
                Reason::NotFound,
                "the number is suspended",
                &[("phone_number_id", phone_number_id)],
            )),
            _ => Err(status::not_found("phone_number_id", phone_number_id)),
        }
    }

    /// The template when it may be sent now; the reason it may not otherwise.
    pub(super) async fn sendable_template(
        &self,
        tenant_id: &str,
        plan: &Plan,
        now: Timestamp,
    ) -> Result<TemplateFacts, Status> {
        let template = self
            .facts
            .template(tenant_id, &plan.template_name, &plan.template_language)
            .await
            .map_err(|e| status::store("reading a template", &e))?;
        let refuse = |reason: Reason, why: &str| {
            Err(with_reason(
                Code::FailedPrecondition,
                reason,
                why,
                &[("template_name", plan.template_name.as_str())],
            ))
        };
        match template.map(|t| (t.status.at(now), t)) {
            Some((finestra_domain::template::Status::Approved, t)) => Ok(t),
            Some((finestra_domain::template::Status::Paused { .. }, _)) => refuse(
                Reason::TemplatePaused,
                "the network paused the template for its quality",
            ),
            _ => refuse(
                Reason::TemplateNotApproved,
                "the template is not approved in that language",
            ),
        }
    }

    /// One price per (market, window) the admitted recipients fall in.
    async fn prices(
        &self,
        tenant_id: &str,
        members: &[Member],
        decided: &[Decided],
        category: Category,
        now: Timestamp,
    ) -> Result<
        BTreeMap<(&'static str, bool, bool), Result<finestra_proto::v1::Quote, String>>,
        Status,
    > {
        let mut wanted: BTreeMap<(&'static str, bool, bool), &str> = BTreeMap::new();
        for (member, d) in members.iter().zip(decided) {
            if let Decided::Admitted {
                csw_open, fep_open, ..
            } = d
            {
                wanted
                    .entry((market_of(&member.user), *csw_open, *fep_open))
                    .or_insert(member.user.as_str());
            }
        }
        let mut prices = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(prices);
        }
        let keys: Vec<_> = wanted.keys().copied().collect();
        let items = wanted
            .iter()
            .map(|((_, csw_open, fep_open), user)| PriceItem {
                recipient: (*user).to_owned(),
                free_form: false,
                category: category.as_str().to_owned(),
                csw_open: *csw_open,
                fep_open: *fep_open,
            })
            .collect();
        let mut billing = self.billing.clone();
        let answer = billing
            .price_batch(PriceBatchRequest {
                tenant_id: tenant_id.to_owned(),
                at: Some(from_micros(now.micros())),
                items,
            })
            .await
            .map_err(|s| {
                Status::unavailable(format!(
                    "billing could not price the campaign: {}",
                    s.message()
                ))
            })?
            .into_inner();
        for (key, result) in keys.into_iter().zip(answer.results) {
            prices.insert(
                key,
                match result.quote {
                    Some(q) => Ok(q),
                    None => Err(if result.reason.is_empty() {
                        "NOT_PRICED".to_owned()
                    } else {
                        result.reason
                    }),
                },
            );
        }
        Ok(prices)
    }
}

/// A recipient as the runner decides it before it is priced: the campaign's rules, the send
/// decision, the frequency cap (`cap_admits`, asked only of a marketing template).
fn decide(
    plan: &Plan,
    member: &Member,
    facts: &SendFacts<'_>,
    category: Category,
    cap_admits: impl FnOnce() -> bool,
) -> Decided {
    let parameters = match plan.parameters_for(member, category) {
        Ok(p) => p,
        Err(reason) => return Decided::Excluded(reason),
    };
    let outgoing = Outgoing::Template {
        name: plan.template_name.clone(),
        language: plan.template_language.clone(),
        parameters,
    };
    let admitted = match send::admit(&outgoing, facts) {
        Ok(a) => a,
        Err(r) => return Decided::Excluded(r.reason().to_owned()),
    };
    if category == Category::Marketing && !cap_admits() {
        return Decided::Excluded("FREQUENCY_CAPPED".to_owned());
    }
    let window = admitted.priced_window();
    Decided::Admitted {
        csw_open: window.csw_open,
        fep_open: window.fep_open,
        business_initiated: admitted.business_initiated,
    }
}

impl Plan {
    /// The template parameters for one member, or why it is excluded before the send
    /// decision (a missing attribute, no opt-in for marketing).
    pub fn parameters_for(
        &self,
        member: &Member,
        category: Category,
    ) -> Result<Vec<String>, String> {
        if rules::needs_opt_in(category) && !member.opted_in {
            return Err(rules::NO_OPT_IN.to_owned());
        }
        rules::render(
            &self.parameters,
            &ContactView {
                user: &member.user,
                name: &member.name,
                attributes: &member.attributes,
            },
        )
        .map_err(|_| rules::MISSING_PARAMETER.to_owned())
    }
}

fn line_of(user: &str, outcome: &QuoteOutcome) -> RecipientQuote {
    let (kind, reason, market, price) = match outcome {
        QuoteOutcome::Free(reason) => ("FREE", reason.clone(), market_of(user), 0),
        QuoteOutcome::Charged { market, price } => ("CHARGED", String::new(), *market, *price),
        QuoteOutcome::Excluded(reason) => ("EXCLUDED", reason.clone(), "", 0),
    };
    RecipientQuote {
        user: user.to_owned(),
        outcome: kind.to_owned(),
        reason,
        market: market.to_owned(),
        price_micros: price,
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
