//! The network's template reviews (docs/rules.md §4): a template a business submitted (PENDING in the
//! control plane) is approved after a configurable delay, or rejected when its body contains
//! the banned word; a control call can pause, unpause or disable one. Each verdict reaches
//! Finestra as a signed `message_template_status_update` webhook of the tenant's business
//! account, like Meta's.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use finestra_platform::Shutdown;
use sqlx::PgPool;

use crate::webhooks::Poster;

/// A template the network can review (read through the accounts schema's read model).
pub use finestra_registry::ReviewableTemplate as Reviewable;

/// What the network decides for a submitted body.
pub fn verdict(body: &str, banned_word: &str) -> &'static str {
    if !banned_word.is_empty() && body.to_lowercase().contains(&banned_word.to_lowercase()) {
        "REJECTED"
    } else {
        "APPROVED"
    }
}

/// Templates of tenants whose id starts with `tenant_prefix` waiting for the network's review
/// for at least `delay`.
pub async fn pending(
    pool: &PgPool,
    delay: Duration,
    tenant_prefix: &str,
) -> Result<Vec<Reviewable>, sqlx::Error> {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    finestra_registry::pending_templates(pool, delay_ms, tenant_prefix).await
}

/// One template, for a review the control API asks for.
pub async fn one(pool: &PgPool, template_id: &str) -> Result<Option<Reviewable>, sqlx::Error> {
    finestra_registry::reviewable_template(pool, template_id).await
}

/// The time of the template's last applied review, whole seconds (a review event must be newer
/// to apply: the control plane ignores stale ones).
pub async fn last_review_secs(
    pool: &PgPool,
    template_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    finestra_registry::template_last_review_secs(pool, template_id).await
}

/// Posts a review event (APPROVED, REJECTED, PAUSED, REINSTATED, DISABLED, ...).
pub async fn post(
    poster: &Poster,
    t: &Reviewable,
    event: &str,
    now_secs: i64,
) -> Result<u16, String> {
    let (template_id, name, language, _, waba, secret) = t;
    let body = finestra_cloudapi::build::template_status(
        waba,
        now_secs,
        template_id,
        name,
        language,
        event,
    );
    poster.post(secret, &body, 8).await
}

pub struct Reviewer {
    pub pool: PgPool,
    pub poster: Poster,
    pub delay: Duration,
    pub banned_word: String,
    /// Only tenants whose id starts with this (empty: every tenant).
    pub tenant_prefix: String,
    pub every: Duration,
    pub clock: std::sync::Arc<dyn finestra_domain::Clock>,
}

impl Reviewer {
    pub async fn run(self, shutdown: Shutdown) {
        // Reviews already delivered (the control plane then no longer lists them as pending).
        let done = Mutex::new(HashSet::new());
        loop {
            match pending(&self.pool, self.delay, &self.tenant_prefix).await {
                Ok(list) => {
                    for t in list {
                        if done.lock().map(|d| d.contains(&t.0)).unwrap_or(true) {
                            continue;
                        }
                        let event = verdict(&t.3, &self.banned_word);
                        let now = self.clock.now().micros() / 1_000_000;
                        match post(&self.poster, &t, event, now).await {
                            Ok(status) if status < 300 => {
                                if let Ok(mut d) = done.lock() {
                                    d.insert(t.0.clone());
                                }
                                tracing::info!(template = %t.1, event, "template reviewed");
                            }
                            Ok(status) => {
                                tracing::warn!(status, "ingest refused a template review")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "a template review could not be delivered")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading templates to review failed"),
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
    fn the_banned_word_rejects_whatever_its_case() {
        assert_eq!(
            verdict("Ciao {{1}}, il tuo ordine è pronto", "casino"),
            "APPROVED"
        );
        assert_eq!(
            verdict("Win big at the CASINO tonight", "casino"),
            "REJECTED"
        );
        assert_eq!(verdict("anything", ""), "APPROVED");
    }
}
