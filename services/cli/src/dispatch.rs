//! `finestra send …` and `finestra message …`: sending under the channel's rules and following
//! messages, over the dispatch service's gRPC API.

use clap::Subcommand;
use finestra_proto::time::to_micros;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{self, Message, SendMessageRequest, SendMessageResponse};
use serde_json::json;

use crate::{AuthedChannel, rpc_error};

/// Who and from where, for every send.
#[derive(clap::Args)]
pub struct Envelope {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    phone_number_id: String,
    /// The recipient's wa_id (E.164 digits).
    #[arg(long)]
    to: String,
    /// The idempotency key: the same key and message answer the same message id. Default: a
    /// fresh random key (so a retry of the command sends again).
    #[arg(long)]
    key: Option<String>,
}

#[derive(Subcommand)]
pub enum SendCommand {
    /// A free-form text (only inside the customer-service window).
    Text {
        #[command(flatten)]
        to: Envelope,
        #[arg(long)]
        body: String,
    },
    /// An approved template with its body parameters in order.
    Template {
        #[command(flatten)]
        to: Envelope,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "en")]
        language: String,
        /// Repeat for {{1}}, {{2}}, ...
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// A document by link or by the id `media upload` gave (inside the window).
    Document {
        #[command(flatten)]
        to: Envelope,
        #[arg(long, default_value = "", required_unless_present = "media_id")]
        link: String,
        #[arg(long, default_value = "")]
        media_id: String,
        #[arg(long, default_value = "")]
        caption: String,
        #[arg(long, default_value = "")]
        filename: String,
    },
    /// An image by link or by the id `media upload` gave (inside the window).
    Image {
        #[command(flatten)]
        to: Envelope,
        #[arg(long, default_value = "", required_unless_present = "media_id")]
        link: String,
        #[arg(long, default_value = "")]
        media_id: String,
        #[arg(long, default_value = "")]
        caption: String,
    },
}

#[derive(Subcommand)]
pub enum MediaCommand {
    /// Upload a file to the network for a number; prints the media id to send it by.
    Upload {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// image/jpeg, application/pdf, ... (default: from the file's extension).
        #[arg(long, default_value = "")]
        content_type: String,
    },
    /// Save a file a user sent (the media id from the inbound message) to `--out`.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// The content type of a file by its extension.
fn content_type_of(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "ogg" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

pub async fn media(
    channel: AuthedChannel,
    command: MediaCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut c = DispatchServiceClient::new(channel)
        .max_decoding_message_size(100 * 1024 * 1024 + 64 * 1024)
        .max_encoding_message_size(100 * 1024 * 1024 + 64 * 1024);
    match command {
        MediaCommand::Upload {
            tenant,
            phone_number_id,
            file,
            content_type,
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let content_type = if content_type.is_empty() {
                content_type_of(&file).to_owned()
            } else {
                content_type
            };
            let filename = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let up = c
                .upload_media(v1::UploadMediaRequest {
                    tenant_id: tenant,
                    phone_number_id,
                    content_type,
                    filename,
                    data,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    serde_json::json!({"media_id": up.media_id, "kind": up.kind, "size": up.size})
                );
            } else {
                println!("{} ({}, {} bytes)", up.media_id, up.kind, up.size);
            }
        }
        MediaCommand::Get { tenant, id, out } => {
            let mut stream = c
                .get_media(v1::GetMediaRequest {
                    tenant_id: tenant,
                    media_id: id.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let mut data = Vec::new();
            let mut first = None;
            while let Some(chunk) = stream.message().await.map_err(rpc_error)? {
                if first.is_none() {
                    first = Some((chunk.content_type.clone(), chunk.sha256.clone(), chunk.size));
                }
                data.extend_from_slice(&chunk.data);
            }
            let (content_type, sha256, size) = first.unwrap_or_default();
            std::fs::write(&out, &data)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            if json_out {
                println!(
                    "{}",
                    serde_json::json!({"media_id": id, "content_type": content_type,
                                       "sha256": sha256, "size": size, "out": out})
                );
            } else {
                println!(
                    "{id}: {content_type}, {size} bytes, sha256 {sha256} -> {}",
                    out.display()
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum MessageCommand {
    /// One message and where it is.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Messages, newest first.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        phone_number_id: String,
        #[arg(long, default_value = "")]
        to: String,
        /// ACCEPTED, SENT, DELIVERED, READ or FAILED.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Mark a user's message read at the network (and show the typing indicator).
    Read {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        /// The network's id of the user's message (wamid...).
        #[arg(long)]
        id: String,
        #[arg(long)]
        typing: bool,
    },
    /// Block users of a number at the network (they can no longer write to it nor receive).
    Block {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        /// wa_ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// Unblock them instead.
        #[arg(long)]
        unblock: bool,
    },
}

fn random_key() -> String {
    use rand::Rng as _;
    format!("cli-{:016x}", rand::rng().random::<u64>())
}

fn request(to: Envelope, content: Content) -> SendMessageRequest {
    SendMessageRequest {
        tenant_id: to.tenant,
        phone_number_id: to.phone_number_id,
        to: to.to,
        idempotency_key: to.key.unwrap_or_else(random_key),
        send_at: None,
        send_at_local: String::new(),
        content: Some(content),
    }
}

fn sent_json(r: &SendMessageResponse, key: &str) -> serde_json::Value {
    json!({
        "message_id": r.message_id, "status": r.status, "replayed": r.replayed,
        "price_micros": r.price_micros, "currency": r.currency, "free": r.free,
        "free_reason": r.free_reason, "category": r.category, "idempotency_key": key,
    })
}

fn message_json(m: &Message) -> serde_json::Value {
    let at = |t: &Option<finestra_proto::prost_types::Timestamp>| t.as_ref().map(to_micros);
    json!({
        "message_id": m.message_id, "to": m.to, "kind": m.kind, "template": m.template_name,
        "category": m.category, "status": m.status, "failure_reason": m.failure_reason,
        "provider_error_code": m.provider_error_code, "provider_message_id": m.provider_message_id,
        "price_micros": m.price_micros, "free": m.free, "free_reason": m.free_reason,
        "attempts": m.attempts, "accepted_at_us": at(&m.accepted_at),
        "delivered_at_us": at(&m.delivered_at), "read_at_us": at(&m.read_at),
        "failed_at_us": at(&m.failed_at),
    })
}

fn price(micros: i64, currency: &str) -> String {
    format!(
        "{}.{:06} {currency}",
        micros / 1_000_000,
        micros % 1_000_000
    )
}

pub async fn send(
    channel: AuthedChannel,
    command: SendCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let req = match command {
        SendCommand::Text { to, body } => request(
            to,
            Content::Text(v1::TextContent {
                body,
                preview_url: false,
            }),
        ),
        SendCommand::Template {
            to,
            name,
            language,
            params,
        } => request(
            to,
            Content::Template(v1::TemplateContent {
                name,
                language,
                parameters: params,
            }),
        ),
        SendCommand::Document {
            to,
            link,
            media_id,
            caption,
            filename,
        } => request(
            to,
            Content::Media(v1::MediaContent {
                kind: "document".into(),
                link,
                caption,
                filename,
                media_id,
            }),
        ),
        SendCommand::Image {
            to,
            link,
            media_id,
            caption,
        } => request(
            to,
            Content::Media(v1::MediaContent {
                kind: "image".into(),
                link,
                caption,
                filename: String::new(),
                media_id,
            }),
        ),
    };
    let key = req.idempotency_key.clone();
    let r = DispatchServiceClient::new(channel)
        .send_message(req)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_out {
        println!("{}", sent_json(&r, &key));
    } else {
        let cost = if r.free {
            format!("free ({})", r.free_reason)
        } else {
            format!(
                "{} reserved, charged on delivery",
                price(r.price_micros, &r.currency)
            )
        };
        println!(
            "{} {}{}: {cost}",
            r.message_id,
            r.status,
            if r.replayed { " (replayed)" } else { "" }
        );
    }
    Ok(())
}

pub async fn message(
    channel: AuthedChannel,
    command: MessageCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut c = DispatchServiceClient::new(channel);
    match command {
        MessageCommand::Read {
            tenant,
            phone_number_id,
            id,
            typing,
        } => {
            c.mark_read(v1::MarkReadRequest {
                tenant_id: tenant,
                phone_number_id,
                message_id: id.clone(),
                typing_indicator: typing,
            })
            .await
            .map_err(rpc_error)?;
            if json_out {
                println!("{}", serde_json::json!({ "message_id": id, "read": true }));
            } else {
                println!("{id} marked read");
            }
        }
        MessageCommand::Block {
            tenant,
            phone_number_id,
            users,
            unblock,
        } => {
            let applied = c
                .block_users(v1::BlockUsersRequest {
                    tenant_id: tenant,
                    phone_number_id,
                    users,
                    unblock,
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .users;
            if json_out {
                println!(
                    "{}",
                    serde_json::json!({ "users": applied, "blocked": !unblock })
                );
            } else {
                let done = if unblock { "unblocked" } else { "blocked" };
                println!("{done} at the network: {}", applied.join(", "));
            }
        }
        MessageCommand::Get { tenant, id } => {
            let m = c
                .get_message(v1::GetMessageRequest {
                    tenant_id: tenant,
                    message_id: id,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", message_json(&m));
            } else {
                print_message(&m);
            }
        }
        MessageCommand::List {
            tenant,
            phone_number_id,
            to,
            status,
            page_size,
            page_token,
        } => {
            let page = c
                .list_messages(v1::ListMessagesRequest {
                    tenant_id: tenant,
                    phone_number_id,
                    to,
                    status,
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for m in &page.messages {
                if json_out {
                    println!("{}", message_json(m));
                } else {
                    print_message(m);
                }
            }
            if !page.next_page_token.is_empty() && !json_out {
                println!("more: --page-token {}", page.next_page_token);
            }
        }
    }
    Ok(())
}

fn print_message(m: &Message) {
    let what = if m.template_name.is_empty() {
        m.kind.clone()
    } else {
        format!("template {} ({})", m.template_name, m.category)
    };
    let cost = if m.free {
        format!("free ({})", m.free_reason)
    } else {
        format!("{} µ", m.price_micros)
    };
    let failure = if m.status == "FAILED" {
        format!(" — {} {}", m.failure_reason, m.provider_error_title)
    } else {
        String::new()
    };
    println!(
        "{} to {}: {what}, {}{failure}, {cost}, {} attempt(s)",
        m.message_id, m.to, m.status, m.attempts
    );
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Follow a tenant's events (statuses, inbound messages, windows, blocks); Ctrl-C stops.
    /// Prints each event's cursor: pass it back with --cursor to resume after it.
    Tail {
        #[arg(long)]
        tenant: String,
        /// Resume after this cursor (empty: from the oldest event kept).
        #[arg(long, default_value = "")]
        cursor: String,
        /// Only new events.
        #[arg(long)]
        from_now: bool,
        /// Stop after this many events (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Stop when no event came for this many seconds (0: follow until interrupted).
        #[arg(long, default_value_t = 0)]
        idle_secs: u64,
    },
}

fn describe(e: &v1::TenantEvent) -> String {
    use v1::envelope::Payload;
    let Some(env) = &e.event else {
        return e.kind.clone();
    };
    let user = |u: &Option<v1::UserRef>| {
        u.as_ref()
            .map(|u| {
                if u.wa_id.is_empty() {
                    u.user_id.clone()
                } else {
                    u.wa_id.clone()
                }
            })
            .unwrap_or_default()
    };
    match &env.payload {
        Some(Payload::MessageStatus(s)) => format!(
            "{} {} to {}{}",
            s.callback_data,
            s.status,
            user(&s.recipient),
            s.errors
                .first()
                .map(|x| format!(" ({} {})", x.code, x.title))
                .unwrap_or_default()
        ),
        Some(Payload::InboundMessage(m)) => {
            format!("{} wrote ({}): {}", user(&m.user), m.message_type, m.text)
        }
        Some(Payload::WindowOpened(w)) => format!("window with {} opened", user(&w.user)),
        Some(Payload::WindowRefreshed(w)) => format!("window with {} refreshed", user(&w.user)),
        Some(Payload::WindowClosingSoon(w)) => {
            format!("window with {} closes soon", user(&w.user))
        }
        Some(Payload::WindowClosed(w)) => format!("window with {} closed", user(&w.user)),
        Some(Payload::UserBlock(b)) => format!(
            "{} {}",
            user(&b.user),
            if b.blocked {
                "blocked the number"
            } else {
                "unblocked the number"
            }
        ),
        Some(Payload::UserPreference(p)) => format!(
            "{} {} {}",
            user(&p.user),
            if p.stop { "stopped" } else { "resumed" },
            p.category
        ),
        _ => e.kind.clone(),
    }
}

pub async fn events(
    channel: AuthedChannel,
    command: EventsCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let EventsCommand::Tail {
        tenant,
        cursor,
        from_now,
        limit,
        idle_secs,
    } = command;
    let mut stream = DispatchServiceClient::new(channel)
        .stream_events(v1::StreamEventsRequest {
            tenant_id: tenant,
            cursor,
            from_now,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut seen = 0u64;
    loop {
        let next = if idle_secs == 0 {
            stream.message().await
        } else {
            match tokio::time::timeout(std::time::Duration::from_secs(idle_secs), stream.message())
                .await
            {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(e) = next.map_err(rpc_error)? else {
            break;
        };
        if json_out {
            let env = e.event.as_ref();
            println!(
                "{}",
                json!({
                    "cursor": e.cursor, "kind": e.kind,
                    "event_id": env.map(|x| x.event_id.clone()).unwrap_or_default(),
                    "occurred_at_us": env.and_then(|x| x.occurred_at.as_ref()).map(to_micros),
                    "text": describe(&e),
                })
            );
        } else {
            println!("{:>8}  {:<20} {}", e.cursor, e.kind, describe(&e));
        }
        seen += 1;
        if limit > 0 && seen >= limit {
            break;
        }
    }
    Ok(())
}
