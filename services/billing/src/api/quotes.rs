//! What a message would cost: the same admission and pricing as a send (docs/rules.md §2, §6).

use super::*;

pub(super) async fn quote_message(
    api: &BillingApi,
    request: Request<QuoteMessageRequest>,
) -> Result<Response<Quote>, Status> {
    let Authorized {
        tenant,
        request: req,
        ..
    } = api.auth.authorize(request, Scope::Read).await?;
    let number = required("phone_number_id", &req.phone_number_id)?;
    let user = required("user", &req.user)?.trim().trim_start_matches('+');
    let asked = if req.free_form {
        Asked::FreeForm
    } else if req.template_id.is_empty() && req.template_name.is_empty() {
        return Err(invalid_argument(
            "template_id",
            "free_form, template_id or template_name is required",
        ));
    } else {
        Asked::Template
    };
    // The facts SendMessage decides on, read the same way, and the same decision
    // (docs/rules.md §2): a quote refuses what a send would refuse and prices what it would
    // price, including the free entry point a reply would start.
    let facts = pricer::send_facts(
        &api.pool,
        &api.redis,
        &api.redis_prefix,
        &req.tenant_id,
        number,
        user,
        (asked == Asked::Template).then_some(pricer::TemplateAsked {
            id: &req.template_id,
            name: &req.template_name,
            language: &req.template_language,
        }),
    )
    .await
    .map_err(|e| finestra_platform::status::store("reading the send's facts", &e))?;
    let now = api.clock.now();
    let admitted = send::admit_quote(
        asked,
        &SendFacts {
            tenant_active: facts.tenant_active,
            number_active: facts.number_active,
            recipient: user,
            window: &facts.window,
            tenant_blocked: facts.contact.blocked,
            tenant_opted_out: facts.contact.opted_out,
            template: facts.template,
            now,
        },
    )
    .map_err(|r| refusal(&r, &[("tenant_id", &req.tenant_id)]))?;
    let kind = match admitted.category {
        Some(category) => MessageKind::Template {
            category: category.as_str().to_owned(),
        },
        None => MessageKind::FreeForm,
    };
    let open = admitted.priced_window();
    let window = WindowFacts {
        csw_until: facts.window.csw_until,
        fep_until: facts.window.fep_until,
    };
    let q = api
        .pricer
        .price(&tenant.partner_id, now, user, &kind, open)
        .await
        .map_err(|e| pricing_status(e, &req.tenant_id))?;
    Ok(Response::new(quote_of(&q, window, now, open)))
}
