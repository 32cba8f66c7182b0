//! `finestra partner|tenant|number|key|template …`: the control plane, over the accounts
//! service's gRPC API.

use clap::Subcommand;
use finestra_proto::v1;

use crate::*;

#[derive(Subcommand)]
pub enum PartnerCommand {
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    Create {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// 250, 2000, 10000, 100000 (default 250).
        #[arg(long, default_value_t = 0)]
        tier: u32,
        /// The provider's business account id (its template webhooks name it).
        #[arg(long)]
        waba_id: Option<String>,
    },
    List {
        #[arg(long)]
        partner: String,
    },
    Suspend {
        #[arg(long)]
        id: String,
    },
    /// Shows a tenant's limits; with any of --rate/--burst/--weight, sets those (the partner or
    /// the operator; 0 goes back to the platform's default, an omitted flag keeps its value).
    Limits {
        #[arg(long)]
        id: String,
        /// SendMessage calls per second, sustained (1..100000).
        #[arg(long)]
        rate: Option<u32>,
        /// Calls that may come back to back above the rate (1..1000000).
        #[arg(long)]
        burst: Option<u32>,
        /// Share when tenants contend (1..100).
        #[arg(long)]
        weight: Option<u32>,
        /// Marketing templates a user may receive per window (0: the platform's default).
        #[arg(long)]
        marketing_cap: Option<u32>,
        /// The frequency cap's window in days (0: the platform's default).
        #[arg(long)]
        marketing_cap_days: Option<u32>,
    },
    /// The words that, alone in a user's message, stop or resume marketing (shown without
    /// flags; an empty value, e.g. `--stop ""`, goes back to the platform's list).
    OptOutKeywords {
        #[arg(long)]
        id: String,
        /// Comma-separated.
        #[arg(long, value_delimiter = ',')]
        stop: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        start: Option<Vec<String>>,
        /// What the tenant answers a user who stops with a keyword (empty: nothing).
        #[arg(long)]
        stop_reply: Option<String>,
        /// What it answers one who resumes.
        #[arg(long)]
        start_reply: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum NumberCommand {
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        display: String,
        /// The app secret that signs this number's webhooks.
        #[arg(long, env = "FINESTRA_APP_SECRET", hide_env_values = true)]
        app_secret: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    /// What the network says of the number: quality rating, messaging limit, the tier
    /// enforced from it, the account's status.
    Health {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key for a partner (operator) or a tenant; the secret is printed once.
    Create {
        #[arg(long, conflicts_with = "tenant")]
        partner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Comma-separated: read, send, admin.
        #[arg(long, default_value = "read")]
        scopes: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    List {
        #[arg(long, conflicts_with = "tenant")]
        partner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key; every service refuses it within seconds.
    Revoke {
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        language: String,
        /// MARKETING, UTILITY or AUTHENTICATION.
        #[arg(long)]
        category: String,
        /// With positional parameters {{1}}..{{n}}.
        #[arg(long)]
        body: String,
        #[arg(long, default_value = "")]
        header: String,
        #[arg(long, default_value = "")]
        footer: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Replace a template's content: the network reviews it again.
    Edit {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        body: String,
        #[arg(long, default_value = "")]
        header: String,
        #[arg(long, default_value = "")]
        footer: String,
        /// A new category (default: keep it).
        #[arg(long, default_value = "")]
        category: String,
    },
    /// Submit to the network a template it has not received (it was unreachable when the
    /// template was made).
    Submit {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Read the tenant's templates back from the network and bring them in line: statuses,
    /// templates deleted there, templates made there directly, submissions owed.
    Sync {
        #[arg(long)]
        tenant: String,
    },
    /// Delete a template here and at the network.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Operator: apply a provider review (APPROVED, REJECTED, PAUSED, UNPAUSED, DISABLED,
    /// RECATEGORISED).
    Review {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        event: String,
        #[arg(long, default_value = "")]
        new_category: String,
    },
}

fn template_json(t: &v1::Template) -> serde_json::Value {
    serde_json::json!({
        "template_id": t.template_id, "tenant_id": t.tenant_id, "name": t.name, "language": t.language,
        "category": t.category, "status": t.status, "parameter_count": t.parameter_count, "pauses": t.pauses,
        "body": t.body, "provider_template_id": t.provider_template_id, "submitted": t.submitted,
        "status_reason": t.status_reason,
    })
}

fn print_template(t: &v1::Template, json: bool) {
    if json {
        println!("{}", template_json(t));
    } else {
        let network = if t.submitted {
            format!("network id {}", t.provider_template_id)
        } else {
            "not yet submitted".into()
        };
        let reason = if t.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", t.status_reason)
        };
        println!(
            "{:<24} {:<20} {:<6} {:<15} {:<9} {} parameter(s), {network}{reason}",
            t.template_id, t.name, t.language, t.category, t.status, t.parameter_count
        );
    }
}

pub async fn partner(api: &Api, command: PartnerCommand, json: bool) -> anyhow::Result<()> {
    let mut c = accounts(api).await?;
    match command {
        PartnerCommand::Create { id, name } => {
            let p = c
                .create_partner(v1::CreatePartnerRequest {
                    partner_id: id,
                    name,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"partner_id": p.partner_id, "name": p.name})
                );
            } else {
                println!("partner {} ({}) created", p.partner_id, p.name);
            }
        }
        PartnerCommand::List => {
            let mut token = String::new();
            loop {
                let page = c
                    .list_partners(v1::ListPartnersRequest {
                        page_size: 100,
                        page_token: token,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for p in &page.partners {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"partner_id": p.partner_id, "name": p.name, "status": status_name(p.status)})
                        );
                    } else {
                        println!(
                            "{:<32} {:<10} {}",
                            p.partner_id,
                            status_name(p.status),
                            p.name
                        );
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}

pub async fn tenant(api: &Api, command: TenantCommand, json: bool) -> anyhow::Result<()> {
    let mut c = accounts(api).await?;
    let print = |t: &v1::Tenant| {
        let limits = t.limits.unwrap_or_default();
        let or_default = |v: u32| {
            if v == 0 {
                "default".to_owned()
            } else {
                v.to_string()
            }
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"tenant_id": t.tenant_id, "partner_id": t.partner_id, "name": t.name, "status": status_name(t.status), "tier": t.tier,
                    "limits": {"send_rate_per_second": limits.send_rate_per_second, "send_burst": limits.send_burst, "weight": limits.weight}})
            );
        } else {
            println!(
                "{:<32} {:<20} {:<10} tier {:<7} rate {}/s burst {} weight {}  {}",
                t.tenant_id,
                t.partner_id,
                status_name(t.status),
                t.tier,
                or_default(limits.send_rate_per_second),
                or_default(limits.send_burst),
                or_default(limits.weight),
                t.name
            );
        }
    };
    match command {
        TenantCommand::Create {
            partner,
            id,
            name,
            tier,
            waba_id,
        } => {
            let t = c
                .create_tenant(v1::CreateTenantRequest {
                    partner_id: partner,
                    tenant_id: id,
                    name,
                    tier,
                    waba_id: waba_id.unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print(&t);
        }
        TenantCommand::List { partner } => {
            for_each_page(
                |page_token| {
                    let mut c = c.clone();
                    let request = v1::ListTenantsRequest {
                        partner_id: partner.clone(),
                        page_size: 100,
                        page_token,
                    };
                    async move {
                        let page = c.list_tenants(request).await?.into_inner();
                        Ok((page.tenants, page.next_page_token))
                    }
                },
                print,
            )
            .await?;
        }
        TenantCommand::Suspend { id } => {
            let t = c
                .set_tenant_status(v1::SetTenantStatusRequest {
                    tenant_id: id,
                    status: v1::Status::Suspended as i32,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print(&t);
        }
        TenantCommand::OptOutKeywords {
            id,
            stop,
            start,
            stop_reply,
            start_reply,
        } => {
            let now = c
                .get_opt_out_keywords(v1::GetOptOutKeywordsRequest {
                    tenant_id: id.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let k = if stop.is_none()
                && start.is_none()
                && stop_reply.is_none()
                && start_reply.is_none()
            {
                now
            } else {
                let cleaned = |l: Vec<String>| -> Vec<String> {
                    l.into_iter().filter(|k| !k.trim().is_empty()).collect()
                };
                c.set_opt_out_keywords(v1::SetOptOutKeywordsRequest {
                    tenant_id: id,
                    stop_keywords: stop.map(cleaned).unwrap_or(now.stop_keywords),
                    start_keywords: start.map(cleaned).unwrap_or(now.start_keywords),
                    stop_reply: stop_reply.unwrap_or(now.stop_reply),
                    start_reply: start_reply.unwrap_or(now.start_reply),
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenant_id": k.tenant_id,
                        "stop": k.effective_stop_keywords, "start": k.effective_start_keywords})
                );
            } else {
                println!(
                    "{}: stop on {}; start on {}",
                    k.tenant_id,
                    k.effective_stop_keywords.join(", "),
                    k.effective_start_keywords.join(", ")
                );
            }
        }
        TenantCommand::Limits {
            id,
            rate,
            burst,
            weight,
            marketing_cap,
            marketing_cap_days,
        } => {
            let t = c
                .get_tenant(v1::GetTenantRequest {
                    tenant_id: id.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let t = if rate.is_none()
                && burst.is_none()
                && weight.is_none()
                && marketing_cap.is_none()
                && marketing_cap_days.is_none()
            {
                t
            } else {
                // An omitted flag keeps what is set.
                let now = t.limits.unwrap_or_default();
                c.set_tenant_limits(v1::SetTenantLimitsRequest {
                    tenant_id: id,
                    limits: Some(v1::TenantLimits {
                        send_rate_per_second: rate.unwrap_or(now.send_rate_per_second),
                        send_burst: burst.unwrap_or(now.send_burst),
                        weight: weight.unwrap_or(now.weight),
                        marketing_cap_per_user: marketing_cap.unwrap_or(now.marketing_cap_per_user),
                        marketing_cap_days: marketing_cap_days.unwrap_or(now.marketing_cap_days),
                    }),
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
            };
            print(&t);
        }
    }
    Ok(())
}

pub async fn number(api: &Api, command: NumberCommand, json: bool) -> anyhow::Result<()> {
    let mut c = accounts(api).await?;
    let print = |n: &v1::Number| {
        if json {
            println!(
                "{}",
                serde_json::json!({"phone_number_id": n.phone_number_id, "tenant_id": n.tenant_id, "display_phone_number": n.display_phone_number, "throughput_per_second": n.throughput_per_second})
            );
        } else {
            println!(
                "{:<24} {:<20} {:<28} {} msg/s",
                n.phone_number_id, n.display_phone_number, n.tenant_id, n.throughput_per_second
            );
        }
    };
    match command {
        NumberCommand::Add {
            tenant,
            phone_number_id,
            display,
            app_secret,
        } => {
            let n = c
                .add_number(v1::AddNumberRequest {
                    tenant_id: tenant,
                    phone_number_id,
                    display_phone_number: display,
                    app_secret,
                    throughput_per_second: 0,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print(&n);
        }
        NumberCommand::List { tenant } => {
            for_each_page(
                |page_token| {
                    let mut c = c.clone();
                    let request = v1::ListNumbersRequest {
                        tenant_id: tenant.clone(),
                        page_size: 1_000,
                        page_token,
                    };
                    async move {
                        let page = c.list_numbers(request).await?.into_inner();
                        Ok((page.numbers, page.next_page_token))
                    }
                },
                print,
            )
            .await?;
        }
        NumberCommand::Health {
            tenant,
            phone_number_id,
        } => {
            let h = c
                .get_number_health(v1::GetNumberHealthRequest {
                    tenant_id: tenant,
                    phone_number_id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let when = |t: &Option<finestra_proto::prost_types::Timestamp>| fmt_ts(t.as_ref());
            let tier = if h.tier == 0 {
                "unlimited".to_owned()
            } else {
                format!("{} users / 24 h", h.tier)
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tenant_id": h.tenant_id, "phone_number_id": h.phone_number_id,
                        "quality_rating": h.quality_rating, "messaging_limit": h.messaging_limit,
                        "quality_event": h.quality_event, "tier": h.tier,
                        "account_status": h.account_status, "account_detail": h.account_detail,
                    })
                );
            } else {
                println!(
                    "{} of {}: quality {}, messaging limit {} (last event {} at {})",
                    h.phone_number_id,
                    h.tenant_id,
                    h.quality_rating,
                    if h.messaging_limit.is_empty() {
                        "not yet told"
                    } else {
                        &h.messaging_limit
                    },
                    if h.quality_event.is_empty() {
                        "none"
                    } else {
                        &h.quality_event
                    },
                    when(&h.quality_event_at)
                );
                println!("  tier enforced: {tier}");
                if !h.account_status.is_empty() {
                    println!(
                        "  account: {} at {} {}",
                        h.account_status,
                        when(&h.account_status_at),
                        h.account_detail
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn key(api: &Api, command: KeyCommand, json: bool) -> anyhow::Result<()> {
    let mut c = accounts(api).await?;
    let print = |k: &v1::ApiKey| {
        if json {
            println!(
                "{}",
                serde_json::json!({"key_id": k.key_id, "prefix": k.display_prefix, "partner_id": k.partner_id, "tenant_id": k.tenant_id, "scopes": scope_names(&k.scopes), "revoked": k.revoked_at.is_some()})
            );
        } else {
            let revoked = if k.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            };
            println!(
                "{:<22} {:<14}… {:<16} {:<8} last used {}",
                k.key_id,
                k.display_prefix,
                scope_names(&k.scopes),
                revoked,
                fmt_ts(k.last_used_at.as_ref())
            );
        }
    };
    match command {
        KeyCommand::Create {
            partner,
            tenant,
            scopes,
            label,
        } => {
            let created = c
                .create_api_key(v1::CreateApiKeyRequest {
                    partner_id: partner.unwrap_or_default(),
                    tenant_id: tenant.unwrap_or_default(),
                    scopes: parse_scopes(&scopes)?,
                    label,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let key = created.key.context("the service returned no key")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key_id": key.key_id, "secret": created.secret, "scopes": scope_names(&key.scopes)})
                );
            } else {
                println!(
                    "key {} [{}] (shown once, store it now):\n{}",
                    key.key_id,
                    scope_names(&key.scopes),
                    created.secret
                );
            }
        }
        KeyCommand::List { partner, tenant } => {
            for_each_page(
                |page_token| {
                    let mut c = c.clone();
                    let request = v1::ListApiKeysRequest {
                        partner_id: partner.clone().unwrap_or_default(),
                        tenant_id: tenant.clone().unwrap_or_default(),
                        page_size: 1_000,
                        page_token,
                    };
                    async move {
                        let page = c.list_api_keys(request).await?.into_inner();
                        Ok((page.keys, page.next_page_token))
                    }
                },
                print,
            )
            .await?;
        }
        KeyCommand::Revoke { key_id } => {
            let k = c
                .revoke_api_key(v1::RevokeApiKeyRequest { key_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print(&k);
        }
    }
    Ok(())
}

pub async fn template(api: &Api, command: TemplateCommand, json: bool) -> anyhow::Result<()> {
    let mut c = accounts(api).await?;
    match command {
        TemplateCommand::Create {
            tenant,
            name,
            language,
            category,
            body,
            header,
            footer,
        } => {
            let t = c
                .create_template(v1::CreateTemplateRequest {
                    tenant_id: tenant,
                    name,
                    language,
                    category,
                    body,
                    header,
                    footer,
                    buttons_json: String::new(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_template(&t, json);
        }
        TemplateCommand::List { tenant } => {
            for_each_page(
                |page_token| {
                    let mut c = c.clone();
                    let request = v1::ListTemplatesRequest {
                        tenant_id: tenant.clone(),
                        page_size: 1_000,
                        page_token,
                    };
                    async move {
                        let page = c.list_templates(request).await?.into_inner();
                        Ok((page.templates, page.next_page_token))
                    }
                },
                |t| print_template(t, json),
            )
            .await?;
        }
        TemplateCommand::Show { tenant, id } => {
            let t = c
                .get_template(v1::GetTemplateRequest {
                    tenant_id: tenant,
                    template_id: id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", template_json(&t));
            } else {
                print_template(&t, false);
                println!("  {}", t.body);
            }
        }
        TemplateCommand::Edit {
            tenant,
            id,
            body,
            header,
            footer,
            category,
        } => {
            let t = c
                .edit_template(v1::EditTemplateRequest {
                    tenant_id: tenant,
                    template_id: id,
                    body,
                    header,
                    footer,
                    buttons_json: String::new(),
                    category,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_template(&t, json);
        }
        TemplateCommand::Submit { tenant, id } => {
            let t = c
                .submit_template(v1::SubmitTemplateRequest {
                    tenant_id: tenant,
                    template_id: id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_template(&t, json);
        }
        TemplateCommand::Sync { tenant } => {
            let r = c
                .sync_templates(v1::SyncTemplatesRequest { tenant_id: tenant })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "updated": r.updated, "removed": r.removed, "adopted": r.adopted,
                        "submitted": r.submitted,
                        "templates": r.templates.iter().map(template_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "synchronised with the network: {} updated, {} removed (deleted there), {} adopted (made there), {} submitted",
                    r.updated, r.removed, r.adopted, r.submitted
                );
                for t in &r.templates {
                    print_template(t, false);
                }
            }
        }
        TemplateCommand::Delete { tenant, id } => {
            let t = c
                .delete_template(v1::DeleteTemplateRequest {
                    tenant_id: tenant,
                    template_id: id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_template(&t, json);
        }
        TemplateCommand::Review {
            tenant,
            id,
            event,
            new_category,
        } => {
            let t = c
                .review_template(v1::ReviewTemplateRequest {
                    tenant_id: tenant,
                    template_id: id,
                    event,
                    new_category,
                    reviewed_at: None,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_template(&t, json);
        }
    }
    Ok(())
}
