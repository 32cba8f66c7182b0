//! Usage, invoices and a partner's roll-up, from the ledger.

use super::*;

pub(super) async fn list_usage(
    api: &BillingApi,
    request: Request<ListUsageRequest>,
) -> Result<Response<ListUsageResponse>, Status> {
    let req = api.auth.authorize(request, Scope::Read).await?.request;
    let (Some(from), Some(to)) = (req.from.as_ref(), req.to.as_ref()) else {
        return Err(invalid_argument("from", "from and to are required"));
    };
    let (from, to) = (
        Timestamp::from_micros(to_micros(from)),
        Timestamp::from_micros(to_micros(to)),
    );
    if to <= from {
        return Err(invalid_argument("to", "to must be after from"));
    }
    let by = GroupBy::parse(req.group_by.iter().map(String::as_str)).map_err(|bad| {
        invalid_argument(
            "group_by",
            format!("cannot group by {bad:?}: use number, category, market or day"),
        )
    })?;
    let rows = reports::usage(&api.pool, &req.tenant_id, from, to, by)
        .await
        .map_err(store("reading usage"))?;
    Ok(Response::new(ListUsageResponse {
        rows: rows
            .into_iter()
            .map(|r| UsageRow {
                phone_number_id: r.phone_number_id,
                category: r.category,
                market: r.market,
                day: r.day,
                messages: r.messages,
                charged_messages: r.charged_messages,
                cost_micros: r.cost,
                price_micros: r.price,
            })
            .collect(),
        currency: api.pricer.currency(),
    }))
}

pub(super) async fn get_invoice(
    api: &BillingApi,
    request: Request<GetInvoiceRequest>,
) -> Result<Response<Invoice>, Status> {
    let Authorized {
        tenant,
        request: req,
        ..
    } = api.auth.authorize(request, Scope::Read).await?;
    let (from, to) = month_of(&req.month)?;
    let by = GroupBy {
        category: true,
        market: true,
        ..GroupBy::default()
    };
    let lines = reports::usage(&api.pool, &req.tenant_id, from, to, by)
        .await
        .map_err(store("reading usage"))?;
    let top_ups = reports::top_ups(&api.pool, &req.tenant_id, from, to)
        .await
        .map_err(store("reading top-ups"))?;
    let currency = api.pricer.currency();
    let csv = if req.csv {
        reports::invoice_csv(&req.tenant_id, &req.month, &currency, &lines)
    } else {
        String::new()
    };
    Ok(Response::new(Invoice {
        tenant_id: req.tenant_id.clone(),
        partner_id: tenant.partner_id.clone(),
        month: req.month,
        currency,
        total_cost_micros: lines.iter().map(|l| l.cost).sum(),
        total_price_micros: lines.iter().map(|l| l.price).sum(),
        lines: lines
            .into_iter()
            .map(|l| InvoiceLine {
                category: l.category,
                market: l.market,
                messages: l.messages,
                charged_messages: l.charged_messages,
                cost_micros: l.cost,
                price_micros: l.price,
            })
            .collect(),
        top_ups_micros: top_ups,
        csv,
    }))
}

pub(super) async fn get_partner_rollup(
    api: &BillingApi,
    request: Request<GetPartnerRollupRequest>,
) -> Result<Response<PartnerRollup>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let partner_id = reach_partner(&p, &req.partner_id, Scope::Read)?;
    let (from, to) = month_of(&req.month)?;
    let rows = reports::partner_rollup(&api.pool, partner_id, from, to)
        .await
        .map_err(store("reading the rollup"))?;
    let total_cost: Micros = rows.iter().map(|r| r.cost).sum();
    let total_price: Micros = rows.iter().map(|r| r.price).sum();
    Ok(Response::new(PartnerRollup {
        partner_id: partner_id.to_owned(),
        month: req.month.clone(),
        currency: api.pricer.currency(),
        lines: rows
            .into_iter()
            .map(|r| PartnerRollupLine {
                tenant_id: r.tenant_id,
                messages: r.messages,
                charged_messages: r.charged_messages,
                cost_micros: r.cost,
                price_micros: r.price,
            })
            .collect(),
        total_cost_micros: total_cost,
        total_price_micros: total_price,
        margin_micros: total_price - total_cost,
    }))
}
