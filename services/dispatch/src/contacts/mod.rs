//! A tenant's contacts (docs/rules.md §11), served by dispatch, which owns them: created by a
//! user's first message (the event pipeline notes it), by UpsertContact and by ImportContacts;
//! the tenant's own block of a user is enforced at send and again before delivery.

pub mod conversations;
pub mod import;
pub mod merge;
pub mod store;

use std::sync::Arc;

use finestra_domain::contacts as rules;
use finestra_domain::{Clock, Timestamp, UserKey};
use finestra_platform::auth::{self, Authenticator, Scope};
use finestra_platform::paging;
use finestra_platform::status::{self, Reason, invalid_argument, not_found, required};
use finestra_proto::time::from_micros;
use finestra_proto::v1::contacts_service_server::ContactsService;
use finestra_proto::v1::{
    BlockContactsRequest, BlockContactsResponse, Contact, ContactFilter, ContactImport,
    DeleteSegmentRequest, DeleteSegmentResponse, GetContactImportRequest, GetContactRequest,
    ImportContactsChunk, ImportRow, ListContactsRequest, ListContactsResponse, ListSegmentsRequest,
    ListSegmentsResponse, OptIn as OptInProto, SaveSegmentRequest, Segment, UpsertContactRequest,
};
use finestra_proto::v1::{
    Conversation, ConversationSummary, GetConversationRequest, ListConversationsRequest,
    ListConversationsResponse, list_conversations_request,
};
use futures::StreamExt as _;
use prost::Message as _;
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::facts::Facts;
use merge::{Change, OptIn};
use store::{ContactRow, ImportRow as ImportState, ReportRow};

/// Most users one BlockContacts call names.
const MAX_BLOCKS: usize = 1_000;
/// Report rows an ImportContacts answer carries (GetContactImport pages the rest).
const REPORT_IN_ANSWER: i64 = 1_000;
/// Largest chunk of an import.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

pub struct ContactsApi {
    pub pool: PgPool,
    pub facts: Facts,
    /// Windows, for a conversation's state.
    pub hot: crate::hot::Hot,
    pub auth: Authenticator,
    pub clock: Arc<dyn Clock>,
}

/// The user key of a user as the API names it: a phone number (normalised to E.164: with the
/// default calling code when it has no '+', as E.164 digits when no code is given) or a
/// business-scoped user id.
pub fn user_key(field: &str, user: &str, calling_code: &str) -> Result<String, Status> {
    let user = user.trim();
    if user.is_empty() {
        return Err(invalid_argument(field, "a user is required"));
    }
    let phone_like = user
        .chars()
        .all(|c| c.is_ascii_digit() || " +-.()/".contains(c));
    if phone_like {
        // Without a calling code, digits are the wa_id form the rest of the API takes.
        let international = calling_code.is_empty() && !user.starts_with(['+', '0']);
        let user = if international {
            format!("+{user}")
        } else {
            user.to_owned()
        };
        rules::normalize_phone(&user, calling_code)
            .map_err(|e| invalid_argument(field, e.to_string()))
    } else {
        UserKey::from_parts("", user)
            .map(|k| k.as_str().to_owned())
            .map_err(|e| invalid_argument(field, e.to_string()))
    }
}

fn calling_code(code: &str) -> Result<&str, Status> {
    if code.is_empty() || rules::is_calling_code(code) {
        Ok(code)
    } else {
        Err(invalid_argument(
            "default_calling_code",
            "a calling code is 1 to 3 digits, not starting with 0",
        ))
    }
}

fn contact_of(tenant_id: &str, r: &ContactRow) -> Contact {
    Contact {
        tenant_id: tenant_id.to_owned(),
        user: r.user_key.clone(),
        name: r.name.clone(),
        profile_name: r.profile_name.clone(),
        attributes: r.attributes().into_iter().collect(),
        tags: r.tags.clone(),
        opt_in: r.opt_in_at.map(|at| OptInProto {
            source: r.opt_in_source.clone(),
            at: Some(from_micros(at)),
            proof: r.opt_in_proof.clone(),
        }),
        opted_out_at: r.opted_out_at.map(from_micros),
        blocked: r.blocked,
        blocked_at: r.blocked_at.map(from_micros),
        last_inbound_at: r.last_inbound_at.map(from_micros),
        source: r.source.clone(),
        created_at: Some(from_micros(r.created_at)),
        updated_at: Some(from_micros(r.updated_at)),
    }
}

/// The change an UpsertContact asks for, checked.
fn change_of(req: &UpsertContactRequest, now: Timestamp) -> Result<Change, Status> {
    if !rules::is_label(&req.name) {
        return Err(invalid_argument(
            "name",
            "a name has at most 256 bytes and no control characters",
        ));
    }
    if req.attributes.len() > rules::MAX_ATTRIBUTES {
        return Err(invalid_argument(
            "attributes",
            format!("at most {} attributes", rules::MAX_ATTRIBUTES),
        ));
    }
    for (k, v) in &req.attributes {
        if !rules::is_attribute_key(k) || v.len() > rules::MAX_ATTRIBUTE_VALUE {
            return Err(invalid_argument(
                "attributes",
                format!(
                    "{k:?}: a key is 1-64 letters, digits or '_' starting with a letter; a value at most {} bytes",
                    rules::MAX_ATTRIBUTE_VALUE
                ),
            ));
        }
    }
    let tags = |field: &str, tags: &[String]| -> Result<Vec<String>, Status> {
        tags.iter()
            .map(|t| {
                rules::normalize_tag(t).ok_or_else(|| {
                    invalid_argument(
                        field,
                        format!("{t:?}: 1-64 letters, digits, '_', '-', '.', ':'"),
                    )
                })
            })
            .collect()
    };
    let opt_in = match &req.opt_in {
        None => None,
        Some(o) => {
            let at =
                o.at.as_ref()
                    .map(finestra_proto::time::to_micros)
                    .map(Timestamp::from_micros)
                    .filter(|at| at.micros() > 0 && *at <= now)
                    .ok_or_else(|| {
                        invalid_argument("opt_in.at", "an opt-in has a time, not in the future")
                    })?;
            if o.source.trim().is_empty()
                || !rules::is_label(&o.source)
                || !rules::is_proof(&o.proof)
            {
                return Err(invalid_argument(
                    "opt_in.source",
                    "an opt-in names its source (at most 256 bytes) and a proof of at most 2,048",
                ));
            }
            Some(OptIn {
                source: o.source.trim().to_owned(),
                at,
                proof: o.proof.clone(),
            })
        }
    };
    let change = Change {
        name: req.name.trim().to_owned(),
        attributes: req.attributes.clone().into_iter().collect(),
        add_tags: tags("add_tags", &req.add_tags)?,
        remove_tags: tags("remove_tags", &req.remove_tags)?,
        opt_in,
        opted_out_at: None,
        block: None,
        resumed_at: None,
    };
    Ok(change)
}

impl ContactsApi {
    /// The number, when it is the tenant's (suspended or not; NOT_FOUND otherwise, never
    /// telling whose it is).
    async fn tenants_number(&self, tenant_id: &str, phone_number_id: &str) -> Result<(), Status> {
        let id = required("phone_number_id", phone_number_id)?;
        match self
            .facts
            .number(id)
            .await
            .map_err(|e| status::store("reading a number", &e))?
        {
            Some(n) if n.tenant_id == tenant_id => Ok(()),
            _ => Err(not_found("phone_number_id", id)),
        }
    }

    async fn contacts(&self, tenant_id: &str, users: &[String]) -> Result<Vec<Contact>, Status> {
        Ok(store::get_many(&self.pool, tenant_id, users)
            .await
            .map_err(|e| status::store("reading contacts", &e))?
            .iter()
            .map(|r| contact_of(tenant_id, r))
            .collect())
    }

    async fn import_answer(
        &self,
        tenant_id: &str,
        import_id: &str,
        replayed: bool,
        after: i64,
        size: i64,
    ) -> Result<ContactImport, Status> {
        let state = store::get_import(&self.pool, tenant_id, import_id)
            .await
            .map_err(|e| status::store("reading an import", &e))?
            .ok_or_else(|| not_found("import_id", import_id))?;
        let rows = store::report(&self.pool, tenant_id, import_id, after, size + 1)
            .await
            .map_err(|e| status::store("reading an import's report", &e))?;
        let keyed: Vec<(String, ReportRow)> =
            rows.into_iter().map(|r| (r.line.to_string(), r)).collect();
        let (page, next_page_token) = paging::paginate(keyed, size, |(k, _)| k);
        Ok(import_of(
            tenant_id,
            import_id,
            &state,
            page,
            next_page_token,
            replayed,
        ))
    }

    /// Runs an import to its end; its errors are the file's (recorded as the failure).
    async fn run_import(
        &self,
        tenant_id: &str,
        import_id: &str,
        first: Vec<u8>,
        calling_code: &str,
        mut rest: Streaming<ImportContactsChunk>,
    ) -> Result<Result<(), String>, Status> {
        let now = self.clock.now();
        let mut reader = import::Reader::new(calling_code, now);
        let mut counts = ImportState {
            state: "running".to_owned(),
            rows_read: 0,
            created: 0,
            updated: 0,
            unchanged: 0,
            rejected: 0,
            duplicates: 0,
            opted_out: 0,
            failure: String::new(),
            started_at: now.micros(),
            heartbeat_at: now.micros(),
            finished_at: None,
        };
        let mut chunk = Some(first);
        loop {
            let ended = match chunk.take() {
                Some(data) => {
                    if data.len() > MAX_CHUNK {
                        return Ok(Err(format!("a chunk holds at most {MAX_CHUNK} bytes")));
                    }
                    if let Err(e) = reader.push(&data) {
                        return Ok(Err(e));
                    }
                    false
                }
                None => match rest.next().await {
                    Some(Ok(next)) => {
                        chunk = Some(next.data);
                        continue;
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        if let Err(e) = reader.finish() {
                            return Ok(Err(e));
                        }
                        true
                    }
                },
            };
            if reader.batch.len() >= import::BATCH || ended {
                self.apply_batch(tenant_id, import_id, &mut reader, &mut counts, now)
                    .await?;
            }
            if ended {
                return Ok(Ok(()));
            }
        }
    }

    async fn apply_batch(
        &self,
        tenant_id: &str,
        import_id: &str,
        reader: &mut import::Reader,
        counts: &mut ImportState,
        now: Timestamp,
    ) -> Result<(), Status> {
        let rows = std::mem::take(&mut reader.batch);
        let changes: Vec<(String, Change)> = rows
            .iter()
            .map(|r| (r.user_key.clone(), r.change(now)))
            .collect();
        let applied = store::apply(&self.pool, tenant_id, &changes, "import", now)
            .await
            .map_err(|e| status::store("importing contacts", &e))?;
        let noted = std::mem::take(&mut reader.noted);
        let count = |outcome: &str| noted.iter().filter(|n| n.outcome == outcome).count() as i64;
        counts.rows_read = reader.rows as i64;
        counts.created += applied.created as i64;
        counts.updated += applied.updated as i64;
        counts.unchanged += applied.unchanged as i64;
        counts.rejected += count("rejected");
        counts.duplicates += count("duplicate");
        counts.opted_out += count("opted_out");
        counts.heartbeat_at = self.clock.now().micros();
        let report: Vec<ReportRow> = noted
            .into_iter()
            .map(|n| ReportRow {
                line: n.line as i64,
                phone: n.phone,
                outcome: n.outcome.to_owned(),
                field: n.field,
                reason: n.reason.to_owned(),
                message: n.message,
            })
            .collect();
        store::record_progress(&self.pool, tenant_id, import_id, counts, &report)
            .await
            .map_err(|e| status::store("recording an import's progress", &e))
    }
}

fn import_of(
    tenant_id: &str,
    import_id: &str,
    s: &ImportState,
    report: Vec<(String, ReportRow)>,
    next_page_token: String,
    replayed: bool,
) -> ContactImport {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    ContactImport {
        tenant_id: tenant_id.to_owned(),
        import_id: import_id.to_owned(),
        state: s.state.clone(),
        rows: n(s.rows_read),
        created: n(s.created),
        updated: n(s.updated),
        unchanged: n(s.unchanged),
        rejected: n(s.rejected),
        duplicates: n(s.duplicates),
        opted_out: n(s.opted_out),
        report: report
            .into_iter()
            .map(|(_, r)| ImportRow {
                line: n(r.line),
                phone: r.phone,
                outcome: r.outcome,
                field: r.field,
                reason: r.reason,
                message: r.message,
            })
            .collect(),
        next_page_token,
        replayed,
        failure: s.failure.clone(),
        started_at: Some(from_micros(s.started_at)),
        finished_at: s.finished_at.map(from_micros),
    }
}

/// A saved segment's filter (NOT_FOUND when the tenant has none of that id).
pub async fn saved_filter(
    pool: &PgPool,
    tenant_id: &str,
    segment_id: &str,
) -> Result<store::Filter, Status> {
    let row = store::segments(pool, tenant_id, segment_id, "", 1)
        .await
        .map_err(|e| status::store("reading a segment", &e))?
        .pop()
        .ok_or_else(|| not_found("segment_id", segment_id))?;
    let filter = ContactFilter::decode(row.filter.as_slice())
        .map_err(|e| status::internal("decoding a segment", &e))?;
    filter_of(&filter)
}

/// A filter as the store takes it, checked.
pub fn filter_of(f: &ContactFilter) -> Result<store::Filter, Status> {
    let mut tags = Vec::with_capacity(f.tags.len());
    for t in &f.tags {
        tags.push(
            rules::normalize_tag(t)
                .ok_or_else(|| invalid_argument("filter.tags", format!("{t:?} is not a tag")))?,
        );
    }
    for (k, v) in &f.attributes {
        if !rules::is_attribute_key(k) || v.is_empty() || v.len() > rules::MAX_ATTRIBUTE_VALUE {
            return Err(invalid_argument(
                "filter.attributes",
                format!("{k:?}: a key of 1-64 letters, digits or '_' and a value to match"),
            ));
        }
    }
    let attributes: std::collections::BTreeMap<&String, &String> = f.attributes.iter().collect();
    let time = |t: &Option<finestra_proto::prost_types::Timestamp>| {
        t.as_ref().map(finestra_proto::time::to_micros)
    };
    Ok(store::Filter {
        tags,
        attributes_json: serde_json::to_string(&attributes)
            .map_err(|e| status::internal("encoding a filter", &e))?,
        opt_in: f.opt_in,
        last_inbound_after: time(&f.last_inbound_after),
        last_inbound_before: time(&f.last_inbound_before),
        window: f.window,
        include_blocked: f.include_blocked,
    })
}

fn segment_of(tenant_id: &str, r: &store::SegmentRow) -> Segment {
    Segment {
        tenant_id: tenant_id.to_owned(),
        segment_id: r.segment_id.clone(),
        name: r.name.clone(),
        filter: ContactFilter::decode(r.filter.as_slice()).ok(),
        updated_at: Some(from_micros(r.updated_at)),
    }
}

/// An id a client names a thing by (an import, a segment, a campaign).
pub(crate) fn is_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[tonic::async_trait]
impl ContactsService for ContactsApi {
    async fn upsert_contact(
        &self,
        request: Request<UpsertContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        let code = calling_code(&req.default_calling_code)?;
        let user = user_key("user", &req.user, code)?;
        let now = self.clock.now();
        let change = change_of(&req, now)?;
        store::apply(
            &self.pool,
            &req.tenant_id,
            &[(user.clone(), change)],
            "api",
            now,
        )
        .await
        .map_err(|e| status::store("writing a contact", &e))?;
        let mut found = self
            .contacts(&req.tenant_id, std::slice::from_ref(&user))
            .await?;
        found
            .pop()
            .map(Response::new)
            .ok_or_else(|| status::internal("writing a contact", &"the contact is not there"))
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let user = user_key("user", &req.user, "")?;
        let mut found = self
            .contacts(&req.tenant_id, std::slice::from_ref(&user))
            .await?;
        found
            .pop()
            .map(Response::new)
            .ok_or_else(|| not_found("contact", &user))
    }

    async fn list_contacts(
        &self,
        request: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let filter = match (req.segment_id.is_empty(), &req.filter) {
            (true, filter) => filter_of(&filter.clone().unwrap_or_default())?,
            (false, None) => saved_filter(&self.pool, &req.tenant_id, &req.segment_id).await?,
            (false, Some(_)) => {
                return Err(invalid_argument(
                    "filter",
                    "name a segment or give a filter, not both",
                ));
            }
        };
        let rows = store::list(
            &self.pool,
            &req.tenant_id,
            &filter,
            self.clock.now(),
            &after,
            size + 1,
        )
        .await
        .map_err(|e| status::store("listing contacts", &e))?;
        let (page, next_page_token) = paging::paginate(rows, size, |r| &r.user_key);
        Ok(Response::new(ListContactsResponse {
            contacts: page.iter().map(|r| contact_of(&req.tenant_id, r)).collect(),
            next_page_token,
        }))
    }

    async fn save_segment(
        &self,
        request: Request<SaveSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        if !is_client_id(&req.segment_id) {
            return Err(invalid_argument(
                "segment_id",
                "1 to 64 letters, digits, '-', '_', '.' or ':'",
            ));
        }
        if req.name.trim().is_empty() || !rules::is_label(&req.name) {
            return Err(invalid_argument(
                "name",
                "a segment's name is 1 to 256 bytes without control characters",
            ));
        }
        let filter = req.filter.clone().unwrap_or_default();
        filter_of(&filter)?;
        let row = store::SegmentRow {
            segment_id: req.segment_id.clone(),
            name: req.name.trim().to_owned(),
            filter: filter.encode_to_vec(),
            updated_at: self.clock.now().micros(),
        };
        store::save_segment(&self.pool, &req.tenant_id, &row)
            .await
            .map_err(|e| status::store("saving a segment", &e))?;
        Ok(Response::new(segment_of(&req.tenant_id, &row)))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let rows = store::segments(&self.pool, &req.tenant_id, "", &after, size + 1)
            .await
            .map_err(|e| status::store("listing segments", &e))?;
        let (page, next_page_token) = paging::paginate(rows, size, |r| &r.segment_id);
        Ok(Response::new(ListSegmentsResponse {
            segments: page.iter().map(|r| segment_of(&req.tenant_id, r)).collect(),
            next_page_token,
        }))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        store::delete_segment(&self.pool, &req.tenant_id, &req.segment_id)
            .await
            .map_err(|e| status::store("deleting a segment", &e))?;
        Ok(Response::new(DeleteSegmentResponse {}))
    }

    async fn import_contacts(
        &self,
        request: Request<Streaming<ImportContactsChunk>>,
    ) -> Result<Response<ContactImport>, Status> {
        let principal = auth::principal(&request)?;
        let mut stream = request.into_inner();
        let first = match stream.next().await {
            Some(chunk) => chunk?,
            None => return Err(invalid_argument("data", "the import sent no chunk")),
        };
        let tenant_id = required("tenant_id", &first.tenant_id)?.to_owned();
        self.auth
            .authorize_tenant(&principal, &tenant_id, Scope::Send)
            .await?;
        let import_id = first.import_id.clone();
        if !is_client_id(&import_id) {
            return Err(invalid_argument(
                "import_id",
                "1 to 64 letters, digits, '-', '_', '.' or ':'",
            ));
        }
        let code = calling_code(&first.default_calling_code)?.to_owned();
        let now = self.clock.now();
        let claimed = store::claim_import(&self.pool, &tenant_id, &import_id, now)
            .await
            .map_err(|e| status::store("starting an import", &e))?;
        if !claimed {
            let answer = self
                .import_answer(&tenant_id, &import_id, true, 0, REPORT_IN_ANSWER)
                .await?;
            if answer.state == "running" {
                return Err(status::with_reason(
                    Code::Aborted,
                    Reason::InProgress,
                    "this import is running in another call; ask GetContactImport for its report",
                    &[("import_id", &import_id)],
                ));
            }
            return Ok(Response::new(answer));
        }
        let outcome = self
            .run_import(&tenant_id, &import_id, first.data, &code, stream)
            .await;
        let failure = match &outcome {
            Ok(Ok(())) => String::new(),
            Ok(Err(file)) => file.clone(),
            // The call broke off: a retry with the same id takes the import over.
            Err(_) => "the call ended before the file did".to_owned(),
        };
        store::finish_import(
            &self.pool,
            &tenant_id,
            &import_id,
            &failure,
            self.clock.now(),
        )
        .await
        .map_err(|e| status::store("ending an import", &e))?;
        // A malformed file is answered with its report (state failed, and why); a call that
        // broke off with its status.
        let _file_failure_is_in_the_report = outcome?;
        let answer = self
            .import_answer(&tenant_id, &import_id, false, 0, REPORT_IN_ANSWER)
            .await?;
        Ok(Response::new(answer))
    }

    async fn get_contact_import(
        &self,
        request: Request<GetContactImportRequest>,
    ) -> Result<Response<ContactImport>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let after_line = if after.is_empty() {
            0
        } else {
            after.parse::<i64>().map_err(|_| {
                invalid_argument("page_token", "page_token is not one this service issued")
            })?
        };
        self.import_answer(&req.tenant_id, &req.import_id, false, after_line, size)
            .await
            .map(Response::new)
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        self.tenants_number(&req.tenant_id, &req.phone_number_id)
            .await?;
        let size = paging::page_size(req.page_size)?;
        let after = paging::after(&req.page_token)?;
        let before = if after.is_empty() {
            (i64::MAX, String::new())
        } else {
            after
                .split_once('/')
                .and_then(|(at, user)| Some((at.parse::<i64>().ok()?, user.to_owned())))
                .ok_or_else(|| {
                    invalid_argument("page_token", "page_token is not one this service issued")
                })?
        };
        let now = self.clock.now();
        let mut only = conversations::Only::default();
        for o in &req.only {
            match list_conversations_request::Only::try_from(*o) {
                Ok(list_conversations_request::Only::All) => {}
                Ok(list_conversations_request::Only::OpenWindow) => only.open_window = true,
                Ok(list_conversations_request::Only::NeedsReply) => only.needs_reply = true,
                Ok(list_conversations_request::Only::ClosingSoon) => {
                    let within = if req.closing_within_seconds == 0 {
                        3_600
                    } else {
                        i64::from(req.closing_within_seconds)
                    };
                    only.closing_by = Some(now.micros() + within * 1_000_000);
                }
                Err(_) => return Err(invalid_argument("only", format!("{o} is no filter"))),
            }
        }
        let rows = conversations::list(
            &self.pool,
            &req.tenant_id,
            &req.phone_number_id,
            only,
            now,
            (before.0, &before.1),
            size + 1,
        )
        .await
        .map_err(|e| status::store("listing conversations", &e))?;
        let keyed: Vec<(String, conversations::SummaryRow)> = rows
            .into_iter()
            .map(|r| (format!("{}/{}", r.last_inbound_at, r.user_key), r))
            .collect();
        let (page, next_page_token) = paging::paginate(keyed, size, |(k, _)| k);
        let conversations = page
            .into_iter()
            .map(|(_, r)| {
                let closes = r.last_inbound_at + conversations::WINDOW_MICROS;
                ConversationSummary {
                    phone_number_id: req.phone_number_id.clone(),
                    user: r.user_key,
                    profile_name: r.profile_name,
                    last_inbound_at: Some(from_micros(r.last_inbound_at)),
                    window_open: closes > now.micros(),
                    window_closes_at: Some(from_micros(closes)),
                    needs_reply: !r.answered,
                }
            })
            .collect();
        Ok(Response::new(ListConversationsResponse {
            conversations,
            next_page_token,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let req = self.auth.authorize(request, Scope::Read).await?.request;
        self.tenants_number(&req.tenant_id, &req.phone_number_id)
            .await?;
        let user = user_key("user", &req.user, "")?;
        let size = paging::page_size(req.page_size)?;
        let before = conversations::Position::decode(&req.cursor)
            .ok_or_else(|| invalid_argument("cursor", "cursor is not one this service issued"))?;
        let mut items = conversations::messages(
            &self.pool,
            &req.tenant_id,
            &req.phone_number_id,
            &user,
            &before,
            size + 1,
        )
        .await
        .map_err(|e| status::store("reading a conversation", &e))?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let next_cursor = if items.len() > size {
            items.truncate(size);
            items
                .last()
                .map(|i| i.position.encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let window = self
            .hot
            .window(&self.pool, &req.tenant_id, &req.phone_number_id, &user)
            .await
            .map_err(|e| status::store("reading the window", &e))?;
        let contact = self
            .facts
            .contact(&req.tenant_id, &user)
            .await
            .map_err(|e| status::store("reading the tenant's contacts", &e))?;
        let now = self.clock.now();
        Ok(Response::new(Conversation {
            tenant_id: req.tenant_id.clone(),
            phone_number_id: req.phone_number_id.clone(),
            user,
            window_open: window.is_open(now),
            window_closes_at: window.csw_until.map(|t| from_micros(t.micros())),
            fep_until: window
                .fep_until
                .filter(|_| window.fep_open(now))
                .map(|t| from_micros(t.micros())),
            user_blocked: window.is_blocked(),
            contact_blocked: contact.blocked,
            marketing_opt_out: window.is_marketing_opted_out() || contact.opted_out,
            messages: items.into_iter().map(|i| i.message).collect(),
            next_cursor,
        }))
    }

    async fn block_contacts(
        &self,
        request: Request<BlockContactsRequest>,
    ) -> Result<Response<BlockContactsResponse>, Status> {
        let req = self.auth.authorize(request, Scope::Send).await?.request;
        if req.users.is_empty() || req.users.len() > MAX_BLOCKS {
            return Err(invalid_argument(
                "users",
                format!("1 to {MAX_BLOCKS} users"),
            ));
        }
        let now = self.clock.now();
        let mut users = Vec::with_capacity(req.users.len());
        for (i, u) in req.users.iter().enumerate() {
            users.push(user_key(&format!("users[{i}]"), u, "")?);
        }
        users.sort();
        users.dedup();
        let changes: Vec<(String, Change)> = users
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    Change {
                        block: Some((!req.unblock, now)),
                        ..Change::default()
                    },
                )
            })
            .collect();
        store::apply(&self.pool, &req.tenant_id, &changes, "api", now)
            .await
            .map_err(|e| status::store("blocking contacts", &e))?;
        // This replica applies it from the answer on; the others within their facts' TTL.
        self.facts.forget_contacts(&req.tenant_id).await;
        metrics::counter!("finestra_dispatch_contact_blocks_total").increment(users.len() as u64);
        Ok(Response::new(BlockContactsResponse {
            contacts: self.contacts(&req.tenant_id, &users).await?,
        }))
    }
}
