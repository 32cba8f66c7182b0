//! Rate cards (append-only, a card not started can be withdrawn) and partners' markups.

use super::*;

pub(super) async fn list_rate_cards(
    api: &BillingApi,
    request: Request<ListRateCardsRequest>,
) -> Result<Response<ListRateCardsResponse>, Status> {
    auth::principal(&request)?;
    api.pricer
        .reload()
        .await
        .map_err(|e| status::store("reading rate cards", &e))?;
    Ok(Response::new(ListRateCardsResponse {
        cards: api.pricer.cards().iter().map(card_of).collect(),
    }))
}

pub(super) async fn add_rate_card(
    api: &BillingApi,
    request: Request<AddRateCardRequest>,
) -> Result<Response<RateCard>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "adding a rate card", Scope::Admin)?;
    let req = request.into_inner();
    let not_before = api.clock.now().plus_micros(api.card_margin_micros);
    let card = pg::add_card(&api.pool, &req.source, not_before)
        .await
        .map_err(|e| card_status("adding a rate card", e))?;
    api.pricer
        .reload()
        .await
        .map_err(|e| status::store("reloading rate cards", &e))?;
    tracing::info!(version = %card.version, "rate card added");
    Ok(Response::new(card_of(&card)))
}

pub(super) async fn withdraw_rate_card(
    api: &BillingApi,
    request: Request<WithdrawRateCardRequest>,
) -> Result<Response<RateCard>, Status> {
    let p = auth::principal(&request)?;
    operator_only(&p, "withdrawing a rate card", Scope::Admin)?;
    let req = request.into_inner();
    let version = required("version", &req.version)?;
    let reason = required("reason", &req.reason)?.trim();
    if reason.chars().count() > 500 {
        return Err(invalid_argument("reason", "at most 500 characters"));
    }
    let not_before = api.clock.now().plus_micros(api.card_margin_micros);
    let card = pg::withdraw_card(&api.pool, version, not_before, &p.key_id, reason)
        .await
        .map_err(|e| card_status("withdrawing a rate card", e))?;
    api.pricer
        .reload()
        .await
        .map_err(|e| status::store("reloading rate cards", &e))?;
    tracing::warn!(version = %card.version, key_id = %p.key_id, reason, "rate card withdrawn");
    Ok(Response::new(card_of(&card)))
}

pub(super) async fn set_markup(
    api: &BillingApi,
    request: Request<SetMarkupRequest>,
) -> Result<Response<Markups>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let partner_id = reach_partner(&p, &req.partner_id, Scope::Admin)?;
    let m = req
        .markup
        .ok_or_else(|| invalid_argument("markup", "markup is required"))?;
    if m.basis_points > 0 && m.fixed_micros > 0 {
        return Err(invalid_argument(
            "markup",
            "a markup is basis points or a fixed amount, not both",
        ));
    }
    if !is_acceptable_amount(m.fixed_micros) || m.basis_points > 100_000 {
        return Err(invalid_argument(
            "markup",
            format!("basis points are 0..=100000 and a fixed amount 0..={MAX_AMOUNT_MICROS} µ"),
        ));
    }
    let category = match m.category.trim() {
        "" | "*" => "*".to_owned(),
        c => c.to_ascii_uppercase(),
    };
    pg::set_markup(
        &api.pool,
        partner_id,
        &category,
        m.basis_points,
        m.fixed_micros,
    )
    .await
    .map_err(store("setting a markup"))?;
    api.pricer.forget_markups(partner_id).await;
    Ok(Response::new(api.markups_of(partner_id).await?))
}

pub(super) async fn get_markup(
    api: &BillingApi,
    request: Request<GetMarkupRequest>,
) -> Result<Response<Markups>, Status> {
    let p = auth::principal(&request)?;
    let req = request.into_inner();
    let partner_id = reach_partner(&p, &req.partner_id, Scope::Read)?;
    Ok(Response::new(api.markups_of(partner_id).await?))
}
