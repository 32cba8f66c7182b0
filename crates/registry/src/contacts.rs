//! Dispatch's contacts as a read model, for services that decide as a send decides without
//! a call (billing's quotes, docs/rules.md §7): whether the tenant blocked a user itself and
//! whether the user is on the tenant's suppression list (docs/rules.md §3). Dispatch owns the
//! table (its migrations 0010 and 0012); this reads one row by its key.

use sqlx::PgPool;

/// What the tenant's contacts say of one user; both false when the user is no contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContactFlags {
    pub blocked: bool,
    pub opted_out: bool,
}

/// The flags of `user` (its user key, E.164 digits without '+').
pub async fn flags(
    pool: &PgPool,
    tenant_id: &str,
    user: &str,
) -> Result<ContactFlags, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT blocked, opted_out_at IS NOT NULL AS "opted_out!"
             FROM dispatch.contacts WHERE tenant_id = $1 AND user_key = $2"#,
        tenant_id,
        user.trim_start_matches('+')
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or_else(ContactFlags::default, |r| ContactFlags {
        blocked: r.blocked,
        opted_out: r.opted_out,
    }))
}
