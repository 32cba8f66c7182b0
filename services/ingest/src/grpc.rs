//! `IngestInbound` (internal): the webhook's semantics for channels that are not webhook-based.

use std::sync::Arc;

use finestra_platform::auth::{self, Scope};
use finestra_platform::status;
use finestra_platform::status::Reason;
use finestra_proto::v1::ingest_service_server::IngestService;
use finestra_proto::v1::{IngestInboundRequest, IngestInboundResponse};
use tonic::{Code, Request, Response, Status};

use crate::App;
use crate::mapping;

/// More items than this in one call are refused: the answer waits for every ack.
pub const MAX_ITEMS: usize = 1_000;

pub struct IngestApi {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest_inbound(
        &self,
        request: Request<IngestInboundRequest>,
    ) -> Result<Response<IngestInboundResponse>, Status> {
        // Internal: channels run by the operator, never tenants or partners.
        let principal = auth::principal(&request)?;
        if !principal.is_operator() {
            return Err(status::with_reason(
                Code::PermissionDenied,
                Reason::PermissionDenied,
                "IngestInbound is internal: an operator key is required",
                &[],
            ));
        }
        principal.require(Scope::Send)?;
        let req = request.into_inner();
        if req.phone_number_id.is_empty() {
            return Err(status::invalid_argument(
                "phone_number_id",
                "phone_number_id is required",
            ));
        }
        if req.items.len() > MAX_ITEMS {
            return Err(status::invalid_argument(
                "items",
                format!("at most {MAX_ITEMS} items per call"),
            ));
        }
        let number = self
            .app
            .directory
            .lookup(&req.phone_number_id)
            .await
            .map_err(|e| status::store("looking up a number", &e))?
            .ok_or_else(|| {
                status::with_reason(
                    Code::NotFound,
                    Reason::NotFound,
                    "no tenant has this number",
                    &[("phone_number_id", &req.phone_number_id)],
                )
            })?;
        let now = self.app.clock.now();
        let drafts = req
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| mapping::map_item(&req.phone_number_id, i, item, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| status::invalid_argument("items", e.to_string()))?;
        let event_ids = drafts.iter().map(|d| d.event_id.clone()).collect();
        let events = drafts
            .into_iter()
            .map(|d| (number.tenant_id.clone(), d))
            .collect();
        crate::publish::publish(
            &self.app.producer,
            &self.app.topics,
            self.app.clock.as_ref(),
            events,
            // A gRPC call's span has the caller's context (trace_fn).
            finestra_platform::trace::current().as_deref(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "publishing ingested events failed");
            Status::unavailable("the broker did not acknowledge the events; retry")
        })?;
        Ok(Response::new(IngestInboundResponse { event_ids }))
    }
}
