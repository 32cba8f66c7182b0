//! `finestra contacts`: a tenant's contacts (docs/rules.md §11): import a CSV, list, show,
//! block and unblock.

use std::io::Read as _;

use clap::Subcommand;
use finestra_proto::v1::contacts_service_client::ContactsServiceClient;
use finestra_proto::v1::{self, Contact};
use serde_json::json;
use sha2::Digest as _;

use crate::{AuthedChannel, rpc_error};

/// Bytes of the file per chunk sent.
const CHUNK: usize = 256 * 1024;

#[derive(Subcommand)]
pub enum ContactsCommand {
    /// Import a CSV file (header: phone, name, tags, opt_in_source, opt_in_at, opt_in_proof,
    /// opted_out, attr.<key>); prints the counts and every row not taken as it stood.
    Import {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// The import's id (default: from the file's SHA-256, so importing the same file
        /// again answers the first import's report).
        #[arg(long, default_value = "")]
        import_id: String,
        /// The calling code of numbers written without '+' (39 for Italy).
        #[arg(long, default_value = "")]
        default_calling_code: String,
    },
    /// List contacts, by tag and opt-in.
    List {
        #[arg(long)]
        tenant: String,
        /// Contacts carrying this tag (repeat for several).
        #[arg(long)]
        tag: Vec<String>,
        #[arg(long, conflicts_with = "not_opted_in")]
        opted_in: bool,
        #[arg(long)]
        not_opted_in: bool,
        #[arg(long)]
        include_blocked: bool,
        /// A saved segment instead of the options above.
        #[arg(long, default_value = "")]
        segment: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One contact.
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
    },
    /// Save a segment (a named filter over contacts): by tags, attributes (key=value),
    /// opt-in and whether a window is open.
    SegmentSave(SegmentSpec),
    /// The tenant's segments.
    SegmentList {
        #[arg(long)]
        tenant: String,
    },
    /// Block users (nothing from the tenant's numbers reaches them), or lift it.
    Block {
        #[arg(long)]
        tenant: String,
        #[arg(long, required = true)]
        user: Vec<String>,
        #[arg(long)]
        unblock: bool,
    },
}

fn file_id(path: &std::path::Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(format!("file-{}", &hex::encode(hash.finalize())[..32]))
}

fn print_contact(c: &Contact, json_out: bool) {
    if json_out {
        println!(
            "{}",
            json!({
                "user": c.user, "name": c.name, "profile_name": c.profile_name,
                "tags": c.tags, "attributes": c.attributes, "opted_in": c.opt_in.is_some(),
                "opted_out": c.opted_out_at.is_some(), "blocked": c.blocked, "source": c.source,
            })
        );
    } else {
        let consent = match (&c.opt_in, &c.opted_out_at) {
            (Some(o), _) => format!("opted in ({})", o.source),
            (None, Some(_)) => "opted out".to_owned(),
            (None, None) => "no opt-in".to_owned(),
        };
        println!(
            "{}  {}  [{}]  {}{}",
            c.user,
            if c.name.is_empty() {
                &c.profile_name
            } else {
                &c.name
            },
            c.tags.join(","),
            consent,
            if c.blocked { "  BLOCKED" } else { "" }
        );
    }
}

/// A segment as `contacts segment-save` and `segment create` take it.
#[derive(clap::Args)]
pub struct SegmentSpec {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    id: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long)]
    attribute: Vec<String>,
    #[arg(long)]
    opted_in: bool,
    /// open or closed.
    #[arg(long, default_value = "")]
    window: String,
}

/// `finestra segment`: the segment commands of `finestra contacts` under their own name.
#[derive(Subcommand)]
pub enum SegmentCommand {
    /// Save a segment (a named filter over contacts): by tags, attributes (key=value),
    /// opt-in and whether a window is open. Saving an existing id replaces it.
    Create(SegmentSpec),
    /// The tenant's segments.
    List {
        #[arg(long)]
        tenant: String,
    },
}

pub async fn segment(
    channel: AuthedChannel,
    command: SegmentCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let command = match command {
        SegmentCommand::Create(spec) => ContactsCommand::SegmentSave(spec),
        SegmentCommand::List { tenant } => ContactsCommand::SegmentList { tenant },
    };
    contacts(channel, command, json_out).await
}

pub async fn contacts(
    channel: AuthedChannel,
    command: ContactsCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut c = ContactsServiceClient::new(channel);
    match command {
        ContactsCommand::Import {
            tenant,
            file,
            import_id,
            default_calling_code,
        } => {
            let import_id = if import_id.is_empty() {
                file_id(&file)?
            } else {
                import_id
            };
            let reader = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            // Read a chunk at a time as the call asks for it: the file is never held whole.
            let chunks = futures::stream::unfold(
                (reader, Some((tenant, import_id, default_calling_code))),
                |(mut reader, first)| async move {
                    let mut data = vec![0u8; CHUNK];
                    let n = match reader.read(&mut data) {
                        Ok(n) => n,
                        Err(e) => {
                            eprintln!("reading the file: {e}");
                            return None;
                        }
                    };
                    if n == 0 && first.is_none() {
                        return None;
                    }
                    data.truncate(n);
                    let (tenant_id, import_id, default_calling_code) = first.unwrap_or_default();
                    let chunk = v1::ImportContactsChunk {
                        tenant_id,
                        import_id,
                        default_calling_code,
                        data,
                    };
                    Some((chunk, (reader, None)))
                },
            );
            let report = c
                .import_contacts(chunks)
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                let rows: Vec<_> = report
                    .report
                    .iter()
                    .map(|r| json!({"line": r.line, "phone": r.phone, "outcome": r.outcome, "field": r.field, "reason": r.reason, "message": r.message}))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "import_id": report.import_id, "state": report.state, "rows": report.rows,
                        "created": report.created, "updated": report.updated,
                        "unchanged": report.unchanged, "rejected": report.rejected,
                        "duplicates": report.duplicates, "opted_out": report.opted_out,
                        "replayed": report.replayed, "failure": report.failure, "report": rows,
                    })
                );
            } else {
                println!(
                    "import {} {}{}: {} rows, {} created, {} updated, {} unchanged, {} rejected, {} duplicates, {} opted out",
                    report.import_id,
                    report.state,
                    if report.replayed { " (replayed)" } else { "" },
                    report.rows,
                    report.created,
                    report.updated,
                    report.unchanged,
                    report.rejected,
                    report.duplicates,
                    report.opted_out
                );
                if !report.failure.is_empty() {
                    println!("failed: {}", report.failure);
                }
                for r in &report.report {
                    println!(
                        "  line {}: {} {} {} {}",
                        r.line, r.phone, r.reason, r.field, r.message
                    );
                }
            }
            if report.state == "failed" {
                anyhow::bail!("the import failed: {}", report.failure);
            }
        }
        ContactsCommand::List {
            tenant,
            tag,
            opted_in,
            not_opted_in,
            include_blocked,
            segment,
            limit,
        } => {
            let opt_in = if opted_in {
                v1::contact_filter::OptInFilter::OptedIn
            } else if not_opted_in {
                v1::contact_filter::OptInFilter::NotOptedIn
            } else {
                v1::contact_filter::OptInFilter::OptInAny
            };
            let filter = (segment.is_empty()).then(|| v1::ContactFilter {
                tags: tag,
                opt_in: opt_in as i32,
                include_blocked,
                ..Default::default()
            });
            let page = c
                .list_contacts(v1::ListContactsRequest {
                    tenant_id: tenant,
                    segment_id: segment,
                    filter,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for contact in &page.contacts {
                print_contact(contact, json_out);
            }
        }
        ContactsCommand::SegmentSave(SegmentSpec {
            tenant,
            id,
            name,
            tag,
            attribute,
            opted_in,
            window,
        }) => {
            let mut attributes = std::collections::HashMap::new();
            for a in attribute {
                let (k, v) = a
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--attribute {a:?} is not key=value"))?;
                attributes.insert(k.to_owned(), v.to_owned());
            }
            let window = match window.as_str() {
                "" => v1::contact_filter::WindowFilter::WindowAny,
                "open" => v1::contact_filter::WindowFilter::WindowOpen,
                "closed" => v1::contact_filter::WindowFilter::WindowClosed,
                other => anyhow::bail!("--window {other:?}: open or closed"),
            };
            let saved = c
                .save_segment(v1::SaveSegmentRequest {
                    tenant_id: tenant,
                    segment_id: id,
                    name,
                    filter: Some(v1::ContactFilter {
                        tags: tag,
                        attributes,
                        opt_in: if opted_in {
                            v1::contact_filter::OptInFilter::OptedIn as i32
                        } else {
                            0
                        },
                        window: window as i32,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("{} {}", saved.segment_id, saved.name);
        }
        ContactsCommand::SegmentList { tenant } => {
            let page = c
                .list_segments(v1::ListSegmentsRequest {
                    tenant_id: tenant,
                    page_size: 1_000,
                    page_token: String::new(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for s in &page.segments {
                if json_out {
                    println!("{}", json!({"segment_id": s.segment_id, "name": s.name}));
                } else {
                    println!("{}  {}", s.segment_id, s.name);
                }
            }
        }
        ContactsCommand::Show { tenant, user } => {
            let contact = c
                .get_contact(v1::GetContactRequest {
                    tenant_id: tenant,
                    user,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_contact(&contact, json_out);
        }
        ContactsCommand::Block {
            tenant,
            user,
            unblock,
        } => {
            let done = c
                .block_contacts(v1::BlockContactsRequest {
                    tenant_id: tenant,
                    users: user,
                    unblock,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for contact in &done.contacts {
                print_contact(contact, json_out);
            }
        }
    }
    Ok(())
}
