//! The network's template reviews (docs/rules.md §4), over the templates submitted to it
//! through its Cloud API: one is approved a configurable delay after its submission, or
//! rejected when its body contains the banned word; a control call can pause, reinstate,
//! disable, reject or approve one. Each verdict is recorded in the network's own store and
//! reaches Finestra as a signed `message_template_status_update` webhook of the business
//! account, like Meta's.

use std::time::Duration;

use finestra_platform::Shutdown;
use sqlx::PgPool;

use crate::store::{self, SimTemplate};
use crate::webhooks::Poster;

/// The status a review event leaves the template in; `None` for an event that is not one.
pub fn status_after(event: &str) -> Option<&'static str> {
    Some(match event {
        "APPROVED" | "REINSTATED" | "UNPAUSED" => "APPROVED",
        "REJECTED" => "REJECTED",
        "PAUSED" => "PAUSED",
        "DISABLED" => "DISABLED",
        _ => return None,
    })
}

/// What the network decides for a submitted body, and why (Meta's rejection reasons).
pub fn verdict(body: &str, banned_word: &str) -> (&'static str, &'static str) {
    if !banned_word.is_empty() && body.to_lowercase().contains(&banned_word.to_lowercase()) {
        ("REJECTED", "PROMOTIONAL")
    } else {
        ("APPROVED", "")
    }
}

/// The body text of a stored template.
pub fn body_text(t: &SimTemplate) -> String {
    let components: Vec<serde_json::Value> =
        serde_json::from_str(&t.components).unwrap_or_default();
    finestra_cloudapi::templates::Content::from_components(&components).body
}

/// Why a review could not be told to Finestra.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no such template")]
    NotFound,
    #[error("business account {0} has no registered number to sign its webhooks")]
    Unsigned(String),
    #[error("the webhook was not delivered: {0}")]
    Undelivered(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One review event of a template.
pub struct Event<'a> {
    pub template_id: &'a str,
    /// APPROVED, REJECTED, PAUSED, REINSTATED, DISABLED, FLAGGED, ...
    pub event: &'a str,
    pub reason: &'a str,
    /// Only a template still PENDING (the reviewer's own verdicts; a control call wins).
    pub only_pending: bool,
}

/// Records the event for the template and posts it to Finestra.
pub async fn review(
    pool: &PgPool,
    poster: &Poster,
    network: &str,
    e: Event<'_>,
    now_secs: i64,
) -> Result<SimTemplate, ReviewError> {
    let Event {
        template_id,
        event,
        reason,
        only_pending,
    } = e;
    let (t, at) = store::review_template(
        pool,
        network,
        template_id,
        status_after(event),
        None,
        reason,
        now_secs,
        only_pending,
    )
    .await?
    .ok_or(ReviewError::NotFound)?;
    let secret = store::waba_numbers(pool, network, &t.waba_id)
        .await?
        .into_iter()
        .next()
        .map(|n| n.app_secret)
        .ok_or_else(|| ReviewError::Unsigned(t.waba_id.clone()))?;
    let body = finestra_cloudapi::build::template_status(
        &t.waba_id,
        at,
        &t.template_id,
        &t.name,
        &t.language,
        event,
        reason,
    );
    match poster.post(&secret, &body, 8).await {
        Ok(status) if status < 300 => {
            store::told(pool, network, &t.template_id).await?;
            Ok(t)
        }
        Ok(status) => Err(ReviewError::Undelivered(format!(
            "ingest answered {status}"
        ))),
        Err(e) => Err(ReviewError::Undelivered(e)),
    }
}

pub struct Reviewer {
    pub pool: PgPool,
    pub poster: Poster,
    pub network: String,
    pub delay: Duration,
    pub banned_word: String,
    pub every: Duration,
    pub clock: std::sync::Arc<dyn finestra_domain::Clock>,
}

impl Reviewer {
    pub async fn run(self, shutdown: Shutdown) {
        let delay_ms = i64::try_from(self.delay.as_millis()).unwrap_or(i64::MAX);
        loop {
            match store::pending_templates(&self.pool, &self.network, delay_ms).await {
                Ok(list) => {
                    for t in list {
                        let (event, reason) = verdict(&body_text(&t), &self.banned_word);
                        let now = self.clock.now().micros() / 1_000_000;
                        let reviewed = review(
                            &self.pool,
                            &self.poster,
                            &self.network,
                            Event {
                                template_id: &t.template_id,
                                event,
                                reason,
                                only_pending: true,
                            },
                            now,
                        )
                        .await;
                        match reviewed {
                            Ok(_) => tracing::info!(template = %t.name, event, "template reviewed"),
                            // Decided meanwhile by a control call, or deleted.
                            Err(ReviewError::NotFound) => {}
                            Err(e) => {
                                tracing::warn!(template = %t.name, event, error = %e, "a template review was recorded but not told")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading templates to review failed"),
            }
            // Reviews recorded but not told (ingest was down): told again, as they stand.
            match store::untold_templates(&self.pool, &self.network).await {
                Ok(list) => {
                    for t in list {
                        let now = self.clock.now().micros() / 1_000_000;
                        let again = review(
                            &self.pool,
                            &self.poster,
                            &self.network,
                            Event {
                                template_id: &t.template_id,
                                event: &t.status,
                                reason: &t.reason,
                                only_pending: false,
                            },
                            now,
                        )
                        .await;
                        if let Err(e) = again {
                            tracing::warn!(template = %t.name, error = %e, "a review is still not told");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading untold reviews failed"),
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_word_anywhere_rejects_and_events_land_on_statuses() {
        assert_eq!(verdict("Win at the CASINO", "casino").0, "REJECTED");
        assert_eq!(verdict("Your order is ready", "casino"), ("APPROVED", ""));
        assert_eq!(verdict("casino", ""), ("APPROVED", ""));
        assert_eq!(status_after("REINSTATED"), Some("APPROVED"));
        assert_eq!(status_after("PAUSED"), Some("PAUSED"));
        assert_eq!(status_after("FLAGGED"), None);
    }
}
