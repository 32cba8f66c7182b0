//! `finestra campaign`: a tenant's template campaigns (docs/rules.md §12): create, quote,
//! launch, pause, resume, cancel, watch (a live progress bar) and report (each recipient's
//! outcome as CSV).

use std::io::Write as _;

use clap::Subcommand;
use finestra_domain::Timestamp;
use finestra_domain::contacts::parse_time;
use finestra_proto::v1::campaign_service_client::CampaignServiceClient;
use finestra_proto::v1::{self, Campaign, CampaignProgress};
use serde_json::json;

use crate::{AuthedChannel, rpc_error};

#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Create a draft campaign: a template to a segment or to users, its parameters taken
    /// from each contact ({{name}}, {{user}}, {{<attribute>}}) or written out.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        number: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        language: String,
        /// One per template parameter, in order.
        #[arg(long)]
        param: Vec<String>,
        /// A saved segment (`finestra segment create`)...
        #[arg(long, default_value = "", conflicts_with = "user")]
        segment: String,
        /// ...or users (repeat).
        #[arg(long)]
        user: Vec<String>,
        /// When it starts (RFC 3339 or Unix seconds; default: at launch).
        #[arg(long, default_value = "")]
        start_at: String,
        /// When it stops, whatever is left.
        #[arg(long, default_value = "")]
        end_at: String,
    },
    /// What it would cost now: by market, free, and excluded by reason.
    Quote {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        /// Also each recipient's line.
        #[arg(long)]
        detail: bool,
    },
    Launch {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    Pause {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    Resume {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    Cancel {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Follow it live until it completes or is cancelled.
    Watch {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Each recipient's outcome as CSV (to a file, or standard output).
    Report {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

fn time(field: &str, text: &str) -> anyhow::Result<Option<finestra_proto::prost_types::Timestamp>> {
    if text.is_empty() {
        return Ok(None);
    }
    let now = Timestamp::from_micros(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros(),
    )?);
    let at = parse_time(text, now)
        .ok_or_else(|| anyhow::anyhow!("--{field} {text:?}: RFC 3339 or Unix seconds"))?;
    Ok(Some(finestra_proto::time::from_micros(at.micros())))
}

fn money(micros: i64, currency: &str) -> String {
    format!(
        "{}.{:06} {currency}",
        micros / 1_000_000,
        (micros % 1_000_000).abs()
    )
}

fn progress_json(p: &CampaignProgress) -> serde_json::Value {
    json!({
        "recipients": p.recipients, "queued": p.queued, "accepted": p.accepted,
        "sent": p.sent, "delivered": p.delivered, "read": p.read, "failed": p.failed,
        "excluded": p.excluded, "cost_micros": p.cost_micros,
        "reserved_micros": p.reserved_micros, "currency": p.currency,
    })
}

fn print_campaign(c: &Campaign, json_out: bool) {
    if json_out {
        println!(
            "{}",
            json!({
                "campaign_id": c.campaign_id, "name": c.name, "state": c.state,
                "state_reason": c.state_reason, "template": c.template_name,
                "language": c.template_language, "phone_number_id": c.phone_number_id,
                "progress": c.progress.as_ref().map(progress_json),
            })
        );
        return;
    }
    let reason = if c.state_reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.state_reason)
    };
    println!(
        "{} {}{reason}: {} ({}) from {}",
        c.campaign_id, c.state, c.template_name, c.template_language, c.phone_number_id
    );
    if let Some(p) = &c.progress {
        println!("  {}", line(p));
    }
}

/// One line of progress: a bar of the recipients decided, then the counts.
fn line(p: &CampaignProgress) -> String {
    const WIDTH: i64 = 30;
    let decided = p.recipients - p.queued;
    let filled = if p.recipients > 0 {
        decided * WIDTH / p.recipients
    } else {
        WIDTH
    };
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!(
        "[{bar}] {decided}/{} accepted {} delivered {} read {} failed {} excluded {} cost {}",
        p.recipients,
        p.accepted,
        p.delivered,
        p.read,
        p.failed,
        p.excluded_total,
        money(p.cost_micros, &p.currency)
    )
}

pub async fn campaign(
    channel: AuthedChannel,
    command: CampaignCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut c = CampaignServiceClient::new(channel);
    let act = |tenant: String, id: String| v1::CampaignActionRequest {
        tenant_id: tenant,
        campaign_id: id,
    };
    match command {
        CampaignCommand::Create {
            tenant,
            id,
            name,
            number,
            template,
            language,
            param,
            segment,
            user,
            start_at,
            end_at,
        } => {
            let made = c
                .create_campaign(v1::CreateCampaignRequest {
                    tenant_id: tenant,
                    campaign_id: id,
                    name,
                    phone_number_id: number,
                    template_name: template,
                    template_language: language,
                    parameters: param,
                    segment_id: segment,
                    filter: None,
                    users: user,
                    start_at: time("start-at", &start_at)?,
                    end_at: time("end-at", &end_at)?,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_campaign(&made, json_out);
        }
        CampaignCommand::Quote { tenant, id, detail } => {
            let q = c
                .quote_campaign(v1::QuoteCampaignRequest {
                    tenant_id: tenant,
                    campaign_id: id,
                    detail,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({
                        "campaign_id": q.campaign_id, "category": q.category,
                        "recipients": q.recipients, "free": q.free, "charged": q.charged,
                        "total_price_micros": q.total_price_micros, "currency": q.currency,
                        "card_version": q.card_version,
                        "markets": q.markets.iter().map(|m| json!({
                            "market": m.market, "recipients": m.recipients,
                            "price_micros": m.price_micros})).collect::<Vec<_>>(),
                        "excluded": q.excluded, "business_initiated": q.business_initiated,
                        "tier_remaining": q.tier_remaining,
                        "lines": q.lines.iter().map(|l| json!({
                            "user": l.user, "outcome": l.outcome, "reason": l.reason,
                            "market": l.market, "price_micros": l.price_micros})).collect::<Vec<_>>(),
                    })
                );
                return Ok(());
            }
            println!(
                "{} ({}): {} recipients, {} charged, {} free, {} excluded; total {} (card {})",
                q.campaign_id,
                q.category,
                q.recipients,
                q.charged,
                q.free,
                q.excluded_total,
                money(q.total_price_micros, &q.currency),
                q.card_version
            );
            for m in &q.markets {
                println!(
                    "  {:<6} {:>8} recipients {:>18}",
                    m.market,
                    m.recipients,
                    money(m.price_micros, &q.currency)
                );
            }
            let mut excluded: Vec<_> = q.excluded.iter().collect();
            excluded.sort();
            for (reason, n) in excluded {
                println!("  excluded {reason}: {n}");
            }
            if q.tier_remaining >= 0 && q.business_initiated > q.tier_remaining {
                println!(
                    "  the tier allows {} more new users now; {} are outside a window: the campaign will pause TIER_LIMIT_REACHED",
                    q.tier_remaining, q.business_initiated
                );
            }
            for l in &q.lines {
                println!(
                    "  {} {} {} {} {}",
                    l.user, l.outcome, l.reason, l.market, l.price_micros
                );
            }
        }
        CampaignCommand::Launch { tenant, id } => {
            let done = c
                .launch_campaign(act(tenant, id))
                .await
                .map_err(rpc_error)?;
            print_campaign(&done.into_inner(), json_out);
        }
        CampaignCommand::Pause { tenant, id } => {
            let done = c.pause_campaign(act(tenant, id)).await.map_err(rpc_error)?;
            print_campaign(&done.into_inner(), json_out);
        }
        CampaignCommand::Resume { tenant, id } => {
            let done = c
                .resume_campaign(act(tenant, id))
                .await
                .map_err(rpc_error)?;
            print_campaign(&done.into_inner(), json_out);
        }
        CampaignCommand::Cancel { tenant, id } => {
            let done = c
                .cancel_campaign(act(tenant, id))
                .await
                .map_err(rpc_error)?;
            print_campaign(&done.into_inner(), json_out);
        }
        CampaignCommand::Watch { tenant, id } => {
            let mut stream = c
                .watch_campaign(v1::GetCampaignRequest {
                    tenant_id: tenant,
                    campaign_id: id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(now) = stream.message().await.map_err(rpc_error)? {
                if json_out {
                    print_campaign(&now, true);
                    continue;
                }
                let p = now.progress.clone().unwrap_or_default();
                let reason = if now.state_reason.is_empty() {
                    String::new()
                } else {
                    format!(" {}", now.state_reason)
                };
                // One line, rewritten in place.
                write!(
                    out,
                    "\r\x1b[2K{} {}{reason} {}",
                    now.campaign_id,
                    now.state,
                    line(&p)
                )?;
                out.flush()?;
            }
            if !json_out {
                writeln!(out)?;
            }
        }
        CampaignCommand::Report { tenant, id, output } => {
            let mut sink: Box<dyn std::io::Write> = match output {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::stdout()),
            };
            writeln!(
                sink,
                "user,state,reason,message_id,status,price_micros,free,failure_reason"
            )?;
            let mut token = String::new();
            loop {
                let page = c
                    .list_campaign_recipients(v1::ListCampaignRecipientsRequest {
                        tenant_id: tenant.clone(),
                        campaign_id: id.clone(),
                        page_size: 1_000,
                        page_token: token,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for r in &page.recipients {
                    writeln!(
                        sink,
                        "{},{},{},{},{},{},{},{}",
                        r.user,
                        r.state,
                        r.reason,
                        r.message_id,
                        r.status,
                        r.price_micros,
                        r.free,
                        csv_field(&r.failure_reason)
                    )?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            sink.flush()?;
        }
    }
    Ok(())
}

/// A field quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_fills_with_what_was_decided() {
        let p = CampaignProgress {
            recipients: 10,
            queued: 5,
            accepted: 4,
            delivered: 3,
            excluded_total: 1,
            cost_micros: 1_500_000,
            currency: "EUR".into(),
            ..CampaignProgress::default()
        };
        assert_eq!(
            line(&p),
            "[###############...............] 5/10 accepted 4 delivered 3 read 0 failed 0 excluded 1 cost 1.500000 EUR"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
