//! `GetWindow` and `ListOpenWindows`.

use std::sync::Arc;

use finestra_domain::{Clock, Timestamp, UserKey, WindowState};
use finestra_platform::auth::{self, Authenticator, Scope};
use finestra_platform::paging::{after, page_size, paginate};
use finestra_platform::status::{self, required};
use finestra_proto::time::from_micros;
use finestra_proto::v1::window_service_server::WindowService;
use finestra_proto::v1::{
    GetWindowRequest, ListOpenWindowsRequest, ListOpenWindowsResponse, Window,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::hot::HotStore;
use crate::pg;
use crate::state::PairKey;

pub struct WindowApi {
    pub hot: HotStore,
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub auth: Authenticator,
}

/// A user as given by a client: a wa_id (digits, optional '+') or a business-scoped user id.
fn parse_user(user: &str) -> Result<UserKey, Status> {
    let digits = user.trim().trim_start_matches('+');
    let parsed = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        UserKey::from_parts(digits, "")
    } else {
        UserKey::from_parts("", user)
    };
    parsed.map_err(|e| status::invalid_argument("user", e.to_string()))
}

pub fn to_window(key: &PairKey, s: &WindowState, now: Timestamp) -> Window {
    let ts = |t: Option<Timestamp>| t.map(|t| from_micros(t.micros()));
    Window {
        tenant_id: key.tenant_id.clone(),
        phone_number_id: key.phone_number_id.clone(),
        user: key.user.clone(),
        open: s.is_open(now),
        csw_until: ts(s.csw_until),
        fep_open: s.fep_open(now),
        fep_until: ts(s.fep_until),
        fep_eligible: s.fep_eligible(now),
        referral_at: ts(s.referral_at),
        last_inbound_message_id: s
            .last_inbound
            .as_ref()
            .map(|l| l.message_id.clone())
            .unwrap_or_default(),
        last_inbound_at: ts(s.last_inbound.as_ref().map(|l| l.at)),
        marketing_opt_out: s.is_marketing_opted_out(),
        blocked: s.is_blocked(),
        as_of: Some(from_micros(now.micros())),
    }
}

impl WindowApi {
    /// Redis first; on a miss (or Redis trouble) the Postgres row, which is then put back into
    /// Redis so the next read is hot again.
    pub async fn state(&self, key: &PairKey) -> Result<WindowState, Status> {
        match self.hot.get(key).await {
            Ok(Some(s)) => {
                metrics::counter!("finestra_window_reads_total", "source" => "redis").increment(1);
                return Ok(s);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "redis read failed; answering from postgres"),
        }
        metrics::counter!("finestra_window_reads_total", "source" => "postgres").increment(1);
        let row = pg::read_state(&self.pool, key)
            .await
            .map_err(|e| status::store("reading window state", &e))?;
        // No row: the user never wrote. The empty state is complete too; cache it.
        let state = row.map(|r| r.state()).unwrap_or_default();
        if let Err(e) = self
            .hot
            .merge_all(&[(key.clone(), state.clone())], self.clock.now())
            .await
        {
            tracing::warn!(error = %e, "could not rebuild the redis hash");
        }
        Ok(state)
    }
}

#[tonic::async_trait]
impl WindowService for WindowApi {
    async fn get_window(
        &self,
        request: Request<GetWindowRequest>,
    ) -> Result<Response<Window>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        self.auth
            .authorize_tenant(
                &principal,
                required("tenant_id", &req.tenant_id)?,
                Scope::Read,
            )
            .await?;
        let key = PairKey {
            tenant_id: required("tenant_id", &req.tenant_id)?.to_owned(),
            phone_number_id: required("phone_number_id", &req.phone_number_id)?.to_owned(),
            user: parse_user(required("user", &req.user)?)?
                .as_str()
                .to_owned(),
        };
        let mut state = self.state(&key).await?;
        if state
            .last_inbound
            .as_ref()
            .is_some_and(|l| l.message_id.is_empty())
        {
            // Redis keeps no message id (hot.rs keeps its values small): Postgres does.
            let row = pg::read_state(&self.pool, &key)
                .await
                .map_err(|e| status::store("reading window state", &e))?;
            if let Some(row) = row {
                state.last_inbound = row.state().last_inbound;
            }
        }
        Ok(Response::new(to_window(&key, &state, self.clock.now())))
    }

    async fn list_open_windows(
        &self,
        request: Request<ListOpenWindowsRequest>,
    ) -> Result<Response<ListOpenWindowsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let tenant_id = required("tenant_id", &req.tenant_id)?;
        self.auth
            .authorize_tenant(&principal, tenant_id, Scope::Read)
            .await?;
        let number = required("phone_number_id", &req.phone_number_id)?;
        let size = page_size(req.page_size)?;
        let after = after(&req.page_token)?;
        let now = self.clock.now();
        // One extra row tells whether another page exists.
        let rows = pg::list_open(&self.pool, tenant_id, number, now, &after, size + 1)
            .await
            .map_err(|e| status::store("listing open windows", &e))?;
        let (rows, next_page_token) = paginate(rows, size, |r| &r.user_key);
        let windows = rows
            .iter()
            .map(|r| to_window(&r.key(), &r.state(), now))
            .collect();
        Ok(Response::new(ListOpenWindowsResponse {
            windows,
            next_page_token,
        }))
    }
}
