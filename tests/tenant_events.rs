//! What a tenant is told: its event log read on a resumable stream, and signed, retried
//! webhooks with dead letters and redrive.

use finestra_e2e::WAIT;
use finestra_e2e::chain::Chain;
use finestra_platform::auth::Scope as KeyScope;
use finestra_proto::v1;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_testkit::eventually;
use serde_json::{Value, json};
use tonic::Code;

/// (signature header, body) of each delivery received.
type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A tenant's webhook endpoint for tests: records what it receives, fails on request.
#[derive(Clone, Default)]
struct Endpoint {
    got: Deliveries,
    fail_first: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    always_fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Endpoint {
    async fn serve(&self) -> anyhow::Result<String> {
        use std::sync::atomic::Ordering::SeqCst;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let me = me.clone();
                    async move {
                        let take_failure = me
                            .fail_first
                            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if take_failure || me.always_fail.load(SeqCst) {
                            me.failed.fetch_add(1, SeqCst);
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let sig = headers
                            .get("finestra-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        if let Ok(mut got) = me.got.lock() {
                            got.push((sig, body.to_vec()));
                        }
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://{addr}/hook"))
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.got
            .lock()
            .map(|g| {
                g.iter()
                    .map(|(sig, body)| {
                        (
                            sig.clone(),
                            serde_json::from_slice(body).unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn raw(&self) -> Vec<(String, Vec<u8>)> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Whether `header` (`t=..,v1=..[,v1=..]`) carries a valid signature of `body` by `secret`.
fn signed_by(header: &str, body: &[u8], secret: &str) -> bool {
    use hmac::Mac as _;
    let mut parts = header.split(',');
    let Some(t) = parts.next().and_then(|p| p.strip_prefix("t=")) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want = hex::encode(mac.finalize().into_bytes());
    parts.any(|p| p.strip_prefix("v1=") == Some(want.as_str()))
}

/// The tenant's event stream from `cursor` (empty: from the start).
async fn events_from(c: &Chain, cursor: &str) -> anyhow::Result<tonic::Streaming<v1::TenantEvent>> {
    Ok(c.client
        .clone()
        .stream_events(v1::StreamEventsRequest {
            tenant_id: c.tenant.clone(),
            cursor: cursor.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Reads a stream until `done` holds for the events read so far (or the wait runs out).
async fn read_until(
    stream: &mut tonic::Streaming<v1::TenantEvent>,
    seen: &mut Vec<v1::TenantEvent>,
    done: impl Fn(&[v1::TenantEvent]) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("the stream went quiet; {} events read", seen.len()))??;
        seen.push(next.ok_or_else(|| anyhow::anyhow!("the stream ended"))?);
    }
    Ok(())
}

fn delivered_status_of(events: &[v1::TenantEvent], message_id: &str) -> bool {
    events.iter().any(|e| {
        matches!(e.event.as_ref().and_then(|env| env.payload.as_ref()),
            Some(v1::envelope::Payload::MessageStatus(s))
                if s.callback_data == message_id && s.status == "delivered")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_follow_events_on_a_resumable_stream_and_on_signed_retried_webhooks()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let admin_key = c.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    let mut admin = DispatchServiceClient::new(
        finestra_testkit::authed_channel(c.dispatch_url.clone(), &admin_key).await?,
    );
    let flaky = Endpoint::default();
    flaky
        .fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let down = Endpoint::default();
    down.always_fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let hook = admin
        .create_webhook(v1::CreateWebhookRequest {
            tenant_id: c.tenant.clone(),
            url: flaky.serve().await?,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(hook.secret.starts_with("whsec_"));
    let dead_hook = admin
        .create_webhook(v1::CreateWebhookRequest {
            tenant_id: c.tenant.clone(),
            url: down.serve().await?,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        admin
            .clone()
            .create_webhook(v1::CreateWebhookRequest {
                tenant_id: c.tenant.clone(),
                url: "ftp://nope".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| s.code())
            .err(),
        Some(Code::InvalidArgument)
    );

    let mut stream = events_from(&c, "").await?;
    let giulia = "393331110010";
    c.user_says(giulia, 0, false).await?;
    let first = c.text(giulia, "ev-1", "Ciao Giulia").await?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |e| {
        delivered_status_of(e, &first.message_id)
    })
    .await?;
    drop(stream); // the client disconnects
    let cursor = seen.last().map(|e| e.cursor.clone()).unwrap_or_default();

    c.user_says(giulia, 0, false).await?;
    let second = c.text(giulia, "ev-2", "Anything else?").await?;
    c.settles(&second.message_id, &["DELIVERED"]).await?;
    let mut resumed = events_from(&c, &cursor).await?;
    let before = seen.len();
    read_until(&mut resumed, &mut seen, |e| {
        delivered_status_of(e, &second.message_id)
    })
    .await?;
    assert!(seen.len() > before, "events after the reconnect");
    let cursors: Vec<i64> = seen
        .iter()
        .map(|e| e.cursor.parse().unwrap_or(-1))
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats across the reconnect: {cursors:?}"
    );
    let ids: std::collections::HashSet<String> = seen
        .iter()
        .filter_map(|e| e.event.as_ref().map(|env| env.event_id.clone()))
        .collect();
    assert_eq!(ids.len(), seen.len(), "no event twice");
    let kinds: std::collections::HashSet<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    // (No window_refreshed necessarily: two messages in the same second leave csw_until as it was.)
    for kind in ["inbound_message", "window_opened", "message_status"] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
    // Nothing between the two streams was lost: the log from the start equals what was read.
    let mut replay = events_from(&c, "").await?;
    let mut all = Vec::new();
    let last = seen.last().map(|e| e.cursor.clone()).unwrap_or_default();
    read_until(&mut replay, &mut all, |e| {
        e.last().is_some_and(|l| l.cursor == last)
    })
    .await?;
    assert_eq!(
        all.iter().map(|e| &e.cursor).collect::<Vec<_>>(),
        seen.iter().map(|e| &e.cursor).collect::<Vec<_>>()
    );

    // The webhook got every event, each signed, after two refused attempts.
    eventually(
        "the webhook receives every streamed event",
        WAIT,
        || async {
            let got: std::collections::HashSet<String> = flaky
                .received()
                .iter()
                .filter_map(|(_, b)| b["event_id"].as_str().map(str::to_owned))
                .collect();
            Ok(ids.is_subset(&got).then_some(()))
        },
    )
    .await?;
    assert_eq!(flaky.failed.load(std::sync::atomic::Ordering::SeqCst), 2);
    for (sig, body) in flaky.raw() {
        assert!(signed_by(&sig, &body, &hook.secret), "signed: {sig}");
    }
    let statuses: Vec<Value> = flaky
        .received()
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| {
            b["kind"] == "message_status" && b["data"]["message_id"] == json!(first.message_id)
        })
        .collect();
    assert!(
        statuses.iter().any(|b| b["data"]["status"] == "delivered"),
        "the status names Finestra's message id: {statuses:?}"
    );

    // Rotation: during the overlap each delivery is signed with both secrets.
    let rotated = admin
        .rotate_webhook_secret(v1::RotateWebhookSecretRequest {
            tenant_id: c.tenant.clone(),
            endpoint_id: hook.endpoint_id.clone(),
            overlap_seconds: 3_600,
        })
        .await?
        .into_inner();
    assert_ne!(rotated.secret, hook.secret);
    let already = flaky.raw().len();
    c.user_says("393331110011", 0, false).await?;
    let (sig, body) = eventually("a delivery after the rotation", WAIT, || async {
        Ok(flaky.raw().get(already).cloned())
    })
    .await?;
    assert!(signed_by(&sig, &body, &rotated.secret) && signed_by(&sig, &body, &hook.secret));

    // The endpoint that never answers: dead letters after the give-up time, then a redrive.
    // Each delivery gives up 3 s after its first attempt, behind every retry the deliverer
    // runs meanwhile: on a busy machine that chain takes longer than one ordinary wait.
    let dead = eventually(
        "deliveries to the dead endpoint give up",
        3 * WAIT,
        || async {
            let page = admin
                .clone()
                .list_dead_letters(v1::ListDeadLettersRequest {
                    tenant_id: c.tenant.clone(),
                    endpoint_id: dead_hook.endpoint_id.clone(),
                    page_size: 1_000,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((page.dead_letters.len() >= ids.len()).then_some(page.dead_letters))
        },
    )
    .await?;
    assert!(
        dead.iter()
            .all(|d| d.attempts > 1 && d.last_error.contains("503"))
    );
    down.always_fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let redriven = admin
        .redrive(v1::RedriveRequest {
            tenant_id: c.tenant.clone(),
            endpoint_id: dead_hook.endpoint_id.clone(),
            cursors: Vec::new(),
        })
        .await?
        .into_inner();
    // (More may have given up since the listing: the events after it.)
    assert!(redriven.redriven as usize >= dead.len());
    eventually("the redriven events arrive", WAIT, || async {
        Ok((down.raw().len() >= redriven.redriven as usize).then_some(()))
    })
    .await?;

    // Window notices: one closing within the hour, one closed.
    c.user_says("393331110012", 23 * 3_600 + 1_800, false)
        .await?;
    c.user_says("393331110013", 25 * 3_600, false).await?;
    let mut tail = events_from(&c, &last).await?;
    let mut later = Vec::new();
    read_until(&mut tail, &mut later, |e| {
        e.iter().any(|x| x.kind == "window_closing_soon")
            && e.iter().any(|x| x.kind == "window_closed")
    })
    .await?;
    c.stop().await;
    Ok(())
}

/// The provider redelivers and reorders statuses (a webhook retried, statuses of one message
/// in several webhooks racing): dispatch's status pipeline moves the message forward only,
/// tells the tenant each status once, and billing charges once.
#[tokio::test(flavor = "multi_thread")]
async fn redelivered_and_reordered_statuses_move_a_message_forward_once_and_are_told_once()
-> anyhow::Result<()> {
    use finestra_platform::kafka::{self, Outgoing};
    let c = Chain::start(80).await?;
    c.template("pipeline_util", "UTILITY", 1).await?;
    c.top_up(1_000_000_000).await?;
    let user = "393331110077";
    let sent = c
        .template_send(user, "pipe-1", "pipeline_util", &["A-1"])
        .await?;
    let id = sent.message_id;
    let message = c.settles(&id, &["DELIVERED"]).await?;
    let wamid = message.provider_message_id;
    c.books_settled().await?;

    // What a provider's retries and races may bring after that: the same webhook again
    // (sent + delivered packed), read before a late delivered, duplicates of read, and a
    // failed after delivered, in records of several statuses and of one.
    let topic = c.scope.topics().status;
    let key = kafka::conversation_key(&c.tenant, &c.number, user);
    let records: Vec<v1::Envelope> = vec![
        finestra_proto::packing::pack(vec![
            c.status(&id, &wamid, user, "sent"),
            c.status(&id, &wamid, user, "delivered"),
        ])
        .ok_or_else(|| anyhow::anyhow!("statuses pack"))?,
        c.status(&id, &wamid, user, "read"),
        finestra_proto::packing::pack(vec![
            c.status(&id, &wamid, user, "delivered"),
            c.status(&id, &wamid, user, "read"),
            c.status(&id, &wamid, user, "failed"),
        ])
        .ok_or_else(|| anyhow::anyhow!("statuses pack"))?,
        c.status(&id, &wamid, user, "read"),
    ];
    let producer = kafka::producer(&finestra_testkit::infra().await?.brokers)?;
    for envelope in records {
        let record = Outgoing {
            traceparent: None,
            topic: &topic,
            key: key.clone(),
            envelope,
        };
        kafka::publish_all(&producer, std::slice::from_ref(&record)).await?;
    }

    // Dispatch's status pipeline has read every record (the chain's own and these four).
    let group = c.scope.group("dispatch-events");
    let all_records = finestra_testkit::count_records(&topic).await?;
    eventually("dispatch read every status record", WAIT, || async {
        let done = finestra_testkit::committed(&group, &topic).await? >= all_records;
        Ok(done.then_some(()))
    })
    .await?;
    let mut stream = events_from(&c, "").await?;
    let told = |events: &[v1::TenantEvent]| -> Vec<String> {
        let mut ids: Vec<String> = events
            .iter()
            .filter_map(|e| e.event.as_ref())
            .filter(|env| {
                matches!(&env.payload, Some(v1::envelope::Payload::MessageStatus(s))
                    if s.callback_data == id)
            })
            .map(|env| env.event_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let mut all = Vec::new();
    read_until(&mut stream, &mut all, |e| {
        told(e).contains(&format!("st:{wamid}:failed"))
    })
    .await?;
    // Anything recorded after it would be a duplicate: read what else is there.
    while let Ok(Ok(Some(next))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await
    {
        all.push(next);
    }
    let want: Vec<String> = ["delivered", "failed", "read", "sent"]
        .iter()
        .map(|s| format!("st:{wamid}:{s}"))
        .collect();
    assert_eq!(told(&all), want, "each status told once");
    // Read, and never back to failed: a status never moves a message backwards.
    assert_eq!(c.message(&id).await?.status, "READ");
    let charges = c.charges().await?;
    assert_eq!(charges.len(), 1, "charged once: {charges:?}");
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.reserved_micros, 0);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}
