//! Scheduled sends (docs/rules.md §2): a message sent with `send_at` goes at its time and not
//! before, its rules are decided when it goes, and a cancelled one never goes.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, template, text};
use finestra_proto::v1;
use finestra_testkit::eventually;
use serde_json::json;
use tonic::Code;

fn at(from_now: Duration) -> finestra_proto::prost_types::Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
        + from_now.as_micros() as i64;
    finestra_proto::time::from_micros(micros)
}

async fn scheduled(c: &Chain, id: &str) -> anyhow::Result<v1::ScheduledMessage> {
    Ok(c.client
        .clone()
        .get_scheduled_message(v1::GetScheduledMessageRequest {
            tenant_id: c.tenant.clone(),
            message_id: id.into(),
        })
        .await?
        .into_inner())
}

async fn message_exists(c: &Chain, id: &str) -> anyhow::Result<bool> {
    match c
        .client
        .clone()
        .get_message(v1::GetMessageRequest {
            tenant_id: c.tenant.clone(),
            message_id: id.into(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_send_goes_at_its_time_rechecks_the_rules_and_a_cancelled_one_never_goes()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("offer", "MARKETING", 1).await?;
    c.top_up(10 * MARKETING_IT).await?;
    let anna = "393331120001";
    let bea = "393331120002";
    c.user_says(anna, 60, false).await?;

    let send_at = at(Duration::from_secs(4));
    let mut later = c.request(anna, "later-1", text("A tra poco"));
    later.send_at = Some(send_at);
    let answer = c.send(later.clone()).await?;
    assert_eq!(answer.status, "SCHEDULED");
    // The same key and request answer the same.
    let again = c.send(later).await?;
    assert!(again.replayed && again.message_id == answer.message_id);

    let mut cancelled = c.request(anna, "later-2", text("mai"));
    cancelled.send_at = Some(send_at);
    let cancelled = c.send(cancelled).await?;
    let done = c
        .client
        .clone()
        .cancel_scheduled_message(v1::CancelScheduledMessageRequest {
            tenant_id: c.tenant.clone(),
            message_id: cancelled.message_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(done.state, "CANCELLED");

    // A marketing template to a user who stops marketing before its time is refused then.
    let mut offer = c.request(bea, "offer-later", template("offer", &["x"]));
    offer.send_at = Some(send_at);
    let offer = c.send(offer).await?;
    c.sim(
        "say",
        json!({"phone_number_id": c.number, "from": bea, "text": "STOP", "seconds_ago": 0}),
    )
    .await?;

    // Not before its time.
    assert_eq!(scheduled(&c, &answer.message_id).await?.state, "SCHEDULED");
    assert!(!message_exists(&c, &answer.message_id).await?);
    let handed = eventually("the scheduled message is handed on", WAIT, || async {
        let s = scheduled(&c, &answer.message_id).await?;
        Ok((s.state == "HANDED").then_some(s))
    })
    .await?;
    assert_eq!(handed.refusal_reason, "");
    let sent = c
        .settles(&answer.message_id, &["DELIVERED", "READ"])
        .await?;
    let accepted_at = finestra_proto::time::to_micros(sent.accepted_at.as_ref().expect("accepted"));
    assert!(
        accepted_at >= finestra_proto::time::to_micros(&send_at),
        "accepted at its time, not before"
    );
    let refused = eventually(
        "the offer's rules are decided at its time",
        WAIT,
        || async {
            let s = scheduled(&c, &offer.message_id).await?;
            Ok((s.state == "REFUSED").then_some(s))
        },
    )
    .await?;
    assert_eq!(refused.refusal_reason, "MARKETING_OPT_OUT");
    assert!(!message_exists(&c, &offer.message_id).await?);
    // The cancelled one never went, and a handed one cannot be cancelled.
    assert_eq!(
        scheduled(&c, &cancelled.message_id).await?.state,
        "CANCELLED"
    );
    assert!(!message_exists(&c, &cancelled.message_id).await?);
    let late = c
        .client
        .clone()
        .cancel_scheduled_message(v1::CancelScheduledMessageRequest {
            tenant_id: c.tenant.clone(),
            message_id: answer.message_id.clone(),
        })
        .await
        .expect_err("too late to cancel");
    assert_eq!(late.code(), Code::FailedPrecondition);
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_send_time_is_read_in_the_contacts_zone_or_else_its_markets() -> anyhow::Result<()>
{
    let c = Chain::start(80).await?;
    c.template("notice", "UTILITY", 1).await?;
    // Tomorrow at 09:00 wall-clock time, a date at least 3.5 h away in every zone used here.
    let now_secs = finestra_testkit::now_secs();
    let tomorrow = (now_secs / 86_400 + 1) * 86_400;
    let nine_utc = tomorrow + 9 * 3_600;
    let local = {
        let days = tomorrow / 86_400;
        // Civil date of a day count (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}T09:00")
    };
    let contacts = {
        let key = c
            .scope
            .tenant_key("acme", &[finestra_platform::auth::Scope::Send])
            .await?;
        let url = c
            .dispatch
            .as_ref()
            .map(|d| d.running.grpc_url())
            .unwrap_or_else(|| c.dispatch_url.clone());
        v1::contacts_service_client::ContactsServiceClient::new(
            finestra_testkit::authed_channel(url, &key).await?,
        )
    };
    // An Italian number whose contact lives in UTC, and an Indian number without a contact.
    let abroad = "393331170001";
    let india = "919812170002";
    contacts
        .clone()
        .upsert_contact(v1::UpsertContactRequest {
            tenant_id: c.tenant.clone(),
            user: format!("+{abroad}"),
            attributes: [("time_zone".to_owned(), "UTC".to_owned())].into(),
            ..Default::default()
        })
        .await?;
    let mut expected = Vec::new();
    for (user, at) in [(abroad, nine_utc), (india, nine_utc - 5 * 3_600 - 1_800)] {
        let mut req = c.request(user, &format!("local-{user}"), template("notice", &["A-1"]));
        req.send_at_local = local.clone();
        let answer = c.send(req).await?;
        assert_eq!(answer.status, "SCHEDULED");
        expected.push((answer.message_id, at));
    }
    for (id, at) in expected {
        let s = scheduled(&c, &id).await?;
        assert_eq!(
            s.send_at.map(|t| t.seconds),
            Some(at),
            "{id}: {local} in the recipient's zone"
        );
        c.client
            .clone()
            .cancel_scheduled_message(v1::CancelScheduledMessageRequest {
                tenant_id: c.tenant.clone(),
                message_id: id,
            })
            .await?;
    }
    let mut both = c.request(india, "local-both", template("notice", &["A-1"]));
    both.send_at_local = local.clone();
    both.send_at = Some(at(Duration::from_secs(60)));
    assert_eq!(
        c.send(both).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut garbled = c.request(india, "local-garbled", template("notice", &["A-1"]));
    garbled.send_at_local = "tomorrow at nine".into();
    assert_eq!(
        c.send(garbled).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    c.stop().await;
    Ok(())
}
