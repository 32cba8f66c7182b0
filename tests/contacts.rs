//! A tenant's contacts (docs/rules.md §11), against the whole chain: a CSV import reports
//! every row it did not take as it stood and a second import changes nothing; a user's first
//! message creates its contact; a user the tenant blocks receives nothing until the tenant
//! lifts the block.

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, UTILITY_IT, reason};
use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_proto::v1;
use finestra_proto::v1::contacts_service_client::ContactsServiceClient;
use finestra_testkit::{eventually, infra};
use tonic::Code;

async fn contacts_client(c: &Chain) -> anyhow::Result<ContactsServiceClient<AuthedChannel>> {
    let key = c
        .scope
        .tenant_key("acme", &[KeyScope::Send, KeyScope::Read])
        .await?;
    let url = c
        .dispatch
        .as_ref()
        .map(|d| d.running.grpc_url())
        .unwrap_or_else(|| c.dispatch_url.clone());
    Ok(ContactsServiceClient::new(
        finestra_testkit::authed_channel(url, &key).await?,
    ))
}

/// Streams `file` in chunks of `chunk` bytes (cut anywhere, as a client may).
async fn import(
    client: &ContactsServiceClient<AuthedChannel>,
    tenant: &str,
    import_id: &str,
    file: &str,
    chunk: usize,
) -> Result<v1::ContactImport, tonic::Status> {
    let chunks: Vec<v1::ImportContactsChunk> = file
        .as_bytes()
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| v1::ImportContactsChunk {
            tenant_id: if i == 0 { tenant.into() } else { String::new() },
            import_id: if i == 0 {
                import_id.into()
            } else {
                String::new()
            },
            default_calling_code: if i == 0 { "39".into() } else { String::new() },
            data: data.to_vec(),
        })
        .collect();
    client
        .clone()
        .import_contacts(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

const FILE: &str = "phone,name,tags,opt_in_source,opt_in_at,opt_in_proof,opted_out,attr.city\r\n\
    +39 347 100 0001,Giulia Rossi,vip;Promo,web form,2026-01-02T10:00:00Z,\"I agree, send offers\",,Roma\r\n\
    347 100 0002,Marco,,,,,,Milano\r\n\
    not-a-number,Nobody,,,,,,\r\n\
    0039 347 100 0001,Giulia again,,,,,,\r\n\
    +39 347 100 0003,Anna,two words,,,,,\r\n\
    +39 347 100 0004,Luca,,shop,,,,\r\n\
    +39 347 100 0005,Sara,,,,,yes,Napoli\r\n\
    \"+39 347 100 0006\",\"Bianchi, \"\"Paolo\"\"\",,,,,,\r\n";

fn report(i: &v1::ContactImport) -> Vec<(u64, String, String, String)> {
    i.report
        .iter()
        .map(|r| (r.line, r.outcome.clone(), r.field.clone(), r.reason.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_reports_every_row_and_a_second_import_changes_nothing() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let client = contacts_client(&c).await?;

    let first = import(&client, &c.tenant, "import-1", FILE, 7).await?;
    assert_eq!(first.state, "done", "{first:?}");
    assert_eq!(
        (first.rows, first.created, first.updated, first.unchanged),
        (8, 4, 0, 0),
        "{first:?}"
    );
    assert_eq!(
        (first.rejected, first.duplicates, first.opted_out),
        (3, 1, 1)
    );
    let expected = vec![
        (4, "rejected".into(), "phone".into(), "INVALID_PHONE".into()),
        (5, "duplicate".into(), "phone".into(), "DUPLICATE".into()),
        (6, "rejected".into(), "tags".into(), "INVALID_TAG".into()),
        (
            7,
            "rejected".into(),
            "opt_in_at".into(),
            "INVALID_OPT_IN".into(),
        ),
        (
            8,
            "opted_out".into(),
            "opted_out".into(),
            "OPTED_OUT".into(),
        ),
    ];
    assert_eq!(report(&first), expected);
    assert!(!first.replayed);

    let giulia = client
        .clone()
        .get_contact(v1::GetContactRequest {
            tenant_id: c.tenant.clone(),
            user: "+39 347 100 0001".into(),
        })
        .await?
        .into_inner();
    assert_eq!(giulia.user, "393471000001");
    assert_eq!(giulia.name, "Giulia Rossi");
    assert_eq!(giulia.tags, vec!["promo".to_owned(), "vip".to_owned()]);
    assert_eq!(
        giulia.attributes.get("city").map(String::as_str),
        Some("Roma")
    );
    let opt_in = giulia.opt_in.expect("the opt-in is recorded");
    assert_eq!(opt_in.source, "web form");
    assert_eq!(opt_in.proof, "I agree, send offers");
    assert_eq!(giulia.source, "import");
    let paolo = client
        .clone()
        .get_contact(v1::GetContactRequest {
            tenant_id: c.tenant.clone(),
            user: "393471000006".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        paolo.name, "Bianchi, \"Paolo\"",
        "a quoted field keeps its comma and quotes"
    );
    let sara = client
        .clone()
        .get_contact(v1::GetContactRequest {
            tenant_id: c.tenant.clone(),
            user: "393471000005".into(),
        })
        .await?
        .into_inner();
    assert!(sara.opt_in.is_none() && sara.opted_out_at.is_some());

    // The same file again, under a new id: every valid row is unchanged, the report the same.
    let second = import(&client, &c.tenant, "import-2", FILE, 1_000).await?;
    assert_eq!(
        (
            second.rows,
            second.created,
            second.updated,
            second.unchanged
        ),
        (8, 0, 0, 4)
    );
    assert_eq!(report(&second), expected);
    // The same id answers the first report again.
    let replayed = import(&client, &c.tenant, "import-1", "phone\n", 100).await?;
    assert!(replayed.replayed);
    assert_eq!((replayed.created, replayed.rejected), (4, 3));
    // The report a page at a time.
    let page = client
        .clone()
        .get_contact_import(v1::GetContactImportRequest {
            tenant_id: c.tenant.clone(),
            import_id: "import-1".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(report(&page), expected[..2].to_vec());
    let rest = client
        .clone()
        .get_contact_import(v1::GetContactImportRequest {
            tenant_id: c.tenant.clone(),
            import_id: "import-1".into(),
            page_size: 10,
            page_token: page.next_page_token.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(report(&rest), expected[2..].to_vec());

    // Listing by tag and opt-in.
    let vip = client
        .clone()
        .list_contacts(v1::ListContactsRequest {
            tenant_id: c.tenant.clone(),
            filter: Some(v1::ContactFilter {
                tags: vec!["VIP".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        vip.contacts
            .iter()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        vec!["393471000001"]
    );
    let not_opted_in = client
        .clone()
        .list_contacts(v1::ListContactsRequest {
            tenant_id: c.tenant.clone(),
            filter: Some(v1::ContactFilter {
                opt_in: v1::contact_filter::OptInFilter::NotOptedIn as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(not_opted_in.contacts.len(), 3);

    // A saved segment: tags and an attribute; a filter and a segment are not both taken.
    client
        .clone()
        .save_segment(v1::SaveSegmentRequest {
            tenant_id: c.tenant.clone(),
            segment_id: "rome-vip".into(),
            name: "VIPs in Rome".into(),
            filter: Some(v1::ContactFilter {
                tags: vec!["vip".into()],
                attributes: [("city".to_owned(), "Roma".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await?;
    let in_segment = client
        .clone()
        .list_contacts(v1::ListContactsRequest {
            tenant_id: c.tenant.clone(),
            segment_id: "rome-vip".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        in_segment
            .contacts
            .iter()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        vec!["393471000001"]
    );
    let milano = client
        .clone()
        .list_contacts(v1::ListContactsRequest {
            tenant_id: c.tenant.clone(),
            filter: Some(v1::ContactFilter {
                attributes: [("city".to_owned(), "Milano".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        milano
            .contacts
            .iter()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        vec!["393471000002"]
    );
    let segments = client
        .clone()
        .list_segments(v1::ListSegmentsRequest {
            tenant_id: c.tenant.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(segments.segments.len(), 1);
    assert_eq!(segments.segments[0].name, "VIPs in Rome");
    client
        .clone()
        .delete_segment(v1::DeleteSegmentRequest {
            tenant_id: c.tenant.clone(),
            segment_id: "rome-vip".into(),
        })
        .await?;
    let gone = client
        .clone()
        .list_contacts(v1::ListContactsRequest {
            tenant_id: c.tenant.clone(),
            segment_id: "rome-vip".into(),
            ..Default::default()
        })
        .await
        .expect_err("a deleted segment is gone");
    assert_eq!(gone.code(), Code::NotFound);

    // An imported opt-out is on the tenant's suppression list: marketing is refused before
    // it costs anything, utility goes.
    c.template("offer", "MARKETING", 1).await?;
    c.template("receipt", "UTILITY", 1).await?;
    c.top_up(10 * UTILITY_IT).await?;
    assert_eq!(
        reason(
            &c.template_send("393471000005", "sara-offer", "offer", &["x"])
                .await
        ),
        (Code::FailedPrecondition, "MARKETING_OPT_OUT".into())
    );
    let quoted = c
        .books
        .clone()
        .quote_message(v1::QuoteMessageRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            user: "393471000005".into(),
            template_name: "offer".into(),
            template_language: "it".into(),
            ..Default::default()
        })
        .await
        .expect_err("the quote refuses it too");
    assert_eq!(
        finestra_platform::status::reason_of(&quoted).as_deref(),
        Some("MARKETING_OPT_OUT")
    );
    let receipt = c
        .template_send("393471000005", "sara-receipt", "receipt", &["x"])
        .await?;
    c.settles(&receipt.message_id, &["DELIVERED", "READ"])
        .await?;

    // A malformed file fails the import and says where.
    let broken = import(&client, &c.tenant, "import-3", "phone\n\"+39347", 100).await?;
    assert_eq!(broken.state, "failed");
    assert!(broken.failure.contains("line 2"), "{}", broken.failure);
    let err = import(&client, &c.tenant, "bad id!", FILE, 100)
        .await
        .expect_err("a bad import id is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_the_tenant_blocks_receives_nothing_until_the_block_is_lifted() -> anyhow::Result<()>
{
    let c = Chain::start(80).await?;
    let client = contacts_client(&c).await?;
    c.template("order_update", "UTILITY", 1).await?;
    c.top_up(20 * UTILITY_IT).await?;
    let spammer = "393331110008";
    let other = "393331110009";
    // The spammer's window has closed (its templates are charged); the other user's is open.
    c.user_says(spammer, 25 * 3_600, false).await?;
    c.user_says(other, 60, false).await?;

    // The user's first message made its contact.
    let contact = eventually("the inbound message makes a contact", WAIT, || async {
        match client
            .clone()
            .get_contact(v1::GetContactRequest {
                tenant_id: c.tenant.clone(),
                user: spammer.into(),
            })
            .await
        {
            Ok(found) => Ok(Some(found.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await?;
    assert_eq!(contact.source, "inbound");
    assert_eq!(contact.profile_name, "Giulia");
    assert!(contact.last_inbound_at.is_some() && !contact.blocked);
    // Whether a window is open follows the user's newest message.
    for (window, expected) in [
        (v1::contact_filter::WindowFilter::WindowOpen, other),
        (v1::contact_filter::WindowFilter::WindowClosed, spammer),
    ] {
        let listed = eventually("both contacts are made", WAIT, || async {
            let page = client
                .clone()
                .list_contacts(v1::ListContactsRequest {
                    tenant_id: c.tenant.clone(),
                    filter: Some(v1::ContactFilter {
                        window: window as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((!page.contacts.is_empty()).then_some(page))
        })
        .await?;
        assert_eq!(
            listed
                .contacts
                .iter()
                .map(|c| c.user.as_str())
                .collect::<Vec<_>>(),
            vec![expected]
        );
    }

    // Queued behind a number that sends one message a second, then blocked by the tenant.
    let infra = infra().await?;
    sqlx::query("UPDATE accounts.numbers SET throughput_per_second = 1 WHERE phone_number_id = $1")
        .bind(&c.number)
        .execute(&infra.pool)
        .await?;
    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            c.template_send(spammer, &format!("q-{i}"), "order_update", &["7"])
                .await?
                .message_id,
        );
    }
    let blocked = client
        .clone()
        .block_contacts(v1::BlockContactsRequest {
            tenant_id: c.tenant.clone(),
            users: vec![format!("+{spammer}")],
            unblock: false,
        })
        .await?
        .into_inner();
    assert!(blocked.contacts[0].blocked);
    assert_eq!(
        reason(&c.text(spammer, "after-block", "hi").await),
        (Code::FailedPrecondition, "USER_BLOCKED".into())
    );
    assert_eq!(
        reason(
            &c.template_send(spammer, "after-block-t", "order_update", &["8"])
                .await
        ),
        (Code::FailedPrecondition, "USER_BLOCKED".into())
    );
    // A quote refuses what the send refuses (docs/rules.md §7).
    let quote = |user: &str| {
        let mut books = c.books.clone();
        let req = v1::QuoteMessageRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            user: user.into(),
            template_name: "order_update".into(),
            template_language: "it".into(),
            ..Default::default()
        };
        async move { books.quote_message(req).await }
    };
    let refused = quote(spammer)
        .await
        .expect_err("a blocked user's quote is refused");
    assert_eq!(
        finestra_platform::status::reason_of(&refused).as_deref(),
        Some("USER_BLOCKED")
    );
    quote(other).await?;
    // Another user of the tenant is not affected.
    c.text(other, "to-other", "hello").await?;

    let mut failed_blocked = 0;
    let mut delivered = 0;
    for id in &queued {
        let m = c.settles(id, &["DELIVERED", "READ", "FAILED"]).await?;
        if m.status == "FAILED" {
            assert_eq!(m.failure_reason, "USER_BLOCKED", "{m:?}");
            failed_blocked += 1;
        } else {
            delivered += 1;
        }
    }
    assert!(
        failed_blocked >= 2,
        "queued messages fail once the tenant blocks ({failed_blocked} failed, {delivered} delivered)"
    );
    // Only what was delivered is charged (the other user's reply inside its window is free).
    c.books_settled().await?;
    let charged: Vec<(String, i64)> = c
        .charges()
        .await?
        .into_iter()
        .filter(|(_, amount)| *amount != 0)
        .collect();
    assert_eq!(charged.len(), delivered, "{charged:?}");

    client
        .clone()
        .block_contacts(v1::BlockContactsRequest {
            tenant_id: c.tenant.clone(),
            users: vec![spammer.into()],
            unblock: true,
        })
        .await?;
    c.template_send(spammer, "after-unblock", "order_update", &["9"])
        .await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_show_both_directions_and_which_need_a_reply() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let client = contacts_client(&c).await?;
    let anna = "393331110011";
    let bruno = "393331110012";
    let carla = "393331110013";
    c.user_says(carla, 25 * 3_600, false).await?;
    // Bruno's window closes within the hour; Anna's is fresh.
    c.user_says(bruno, 23 * 3_600 + 1_800, false).await?;
    c.user_says(anna, 60, false).await?;
    let reply = c
        .text(anna, "reply-1", "Ciao Anna, come possiamo aiutarti?")
        .await?;

    let users = |page: &v1::ListConversationsResponse| {
        page.conversations
            .iter()
            .map(|c| c.user.clone())
            .collect::<Vec<_>>()
    };
    let list = |only: Vec<v1::list_conversations_request::Only>| {
        let client = client.clone();
        let req = v1::ListConversationsRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            only: only.into_iter().map(|o| o as i32).collect(),
            ..Default::default()
        };
        async move { anyhow::Ok(client.clone().list_conversations(req).await?.into_inner()) }
    };
    let all = eventually("the three conversations are noted", WAIT, || async {
        let page = list(vec![]).await?;
        Ok((page.conversations.len() == 3).then_some(page))
    })
    .await?;
    assert_eq!(
        users(&all),
        vec![anna, bruno, carla],
        "newest message first"
    );
    assert!(all.conversations[0].window_open && !all.conversations[2].window_open);
    assert!(!all.conversations[0].needs_reply, "Anna was answered");
    use v1::list_conversations_request::Only;
    assert_eq!(
        users(&list(vec![Only::OpenWindow]).await?),
        vec![anna, bruno]
    );
    assert_eq!(
        users(&list(vec![Only::NeedsReply]).await?),
        vec![bruno, carla]
    );
    assert_eq!(users(&list(vec![Only::ClosingSoon]).await?), vec![bruno]);
    assert_eq!(
        users(&list(vec![Only::OpenWindow, Only::NeedsReply]).await?),
        vec![bruno]
    );

    // Anna's conversation, a message a page: the reply, then her message.
    let get = |cursor: String| {
        let client = client.clone();
        let req = v1::GetConversationRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            user: anna.into(),
            page_size: 1,
            cursor,
        };
        async move { anyhow::Ok(client.clone().get_conversation(req).await?.into_inner()) }
    };
    let first = get(String::new()).await?;
    assert!(first.window_open && first.window_closes_at.is_some());
    assert_eq!(first.messages.len(), 1);
    let out = &first.messages[0];
    assert_eq!(
        out.direction,
        v1::conversation_message::Direction::Outbound as i32
    );
    assert_eq!(out.message_id, reply.message_id);
    assert!(
        out.body_json.contains("come possiamo aiutarti"),
        "{}",
        out.body_json
    );
    assert!(!first.next_cursor.is_empty());
    let second = get(first.next_cursor.clone()).await?;
    let inbound = &second.messages[0];
    assert_eq!(
        inbound.direction,
        v1::conversation_message::Direction::Inbound as i32
    );
    assert_eq!(
        (inbound.text.as_str(), inbound.status.as_str()),
        ("Ciao!", "RECEIVED")
    );
    assert!(second.next_cursor.is_empty(), "nothing older");

    // Another tenant's number is not found.
    let err = client
        .clone()
        .get_conversation(v1::GetConversationRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: "not-ours".into(),
            user: anna.into(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown number");
    assert_eq!(err.code(), Code::NotFound);
    c.stop().await;
    Ok(())
}
