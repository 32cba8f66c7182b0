//! Campaigns (docs/rules.md §12) against the whole chain, the simulator as the network: a
//! quote equals, recipient by recipient, what the campaign then charges; a template paused
//! mid-campaign pauses it with the reason and the resume sends each remaining recipient once;
//! the circuit breaker pauses a campaign whose sends fail or whose number turns red; five
//! thousand contacts through a pause, a resume and a killed dispatch are each sent once.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, UTILITY_IT};
use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_proto::v1;
use finestra_proto::v1::campaign_service_client::CampaignServiceClient;
use finestra_proto::v1::contacts_service_client::ContactsServiceClient;
use finestra_testkit::{eventually, infra};
use serde_json::json;
use tonic::Code;

struct Clients {
    campaigns: CampaignServiceClient<AuthedChannel>,
    contacts: ContactsServiceClient<AuthedChannel>,
}

async fn clients(c: &Chain) -> anyhow::Result<Clients> {
    let key = c
        .scope
        .tenant_key("acme", &[KeyScope::Send, KeyScope::Read])
        .await?;
    let url = c
        .dispatch
        .as_ref()
        .map(|d| d.running.grpc_url())
        .unwrap_or_else(|| c.dispatch_url.clone());
    Ok(Clients {
        campaigns: CampaignServiceClient::new(
            finestra_testkit::authed_channel(url.clone(), &key).await?,
        ),
        contacts: ContactsServiceClient::new(finestra_testkit::authed_channel(url, &key).await?),
    })
}

/// Contacts named Ada without an opt-in, one per user.
async fn contacts_of(k: &Clients, c: &Chain, users: &[String]) -> anyhow::Result<()> {
    for u in users {
        contact(k, c, u, "Ada", false).await?;
    }
    Ok(())
}

/// A contact tagged `spring`, with a name and an opt-in when given.
async fn contact(
    k: &Clients,
    c: &Chain,
    user: &str,
    name: &str,
    opted_in: bool,
) -> anyhow::Result<()> {
    k.contacts
        .clone()
        .upsert_contact(v1::UpsertContactRequest {
            tenant_id: c.tenant.clone(),
            user: format!("+{user}"),
            name: name.into(),
            add_tags: vec!["spring".into()],
            opt_in: opted_in.then(|| v1::OptIn {
                source: "web form".into(),
                at: Some(finestra_proto::time::from_micros(1_764_000_000_000_000)),
                proof: "yes".into(),
            }),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The number's throughput as the network allows it (the campaign runner's pace).
async fn set_throughput(c: &Chain, per_second: i32) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE accounts.numbers SET throughput_per_second = $2 WHERE phone_number_id = $1",
    )
    .bind(&c.number)
    .bind(per_second)
    .execute(&infra().await?.pool)
    .await?;
    Ok(())
}

async fn quote(
    k: &Clients,
    c: &Chain,
    id: &str,
    detail: bool,
) -> Result<v1::CampaignQuote, tonic::Status> {
    k.campaigns
        .clone()
        .quote_campaign(v1::QuoteCampaignRequest {
            tenant_id: c.tenant.clone(),
            campaign_id: id.into(),
            detail,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn create(c: &Chain, id: &str, template: &str) -> v1::CreateCampaignRequest {
    v1::CreateCampaignRequest {
        tenant_id: c.tenant.clone(),
        campaign_id: id.into(),
        name: format!("campaign {id}"),
        phone_number_id: c.number.clone(),
        template_name: template.into(),
        template_language: "it".into(),
        parameters: vec!["{{name}}".into()],
        ..Default::default()
    }
}

fn action(c: &Chain, id: &str) -> v1::CampaignActionRequest {
    v1::CampaignActionRequest {
        tenant_id: c.tenant.clone(),
        campaign_id: id.into(),
    }
}

async fn campaign(k: &Clients, c: &Chain, id: &str) -> anyhow::Result<v1::Campaign> {
    Ok(k.campaigns
        .clone()
        .get_campaign(v1::GetCampaignRequest {
            tenant_id: c.tenant.clone(),
            campaign_id: id.into(),
        })
        .await?
        .into_inner())
}

fn progress(c: &v1::Campaign) -> v1::CampaignProgress {
    c.progress.clone().unwrap_or_default()
}

async fn recipients(
    k: &Clients,
    c: &Chain,
    id: &str,
) -> anyhow::Result<Vec<v1::CampaignRecipient>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = k
            .campaigns
            .clone()
            .list_campaign_recipients(v1::ListCampaignRecipientsRequest {
                tenant_id: c.tenant.clone(),
                campaign_id: id.into(),
                page_size: 1_000,
                page_token: token,
            })
            .await?
            .into_inner();
        all.extend(page.recipients);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// Waits until the campaign is COMPLETED and every message it was accepted has an outcome.
async fn completes(
    k: &Clients,
    c: &Chain,
    id: &str,
    within: Duration,
) -> anyhow::Result<v1::Campaign> {
    eventually(&format!("campaign {id} completes"), within, || async {
        // (A dispatch just restarted refuses connections for a moment.)
        let Ok(now) = campaign(k, c, id).await else {
            return Ok(None);
        };
        let p = progress(&now);
        Ok((now.state == "COMPLETED" && p.delivered + p.failed == p.accepted).then_some(now))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quote_equals_what_the_campaign_then_charges_recipient_by_recipient() -> anyhow::Result<()>
{
    let c = Chain::start(80).await?;
    let k = clients(&c).await?;
    c.template("promo", "MARKETING", 1).await?;
    c.template("notice", "UTILITY", 1).await?;
    c.top_up(40 * MARKETING_IT).await?;
    // The platform's cap in tests is loose; this tenant's partner sets the usual 2 a week.
    sqlx::query(
        "UPDATE accounts.tenants SET marketing_cap = 2, marketing_cap_days = 7 WHERE tenant_id = $1",
    )
    .bind(&c.tenant)
    .execute(&infra().await?.pool)
    .await?;

    let anna = "393331130001"; // IT, opted in
    let bruno = "5511991130002"; // BR
    let carl = "447700113003"; // GB
    let dora = "393331130004"; // IT, inside a window
    let enzo = "393331130005"; // no opt-in
    let fede = "393331130006"; // blocked by the tenant
    let gina = "393331130007"; // sent STOP
    let hugo = "393331130008"; // two marketing templates this week already
    let ines = "393331130009"; // no name for the parameter
    for (user, name, opted_in) in [
        (anna, "Anna", true),
        (bruno, "Bruno", true),
        (carl, "Carl", true),
        (dora, "Dora", true),
        (enzo, "Enzo", false),
        (fede, "Fede", true),
        (gina, "Gina", true),
        (hugo, "Hugo", true),
        (ines, "", true),
    ] {
        contact(&k, &c, user, name, opted_in).await?;
    }
    c.user_says(dora, 60, false).await?;
    k.contacts
        .clone()
        .block_contacts(v1::BlockContactsRequest {
            tenant_id: c.tenant.clone(),
            users: vec![format!("+{fede}")],
            unblock: false,
        })
        .await?;
    c.sim(
        "say",
        json!({"phone_number_id": c.number, "from": gina, "text": "STOP", "seconds_ago": 0}),
    )
    .await?;
    eventually("the stop is recorded", WAIT, || async {
        Ok(c.window(gina).await?.is_marketing_opted_out().then_some(()))
    })
    .await?;
    for i in 0..2 {
        let sent = c
            .template_send(hugo, &format!("before-{i}"), "promo", &["Hugo"])
            .await?;
        c.settles(&sent.message_id, &["DELIVERED", "READ"]).await?;
    }
    k.contacts
        .clone()
        .save_segment(v1::SaveSegmentRequest {
            tenant_id: c.tenant.clone(),
            segment_id: "spring".into(),
            name: "Spring".into(),
            filter: Some(v1::ContactFilter {
                tags: vec!["spring".into()],
                include_blocked: true,
                ..Default::default()
            }),
        })
        .await?;

    let mut promo = create(&c, "spring-promo", "promo");
    promo.segment_id = "spring".into();
    let mut notice = create(&c, "spring-notice", "notice");
    notice.users = vec![anna.into(), bruno.into(), dora.into(), enzo.into()];
    for req in [&promo, &notice] {
        let made = k
            .campaigns
            .clone()
            .create_campaign(req.clone())
            .await?
            .into_inner();
        assert_eq!(made.state, "DRAFT");
        // The same request answers the same campaign; another one under its id is refused.
        k.campaigns.clone().create_campaign(req.clone()).await?;
        let mut other = req.clone();
        other.name = "something else".into();
        let refused = k
            .campaigns
            .clone()
            .create_campaign(other)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists);
    }

    let mut quotes = BTreeMap::new();
    for id in ["spring-promo", "spring-notice"] {
        quotes.insert(id, quote(&k, &c, id, true).await?);
    }
    let promo_q = &quotes["spring-promo"];
    let outcome = |q: &v1::CampaignQuote, user: &str| {
        q.lines
            .iter()
            .find(|l| l.user == user)
            .map(|l| (l.outcome.clone(), l.reason.clone(), l.market.clone()))
    };
    let excluded = |reason: &str| Some(("EXCLUDED".to_owned(), reason.to_owned(), String::new()));
    let charged = |market: &str| Some(("CHARGED".to_owned(), String::new(), market.to_owned()));
    assert_eq!(promo_q.recipients, 9, "{promo_q:?}");
    assert_eq!(outcome(promo_q, anna), charged("IT"));
    assert_eq!(outcome(promo_q, bruno), charged("BR"));
    assert_eq!(outcome(promo_q, carl), charged("GB"));
    assert_eq!(
        outcome(promo_q, dora),
        charged("IT"),
        "marketing is charged in a window"
    );
    assert_eq!(outcome(promo_q, enzo), excluded("NO_OPT_IN"));
    assert_eq!(outcome(promo_q, fede), excluded("USER_BLOCKED"));
    assert_eq!(outcome(promo_q, gina), excluded("MARKETING_OPT_OUT"));
    assert_eq!(outcome(promo_q, hugo), excluded("FREQUENCY_CAPPED"));
    assert_eq!(outcome(promo_q, ines), excluded("MISSING_PARAMETER"));
    assert_eq!((promo_q.charged, promo_q.excluded_total), (4, 5));
    assert_eq!(
        promo_q.total_price_micros,
        promo_q.lines.iter().map(|l| l.price_micros).sum::<i64>()
    );
    let notice_q = &quotes["spring-notice"];
    assert_eq!(
        outcome(notice_q, dora),
        Some(("FREE".into(), "UTILITY_IN_WINDOW".into(), "IT".into()))
    );
    assert_eq!(
        outcome(notice_q, enzo),
        charged("IT"),
        "utility needs no opt-in"
    );
    assert_eq!((notice_q.free, notice_q.charged), (1, 3));

    let mut watch = k
        .campaigns
        .clone()
        .watch_campaign(v1::GetCampaignRequest {
            tenant_id: c.tenant.clone(),
            campaign_id: "spring-promo".into(),
        })
        .await?
        .into_inner();
    for id in ["spring-promo", "spring-notice"] {
        let launched = k
            .campaigns
            .clone()
            .launch_campaign(action(&c, id))
            .await?
            .into_inner();
        assert_eq!(launched.state, "RUNNING");
    }
    // The watch follows the campaign to its end.
    let mut seen = Vec::new();
    while let Some(update) = tokio::time::timeout(WAIT, watch.message()).await?? {
        seen.push(update.state.clone());
        if update.state == "COMPLETED" {
            break;
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("DRAFT"));
    assert_eq!(
        seen.last().map(String::as_str),
        Some("COMPLETED"),
        "{seen:?}"
    );

    c.books_settled().await?;
    // The ledger debits a charge: its amount is the negative price.
    let charges: BTreeMap<String, i64> = c
        .charges()
        .await?
        .into_iter()
        .map(|(message, amount)| (message, -amount))
        .collect();
    for (id, q) in &quotes {
        let done = completes(&k, &c, id, WAIT).await?;
        let p = progress(&done);
        assert_eq!(p.recipients, q.recipients);
        assert_eq!(p.excluded_total, q.excluded_total);
        assert_eq!(
            p.cost_micros, q.total_price_micros,
            "{id}: what it cost is what was quoted"
        );
        for r in recipients(&k, &c, id).await? {
            let line = q
                .lines
                .iter()
                .find(|l| l.user == r.user)
                .ok_or_else(|| anyhow::anyhow!("{} was not quoted", r.user))?;
            match line.outcome.as_str() {
                "EXCLUDED" => {
                    assert_eq!(
                        (r.state.as_str(), r.reason.as_str()),
                        ("EXCLUDED", line.reason.as_str())
                    );
                }
                outcome => {
                    assert_eq!(r.state, "ACCEPTED", "{}", r.user);
                    assert_eq!(r.free, outcome == "FREE", "{}", r.user);
                    assert_eq!(r.price_micros, line.price_micros, "{}", r.user);
                    assert_eq!(
                        charges.get(&r.message_id).copied().unwrap_or(0),
                        line.price_micros,
                        "{} was charged what was quoted",
                        r.user
                    );
                }
            }
        }
    }
    c.reconcile().await?;

    // A suspended tenant's campaign is not priced: it could not send.
    sqlx::query("UPDATE accounts.tenants SET status = 'suspended' WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra().await?.pool)
        .await?;
    let refused = eventually("the quote sees the suspension", WAIT, || async {
        Ok(quote(&k, &c, "spring-notice", false).await.err())
    })
    .await?;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_paused_mid_campaign_pauses_it_and_the_resume_sends_each_remaining_one_once()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let k = clients(&c).await?;
    let infra = infra().await?;
    c.template("notice", "UTILITY", 1).await?;
    // Slow enough to pause it midway: 5 a second.
    set_throughput(&c, 5).await?;
    let n = 40;
    c.top_up(n * UTILITY_IT).await?;
    let users: Vec<String> = (0..n).map(|i| format!("39333114{i:04}")).collect();
    contacts_of(&k, &c, &users).await?;
    let mut req = create(&c, "paused-midway", "notice");
    req.users = users.clone();
    k.campaigns.clone().create_campaign(req).await?;
    k.campaigns
        .clone()
        .launch_campaign(action(&c, "paused-midway"))
        .await?;
    eventually("a few are sent", WAIT, || async {
        Ok((progress(&campaign(&k, &c, "paused-midway").await?).accepted >= 5).then_some(()))
    })
    .await?;
    sqlx::query(
        "UPDATE accounts.templates SET status = 'PAUSED', paused_until = now() + interval '3 hours'
          WHERE tenant_id = $1 AND name = 'notice'",
    )
    .bind(&c.tenant)
    .execute(&infra.pool)
    .await?;
    let paused = eventually("the campaign pauses itself", WAIT, || async {
        let now = campaign(&k, &c, "paused-midway").await?;
        Ok((now.state == "PAUSED").then_some(now))
    })
    .await?;
    assert_eq!(paused.state_reason, "TEMPLATE_PAUSED");
    let at_pause = progress(&paused);
    assert!(at_pause.queued > 0, "paused midway: {at_pause:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = progress(&campaign(&k, &c, "paused-midway").await?);
    assert_eq!(
        later.accepted, at_pause.accepted,
        "nothing goes while paused"
    );

    // Reinstated by the network; the tenant resumes.
    sqlx::query(
        "UPDATE accounts.templates SET status = 'APPROVED', paused_until = NULL
          WHERE tenant_id = $1 AND name = 'notice'",
    )
    .bind(&c.tenant)
    .execute(&infra.pool)
    .await?;
    // The control plane's facts are cached for up to 2 s: a resume before then pauses again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resumed = k
        .campaigns
        .clone()
        .resume_campaign(action(&c, "paused-midway"))
        .await?
        .into_inner();
    assert_eq!(resumed.state, "RUNNING");
    let done = completes(&k, &c, "paused-midway", 2 * WAIT).await?;
    let p = progress(&done);
    assert_eq!((p.accepted, p.excluded_total, p.queued), (n, 0, 0), "{p:?}");
    let sent = recipients(&k, &c, "paused-midway").await?;
    let ids: HashSet<&str> = sent.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), n as usize, "one message per recipient");
    assert_eq!(
        c.sim_stats(&c.number).await?["accepted"].as_u64(),
        Some(n as u64),
        "the network received each once"
    );
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_stops_cleanly_when_the_wallet_runs_dry_and_at_the_tier_limit()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let k = clients(&c).await?;
    let infra = infra().await?;
    c.template("notice", "UTILITY", 1).await?;
    // The lowest tier: 250 new users a day.
    sqlx::query("UPDATE accounts.tenants SET tier = 250 WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    let n = 260;
    let users: Vec<String> = (0..n).map(|i| format!("39333118{i:04}")).collect();
    contacts_of(&k, &c, &users).await?;
    // Funds for three utility templates.
    c.top_up(3 * UTILITY_IT).await?;
    let mut req = create(&c, "dry", "notice");
    req.users = users.clone();
    k.campaigns.clone().create_campaign(req).await?;
    let dry_quote = quote(&k, &c, "dry", false).await?;
    assert_eq!(
        dry_quote.total_price_micros,
        n * UTILITY_IT,
        "nothing reserved up front"
    );
    assert_eq!(
        (dry_quote.business_initiated, dry_quote.tier_remaining),
        (n, 250)
    );
    k.campaigns
        .clone()
        .launch_campaign(action(&c, "dry"))
        .await?;
    let dry = eventually(
        "the campaign pauses when the wallet runs dry",
        WAIT,
        || async {
            let now = campaign(&k, &c, "dry").await?;
            Ok((now.state == "PAUSED").then_some(now))
        },
    )
    .await?;
    assert_eq!(dry.state_reason, "INSUFFICIENT_FUNDS");
    let p = progress(&dry);
    assert_eq!((p.accepted, p.queued), (3, n - 3), "{p:?}");

    // Topped up: it goes on until the tier allows no more new users.
    c.top_up(n * UTILITY_IT).await?;
    k.campaigns
        .clone()
        .resume_campaign(action(&c, "dry"))
        .await?;
    let capped = eventually("the campaign pauses at the tier limit", WAIT, || async {
        let now = campaign(&k, &c, "dry").await?;
        Ok((now.state == "PAUSED" && now.state_reason != "INSUFFICIENT_FUNDS").then_some(now))
    })
    .await?;
    assert_eq!(capped.state_reason, "TIER_LIMIT_REACHED");
    let p = progress(&capped);
    assert_eq!((p.accepted, p.queued), (250, n - 250), "{p:?}");
    let ids: HashSet<String> = recipients(&k, &c, "dry")
        .await?
        .into_iter()
        .filter(|r| r.state == "ACCEPTED")
        .map(|r| r.message_id)
        .collect();
    assert_eq!(ids.len(), 250);
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_breaker_pauses_a_campaign_whose_sends_fail_or_whose_number_turns_red()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let k = clients(&c).await?;
    let infra = infra().await?;
    c.template("notice", "UTILITY", 1).await?;
    set_throughput(&c, 10).await?;
    let n = 60;
    c.top_up(n * UTILITY_IT).await?;
    let users: Vec<String> = (0..n).map(|i| format!("39333116{i:04}")).collect();
    contacts_of(&k, &c, &users).await?;
    // The network refuses every send for a while.
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "always": true, "http_status": 400}),
    )
    .await?;
    let mut req = create(&c, "failing", "notice");
    req.users = users.clone();
    k.campaigns.clone().create_campaign(req).await?;
    k.campaigns
        .clone()
        .launch_campaign(action(&c, "failing"))
        .await?;
    let paused = eventually("the failures pause the campaign", WAIT, || async {
        let now = campaign(&k, &c, "failing").await?;
        Ok((now.state == "PAUSED").then_some(now))
    })
    .await?;
    assert_eq!(paused.state_reason, "FAILURE_RATE");
    let at_pause = progress(&paused);
    assert!(at_pause.failed >= 20 && at_pause.queued > 0, "{at_pause:?}");

    // The network recovers, but the number's quality is now RED: a resume pauses again.
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "next": 0, "always": false}),
    )
    .await?;
    sqlx::query("UPDATE accounts.numbers SET quality_rating = 'RED' WHERE phone_number_id = $1")
        .bind(&c.number)
        .execute(&infra.pool)
        .await?;
    k.campaigns
        .clone()
        .resume_campaign(action(&c, "failing"))
        .await?;
    let red = eventually("the number's quality pauses it", WAIT, || async {
        let now = campaign(&k, &c, "failing").await?;
        Ok((now.state == "PAUSED" && now.state_reason == "NUMBER_QUALITY_LOW").then_some(now))
    })
    .await?;
    let failed_before = progress(&red).failed;

    // Green again: the resume judges only the sends made since, and the rest go.
    sqlx::query("UPDATE accounts.numbers SET quality_rating = 'GREEN' WHERE phone_number_id = $1")
        .bind(&c.number)
        .execute(&infra.pool)
        .await?;
    k.campaigns
        .clone()
        .resume_campaign(action(&c, "failing"))
        .await?;
    let done = completes(&k, &c, "failing", 2 * WAIT).await?;
    let p = progress(&done);
    assert_eq!((p.accepted, p.queued), (n, 0), "{p:?}");
    assert_eq!(
        p.failed, failed_before,
        "nothing failed after the network recovered"
    );
    assert_eq!(p.delivered, n - failed_before);
    c.books_settled().await?;
    assert_eq!(
        c.charges().await?.len() as i64,
        p.delivered,
        "only delivered ones are charged"
    );
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_to_5000_contacts_sends_each_once_through_a_pause_and_a_killed_dispatch()
-> anyhow::Result<()> {
    let c = Chain::start_with(1_000, false).await?;
    let infra = infra().await?;
    sqlx::query("UPDATE accounts.tenants SET tier = NULL WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    set_throughput(&c, 1000).await?;
    c.template("notice", "UTILITY", 1).await?;
    let n: i64 = 5_000;
    c.top_up(n * UTILITY_IT).await?;
    let mut child = c.spawn_dispatch(&[])?;
    let k = eventually("dispatch is up", WAIT, || async {
        Ok(clients(&c).await.ok())
    })
    .await?;
    let mut file = String::from("phone,name\n");
    for i in 0..n {
        file.push_str(&format!("+39333115{i:04},Ada\n"));
    }
    let imported = eventually("dispatch is up and imports", WAIT, || async {
        let chunk = v1::ImportContactsChunk {
            tenant_id: c.tenant.clone(),
            import_id: "five-thousand".into(),
            default_calling_code: String::new(),
            data: file.clone().into_bytes(),
        };
        Ok(k.contacts
            .clone()
            .import_contacts(futures::stream::iter(vec![chunk]))
            .await
            .ok()
            .map(tonic::Response::into_inner))
    })
    .await?;
    assert_eq!(imported.created, n as u64);
    let mut req = create(&c, "five-thousand", "notice");
    req.filter = Some(v1::ContactFilter::default());
    k.campaigns.clone().create_campaign(req).await?;
    k.campaigns
        .clone()
        .launch_campaign(action(&c, "five-thousand"))
        .await?;

    // Paused by the tenant: the count holds still until the resume.
    eventually("a fifth is accepted", 2 * WAIT, || async {
        Ok((progress(&campaign(&k, &c, "five-thousand").await?).accepted >= n / 5).then_some(()))
    })
    .await?;
    let paused = k
        .campaigns
        .clone()
        .pause_campaign(action(&c, "five-thousand"))
        .await?
        .into_inner();
    assert_eq!(
        (paused.state.as_str(), paused.state_reason.as_str()),
        ("PAUSED", "PAUSED_BY_TENANT")
    );
    // A round already under way finishes recording.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = progress(&campaign(&k, &c, "five-thousand").await?).accepted;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        progress(&campaign(&k, &c, "five-thousand").await?).accepted,
        held
    );
    assert!(held < n, "paused midway ({held} of {n})");
    k.campaigns
        .clone()
        .resume_campaign(action(&c, "five-thousand"))
        .await?;

    // Killed mid-run (SIGKILL: no drain): its successor takes the campaign over once the
    // lease ends and sends what is left.
    eventually("half is accepted", 2 * WAIT, || async {
        Ok((progress(&campaign(&k, &c, "five-thousand").await?).accepted >= n / 2).then_some(()))
    })
    .await?;
    child.kill()?;
    child.wait()?;
    let (accepted_at_kill,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM dispatch.campaign_recipients
          WHERE tenant_id = $1 AND campaign_id = 'five-thousand' AND state = 'ACCEPTED'",
    )
    .bind(&c.tenant)
    .fetch_one(&infra.pool)
    .await?;
    // The successor starts after the dead member's session expired (see dispatch_recovery).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut child = c.spawn_dispatch(&[])?;
    let done = completes(&k, &c, "five-thousand", 6 * WAIT).await?;
    let p = progress(&done);
    assert_eq!(
        (p.recipients, p.accepted, p.excluded_total),
        (n, n, 0),
        "{p:?}"
    );
    let sent = recipients(&k, &c, "five-thousand").await?;
    let ids: HashSet<&str> = sent.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), n as usize, "one message per recipient");
    let delivered = p.delivered;
    let wallet = c.books_settled().await?;
    let charges = c.charges().await?;
    assert_eq!(
        charges.len() as i64,
        delivered,
        "one charge per delivered message"
    );
    assert_eq!(wallet.balance_micros, (n - delivered) * UTILITY_IT);
    println!(
        "killed with {accepted_at_kill} of {n} accepted; {delivered} delivered, {} failed; the network received {} sends",
        p.failed,
        c.sim_stats(&c.number).await?["accepted"]
            .as_u64()
            .unwrap_or_default()
    );
    c.reconcile().await?;
    child.kill()?;
    child.wait()?;
    c.stop().await;
    Ok(())
}
