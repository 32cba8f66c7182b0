//! Rows ↔ wire types.

use finestra_platform::auth::Scope;
use finestra_platform::status::RequestError;
use finestra_proto::prost_types::Timestamp;
use finestra_proto::v1;

pub fn ts(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    finestra_proto::time::from_micros(t.timestamp_micros())
}

pub fn status(s: &str) -> i32 {
    match s {
        "active" => v1::Status::Active as i32,
        "suspended" => v1::Status::Suspended as i32,
        _ => v1::Status::Unspecified as i32,
    }
}

/// The stored name of a requested status; anything but ACTIVE or SUSPENDED is refused.
pub fn status_name(s: i32) -> Result<&'static str, RequestError> {
    match v1::Status::try_from(s) {
        Ok(v1::Status::Active) => Ok("active"),
        Ok(v1::Status::Suspended) => Ok("suspended"),
        _ => Err(RequestError::invalid("status", "ACTIVE or SUSPENDED")),
    }
}

pub fn scope(s: i32) -> Option<Scope> {
    match v1::Scope::try_from(s).ok()? {
        v1::Scope::Read => Some(Scope::Read),
        v1::Scope::Send => Some(Scope::Send),
        v1::Scope::Admin => Some(Scope::Admin),
        v1::Scope::Unspecified => None,
    }
}

pub fn scope_wire(s: &str) -> i32 {
    match s {
        "read" => v1::Scope::Read as i32,
        "send" => v1::Scope::Send as i32,
        "admin" => v1::Scope::Admin as i32,
        _ => v1::Scope::Unspecified as i32,
    }
}

pub struct PartnerRow {
    pub partner_id: String,
    pub name: String,
    pub status: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<PartnerRow> for v1::Partner {
    fn from(r: PartnerRow) -> Self {
        v1::Partner {
            partner_id: r.partner_id,
            name: r.name,
            status: status(&r.status),
            created_at: Some(ts(r.created_at)),
        }
    }
}

pub struct TenantRow {
    pub tenant_id: String,
    pub partner_id: String,
    pub name: String,
    pub status: String,
    pub tier: Option<i32>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub waba_id: Option<String>,
    pub send_rate_per_second: i32,
    pub send_burst: i32,
    pub send_weight: i32,
    pub marketing_cap: i32,
    pub marketing_cap_days: i32,
}

impl From<TenantRow> for v1::Tenant {
    fn from(r: TenantRow) -> Self {
        v1::Tenant {
            tenant_id: r.tenant_id,
            partner_id: r.partner_id,
            name: r.name,
            status: status(&r.status),
            tier: r.tier.map_or(0, |t| u32::try_from(t).unwrap_or(0)),
            created_at: Some(ts(r.created_at)),
            waba_id: r.waba_id.unwrap_or_default(),
            limits: Some(v1::TenantLimits {
                send_rate_per_second: u32::try_from(r.send_rate_per_second).unwrap_or(0),
                send_burst: u32::try_from(r.send_burst).unwrap_or(0),
                weight: u32::try_from(r.send_weight).unwrap_or(0),
                marketing_cap_per_user: u32::try_from(r.marketing_cap).unwrap_or(0),
                marketing_cap_days: u32::try_from(r.marketing_cap_days).unwrap_or(0),
            }),
        }
    }
}

pub struct NumberRow {
    pub phone_number_id: String,
    pub tenant_id: String,
    pub display_phone_number: String,
    pub throughput_per_second: i32,
    pub status: String,
    pub previous_secret_valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<NumberRow> for v1::Number {
    fn from(r: NumberRow) -> Self {
        v1::Number {
            phone_number_id: r.phone_number_id,
            tenant_id: r.tenant_id,
            display_phone_number: r.display_phone_number,
            throughput_per_second: u32::try_from(r.throughput_per_second).unwrap_or(0),
            status: status(&r.status),
            previous_secret_valid_until: r.previous_secret_valid_until.map(ts),
        }
    }
}

pub fn api_key(k: finestra_registry::keys::KeyInfo) -> v1::ApiKey {
    {
        v1::ApiKey {
            key_id: k.key_id,
            display_prefix: k.display_prefix,
            partner_id: k.partner_id.unwrap_or_default(),
            tenant_id: k.tenant_id.unwrap_or_default(),
            scopes: k.scopes.iter().map(|s| scope_wire(s)).collect(),
            label: k.label,
            created_at: Some(ts(k.created_at)),
            last_used_at: k.last_used_at.map(ts),
            revoked_at: k.revoked_at.map(ts),
        }
    }
}
