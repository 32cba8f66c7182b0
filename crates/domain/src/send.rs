//! What may be sent (docs/rules.md §2), as one pure decision over the facts a sender gathered:
//! the checks run in the design's order and the first that fails is the answer, so a refusal
//! reserves, charges and queues nothing. Tier limits and funds come after, in the services
//! that hold their state.

use crate::template::{Category, Status};
use crate::time::Timestamp;
use crate::window::WindowState;

/// Longest text body the network accepts.
pub const MAX_TEXT_CHARS: usize = 4_096;

/// A free-form message (only inside the customer-service window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FreeForm {
    Text {
        body: String,
    },
    /// image, document, audio, video, sticker: by link.
    /// By the network's id of an uploaded file, or by an http(s) link: exactly one.
    Media {
        kind: String,
        link: String,
        media_id: String,
        caption: String,
    },
    Interactive,
    Location,
    Reaction,
    /// Contact cards.
    Contacts,
}

/// What the business asks to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    FreeForm(FreeForm),
    Template {
        name: String,
        language: String,
        parameters: Vec<String>,
    },
}

/// The template as the control plane knows it at acceptance time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateFacts {
    pub status: Status,
    pub category: Category,
    pub parameter_count: usize,
}

/// Everything the decision needs, gathered by the sender.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub tenant_active: bool,
    /// The number exists, is the tenant's and is active.
    pub number_active: bool,
    /// The recipient as given (E.164 digits, optional `+`).
    pub recipient: &'a str,
    pub window: &'a WindowState,
    /// The tenant blocked this user itself (spam protection, docs/rules.md §3): refused as a
    /// block by the user is.
    pub tenant_blocked: bool,
    /// The user is on the tenant's suppression list (an imported opt-out, the network's
    /// 131050 on any of its numbers): marketing is refused as after the user's own stop.
    pub tenant_opted_out: bool,
    /// `None` when the tenant has no template of that name and language.
    pub template: Option<TemplateFacts>,
    pub now: Timestamp,
}

/// Why a send is refused; `reason()` is docs/rules.md §8's machine-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    TenantInactive,
    NumberNotFound,
    UserBlocked,
    InvalidMessage(String),
    WindowClosed,
    TemplateNotApproved,
    /// The network paused the template for its quality; usable again when the pause ends.
    TemplatePaused,
    TemplateParamsMismatch {
        expected: usize,
        given: usize,
    },
    MarketingOptOut,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TenantInactive => "TENANT_SUSPENDED",
            Refusal::NumberNotFound => "NOT_FOUND",
            Refusal::UserBlocked => "USER_BLOCKED",
            Refusal::InvalidMessage(_) => "INVALID_MESSAGE",
            Refusal::WindowClosed => "WINDOW_CLOSED",
            Refusal::TemplateNotApproved => "TEMPLATE_NOT_APPROVED",
            Refusal::TemplatePaused => "TEMPLATE_PAUSED",
            Refusal::TemplateParamsMismatch { .. } => "TEMPLATE_PARAMS_MISMATCH",
            Refusal::MarketingOptOut => "MARKETING_OPT_OUT",
        }
    }
}

/// An admitted message: what pricing and the tier limit need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub csw_open: bool,
    pub fep_open: bool,
    /// This message, a reply inside a referral message's window, starts a free entry point
    /// (docs/rules.md §1): it is priced inside it, and so is what follows for 72 h.
    pub starts_fep: bool,
    /// A template outside the window: counts toward the tenant's tier (distinct users / 24 h).
    pub business_initiated: bool,
    /// `None` for free-form.
    pub category: Option<Category>,
}

impl Admitted {
    /// The window as pricing sees this message: inside an FEP when one runs or this message
    /// starts one.
    pub fn priced_window(&self) -> crate::pricing::WindowAt {
        crate::pricing::WindowAt {
            csw_open: self.csw_open,
            fep_open: self.fep_open || self.starts_fep,
        }
    }
}

/// What a quote asks about: the kind of message, without its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    FreeForm,
    Template,
}

fn valid_recipient(recipient: &str) -> bool {
    let digits = recipient.strip_prefix('+').unwrap_or(recipient);
    (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn valid_link(link: &str) -> bool {
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or_default();
        !host.is_empty() && !r.contains(char::is_whitespace)
    })
}

fn validate(message: &Outgoing, recipient: &str) -> Result<(), Refusal> {
    let invalid = |why: &str| Err(Refusal::InvalidMessage(why.to_owned()));
    if !valid_recipient(recipient) {
        return invalid("the recipient is not an E.164 number");
    }
    match message {
        Outgoing::FreeForm(FreeForm::Text { body }) => {
            if body.trim().is_empty() {
                return invalid("the text is empty");
            }
            if body.chars().count() > MAX_TEXT_CHARS {
                return invalid("the text is longer than 4,096 characters");
            }
        }
        Outgoing::FreeForm(FreeForm::Media {
            link,
            media_id,
            caption,
            ..
        }) => {
            match (link.is_empty(), media_id.is_empty()) {
                (true, true) | (false, false) => {
                    return invalid("media is sent by exactly one of link and media_id");
                }
                (false, true) if !valid_link(link) => {
                    return invalid("the media link is not an http(s) URL");
                }
                (true, false) if !crate::media::valid_media_id(media_id) => {
                    return invalid("the media_id is not one the network issues");
                }
                _ => {}
            }
            if caption.chars().count() > 1_024 {
                return invalid("the caption is longer than 1,024 characters");
            }
        }
        Outgoing::FreeForm(_) => {}
        Outgoing::Template { name, language, .. } => {
            if name.trim().is_empty() || language.trim().is_empty() {
                return invalid("a template needs a name and a language");
            }
        }
    }
    Ok(())
}

/// Decides a send, checking in docs/rules.md §2's order: tenant → number → block → message →
/// window → template approved → parameters → marketing opt-out.
pub fn admit(message: &Outgoing, facts: &Facts<'_>) -> Result<Admitted, Refusal> {
    let (asked, parameters) = match message {
        Outgoing::FreeForm(_) => (Asked::FreeForm, None),
        Outgoing::Template { parameters, .. } => (Asked::Template, Some(parameters.len())),
    };
    decide(asked, parameters, Some((message, facts.recipient)), facts)
}

/// Decides what a send of this kind would be, for a quote: the same checks in the same order
/// as [`admit`], except those of a content the quote does not carry (the message's form and
/// its parameters). A quote therefore refuses what a send would refuse and prices what it
/// would price.
pub fn admit_quote(asked: Asked, facts: &Facts<'_>) -> Result<Admitted, Refusal> {
    decide(asked, None, None, facts)
}

fn decide(
    asked: Asked,
    parameters: Option<usize>,
    content: Option<(&Outgoing, &str)>,
    facts: &Facts<'_>,
) -> Result<Admitted, Refusal> {
    if !facts.tenant_active {
        return Err(Refusal::TenantInactive);
    }
    if !facts.number_active {
        return Err(Refusal::NumberNotFound);
    }
    if facts.window.is_blocked() || facts.tenant_blocked {
        return Err(Refusal::UserBlocked);
    }
    if let Some((message, recipient)) = content {
        validate(message, recipient)?;
    }
    let csw_open = facts.window.is_open(facts.now);
    let fep_open = facts.window.fep_open(facts.now);
    let starts_fep = csw_open && facts.window.fep_eligible(facts.now);
    if asked == Asked::FreeForm {
        // The FEP changes prices, never what may be sent.
        return if csw_open {
            Ok(Admitted {
                csw_open,
                fep_open,
                starts_fep,
                business_initiated: false,
                category: None,
            })
        } else {
            Err(Refusal::WindowClosed)
        };
    }
    let template = match facts.template {
        Some(t) => match t.status.at(facts.now) {
            Status::Approved => t,
            Status::Paused { .. } => return Err(Refusal::TemplatePaused),
            _ => return Err(Refusal::TemplateNotApproved),
        },
        None => return Err(Refusal::TemplateNotApproved),
    };
    if let Some(given) = parameters
        && template.parameter_count != given
    {
        return Err(Refusal::TemplateParamsMismatch {
            expected: template.parameter_count,
            given,
        });
    }
    if template.category == Category::Marketing
        && (facts.window.is_marketing_opted_out() || facts.tenant_opted_out)
    {
        return Err(Refusal::MarketingOptOut);
    }
    Ok(Admitted {
        csw_open,
        fep_open,
        starts_fep,
        business_initiated: !csw_open,
        category: Some(template.category),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_764_000_000);
    const USER: &str = "393471234567";

    fn open_window() -> WindowState {
        let mut w = WindowState::default();
        w.on_user_message(NOW.plus_hours(-1), "wamid.1", false, NOW);
        w
    }

    fn facts<'a>(window: &'a WindowState, template: Option<TemplateFacts>) -> Facts<'a> {
        Facts {
            tenant_active: true,
            number_active: true,
            recipient: USER,
            window,
            tenant_blocked: false,
            tenant_opted_out: false,
            template,
            now: NOW,
        }
    }

    #[test]
    fn the_tenants_suppression_list_refuses_marketing_only() {
        let window = WindowState::default();
        let suppressed = Facts {
            tenant_opted_out: true,
            ..facts(&window, Some(APPROVED_MARKETING))
        };
        assert_eq!(
            admit_quote(Asked::Template, &suppressed).map(|_| ()),
            Err(Refusal::MarketingOptOut)
        );
        let utility = Facts {
            template: Some(TemplateFacts {
                category: Category::Utility,
                ..APPROVED_MARKETING
            }),
            ..suppressed
        };
        assert!(admit_quote(Asked::Template, &utility).is_ok());
    }

    #[test]
    fn a_user_the_tenant_blocked_is_refused_like_one_who_blocked_the_number() {
        let window = open_window();
        let blocked = Facts {
            tenant_blocked: true,
            ..facts(&window, Some(APPROVED_MARKETING))
        };
        assert_eq!(
            admit(&text("hi"), &blocked).map(|_| ()),
            Err(Refusal::UserBlocked)
        );
        assert_eq!(
            admit_quote(Asked::Template, &blocked).map(|_| ()),
            Err(Refusal::UserBlocked)
        );
        // Before the message's own checks: an invalid message to a blocked user is refused
        // for the block, as docs/rules.md §2 orders them.
        assert_eq!(
            admit(&text(""), &blocked).map(|_| ()),
            Err(Refusal::UserBlocked)
        );
    }

    fn text(body: &str) -> Outgoing {
        Outgoing::FreeForm(FreeForm::Text { body: body.into() })
    }

    fn template(n: usize) -> Outgoing {
        Outgoing::Template {
            name: "offer".into(),
            language: "it".into(),
            parameters: (0..n).map(|i| format!("p{i}")).collect(),
        }
    }

    const APPROVED_MARKETING: TemplateFacts = TemplateFacts {
        status: Status::Approved,
        category: Category::Marketing,
        parameter_count: 1,
    };

    #[test]
    fn free_form_only_inside_the_window_even_during_an_fep() {
        let open = open_window();
        let a = admit(&text("hi"), &facts(&open, None)).expect("admitted");
        assert!(a.csw_open && !a.business_initiated && a.category.is_none());
        let closed = WindowState::default();
        assert_eq!(
            admit(&text("hi"), &facts(&closed, None)),
            Err(Refusal::WindowClosed)
        );
        // A referral message 25 h ago, replied to in time: FEP open, CSW closed.
        let mut fep = WindowState::default();
        fep.on_user_message(NOW.plus_hours(-25), "wamid.r", true, NOW.plus_hours(-25));
        fep.on_business_reply(NOW.plus_hours(-24));
        assert!(fep.fep_open(NOW) && !fep.is_open(NOW));
        assert_eq!(
            admit(&text("hi"), &facts(&fep, None)),
            Err(Refusal::WindowClosed)
        );
        let t = admit(&template(1), &facts(&fep, Some(APPROVED_MARKETING))).expect("template");
        assert!(
            t.fep_open && t.business_initiated,
            "priced free, counted for the tier"
        );
    }

    #[test]
    fn templates_outside_the_window_are_business_initiated() {
        let closed = WindowState::default();
        let a = admit(&template(1), &facts(&closed, Some(APPROVED_MARKETING))).expect("ok");
        assert_eq!(
            a,
            Admitted {
                csw_open: false,
                fep_open: false,
                starts_fep: false,
                business_initiated: true,
                category: Some(Category::Marketing)
            }
        );
        let open = open_window();
        let a = admit(&template(1), &facts(&open, Some(APPROVED_MARKETING))).expect("ok");
        assert!(!a.business_initiated, "inside the window it does not count");
    }

    #[test]
    fn template_status_parameters_and_opt_out() {
        let closed = WindowState::default();
        for status in [Status::Pending, Status::Rejected, Status::Disabled] {
            let t = TemplateFacts {
                status,
                ..APPROVED_MARKETING
            };
            assert_eq!(
                admit(&template(1), &facts(&closed, Some(t))),
                Err(Refusal::TemplateNotApproved),
                "{status:?}"
            );
        }
        let paused = TemplateFacts {
            status: Status::Paused {
                until: NOW.plus_hours(3),
            },
            ..APPROVED_MARKETING
        };
        assert_eq!(
            admit(&template(1), &facts(&closed, Some(paused))),
            Err(Refusal::TemplatePaused),
            "paused for its quality: told so"
        );
        assert_eq!(
            admit(&template(1), &facts(&closed, None)),
            Err(Refusal::TemplateNotApproved),
            "no such template for that language"
        );
        assert_eq!(
            admit(&template(2), &facts(&closed, Some(APPROVED_MARKETING))),
            Err(Refusal::TemplateParamsMismatch {
                expected: 1,
                given: 2
            })
        );
        let mut opted_out = WindowState::default();
        opted_out.on_marketing_preference(NOW.plus_hours(-2), true);
        assert_eq!(
            admit(&template(1), &facts(&opted_out, Some(APPROVED_MARKETING))),
            Err(Refusal::MarketingOptOut)
        );
        let utility = TemplateFacts {
            category: Category::Utility,
            ..APPROVED_MARKETING
        };
        assert!(
            admit(&template(1), &facts(&opted_out, Some(utility))).is_ok(),
            "only marketing is stopped"
        );
    }

    #[test]
    fn messages_are_validated() {
        let open = open_window();
        let invalid = |m: Outgoing| {
            matches!(
                admit(&m, &facts(&open, None)),
                Err(Refusal::InvalidMessage(_))
            )
        };
        assert!(invalid(text("  ")));
        assert!(invalid(text(&"x".repeat(MAX_TEXT_CHARS + 1))));
        assert!(
            !invalid(text(&"è".repeat(MAX_TEXT_CHARS))),
            "characters, not bytes"
        );
        let media = |link: &str| {
            Outgoing::FreeForm(FreeForm::Media {
                kind: "document".into(),
                link: link.into(),
                media_id: String::new(),
                caption: String::new(),
            })
        };
        assert!(invalid(media("ftp://x/y.pdf")));
        assert!(invalid(media("https:///y.pdf")));
        assert!(invalid(media("https://exa mple.com/y.pdf")));
        assert!(!invalid(media("https://example.com/invoice.pdf")));
        let by_id = |link: &str, id: &str| {
            Outgoing::FreeForm(FreeForm::Media {
                kind: "image".into(),
                link: link.into(),
                media_id: id.into(),
                caption: String::new(),
            })
        };
        assert!(
            !invalid(by_id("", "1037543291543636")),
            "by the network's id"
        );
        assert!(invalid(by_id("", "")), "neither");
        assert!(
            invalid(by_id("https://example.com/a.png", "1037543291543636")),
            "both"
        );
        assert!(invalid(by_id("", "../../etc")), "not a media id");
        let mut f = facts(&open, None);
        f.recipient = "39-347";
        assert!(matches!(
            admit(&text("hi"), &f),
            Err(Refusal::InvalidMessage(_))
        ));
    }

    #[test]
    fn the_first_failing_check_in_design_order_wins() {
        // Everything wrong at once: each fix reveals the next check.
        let mut blocked_opted_out = WindowState::default();
        blocked_opted_out.on_block(NOW.plus_hours(-1), true);
        blocked_opted_out.on_marketing_preference(NOW.plus_hours(-1), true);
        let bad_template = Some(TemplateFacts {
            status: Status::Pending,
            ..APPROVED_MARKETING
        });
        let mut f = facts(&blocked_opted_out, bad_template);
        f.tenant_active = false;
        f.number_active = false;
        f.recipient = "x";
        let m = template(3);
        assert_eq!(admit(&m, &f), Err(Refusal::TenantInactive));
        f.tenant_active = true;
        assert_eq!(admit(&m, &f), Err(Refusal::NumberNotFound));
        f.number_active = true;
        assert_eq!(admit(&m, &f), Err(Refusal::UserBlocked));
        let opted_out_only = {
            let mut w = WindowState::default();
            w.on_marketing_preference(NOW.plus_hours(-1), true);
            w
        };
        f.window = &opted_out_only;
        assert!(matches!(admit(&m, &f), Err(Refusal::InvalidMessage(_))));
        f.recipient = USER;
        assert_eq!(admit(&m, &f), Err(Refusal::TemplateNotApproved));
        f.template = Some(APPROVED_MARKETING);
        assert_eq!(
            admit(&m, &f).map_err(|r| r.reason()),
            Err("TEMPLATE_PARAMS_MISMATCH")
        );
        assert_eq!(admit(&template(1), &f), Err(Refusal::MarketingOptOut));
        // Free-form: the window check comes after validation and before templates.
        assert_eq!(admit(&text("hi"), &f), Err(Refusal::WindowClosed));
    }

    #[test]
    fn a_template_whose_pause_has_ended_is_approved_and_one_paused_for_good_is_not() {
        let open = open_window();
        let paused_until = |until: Timestamp| TemplateFacts {
            status: Status::Paused { until },
            ..APPROVED_MARKETING
        };
        let ended = Some(paused_until(NOW));
        assert!(admit(&template(1), &facts(&open, ended)).is_ok());
        assert!(admit_quote(Asked::Template, &facts(&open, ended)).is_ok());
        let running = Some(paused_until(NOW.plus_micros(1)));
        assert_eq!(
            admit(&template(1), &facts(&open, running)),
            Err(Refusal::TemplatePaused)
        );
        let unknown_end = Status::from_stored("PAUSED", None).expect("a status");
        let t = Some(TemplateFacts {
            status: unknown_end,
            ..APPROVED_MARKETING
        });
        assert_eq!(
            admit_quote(Asked::Template, &facts(&open, t)),
            Err(Refusal::TemplatePaused)
        );
    }

    #[test]
    fn a_reply_inside_a_referral_window_starts_an_fep_and_is_priced_inside_it() {
        let mut referral = WindowState::default();
        referral.on_user_message(NOW.plus_hours(-1), "wamid.r", true, NOW);
        let a = admit(&text("hi"), &facts(&referral, None)).expect("admitted");
        assert!(a.starts_fep && !a.fep_open);
        assert!(a.priced_window().fep_open && a.priced_window().csw_open);
        let q = admit_quote(Asked::FreeForm, &facts(&referral, None)).expect("quoted");
        assert_eq!(q, a, "the quote decides what the send decides");
        let plain = open_window();
        let b = admit(&text("hi"), &facts(&plain, None)).expect("admitted");
        assert!(!b.starts_fep && !b.priced_window().fep_open);
    }

    proptest::proptest! {
        /// Whatever the facts, a quote of a message's kind decides exactly what the send of
        /// that message decides, except for the content checks a quote cannot make.
        #[test]
        fn a_quote_decides_what_the_send_decides(
            tenant_active: bool,
            number_active: bool,
            inbound_hours_ago in proptest::option::of(-2i64..60),
            referral: bool,
            blocked: bool,
            opted_out: bool,
            replied_hours_ago in proptest::option::of(0i64..80),
            status in 0u8..6,
            marketing: bool,
            free_form: bool,
        ) {
            let mut w = WindowState::default();
            if let Some(h) = inbound_hours_ago {
                w.on_user_message(NOW.plus_hours(-h), "wamid.p", referral, NOW);
            }
            if let Some(h) = replied_hours_ago {
                w.on_business_reply(NOW.plus_hours(-h));
            }
            w.on_block(NOW.plus_hours(-3), blocked);
            w.on_marketing_preference(NOW.plus_hours(-3), opted_out);
            let status = match status {
                0 => Status::Approved,
                1 => Status::Pending,
                2 => Status::Rejected,
                3 => Status::Disabled,
                4 => Status::Paused { until: NOW.plus_hours(-1) },
                _ => Status::Paused { until: NOW.plus_hours(1) },
            };
            let t = TemplateFacts {
                status,
                category: if marketing { Category::Marketing } else { Category::Utility },
                parameter_count: 1,
            };
            let mut f = facts(&w, Some(t));
            f.tenant_active = tenant_active;
            f.number_active = number_active;
            let (message, asked) = if free_form {
                (text("hi"), Asked::FreeForm)
            } else {
                (template(1), Asked::Template)
            };
            proptest::prop_assert_eq!(admit(&message, &f), admit_quote(asked, &f));
        }
    }
}
