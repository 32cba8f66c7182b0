//! Wallets: balance, credit limit and history; money moves by the tenant's partner or the operator.

use super::*;

pub(super) async fn get_wallet(
    api: &BillingApi,
    request: Request<GetWalletRequest>,
) -> Result<Response<Wallet>, Status> {
    let req = api.auth.authorize(request, Scope::Read).await?.request;
    let w = pg::wallet(&api.pool, &req.tenant_id)
        .await
        .map_err(store("reading a wallet"))?;
    Ok(api.wallet_response(&req.tenant_id, &w))
}

pub(super) async fn list_wallet_history(
    api: &BillingApi,
    request: Request<ListWalletHistoryRequest>,
) -> Result<Response<ListWalletHistoryResponse>, Status> {
    let req = api.auth.authorize(request, Scope::Read).await?.request;
    let size = page_size(req.page_size)?;
    let after_token = after(&req.page_token)?;
    // Newest first; the token is the last entry id returned.
    let before: i64 = if after_token.is_empty() {
        i64::MAX
    } else {
        after_token
            .parse()
            .map_err(|_| invalid_argument("page_token", "not a token this service issued"))?
    };
    struct Entry {
        entry_id: i64,
        kind: String,
        reference: String,
        amount: i64,
        occurred_at: i64,
        category: String,
        market: String,
        card_version: String,
        free_reason: String,
        note: String,
    }
    let rows: Vec<Entry> = sqlx::query_as!(
        Entry,
        "SELECT entry_id, kind, reference, amount, occurred_at, category, market,
                card_version, free_reason, note
           FROM billing.ledger WHERE tenant_id = $1 AND entry_id < $2
          ORDER BY entry_id DESC LIMIT $3",
        &req.tenant_id,
        before,
        size + 1,
    )
    .fetch_all(&api.pool)
    .await
    .map_err(store("reading the ledger"))?;
    let keyed: Vec<(String, Entry)> = rows
        .into_iter()
        .map(|e| (e.entry_id.to_string(), e))
        .collect();
    let (page, next_page_token) = paginate(keyed, size, |(k, _)| k);
    Ok(Response::new(ListWalletHistoryResponse {
        entries: page
            .into_iter()
            .map(|(_, e)| WalletEntry {
                kind: e.kind.to_ascii_uppercase(),
                reference: e.reference,
                amount_micros: e.amount,
                occurred_at: Some(from_micros(e.occurred_at)),
                category: e.category,
                market: e.market,
                card_version: e.card_version,
                free_reason: e.free_reason,
                note: e.note,
            })
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn top_up(
    api: &BillingApi,
    request: Request<TopUpRequest>,
) -> Result<Response<Wallet>, Status> {
    let Authorized {
        principal: p,
        request: req,
        ..
    } = api.auth.authorize(request, Scope::Read).await?;
    partner_or_operator(&p, &req.tenant_id)?;
    let top_up_id = required("top_up_id", &req.top_up_id)?;
    if req.amount_micros <= 0 || !is_acceptable_amount(req.amount_micros) {
        return Err(invalid_argument(
            "amount_micros",
            format!("a top-up is a positive amount of at most {MAX_AMOUNT_MICROS} µ"),
        ));
    }
    let currency = api.pricer.currency();
    let w = pg::top_up(
        &api.pool,
        &req.tenant_id,
        top_up_id,
        req.amount_micros,
        &currency,
        &req.note,
        api.clock.now(),
    )
    .await
    .map_err(store("crediting a top-up"))?;
    api.wallet_changed(&req.tenant_id, &w).await
}

pub(super) async fn set_credit_limit(
    api: &BillingApi,
    request: Request<SetCreditLimitRequest>,
) -> Result<Response<Wallet>, Status> {
    let Authorized {
        principal: p,
        request: req,
        ..
    } = api.auth.authorize(request, Scope::Read).await?;
    partner_or_operator(&p, &req.tenant_id)?;
    for (field, amount) in [
        ("credit_limit_micros", req.credit_limit_micros),
        (
            "low_balance_threshold_micros",
            req.low_balance_threshold_micros,
        ),
    ] {
        if !is_acceptable_amount(amount) {
            return Err(invalid_argument(
                field,
                format!("{field} is 0..={MAX_AMOUNT_MICROS} µ"),
            ));
        }
    }
    let w = pg::set_credit_limit(
        &api.pool,
        &req.tenant_id,
        req.credit_limit_micros,
        req.low_balance_threshold_micros,
    )
    .await
    .map_err(store("setting a credit limit"))?;
    api.wallet_changed(&req.tenant_id, &w).await
}
