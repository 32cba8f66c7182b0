//! Authorization of every tenant-facing RPC, table-driven: a new RPC is one more row in
//! `rpcs()`. Against the real services, Postgres and broker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use finestra_platform::auth::{AuthedChannel, Bearer, Owner, Scope};
use finestra_proto::v1;
use finestra_proto::v1::accounts_service_client::AccountsServiceClient;
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::campaign_service_client::CampaignServiceClient;
use finestra_proto::v1::contacts_service_client::ContactsServiceClient;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::window_service_client::WindowServiceClient;
use finestra_proto::v1::{GetWindowRequest, ListOpenWindowsRequest};
use finestra_testkit::{Scope as TestScope, Started};
use futures::future::BoxFuture;
use tonic::Code;

/// The closure of a table row: a client of `$client` on the channel, calling `$method` with
/// the request built from the test's context; only whether it was refused matters.
macro_rules! call {
    ($client:ident, $method:ident, |$ctx:pat_param| $request:expr) => {
        |ch, $ctx| Box::pin(async move { $client::new(ch).$method($request).await.map(|_| ()) })
    };
}

/// One tenant-facing RPC: the scope it needs and a call of it about `tenant`.
struct Rpc {
    name: &'static str,
    service: Service,
    needs: Scope,
    /// Whether the tenant's own key (with the scope) may call it; changing the tenant itself
    /// is for its partner or the operator.
    tenant_self: bool,
    call: fn(&World, AuthedChannel, String) -> BoxFuture<'static, Result<(), tonic::Status>>,
}

/// Every tenant-facing RPC that exists. Add new ones here.
fn rpcs() -> Vec<Rpc> {
    vec![
        Rpc {
            name: "WindowService/GetWindow",
            service: Service::Window,
            needs: Scope::Read,
            tenant_self: true,
            call: |w, ch, tenant| {
                let number = w.number.clone();
                Box::pin(async move {
                    WindowServiceClient::new(ch)
                        .get_window(GetWindowRequest {
                            tenant_id: tenant,
                            phone_number_id: number,
                            user: "393470000001".into(),
                        })
                        .await
                        .map(|_| ())
                })
            },
        },
        Rpc {
            name: "WindowService/ListOpenWindows",
            service: Service::Window,
            needs: Scope::Read,
            tenant_self: true,
            call: |w, ch, tenant| {
                let number = w.number.clone();
                Box::pin(async move {
                    WindowServiceClient::new(ch)
                        .list_open_windows(ListOpenWindowsRequest {
                            tenant_id: tenant,
                            phone_number_id: number,
                            page_size: 10,
                            page_token: String::new(),
                        })
                        .await
                        .map(|_| ())
                })
            },
        },
        accounts(
            "AccountsService/GetTenant",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                get_tenant,
                |Ctx { tenant, .. }| v1::GetTenantRequest { tenant_id: tenant }
            ),
        ),
        accounts(
            "AccountsService/UpdateTenant",
            Scope::Admin,
            false,
            call!(
                AccountsServiceClient,
                update_tenant,
                |Ctx { tenant, .. }| v1::UpdateTenantRequest {
                    tenant_id: tenant,
                    name: "A".into(),
                    tier: 0,
                }
            ),
        ),
        accounts(
            "AccountsService/SetTenantStatus",
            Scope::Admin,
            false,
            call!(
                AccountsServiceClient,
                set_tenant_status,
                |Ctx { tenant, .. }| v1::SetTenantStatusRequest {
                    tenant_id: tenant,
                    status: v1::Status::Active as i32,
                }
            ),
        ),
        accounts(
            "AccountsService/AddNumber",
            Scope::Admin,
            false,
            call!(
                AccountsServiceClient,
                add_number,
                |Ctx { tenant, unique, .. }| v1::AddNumberRequest {
                    phone_number_id: format!("pn{tenant}x{unique}"),
                    tenant_id: tenant,
                    display_phone_number: "+39 02 1".into(),
                    app_secret: "secret-secret".into(),
                    throughput_per_second: 0,
                }
            ),
        ),
        accounts(
            "AccountsService/ListNumbers",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                list_numbers,
                |Ctx { tenant, .. }| v1::ListNumbersRequest {
                    tenant_id: tenant,
                    page_size: 10,
                    page_token: String::new(),
                }
            ),
        ),
        accounts(
            "AccountsService/CreateApiKey",
            Scope::Admin,
            true,
            call!(
                AccountsServiceClient,
                create_api_key,
                |Ctx { tenant, .. }| v1::CreateApiKeyRequest {
                    partner_id: String::new(),
                    tenant_id: tenant,
                    scopes: vec![v1::Scope::Read as i32],
                    label: "authz".into(),
                }
            ),
        ),
        accounts(
            "AccountsService/ListApiKeys",
            Scope::Admin,
            true,
            call!(
                AccountsServiceClient,
                list_api_keys,
                |Ctx { tenant, .. }| v1::ListApiKeysRequest {
                    partner_id: String::new(),
                    tenant_id: tenant,
                    page_size: 10,
                    page_token: String::new(),
                }
            ),
        ),
        accounts(
            "AccountsService/RotateNumberSecret",
            Scope::Admin,
            false,
            |ch,
             Ctx {
                 tenant,
                 number,
                 unique,
                 ..
             }| {
                Box::pin(async move {
                    AccountsServiceClient::new(ch)
                        .rotate_number_secret(v1::RotateNumberSecretRequest {
                            tenant_id: tenant,
                            phone_number_id: number,
                            new_app_secret: format!("rotated-secret-{unique}"),
                            overlap_seconds: 60,
                        })
                        .await
                        .map(|_| ())
                })
            },
        ),
        accounts(
            "AccountsService/CreateTemplate",
            Scope::Admin,
            true,
            call!(
                AccountsServiceClient,
                create_template,
                |Ctx { tenant, unique, .. }| v1::CreateTemplateRequest {
                    tenant_id: tenant,
                    name: format!("promo_{unique}"),
                    language: "it".into(),
                    category: "MARKETING".into(),
                    body: "Ciao {{1}}, sconto del {{2}}%".into(),
                    ..Default::default()
                }
            ),
        ),
        accounts(
            "AccountsService/GetTemplate",
            Scope::Read,
            true,
            |ch,
             Ctx {
                 tenant, template, ..
             }| {
                Box::pin(async move {
                    AccountsServiceClient::new(ch)
                        .get_template(v1::GetTemplateRequest {
                            tenant_id: tenant,
                            template_id: template,
                        })
                        .await
                        .map(|_| ())
                })
            },
        ),
        accounts(
            "AccountsService/ListTemplates",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                list_templates,
                |Ctx { tenant, .. }| v1::ListTemplatesRequest {
                    tenant_id: tenant,
                    page_size: 10,
                    page_token: String::new(),
                }
            ),
        ),
        accounts(
            "AccountsService/GetNumber",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                get_number,
                |Ctx { tenant, number, .. }| v1::GetNumberRequest {
                    tenant_id: tenant,
                    phone_number_id: number,
                }
            ),
        ),
        accounts(
            "AccountsService/GetNumberHealth",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                get_number_health,
                |Ctx { tenant, number, .. }| v1::GetNumberHealthRequest {
                    tenant_id: tenant,
                    phone_number_id: number,
                }
            ),
        ),
        accounts(
            "AccountsService/SetOptOutKeywords",
            Scope::Admin,
            true,
            call!(
                AccountsServiceClient,
                set_opt_out_keywords,
                |Ctx { tenant, .. }| v1::SetOptOutKeywordsRequest {
                    tenant_id: tenant,
                    stop_keywords: vec!["ferma".into()],
                    ..Default::default()
                }
            ),
        ),
        accounts(
            "AccountsService/GetOptOutKeywords",
            Scope::Read,
            true,
            call!(
                AccountsServiceClient,
                get_opt_out_keywords,
                |Ctx { tenant, .. }| v1::GetOptOutKeywordsRequest { tenant_id: tenant }
            ),
        ),
        accounts(
            "AccountsService/UpdateNumber",
            Scope::Admin,
            true,
            call!(
                AccountsServiceClient,
                update_number,
                |Ctx { tenant, number, .. }| v1::UpdateNumberRequest {
                    tenant_id: tenant,
                    phone_number_id: number,
                    display_phone_number: String::new(),
                    throughput_per_second: 80,
                }
            ),
        ),
        accounts(
            "AccountsService/SetNumberStatus",
            Scope::Admin,
            false,
            call!(
                AccountsServiceClient,
                set_number_status,
                |Ctx { tenant, number, .. }| v1::SetNumberStatusRequest {
                    tenant_id: tenant,
                    phone_number_id: number,
                    status: v1::Status::Active as i32,
                }
            ),
        ),
        // Last: deleting is idempotent, but the template is gone for the rows above.
        accounts(
            "AccountsService/DeleteTemplate",
            Scope::Admin,
            true,
            |ch,
             Ctx {
                 tenant, template, ..
             }| {
                Box::pin(async move {
                    AccountsServiceClient::new(ch)
                        .delete_template(v1::DeleteTemplateRequest {
                            tenant_id: tenant,
                            template_id: template,
                        })
                        .await
                        .map(|_| ())
                })
            },
        ),
        billing(
            "BillingService/GetWallet",
            Scope::Read,
            true,
            call!(BillingServiceClient, get_wallet, |c| v1::GetWalletRequest {
                tenant_id: c.tenant,
            }),
        ),
        billing(
            "BillingService/ListWalletHistory",
            Scope::Read,
            true,
            call!(BillingServiceClient, list_wallet_history, |c| {
                v1::ListWalletHistoryRequest {
                    tenant_id: c.tenant,
                    page_size: 10,
                    page_token: String::new(),
                }
            }),
        ),
        billing(
            "BillingService/ListUsage",
            Scope::Read,
            true,
            call!(BillingServiceClient, list_usage, |c| v1::ListUsageRequest {
                tenant_id: c.tenant,
                from: Some(finestra_proto::time::from_micros(0)),
                to: Some(finestra_proto::time::from_micros(i64::MAX / 2)),
                group_by: vec!["day".into()],
            }),
        ),
        billing(
            "BillingService/GetInvoice",
            Scope::Read,
            true,
            call!(BillingServiceClient, get_invoice, |c| {
                v1::GetInvoiceRequest {
                    tenant_id: c.tenant,
                    month: "2026-11".into(),
                    csv: true,
                }
            }),
        ),
        billing(
            "BillingService/QuoteMessage",
            Scope::Read,
            true,
            call!(BillingServiceClient, quote_message, |c| {
                v1::QuoteMessageRequest {
                    tenant_id: c.tenant,
                    phone_number_id: c.number,
                    user: "393470000001".into(),
                    free_form: true,
                    ..Default::default()
                }
            }),
        ),
        billing(
            "BillingService/TopUp",
            Scope::Admin,
            false,
            call!(BillingServiceClient, top_up, |c| v1::TopUpRequest {
                tenant_id: c.tenant,
                amount_micros: 1_000,
                top_up_id: format!("authz-{}", c.unique),
                note: String::new(),
            }),
        ),
        billing(
            "BillingService/SetCreditLimit",
            Scope::Admin,
            false,
            call!(BillingServiceClient, set_credit_limit, |c| {
                v1::SetCreditLimitRequest {
                    tenant_id: c.tenant,
                    credit_limit_micros: 0,
                    low_balance_threshold_micros: 0,
                }
            }),
        ),
        dispatch(
            "DispatchService/SendMessage",
            Scope::Send,
            true,
            call!(DispatchServiceClient, send_message, |c| {
                v1::SendMessageRequest {
                    tenant_id: c.tenant,
                    phone_number_id: c.number,
                    to: "393470000001".into(),
                    idempotency_key: "authz-send".into(),
                    send_at: None,
                    send_at_local: String::new(),
                    content: Some(v1::send_message_request::Content::Text(v1::TextContent {
                        body: "hello".into(),
                        preview_url: false,
                    })),
                }
            }),
        ),
        dispatch(
            "DispatchService/GetMessage",
            Scope::Read,
            true,
            call!(DispatchServiceClient, get_message, |c| {
                v1::GetMessageRequest {
                    message_id: finestra_dispatch::content::message_id(&c.tenant, "authz-send"),
                    tenant_id: c.tenant,
                }
            }),
        ),
        dispatch(
            "DispatchService/ListMessages",
            Scope::Read,
            true,
            call!(DispatchServiceClient, list_messages, |c| {
                v1::ListMessagesRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "DispatchService/StreamEvents",
            Scope::Read,
            true,
            call!(DispatchServiceClient, stream_events, |c| {
                v1::StreamEventsRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "DispatchService/CreateWebhook",
            Scope::Admin,
            true,
            call!(DispatchServiceClient, create_webhook, |c| {
                v1::CreateWebhookRequest {
                    tenant_id: c.tenant,
                    url: "http://127.0.0.1:9/hook".into(),
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "DispatchService/ListWebhooks",
            Scope::Read,
            true,
            call!(DispatchServiceClient, list_webhooks, |c| {
                v1::ListWebhooksRequest {
                    tenant_id: c.tenant,
                }
            }),
        ),
        dispatch(
            "DispatchService/ListDeadLetters",
            Scope::Read,
            true,
            call!(DispatchServiceClient, list_dead_letters, |c| {
                v1::ListDeadLettersRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "DispatchService/Redrive",
            Scope::Admin,
            true,
            call!(DispatchServiceClient, redrive, |c| v1::RedriveRequest {
                tenant_id: c.tenant,
                endpoint_id: "wh_none".into(),
                cursors: Vec::new(),
            }),
        ),
        dispatch(
            "DispatchService/GetScheduledMessage",
            Scope::Read,
            true,
            call!(DispatchServiceClient, get_scheduled_message, |c| {
                v1::GetScheduledMessageRequest {
                    tenant_id: c.tenant,
                    message_id: SEEDED_SCHEDULED.into(),
                }
            }),
        ),
        dispatch(
            "DispatchService/CancelScheduledMessage",
            Scope::Send,
            true,
            call!(DispatchServiceClient, cancel_scheduled_message, |c| {
                v1::CancelScheduledMessageRequest {
                    tenant_id: c.tenant,
                    message_id: SEEDED_SCHEDULED.into(),
                }
            }),
        ),
        dispatch(
            "ContactsService/UpsertContact",
            Scope::Send,
            true,
            call!(ContactsServiceClient, upsert_contact, |c| {
                v1::UpsertContactRequest {
                    tenant_id: c.tenant,
                    user: "+393470000004".into(),
                    add_tags: vec!["authz".into()],
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/GetContact",
            Scope::Read,
            true,
            call!(ContactsServiceClient, get_contact, |c| {
                v1::GetContactRequest {
                    tenant_id: c.tenant,
                    user: SEEDED_CONTACT.into(),
                }
            }),
        ),
        dispatch(
            "ContactsService/ListContacts",
            Scope::Read,
            true,
            call!(ContactsServiceClient, list_contacts, |c| {
                v1::ListContactsRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/ImportContacts",
            Scope::Send,
            true,
            |ch, c| {
                Box::pin(async move {
                    let chunk = v1::ImportContactsChunk {
                        tenant_id: c.tenant,
                        import_id: format!("authz-{}", c.unique),
                        default_calling_code: String::new(),
                        data: b"phone\n+393470000005\n".to_vec(),
                    };
                    ContactsServiceClient::new(ch)
                        .import_contacts(futures::stream::iter(vec![chunk]))
                        .await
                        .map(|_| ())
                })
            },
        ),
        dispatch(
            "ContactsService/GetContactImport",
            Scope::Read,
            true,
            call!(ContactsServiceClient, get_contact_import, |c| {
                v1::GetContactImportRequest {
                    tenant_id: c.tenant,
                    import_id: SEEDED_IMPORT.into(),
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/SaveSegment",
            Scope::Send,
            true,
            call!(ContactsServiceClient, save_segment, |c| {
                v1::SaveSegmentRequest {
                    tenant_id: c.tenant,
                    segment_id: format!("authz-{}", c.unique),
                    name: "authz".into(),
                    filter: None,
                }
            }),
        ),
        dispatch(
            "ContactsService/ListSegments",
            Scope::Read,
            true,
            call!(ContactsServiceClient, list_segments, |c| {
                v1::ListSegmentsRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/DeleteSegment",
            Scope::Send,
            true,
            call!(ContactsServiceClient, delete_segment, |c| {
                v1::DeleteSegmentRequest {
                    tenant_id: c.tenant,
                    segment_id: "authz-none".into(),
                }
            }),
        ),
        dispatch(
            "ContactsService/ListConversations",
            Scope::Read,
            true,
            call!(ContactsServiceClient, list_conversations, |c| {
                v1::ListConversationsRequest {
                    tenant_id: c.tenant,
                    phone_number_id: c.number,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/GetConversation",
            Scope::Read,
            true,
            call!(ContactsServiceClient, get_conversation, |c| {
                v1::GetConversationRequest {
                    tenant_id: c.tenant,
                    phone_number_id: c.number,
                    user: SEEDED_CONTACT.into(),
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "ContactsService/BlockContacts",
            Scope::Send,
            true,
            call!(ContactsServiceClient, block_contacts, |c| {
                // Never the user the send rows message.
                v1::BlockContactsRequest {
                    tenant_id: c.tenant,
                    users: vec!["+393470000077".into()],
                    unblock: false,
                }
            }),
        ),
        dispatch(
            "CampaignService/CreateCampaign",
            Scope::Send,
            true,
            call!(CampaignServiceClient, create_campaign, |c| {
                v1::CreateCampaignRequest {
                    tenant_id: c.tenant,
                    campaign_id: format!("authz-{}", c.unique),
                    phone_number_id: c.number,
                    template_name: SEEDED_OFFER.into(),
                    template_language: "en".into(),
                    parameters: vec!["{{name}}".into()],
                    users: vec![SEEDED_CONTACT.into()],
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "CampaignService/GetCampaign",
            Scope::Read,
            true,
            call!(CampaignServiceClient, get_campaign, |c| {
                v1::GetCampaignRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-draft".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/ListCampaigns",
            Scope::Read,
            true,
            call!(CampaignServiceClient, list_campaigns, |c| {
                v1::ListCampaignsRequest {
                    tenant_id: c.tenant,
                    ..Default::default()
                }
            }),
        ),
        dispatch(
            "CampaignService/QuoteCampaign",
            Scope::Read,
            true,
            call!(CampaignServiceClient, quote_campaign, |c| {
                v1::QuoteCampaignRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-draft".into(),
                    detail: true,
                }
            }),
        ),
        dispatch(
            "CampaignService/LaunchCampaign",
            Scope::Send,
            true,
            call!(CampaignServiceClient, launch_campaign, |c| {
                v1::CampaignActionRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-launch".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/PauseCampaign",
            Scope::Send,
            true,
            call!(CampaignServiceClient, pause_campaign, |c| {
                v1::CampaignActionRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-running".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/ResumeCampaign",
            Scope::Send,
            true,
            call!(CampaignServiceClient, resume_campaign, |c| {
                v1::CampaignActionRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-paused".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/CancelCampaign",
            Scope::Send,
            true,
            call!(CampaignServiceClient, cancel_campaign, |c| {
                v1::CampaignActionRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-cancel".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/WatchCampaign",
            Scope::Read,
            true,
            call!(CampaignServiceClient, watch_campaign, |c| {
                v1::GetCampaignRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-draft".into(),
                }
            }),
        ),
        dispatch(
            "CampaignService/ListCampaignRecipients",
            Scope::Read,
            true,
            call!(CampaignServiceClient, list_campaign_recipients, |c| {
                v1::ListCampaignRecipientsRequest {
                    tenant_id: c.tenant,
                    campaign_id: "authz-running".into(),
                    ..Default::default()
                }
            }),
        ),
    ]
}

/// Tenant A's contact and finished import the read rows ask for.
const SEEDED_CONTACT: &str = "393470000003";
const SEEDED_IMPORT: &str = "authz-seeded";
/// Tenant A's approved marketing template its campaigns send.
const SEEDED_OFFER: &str = "authz_offer";
/// Tenant A's message scheduled far ahead (cancelling it again is fine).
const SEEDED_SCHEDULED: &str = "msg_authz_scheduled";

/// What an accounts call may need: tenant A, its number and template, a unique number.
#[derive(Clone)]
struct Ctx {
    tenant: String,
    number: String,
    template: String,
    unique: u32,
}

type AccountsCall = fn(AuthedChannel, Ctx) -> BoxFuture<'static, Result<(), tonic::Status>>;

/// Accounts RPCs get a unique number per call (for those that create things).
fn accounts(name: &'static str, needs: Scope, tenant_self: bool, call: AccountsCall) -> Rpc {
    Rpc {
        name,
        service: Service::Accounts(call),
        needs,
        tenant_self,
        call: |_, _, _| Box::pin(async { Ok(()) }),
    }
}

fn billing(name: &'static str, needs: Scope, tenant_self: bool, call: AccountsCall) -> Rpc {
    Rpc {
        name,
        service: Service::Billing(call),
        needs,
        tenant_self,
        call: |_, _, _| Box::pin(async { Ok(()) }),
    }
}

fn dispatch(name: &'static str, needs: Scope, tenant_self: bool, call: AccountsCall) -> Rpc {
    Rpc {
        name,
        service: Service::Dispatch(call),
        needs,
        tenant_self,
        call: |_, _, _| Box::pin(async { Ok(()) }),
    }
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// The services that serve tenant-facing RPCs.
#[derive(Clone, Copy)]
enum Service {
    Window,
    Accounts(AccountsCall),
    Billing(AccountsCall),
    Dispatch(AccountsCall),
}

fn endpoint(world: &World, rpc: &Rpc) -> String {
    match rpc.service {
        Service::Window => world.window.running.grpc_url(),
        Service::Accounts(_) => world.accounts.running.grpc_url(),
        Service::Billing(_) => world.billing.running.grpc_url(),
        Service::Dispatch(_) => world.dispatch.running.grpc_url(),
    }
}

struct World {
    scope: TestScope,
    window: Started,
    accounts: Started,
    billing: Started,
    dispatch: Started,
    template: String,
    tenant_a: String,
    number: String,
}

async fn world() -> anyhow::Result<World> {
    let scope = TestScope::new();
    scope.create_topics().await?;
    let (tenant_a, number, _) = scope.tenant_with_number("a", 1).await?;
    scope.tenant_with_number("b", 2).await?;
    let window = finestra_testkit::start_window(&scope, "window", 100).await?;
    let accounts = finestra_testkit::start_accounts(&scope).await?;
    let billing = finestra_testkit::start_billing(&scope, "billing").await?;
    // Its network is never reached here (an address nothing listens on).
    let dispatch = finestra_testkit::start_dispatch_with(
        finestra_testkit::dispatch_config(
            &scope,
            &billing.running.grpc_url(),
            "http://127.0.0.1:9",
            "unused",
        )
        .await?,
    )
    .await?;
    // The user the billing rows quote a free-form reply to has an open window.
    sqlx::query(
        "INSERT INTO windows.pair_state (tenant_id, phone_number_id, user_key, csw_until)
         VALUES ($1, $2, '393470000001', 9000000000000000)",
    )
    .bind(&tenant_a)
    .bind(&number)
    .execute(&finestra_testkit::infra().await?.pool)
    .await?;
    sqlx::query(
        "INSERT INTO dispatch.contacts (tenant_id, user_key, source, created_at, updated_at)
         VALUES ($1, $2, 'api', 1, 1)",
    )
    .bind(&tenant_a)
    .bind(SEEDED_CONTACT)
    .execute(&finestra_testkit::infra().await?.pool)
    .await?;
    sqlx::query(
        "INSERT INTO dispatch.contact_imports (tenant_id, import_id, state, started_at, heartbeat_at)
         VALUES ($1, $2, 'done', 1, 1)",
    )
    .bind(&tenant_a)
    .bind(SEEDED_IMPORT)
    .execute(&finestra_testkit::infra().await?.pool)
    .await?;
    sqlx::query(
        "INSERT INTO dispatch.scheduled_messages
             (tenant_id, idempotency_key, message_id, request, send_at, created_at)
         VALUES ($1, 'authz-scheduled', $2, '', 9000000000000000, 1)",
    )
    .bind(&tenant_a)
    .bind(SEEDED_SCHEDULED)
    .execute(&finestra_testkit::infra().await?.pool)
    .await?;
    seed_campaigns(&scope, &tenant_a, &number, &dispatch).await?;
    let template: String = sqlx::query_scalar(
        "INSERT INTO accounts.templates (template_id, tenant_id, name, language, category, body, parameter_count)
         VALUES ('tpl_' || $1, $1, 'order_ready', 'en', 'UTILITY', 'Order {{1}} is ready', 1) RETURNING template_id",
    )
    .bind(&tenant_a)
    .fetch_one(&finestra_testkit::infra().await?.pool)
    .await?;
    Ok(World {
        scope,
        window,
        accounts,
        billing,
        dispatch,
        template,
        tenant_a,
        number,
    })
}

/// Tenant A's campaigns the campaign rows act on, one per state an action starts from. Each
/// starts 20 days ahead, so the runner never sends them.
async fn seed_campaigns(
    scope: &TestScope,
    tenant: &str,
    number: &str,
    dispatch: &Started,
) -> anyhow::Result<()> {
    let pool = &finestra_testkit::infra().await?.pool;
    sqlx::query(
        "INSERT INTO accounts.templates
             (template_id, tenant_id, name, language, category, body, parameter_count, status)
         VALUES ('tpl_offer_' || $1, $1, $2, 'en', 'MARKETING', 'Hi {{1}}', 1, 'APPROVED')",
    )
    .bind(tenant)
    .bind(SEEDED_OFFER)
    .execute(pool)
    .await?;
    let key = scope.tenant_key("a", &[Scope::Send, Scope::Read]).await?;
    let mut client = CampaignServiceClient::new(
        finestra_testkit::authed_channel(dispatch.running.grpc_url(), &key).await?,
    );
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64
        + 20 * 24 * 3_600 * 1_000_000;
    for (id, state) in [
        ("authz-draft", "DRAFT"),
        ("authz-launch", "DRAFT"),
        ("authz-cancel", "DRAFT"),
        ("authz-running", "RUNNING"),
        ("authz-paused", "PAUSED"),
    ] {
        client
            .create_campaign(v1::CreateCampaignRequest {
                tenant_id: tenant.into(),
                campaign_id: id.into(),
                phone_number_id: number.into(),
                template_name: SEEDED_OFFER.into(),
                template_language: "en".into(),
                parameters: vec!["{{name}}".into()],
                users: vec![SEEDED_CONTACT.into()],
                start_at: Some(finestra_proto::time::from_micros(later)),
                ..Default::default()
            })
            .await?;
        sqlx::query(
            "UPDATE dispatch.campaigns SET state = $3, launched_at = 1
              WHERE tenant_id = $1 AND campaign_id = $2 AND $3 <> 'DRAFT'",
        )
        .bind(tenant)
        .bind(id)
        .bind(state)
        .execute(pool)
        .await?;
    }
    Ok(())
}

impl World {
    fn ctx(&self) -> Ctx {
        Ctx {
            tenant: self.tenant_a.clone(),
            number: self.number.clone(),
            template: self.template.clone(),
            unique: UNIQUE.fetch_add(1, Ordering::SeqCst),
        }
    }
}

async fn call(world: &World, rpc: &Rpc, key: &str) -> Result<(), tonic::Status> {
    let channel = finestra_testkit::authed_channel(endpoint(world, rpc), key)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    match rpc.service {
        Service::Accounts(f) | Service::Billing(f) | Service::Dispatch(f) => {
            f(channel, world.ctx()).await
        }
        Service::Window => (rpc.call)(world, channel, world.tenant_a.clone()).await,
    }
}

fn code(r: &Result<(), tonic::Status>) -> Code {
    r.as_ref().err().map_or(Code::Ok, tonic::Status::code)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tenant_facing_rpc_enforces_reach_and_scope() -> anyhow::Result<()> {
    let w = world().await?;
    let s = &w.scope;
    let other_partner = format!("py{}", s.id());
    finestra_registry::Registry::new(finestra_testkit::infra().await?.pool.clone())
        .put_partner(&other_partner, "Other BSP")
        .await?;
    let all = [Scope::Admin];
    let own_admin = s.tenant_key("a", &all).await?;
    let own_partner = s
        .key(
            Owner::Partner {
                partner_id: s.partner_id(),
            },
            &all,
        )
        .await?;
    let operator = s.key(Owner::Operator, &all).await?;
    let tenant_b = s.tenant_key("b", &all).await?;
    let partner_y = s
        .key(
            Owner::Partner {
                partner_id: other_partner,
            },
            &all,
        )
        .await?;
    let read_only = s.tenant_key("a", &[Scope::Read]).await?;

    for rpc in rpcs() {
        for (who, key) in [("A's partner", &own_partner), ("operator", &operator)] {
            assert_eq!(
                code(&call(&w, &rpc, key).await),
                Code::Ok,
                "{}: {who}",
                rpc.name
            );
        }
        let own = if rpc.tenant_self {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(
            code(&call(&w, &rpc, &own_admin).await),
            own,
            "{}: tenant A's admin key",
            rpc.name
        );
        for (who, key) in [("tenant B", &tenant_b), ("partner Y", &partner_y)] {
            let r = call(&w, &rpc, key).await;
            assert_eq!(
                code(&r),
                Code::NotFound,
                "{}: {who} must not see tenant A",
                rpc.name
            );
            if let Err(status) = &r {
                assert_eq!(
                    finestra_platform::status::reason_of(status).as_deref(),
                    Some("NOT_FOUND")
                );
            }
        }
        let expected = if rpc.needs == Scope::Read && rpc.tenant_self {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(
            code(&call(&w, &rpc, &read_only).await),
            expected,
            "{}: read-only key",
            rpc.name
        );
        for (who, key) in [("garbage key", "fin_test_nope"), ("empty key", "")] {
            assert_eq!(
                code(&call(&w, &rpc, key).await),
                Code::Unauthenticated,
                "{}: {who}",
                rpc.name
            );
        }
        // No authorization header at all.
        let bare = tonic::transport::Channel::from_shared(endpoint(&w, &rpc))?
            .connect()
            .await?;
        let anonymous =
            tonic::service::interceptor::InterceptedService::new(bare, Bearer::anonymous());
        let r = match rpc.service {
            Service::Accounts(f) | Service::Billing(f) | Service::Dispatch(f) => {
                f(anonymous, w.ctx()).await
            }
            Service::Window => (rpc.call)(&w, anonymous, w.tenant_a.clone()).await,
        };
        assert_eq!(code(&r), Code::Unauthenticated, "{}: no key", rpc.name);
    }
    w.window.stop().await;
    w.accounts.stop().await;
    w.billing.stop().await;
    w.dispatch.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_within_5_seconds() -> anyhow::Result<()> {
    let w = world().await?;
    let infra = finestra_testkit::infra().await?;
    let (info, key) = finestra_registry::keys::create(
        &infra.pool,
        &Owner::Tenant {
            partner_id: w.scope.partner_id(),
            tenant_id: w.tenant_a.clone(),
        },
        &[Scope::Read],
        "to revoke",
        "fin_test_",
    )
    .await?;
    let rpcs = rpcs();
    let rpc = &rpcs[0];
    assert_eq!(
        code(&call(&w, rpc, &key).await),
        Code::Ok,
        "works (and is now cached)"
    );
    // Revoked through the control plane (another service than the one it is used on).
    let partner_admin = w
        .scope
        .key(
            Owner::Partner {
                partner_id: w.scope.partner_id(),
            },
            &[Scope::Admin],
        )
        .await?;
    AccountsServiceClient::new(
        finestra_testkit::authed_channel(w.accounts.running.grpc_url(), &partner_admin).await?,
    )
    .revoke_api_key(v1::RevokeApiKeyRequest {
        key_id: info.key_id.clone(),
    })
    .await?;
    let revoked_at = Instant::now();
    loop {
        if code(&call(&w, rpc, &key).await) == Code::Unauthenticated {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "revocation took effect on the window service after {:?}",
        revoked_at.elapsed()
    );
    w.window.stop().await;
    Ok(())
}

/// A `tracing` writer into a shared buffer, to read what the services logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_never_appear_in_plaintext_in_the_database_logs_or_errors() -> anyhow::Result<()> {
    let logs = Captured::default();
    // This test's process logs everything (debug included) into the buffer.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(logs.clone())
        .try_init();
    let w = world().await?;
    let infra = finestra_testkit::infra().await?;
    let key = w.scope.tenant_key("a", &[Scope::Read]).await?;
    let secret_part = &key["fin_test_".len()..];
    let rpcs = rpcs();
    assert_eq!(code(&call(&w, &rpcs[0], &key).await), Code::Ok);
    // A wrong key close to the real one: its error must not echo it either.
    let wrong = format!("{key}x");
    let refused = call(&w, &rpcs[0], &wrong).await.expect_err("wrong key");
    assert!(
        !refused.message().contains(secret_part),
        "error echoes the key: {}",
        refused.message()
    );

    // A key created over the control plane's RPC: its secret is in the response only.
    let partner_admin = w
        .scope
        .key(
            Owner::Partner {
                partner_id: w.scope.partner_id(),
            },
            &[Scope::Admin],
        )
        .await?;
    let created = AccountsServiceClient::new(
        finestra_testkit::authed_channel(w.accounts.running.grpc_url(), &partner_admin).await?,
    )
    .create_api_key(v1::CreateApiKeyRequest {
        partner_id: String::new(),
        tenant_id: w.tenant_a.clone(),
        scopes: vec![v1::Scope::Read as i32],
        label: "plaintext check".into(),
    })
    .await?
    .into_inner();
    let rpc_secret = created.secret["fin_test_".len()..].to_owned();
    assert_eq!(code(&call(&w, &rpcs[0], &created.secret).await), Code::Ok);

    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(k)::text FROM accounts.api_keys k WHERE tenant_id = $1",
    )
    .bind(&w.tenant_a)
    .fetch_all(&infra.pool)
    .await?;
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(
            !row.contains(secret_part),
            "a key is stored in plaintext: {row}"
        );
        assert!(
            !row.contains(&rpc_secret),
            "a key is stored in plaintext: {row}"
        );
    }
    w.window.stop().await;
    w.accounts.stop().await;
    let logged = String::from_utf8_lossy(&logs.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?)
        .to_string();
    assert!(!logged.is_empty(), "the services logged something");
    assert!(!logged.contains(secret_part), "a key was logged");
    assert!(!logged.contains(&rpc_secret), "a key was logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn partner_level_calls_stay_within_the_partner_and_suspension_stops_keys()
-> anyhow::Result<()> {
    let w = world().await?;
    let s = &w.scope;
    let url = w.accounts.running.grpc_url();
    let client = |key: String| {
        let url = url.clone();
        async move {
            anyhow::Ok(AccountsServiceClient::new(
                finestra_testkit::authed_channel(url, &key).await?,
            ))
        }
    };
    let other_partner = format!("pz{}", s.id());
    finestra_registry::Registry::new(finestra_testkit::infra().await?.pool.clone())
        .put_partner(&other_partner, "Other BSP")
        .await?;
    let mut operator = client(s.key(Owner::Operator, &[Scope::Admin]).await?).await?;
    let mut partner_x = client(
        s.key(
            Owner::Partner {
                partner_id: s.partner_id(),
            },
            &[Scope::Admin],
        )
        .await?,
    )
    .await?;
    let mut partner_y = client(
        s.key(
            Owner::Partner {
                partner_id: other_partner.clone(),
            },
            &[Scope::Admin],
        )
        .await?,
    )
    .await?;
    let mut tenant_a = client(s.tenant_key("a", &[Scope::Admin]).await?).await?;
    let x = s.partner_id();

    let get = |p: &str| v1::GetPartnerRequest {
        partner_id: p.to_owned(),
    };
    let list = |p: &str| v1::ListTenantsRequest {
        partner_id: p.to_owned(),
        page_size: 10,
        page_token: String::new(),
    };
    assert!(partner_x.get_partner(get(&x)).await.is_ok());
    assert!(partner_x.list_tenants(list(&x)).await.is_ok());
    assert!(operator.list_tenants(list(&x)).await.is_ok());
    for (who, c) in [("partner Y", &mut partner_y), ("tenant A", &mut tenant_a)] {
        assert_eq!(
            c.get_partner(get(&x)).await.err().map(|e| e.code()),
            Some(Code::NotFound),
            "{who}"
        );
        assert_eq!(
            c.list_tenants(list(&x)).await.err().map(|e| e.code()),
            Some(Code::NotFound),
            "{who}"
        );
        let create = v1::CreateTenantRequest {
            partner_id: x.clone(),
            tenant_id: format!("t{}-new", s.id()),
            name: "N".into(),
            ..Default::default()
        };
        assert_eq!(
            c.create_tenant(create).await.err().map(|e| e.code()),
            Some(Code::NotFound),
            "{who}"
        );
    }
    // Operator-only calls.
    let create_partner = v1::CreatePartnerRequest {
        partner_id: format!("pw{}", s.id()),
        name: "W".into(),
    };
    assert_eq!(
        partner_x
            .create_partner(create_partner.clone())
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    assert!(operator.create_partner(create_partner).await.is_ok());

    // An operator key is revoked by the operator only; to others it does not exist.
    let infra = finestra_testkit::infra().await?;
    let (spare, _) = finestra_registry::keys::create(
        &infra.pool,
        &Owner::Operator,
        &[Scope::Read],
        "spare",
        "fin_test_",
    )
    .await?;
    let revoke = v1::RevokeApiKeyRequest {
        key_id: spare.key_id.clone(),
    };
    assert_eq!(
        partner_x
            .revoke_api_key(revoke.clone())
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::NotFound)
    );
    assert!(operator.revoke_api_key(revoke).await.is_ok());

    // Suspending tenant A stops its keys everywhere (here: the window service).
    let a_key = s.tenant_key("a", &[Scope::Read]).await?;
    let rpcs = rpcs();
    assert_eq!(code(&call(&w, &rpcs[0], &a_key).await), Code::Ok);
    partner_x
        .set_tenant_status(v1::SetTenantStatusRequest {
            tenant_id: w.tenant_a.clone(),
            status: v1::Status::Suspended as i32,
        })
        .await?;
    let suspended_at = Instant::now();
    while code(&call(&w, &rpcs[0], &a_key).await) != Code::Unauthenticated {
        assert!(
            suspended_at.elapsed() < Duration::from_secs(5),
            "a suspended tenant's key still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.window.stop().await;
    w.accounts.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_secrets_and_names_are_refused_with_their_rule_before_any_store_sees_them()
-> anyhow::Result<()> {
    fn refused<T>(r: Result<T, tonic::Status>, field: &str, rule: &str) {
        let Err(e) = r else {
            panic!("{field} accepted");
        };
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().contains(rule) && !e.message().contains("constraint"),
            "{field}: {}",
            e.message()
        );
    }
    let s = TestScope::new();
    s.create_topics().await?;
    let (tenant, _, _) = s.tenant_with_number("ids", 1).await?;
    let accounts = finestra_testkit::start_accounts(&s).await?;
    let mut operator = AccountsServiceClient::new(
        finestra_testkit::authed_channel(
            accounts.running.grpc_url(),
            &s.key(Owner::Operator, &[Scope::Admin]).await?,
        )
        .await?,
    );
    let partner = |id: &str, name: &str| v1::CreatePartnerRequest {
        partner_id: id.into(),
        name: name.into(),
    };
    for bad in ["Upper", "-dash", "sp ace", &"p".repeat(64)] {
        refused(
            operator.create_partner(partner(bad, "BSP")).await,
            "partner_id",
            finestra_domain::ids::ACCOUNT_ID_RULE,
        );
    }
    refused(
        operator
            .create_partner(partner(&format!("pn{}", s.id()), &"n".repeat(201)))
            .await,
        "name",
        finestra_domain::ids::NAME_RULE,
    );
    let create_tenant = |id: &str, waba: &str| v1::CreateTenantRequest {
        partner_id: s.partner_id(),
        tenant_id: id.into(),
        name: "Shop".into(),
        waba_id: waba.into(),
        ..Default::default()
    };
    refused(
        operator
            .create_tenant(create_tenant(&format!("{}Shop", s.tenant_prefix()), ""))
            .await,
        "tenant_id",
        finestra_domain::ids::ACCOUNT_ID_RULE,
    );
    refused(
        operator
            .create_tenant(create_tenant(&s.tenant_id("shop"), "waba 1"))
            .await,
        "waba_id",
        finestra_domain::ids::NETWORK_ID_RULE,
    );
    let number = |id: &str, secret: &str| v1::AddNumberRequest {
        tenant_id: tenant.clone(),
        phone_number_id: id.into(),
        display_phone_number: "+39 02 000".into(),
        app_secret: secret.into(),
        ..Default::default()
    };
    refused(
        operator
            .add_number(number("pn/1", "long-enough-secret"))
            .await,
        "phone_number_id",
        finestra_domain::ids::NETWORK_ID_RULE,
    );
    refused(
        operator
            .add_number(number(&s.phone_number_id(9), "short"))
            .await,
        "app_secret",
        finestra_domain::ids::SECRET_RULE,
    );
    // The same inputs, well formed, are taken.
    operator
        .create_tenant(create_tenant(
            &s.tenant_id("shop"),
            &format!("waba{}", s.id()),
        ))
        .await?;
    operator
        .add_number(number(&s.phone_number_id(9), "long-enough-secret"))
        .await?;
    accounts.stop().await;
    Ok(())
}
