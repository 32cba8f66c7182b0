//! The contacts' rows in dispatch's schema (migration 0010). The tenant's writes (API, import,
//! blocks) take the tenant's contacts lock, read the rows, merge in Rust ([`super::merge`]) and
//! write only what changed; the event pipeline's notes of inbound messages touch only the
//! user's own columns (profile name, last inbound time), newest first, without the lock.

use std::collections::{BTreeMap, HashMap};

use finestra_domain::Timestamp;
use sqlx::PgPool;

use super::merge::{self, Change, OptIn, Owned};

/// A contact as stored.
#[derive(Clone, Debug)]
pub struct ContactRow {
    pub user_key: String,
    pub name: String,
    pub profile_name: String,
    pub attributes: String,
    pub tags: Vec<String>,
    pub opt_in_source: String,
    pub opt_in_at: Option<i64>,
    pub opt_in_proof: String,
    pub opted_out_at: Option<i64>,
    pub blocked: bool,
    pub blocked_at: Option<i64>,
    pub last_inbound_at: Option<i64>,
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ContactRow {
    pub fn attributes(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.attributes).unwrap_or_default()
    }

    fn owned(&self) -> Owned {
        Owned {
            name: self.name.clone(),
            attributes: self.attributes(),
            tags: self.tags.clone(),
            opt_in: self.opt_in_at.map(|at| OptIn {
                source: self.opt_in_source.clone(),
                at: Timestamp::from_micros(at),
                proof: self.opt_in_proof.clone(),
            }),
            opted_out_at: self.opted_out_at.map(Timestamp::from_micros),
            blocked: self.blocked,
            blocked_at: self.blocked_at.map(Timestamp::from_micros),
        }
    }
}

/// What a batch of changes did.
#[derive(Debug, Default)]
pub struct Applied {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// A contact a send must know of: blocked by the tenant, or on its suppression list.
pub struct Flagged {
    pub user_key: String,
    pub blocked: bool,
    pub opted_out: bool,
}

/// The tenant's blocked and opted-out contacts.
pub async fn flagged(pool: &PgPool, tenant_id: &str) -> Result<Vec<Flagged>, sqlx::Error> {
    sqlx::query_as!(
        Flagged,
        r#"SELECT user_key, blocked, opted_out_at IS NOT NULL AS "opted_out!"
             FROM dispatch.contacts
            WHERE tenant_id = $1 AND (blocked OR opted_out_at IS NOT NULL)"#,
        tenant_id
    )
    .fetch_all(pool)
    .await
}

/// What a marketing preference does to the tenant's suppression list: the network's 131050
/// refusal (`optout:` events, docs/rules.md §3) puts the user on it; any later resume of the
/// user's (START, the network's preference) takes them off.
pub fn preference_change_of(
    env: &finestra_proto::v1::Envelope,
) -> Option<(String, String, Change)> {
    use finestra_proto::v1::envelope::Payload;
    let Some(Payload::UserPreference(p)) = &env.payload else {
        return None;
    };
    let user = p.user.as_ref()?;
    let key = finestra_domain::UserKey::from_parts(&user.wa_id, &user.user_id).ok()?;
    let at = Timestamp::from_micros(
        env.occurred_at
            .as_ref()
            .map(finestra_proto::time::to_micros)?,
    );
    let change = if p.stop && env.event_id.starts_with("optout:") {
        Change {
            opted_out_at: Some(at),
            ..Change::default()
        }
    } else if !p.stop {
        Change {
            resumed_at: Some(at),
            ..Change::default()
        }
    } else {
        return None;
    };
    (!env.tenant_id.is_empty()).then(|| (env.tenant_id.clone(), key.as_str().to_owned(), change))
}

/// Applies preference changes, a tenant at a time. A resume of a user who is no contact
/// changes nothing (it must not make a contact of everyone who writes START).
pub async fn note_preferences(
    pool: &PgPool,
    changes: &[(String, String, Change)],
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let mut by_tenant: BTreeMap<&str, BTreeMap<&str, Change>> = BTreeMap::new();
    for (tenant, user, change) in changes {
        let slot = by_tenant
            .entry(tenant)
            .or_default()
            .entry(user)
            .or_default();
        // One change per user and batch, the later event's fields winning.
        if change.opted_out_at.is_some() {
            slot.opted_out_at = change.opted_out_at;
        }
        if change.resumed_at.is_some() {
            slot.resumed_at = change.resumed_at.max(slot.resumed_at);
        }
    }
    for (tenant, users) in by_tenant {
        let existing: Vec<String> = get_many(
            pool,
            tenant,
            &users.keys().map(|u| (*u).to_owned()).collect::<Vec<_>>(),
        )
        .await?
        .into_iter()
        .map(|r| r.user_key)
        .collect();
        let list: Vec<(String, Change)> = users
            .into_iter()
            .filter(|(u, c)| c.opted_out_at.is_some() || existing.iter().any(|e| e == u))
            .map(|(u, c)| (u.to_owned(), c))
            .collect();
        if !list.is_empty() {
            apply(pool, tenant, &list, "network", now).await?;
        }
    }
    Ok(())
}

pub async fn get_many(
    pool: impl sqlx::PgExecutor<'_>,
    tenant_id: &str,
    users: &[String],
) -> Result<Vec<ContactRow>, sqlx::Error> {
    sqlx::query_as!(
        ContactRow,
        r#"SELECT user_key AS "user_key!", name, profile_name, attributes::text AS "attributes!",
                  tags, opt_in_source, opt_in_at, opt_in_proof, opted_out_at, blocked, blocked_at,
                  last_inbound_at, source, created_at, updated_at
             FROM dispatch.contacts
            WHERE tenant_id = $1 AND user_key = ANY($2)
            ORDER BY user_key"#,
        tenant_id,
        users
    )
    .fetch_all(pool)
    .await
}

/// Which contacts a list or a segment takes (checked by the API).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Lower case, every one required.
    pub tags: Vec<String>,
    /// A JSON object the attributes must contain.
    pub attributes_json: String,
    /// 0 any, 1 opted in, 2 not opted in.
    pub opt_in: i32,
    pub last_inbound_after: Option<i64>,
    pub last_inbound_before: Option<i64>,
    /// 0 any, 1 a window open (the user wrote in the last 24 h), 2 none open.
    pub window: i32,
    pub include_blocked: bool,
}

/// Contacts matching `filter` in user order after `after`.
pub async fn list(
    pool: &PgPool,
    tenant_id: &str,
    filter: &Filter,
    now: Timestamp,
    after: &str,
    limit: i64,
) -> Result<Vec<ContactRow>, sqlx::Error> {
    let attributes = if filter.attributes_json.is_empty() {
        "{}"
    } else {
        filter.attributes_json.as_str()
    };
    sqlx::query_as!(
        ContactRow,
        r#"SELECT user_key AS "user_key!", name, profile_name, attributes::text AS "attributes!",
                  tags, opt_in_source, opt_in_at, opt_in_proof, opted_out_at, blocked, blocked_at,
                  last_inbound_at, source, created_at, updated_at
             FROM dispatch.contacts
            WHERE tenant_id = $1 AND user_key > $2 AND tags @> $3
              AND attributes @> $4::text::jsonb
              AND ($5 OR NOT blocked)
              AND ($6 = 0 OR ($6 = 1) = (opt_in_at IS NOT NULL))
              AND ($7::int8 IS NULL OR last_inbound_at > $7)
              AND ($8::int8 IS NULL OR last_inbound_at < $8)
              AND ($9 = 0 OR ($9 = 1) = (COALESCE(last_inbound_at, 0) > $10))
            ORDER BY user_key LIMIT $11"#,
        tenant_id,
        after,
        &filter.tags,
        attributes,
        filter.include_blocked,
        filter.opt_in,
        filter.last_inbound_after,
        filter.last_inbound_before,
        filter.window,
        // A user who wrote within a window's length has one open on that number.
        now.micros() - super::conversations::WINDOW_MICROS,
        limit
    )
    .fetch_all(pool)
    .await
}

/// A saved segment: its name, encoded filter and when it was saved.
pub struct SegmentRow {
    pub segment_id: String,
    pub name: String,
    pub filter: Vec<u8>,
    pub updated_at: i64,
}

pub async fn save_segment(
    pool: &PgPool,
    tenant_id: &str,
    segment: &SegmentRow,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO dispatch.segments (tenant_id, segment_id, name, filter, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, segment_id) DO UPDATE
            SET name = EXCLUDED.name, filter = EXCLUDED.filter, updated_at = EXCLUDED.updated_at",
        tenant_id,
        segment.segment_id,
        segment.name,
        segment.filter,
        segment.updated_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Segments in id order after `after` (`only`: just that one).
pub async fn segments(
    pool: &PgPool,
    tenant_id: &str,
    only: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SegmentRow>, sqlx::Error> {
    sqlx::query_as!(
        SegmentRow,
        "SELECT segment_id, name, filter, updated_at FROM dispatch.segments
          WHERE tenant_id = $1 AND ($2 = '' OR segment_id = $2) AND segment_id > $3
          ORDER BY segment_id LIMIT $4",
        tenant_id,
        only,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

pub async fn delete_segment(
    pool: &PgPool,
    tenant_id: &str,
    segment_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM dispatch.segments WHERE tenant_id = $1 AND segment_id = $2",
        tenant_id,
        segment_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Applies changes to a tenant's contacts (at most one per user; a user missing is created
/// with `source`), writing only the contacts they change.
pub async fn apply(
    pool: &PgPool,
    tenant_id: &str,
    changes: &[(String, Change)],
    source: &str,
    now: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One writer of a tenant's contacts at a time (imports, the API, blocks): the merge reads
    // what it writes over. The event pipeline's notes write other columns and do not wait.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('finestra.contacts:' || $1, 0))")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    let users: Vec<String> = changes.iter().map(|(u, _)| u.clone()).collect();
    let existing: HashMap<String, Owned> = get_many(&mut *tx, tenant_id, &users)
        .await?
        .into_iter()
        .map(|r| (r.user_key.clone(), r.owned()))
        .collect();
    let mut applied = Applied::default();
    let mut write: Vec<(&str, Owned)> = Vec::new();
    for (user, change) in changes {
        let before = existing.get(user).cloned().unwrap_or_default();
        let after = merge::merge(&before, change);
        if existing.contains_key(user) && after == before {
            applied.unchanged += 1;
        } else {
            write.push((user, after));
        }
    }
    write.sort_by(|a, b| a.0.cmp(b.0));
    if !write.is_empty() {
        let mut cols = Columns::default();
        for (user, c) in &write {
            cols.push(user, c);
        }
        let inserted = sqlx::query_scalar!(
            r#"INSERT INTO dispatch.contacts AS c
                   (tenant_id, user_key, name, attributes, tags, opt_in_source, opt_in_at,
                    opt_in_proof, opted_out_at, blocked, blocked_at, source, created_at, updated_at)
               SELECT $1, x.u, x.n, x.a::jsonb, string_to_array(x.t, E'\n'), x.os, x.oa, x.op,
                      x.oo, x.b, x.ba, $12, $13, $13
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::int8[], $8::text[], $9::int8[], $10::bool[], $11::int8[])
                      AS x(u, n, a, t, os, oa, op, oo, b, ba)
               ON CONFLICT (tenant_id, user_key) DO UPDATE SET
                   name = EXCLUDED.name, attributes = EXCLUDED.attributes, tags = EXCLUDED.tags,
                   opt_in_source = EXCLUDED.opt_in_source, opt_in_at = EXCLUDED.opt_in_at,
                   opt_in_proof = EXCLUDED.opt_in_proof, opted_out_at = EXCLUDED.opted_out_at,
                   blocked = EXCLUDED.blocked, blocked_at = EXCLUDED.blocked_at,
                   updated_at = EXCLUDED.updated_at
               RETURNING (xmax = 0) AS "inserted!""#,
            tenant_id,
            &cols.users,
            &cols.names,
            &cols.attributes,
            &cols.tags,
            &cols.opt_in_sources,
            &cols.opt_in_ats as &[Option<i64>],
            &cols.opt_in_proofs,
            &cols.opted_out_ats as &[Option<i64>],
            &cols.blocked,
            &cols.blocked_ats as &[Option<i64>],
            source,
            now.micros()
        )
        .fetch_all(&mut *tx)
        .await?;
        for created in inserted {
            if created {
                applied.created += 1;
            } else {
                applied.updated += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}

#[derive(Default)]
struct Columns {
    users: Vec<String>,
    names: Vec<String>,
    attributes: Vec<String>,
    tags: Vec<String>,
    opt_in_sources: Vec<String>,
    opt_in_ats: Vec<Option<i64>>,
    opt_in_proofs: Vec<String>,
    opted_out_ats: Vec<Option<i64>>,
    blocked: Vec<bool>,
    blocked_ats: Vec<Option<i64>>,
}

impl Columns {
    fn push(&mut self, user: &str, c: &Owned) {
        self.users.push(user.to_owned());
        self.names.push(c.name.clone());
        self.attributes
            .push(serde_json::to_string(&c.attributes).unwrap_or_else(|_| "{}".to_owned()));
        // Tags never hold a line break (domain::contacts::normalize_tag).
        self.tags.push(c.tags.join("\n"));
        self.opt_in_sources.push(
            c.opt_in
                .as_ref()
                .map_or(String::new(), |o| o.source.clone()),
        );
        self.opt_in_ats
            .push(c.opt_in.as_ref().map(|o| o.at.micros()));
        self.opt_in_proofs
            .push(c.opt_in.as_ref().map_or(String::new(), |o| o.proof.clone()));
        self.opted_out_ats
            .push(c.opted_out_at.map(Timestamp::micros));
        self.blocked.push(c.blocked);
        self.blocked_ats.push(c.blocked_at.map(Timestamp::micros));
    }
}

/// A user's message to one of the tenant's numbers, as the event pipeline saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub tenant_id: String,
    pub phone_number_id: String,
    pub user_key: String,
    pub profile_name: String,
    pub at: Timestamp,
}

/// The user of an inbound message, as a contact sees it.
pub fn seen_of(env: &finestra_proto::v1::Envelope) -> Option<Seen> {
    use finestra_proto::v1::envelope::Payload;
    let Some(Payload::InboundMessage(m)) = &env.payload else {
        return None;
    };
    let user = m.user.as_ref()?;
    let key = finestra_domain::UserKey::from_parts(&user.wa_id, &user.user_id).ok()?;
    let at = env
        .occurred_at
        .as_ref()
        .map(finestra_proto::time::to_micros)?;
    (!env.tenant_id.is_empty()).then(|| Seen {
        tenant_id: env.tenant_id.clone(),
        phone_number_id: m.phone_number_id.clone(),
        user_key: key.as_str().to_owned(),
        profile_name: user.profile_name.clone(),
        at: Timestamp::from_micros(at),
    })
}

/// Creates the contact of every user seen, or moves its profile name and last inbound time
/// forward (a replayed or older message changes nothing).
pub async fn note_inbound(pool: &PgPool, seen: &[Seen]) -> Result<(), sqlx::Error> {
    if seen.is_empty() {
        return Ok(());
    }
    // One row per contact, the newest message's (a statement may not touch a row twice), in
    // key order (concurrent batches lock rows in the same order).
    let mut newest: BTreeMap<(&str, &str), &Seen> = BTreeMap::new();
    for s in seen {
        let entry = newest.entry((&s.tenant_id, &s.user_key)).or_insert(s);
        if s.at > entry.at {
            *entry = s;
        }
    }
    let tenants: Vec<String> = newest.keys().map(|(t, _)| (*t).to_owned()).collect();
    let users: Vec<String> = newest.keys().map(|(_, u)| (*u).to_owned()).collect();
    let names: Vec<String> = newest.values().map(|s| s.profile_name.clone()).collect();
    let ats: Vec<i64> = newest.values().map(|s| s.at.micros()).collect();
    sqlx::query!(
        "INSERT INTO dispatch.contacts AS c
             (tenant_id, user_key, profile_name, last_inbound_at, source, created_at, updated_at)
         SELECT x.t, x.u, x.p, x.at, 'inbound', x.at, x.at
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS x(t, u, p, at)
         ON CONFLICT (tenant_id, user_key) DO UPDATE SET
             profile_name = CASE WHEN EXCLUDED.profile_name = '' THEN c.profile_name
                                 ELSE EXCLUDED.profile_name END,
             last_inbound_at = EXCLUDED.last_inbound_at
         WHERE c.last_inbound_at IS NULL OR EXCLUDED.last_inbound_at > c.last_inbound_at",
        &tenants,
        &users,
        &names,
        &ats
    )
    .execute(pool)
    .await?;
    // The conversations: one per (number, user), its newest message's time.
    let mut pairs: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for s in seen {
        let at = pairs
            .entry((&s.tenant_id, &s.phone_number_id, &s.user_key))
            .or_insert(s.at.micros());
        *at = (*at).max(s.at.micros());
    }
    let col = |i: usize| -> Vec<String> {
        pairs
            .keys()
            .map(|k| [k.0, k.1, k.2][i].to_owned())
            .collect()
    };
    let ats: Vec<i64> = pairs.values().copied().collect();
    sqlx::query!(
        "INSERT INTO dispatch.conversations AS c (tenant_id, phone_number_id, user_key, last_inbound_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
         ON CONFLICT (tenant_id, phone_number_id, user_key) DO UPDATE
            SET last_inbound_at = EXCLUDED.last_inbound_at
          WHERE EXCLUDED.last_inbound_at > c.last_inbound_at",
        &col(0),
        &col(1),
        &col(2),
        &ats
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// An import's bookkeeping row.
#[derive(Clone, Debug)]
pub struct ImportRow {
    pub state: String,
    pub rows_read: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub rejected: i64,
    pub duplicates: i64,
    pub opted_out: i64,
    pub failure: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub finished_at: Option<i64>,
}

/// A row of an import's report.
#[derive(Clone, Debug)]
pub struct ReportRow {
    pub line: i64,
    pub phone: String,
    pub outcome: String,
    pub field: String,
    pub reason: String,
    pub message: String,
}

/// How long a running import may go without a heartbeat before a retry takes it over.
pub const IMPORT_STALE_MICROS: i64 = 60_000_000;

/// Starts the import, or takes over a failed or stale one (its report is cleared); `false`
/// when the id is finished or running elsewhere.
pub async fn claim_import(
    pool: &PgPool,
    tenant_id: &str,
    import_id: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query_scalar!(
        "INSERT INTO dispatch.contact_imports AS i
             (tenant_id, import_id, state, started_at, heartbeat_at)
         VALUES ($1, $2, 'running', $3, $3)
         ON CONFLICT (tenant_id, import_id) DO UPDATE SET
             state = 'running', rows_read = 0, created = 0, updated = 0, unchanged = 0,
             rejected = 0, duplicates = 0, opted_out = 0, failure = '', started_at = $3,
             heartbeat_at = $3, finished_at = NULL
         WHERE i.state = 'failed' OR (i.state = 'running' AND i.heartbeat_at < $3 - $4)
         RETURNING import_id",
        tenant_id,
        import_id,
        now.micros(),
        IMPORT_STALE_MICROS
    )
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    if claimed {
        sqlx::query!(
            "DELETE FROM dispatch.contact_import_rows WHERE tenant_id = $1 AND import_id = $2",
            tenant_id,
            import_id
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

pub async fn get_import(
    pool: &PgPool,
    tenant_id: &str,
    import_id: &str,
) -> Result<Option<ImportRow>, sqlx::Error> {
    sqlx::query_as!(
        ImportRow,
        "SELECT state, rows_read, created, updated, unchanged, rejected, duplicates, opted_out,
                failure, started_at, heartbeat_at, finished_at
           FROM dispatch.contact_imports WHERE tenant_id = $1 AND import_id = $2",
        tenant_id,
        import_id
    )
    .fetch_optional(pool)
    .await
}

/// Records a batch's report rows and the import's counts so far (and that it is alive).
pub async fn record_progress(
    pool: &PgPool,
    tenant_id: &str,
    import_id: &str,
    counts: &ImportRow,
    report: &[ReportRow],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !report.is_empty() {
        let lines: Vec<i64> = report.iter().map(|r| r.line).collect();
        let phones: Vec<String> = report.iter().map(|r| r.phone.clone()).collect();
        let outcomes: Vec<String> = report.iter().map(|r| r.outcome.clone()).collect();
        let fields: Vec<String> = report.iter().map(|r| r.field.clone()).collect();
        let reasons: Vec<String> = report.iter().map(|r| r.reason.clone()).collect();
        let messages: Vec<String> = report.iter().map(|r| r.message.clone()).collect();
        sqlx::query!(
            "INSERT INTO dispatch.contact_import_rows
                 (tenant_id, import_id, line, phone, outcome, field, reason, message)
             SELECT $1, $2, x.l, x.p, x.o, x.f, x.r, x.m
               FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
                    AS x(l, p, o, f, r, m)
             ON CONFLICT DO NOTHING",
            tenant_id,
            import_id,
            &lines,
            &phones,
            &outcomes,
            &fields,
            &reasons,
            &messages
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE dispatch.contact_imports
            SET rows_read = $3, created = $4, updated = $5, unchanged = $6, rejected = $7,
                duplicates = $8, opted_out = $9, heartbeat_at = $10
          WHERE tenant_id = $1 AND import_id = $2",
        tenant_id,
        import_id,
        counts.rows_read,
        counts.created,
        counts.updated,
        counts.unchanged,
        counts.rejected,
        counts.duplicates,
        counts.opted_out,
        counts.heartbeat_at
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Ends the import: `done`, or `failed` with why.
pub async fn finish_import(
    pool: &PgPool,
    tenant_id: &str,
    import_id: &str,
    failure: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let state = if failure.is_empty() { "done" } else { "failed" };
    sqlx::query!(
        "UPDATE dispatch.contact_imports SET state = $3, failure = $4, finished_at = $5
          WHERE tenant_id = $1 AND import_id = $2",
        tenant_id,
        import_id,
        state,
        failure,
        now.micros()
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The import's report rows after line `after`, in line order.
pub async fn report(
    pool: &PgPool,
    tenant_id: &str,
    import_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<ReportRow>, sqlx::Error> {
    sqlx::query_as!(
        ReportRow,
        "SELECT line, phone, outcome, field, reason, message
           FROM dispatch.contact_import_rows
          WHERE tenant_id = $1 AND import_id = $2 AND line > $3
          ORDER BY line LIMIT $4",
        tenant_id,
        import_id,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}
