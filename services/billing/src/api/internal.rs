//! The calls dispatch and operators make: reservations, their release, and reconcile.

use super::*;

pub(super) async fn reserve(
    api: &BillingApi,
    request: Request<ReserveRequest>,
) -> Result<Response<ReserveResponse>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "Reserve (internal)", Scope::Send)?;
    Ok(Response::new(api.reserve_one(request.into_inner()).await?))
}

pub(super) async fn reserve_batch(
    api: &BillingApi,
    request: Request<ReserveBatchRequest>,
) -> Result<Response<ReserveBatchResponse>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "ReserveBatch (internal)", Scope::Send)?;
    let reservations = request.into_inner().reservations;
    if reservations.len() > MAX_BATCH {
        return Err(invalid_argument(
            "reservations",
            format!("at most {MAX_BATCH} reservations per call"),
        ));
    }
    // Concurrently: they share the writer's next batches.
    let results =
        futures::future::join_all(reservations.into_iter().map(|r| api.reserve_one(r))).await;
    Ok(Response::new(ReserveBatchResponse {
        results: results
            .into_iter()
            .map(|r| match r {
                Ok(reserved) => ReserveResult {
                    reserved: Some(reserved),
                    ..ReserveResult::default()
                },
                Err(status) => ReserveResult {
                    reserved: None,
                    reason: finestra_platform::status::reason_of(&status).unwrap_or_default(),
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                },
            })
            .collect(),
    }))
}

pub(super) async fn price_batch(
    api: &BillingApi,
    request: Request<PriceBatchRequest>,
) -> Result<Response<PriceBatchResponse>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "PriceBatch (internal)", Scope::Send)?;
    let req = request.into_inner();
    if req.items.len() > MAX_BATCH {
        return Err(invalid_argument(
            "items",
            format!("at most {MAX_BATCH} items per call"),
        ));
    }
    let tenant_id = required("tenant_id", &req.tenant_id)?;
    let partner_id = api.partner_of(tenant_id).await?;
    let at = req
        .at
        .as_ref()
        .map_or_else(|| api.clock.now(), |t| Timestamp::from_micros(to_micros(t)));
    let mut results = Vec::with_capacity(req.items.len());
    for item in req.items {
        let kind = if item.free_form {
            MessageKind::FreeForm
        } else {
            MessageKind::Template {
                category: item.category.to_ascii_uppercase(),
            }
        };
        let open = WindowAt {
            csw_open: item.csw_open,
            fep_open: item.fep_open,
        };
        let recipient = item.recipient.trim().trim_start_matches('+');
        results.push(
            match api
                .pricer
                .price(&partner_id, at, recipient, &kind, open)
                .await
            {
                Ok(q) => PriceResult {
                    quote: Some(quote_of(&q, WindowFacts::default(), at, open)),
                    ..PriceResult::default()
                },
                Err(e) => {
                    let status = pricing_status(e, tenant_id);
                    PriceResult {
                        quote: None,
                        reason: finestra_platform::status::reason_of(&status).unwrap_or_default(),
                        message: status.message().to_owned(),
                    }
                }
            },
        );
    }
    Ok(Response::new(PriceBatchResponse { results }))
}

pub(super) async fn release(
    api: &BillingApi,
    request: Request<ReleaseRequest>,
) -> Result<Response<ReleaseResponse>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "Release (internal)", Scope::Send)?;
    let req = request.into_inner();
    let tenant_id = required("tenant_id", &req.tenant_id)?;
    let message_id = required("message_id", &req.message_id)?;
    let batch = [Settlement {
        tenant_id: tenant_id.to_owned(),
        message_id: message_id.to_owned(),
        end: End::Release,
        at: api.clock.now().micros(),
        reason: "released".into(),
    }];
    settle::settle(&api.pool, &api.hot, &batch)
        .await
        .map_err(|e| status::store("releasing", &e))?;
    let state = reservations::get(&api.pool, tenant_id, message_id)
        .await
        .map_err(store("reading a reservation"))?
        .map_or_else(|| "unknown".to_owned(), |(_, s)| s);
    Ok(Response::new(ReleaseResponse { state }))
}

pub(super) async fn reconcile(
    api: &BillingApi,
    request: Request<ReconcileRequest>,
) -> Result<Response<ReconcileReport>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "Reconcile", Scope::Read)?;
    let req = request.into_inner();
    let tenant = (!req.tenant_id.is_empty()).then_some(req.tenant_id.as_str());
    let r = reconcile::run(&api.pool, &api.hot, tenant)
        .await
        .map_err(|e| status::store("reconciling", &e))?;
    Ok(Response::new(ReconcileReport {
        tenants_checked: r.tenants_checked,
        differences: r
            .differences
            .into_iter()
            .map(|d| ReconcileDifference {
                tenant_id: d.tenant_id,
                check: d.check.to_owned(),
                expected: d.expected,
                actual: d.actual,
            })
            .collect(),
        open_reservations: r.open_reservations,
        captured_messages: r.captured_messages,
        ledger_entries: r.ledger_entries,
    }))
}
