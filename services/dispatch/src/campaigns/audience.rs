//! Who a campaign goes to: a saved segment, a filter over the tenant's contacts, or a list of
//! users, read with what each contact says (its name and attributes for the parameters, its
//! opt-in for marketing). Launch fixes the same audience in the recipients table.

use std::collections::{BTreeMap, HashMap};

use finestra_domain::Timestamp;
use finestra_platform::status;
use sqlx::PgPool;
use tonic::Status;

use crate::contacts::store::{self as contacts, ContactRow, Filter};

/// Contacts read per query.
const PAGE: i64 = 10_000;

#[derive(Clone, Debug)]
pub enum Audience {
    Segment(String),
    Filter(Filter),
    /// User keys, normalised, sorted, distinct.
    Users(Vec<String>),
}

/// A recipient with what its contact says (a user without a contact has none of it).
#[derive(Clone, Debug)]
pub struct Member {
    pub user: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub opted_in: bool,
}

impl Member {
    fn of(r: &ContactRow) -> Self {
        Member {
            user: r.user_key.clone(),
            name: r.name.clone(),
            attributes: r.attributes(),
            opted_in: r.opt_in_at.is_some(),
        }
    }
}

/// The audience as it stands now, in user order.
pub async fn members(
    pool: &PgPool,
    tenant_id: &str,
    audience: &Audience,
    now: Timestamp,
) -> Result<Vec<Member>, Status> {
    let filter = match audience {
        Audience::Users(users) => {
            let mut found: HashMap<String, Member> = contacts::get_many(pool, tenant_id, users)
                .await
                .map_err(|e| status::store("reading contacts", &e))?
                .iter()
                .map(|r| (r.user_key.clone(), Member::of(r)))
                .collect();
            return Ok(users
                .iter()
                .map(|u| {
                    found.remove(u).unwrap_or_else(|| Member {
                        user: u.clone(),
                        name: String::new(),
                        attributes: BTreeMap::new(),
                        opted_in: false,
                    })
                })
                .collect());
        }
        Audience::Segment(id) => crate::contacts::saved_filter(pool, tenant_id, id).await?,
        Audience::Filter(f) => f.clone(),
    };
    let mut members = Vec::new();
    let mut after = String::new();
    loop {
        let page = contacts::list(pool, tenant_id, &filter, now, &after, PAGE)
            .await
            .map_err(|e| status::store("reading contacts", &e))?;
        members.extend(page.iter().map(Member::of));
        match page.last() {
            Some(last) if i64::try_from(page.len()).unwrap_or(0) == PAGE => {
                after.clone_from(&last.user_key);
            }
            _ => return Ok(members),
        }
    }
}

/// Fixes the audience as the campaign's recipients (inside the launch's transaction): a list
/// as it is, a segment or filter read a page at a time with the same query `ListContacts`
/// uses.
pub async fn fix(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    audience: &Audience,
    now: Timestamp,
) -> Result<u64, Status> {
    let stored = |e: sqlx::Error| status::store("fixing the campaign's recipients", &e);
    let filter = match audience {
        Audience::Users(users) => {
            return super::store::add_recipients(tx, tenant_id, campaign_id, users)
                .await
                .map_err(stored);
        }
        Audience::Segment(id) => crate::contacts::saved_filter(pool, tenant_id, id).await?,
        Audience::Filter(f) => f.clone(),
    };
    let mut added = 0;
    let mut after = String::new();
    loop {
        let page = contacts::list(pool, tenant_id, &filter, now, &after, PAGE)
            .await
            .map_err(stored)?;
        let users: Vec<String> = page.iter().map(|r| r.user_key.clone()).collect();
        added += super::store::add_recipients(tx, tenant_id, campaign_id, &users)
            .await
            .map_err(stored)?;
        match users.last() {
            Some(last) if i64::try_from(users.len()).unwrap_or(0) == PAGE => after.clone_from(last),
            _ => return Ok(added),
        }
    }
}
