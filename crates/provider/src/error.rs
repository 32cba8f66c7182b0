//! The network's error codes and what Finestra does with each (docs/rules.md §9): whether a
//! retry can help, and the reason a failed message or a refused call carries.

/// Why a call to the network failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (code {code}): {title}")]
pub struct ProviderError {
    pub retryable: bool,
    /// The network's error code (0 for transport failures, the HTTP status for bare 5xx).
    pub code: i32,
    /// The network's explanation, as it gave it.
    pub title: String,
    /// docs/rules.md §8's reason when the error means one (WINDOW_CLOSED, ...), else
    /// PROVIDER_ERROR.
    pub reason: &'static str,
}

/// One row of the error table: a code, the reason it becomes and whether it is retried.
#[derive(Clone, Copy, Debug)]
pub struct KnownCode {
    pub code: i32,
    pub reason: &'static str,
    pub retryable: bool,
    /// What the network means by it.
    pub meaning: &'static str,
}

const fn known(
    code: i32,
    reason: &'static str,
    retryable: bool,
    meaning: &'static str,
) -> KnownCode {
    KnownCode {
        code,
        reason,
        retryable,
        meaning,
    }
}

/// The codes a partner meets, in the order README's table lists them. Anything else is
/// PROVIDER_ERROR, retried when the HTTP status is 5xx or 429.
pub const KNOWN_CODES: &[KnownCode] = &[
    known(
        131_047,
        "WINDOW_CLOSED",
        false,
        "more than 24 hours since the user last wrote",
    ),
    known(
        131_026,
        "UNDELIVERABLE",
        false,
        "the user cannot receive it (blocked the business, no WhatsApp, old client)",
    ),
    known(
        131_049,
        "FREQUENCY_CAPPED",
        false,
        "the user's marketing limit: the network delivers no more marketing to them for now",
    ),
    known(
        131_050,
        "MARKETING_OPT_OUT",
        false,
        "the user stopped marketing messages",
    ),
    known(
        131_056,
        "RATE_LIMITED",
        true,
        "too many messages to one user from one number: retried later",
    ),
    known(
        130_429,
        "RATE_LIMITED",
        true,
        "the number's throughput exceeded: retried later",
    ),
    known(
        132_000,
        "TEMPLATE_PARAMS_MISMATCH",
        false,
        "the parameters do not match the template",
    ),
    known(
        132_001,
        "TEMPLATE_NOT_APPROVED",
        false,
        "no approved template of that name and language",
    ),
    known(
        132_015,
        "TEMPLATE_PAUSED",
        false,
        "the template is paused for its low quality",
    ),
    known(
        132_016,
        "TEMPLATE_DISABLED",
        false,
        "the template is disabled for its low quality",
    ),
    known(
        131_031,
        "ACCOUNT_LOCKED",
        false,
        "the business account is locked (policy or verification)",
    ),
    known(
        131_053,
        "MEDIA_UPLOAD_FAILED",
        false,
        "the media could not be uploaded (type or size)",
    ),
    known(
        131_052,
        "MEDIA_DOWNLOAD_FAILED",
        false,
        "the media could not be downloaded",
    ),
    known(
        368,
        "POLICY_BLOCKED",
        false,
        "temporarily blocked for policy violations",
    ),
    known(
        190,
        "ACCESS_TOKEN_INVALID",
        false,
        "the access token expired or is wrong: fix FINESTRA_PROVIDER_TOKEN",
    ),
    known(
        100,
        "INVALID_PARAMETER",
        false,
        "the request is malformed or names something unknown",
    ),
    known(
        131_000,
        "PROVIDER_ERROR",
        true,
        "something went wrong at the network: retried",
    ),
    known(
        131_016,
        "PROVIDER_ERROR",
        true,
        "the service is overloaded: retried",
    ),
    known(1, "PROVIDER_ERROR", true, "unknown error: retried"),
    known(
        2,
        "PROVIDER_ERROR",
        true,
        "the service is temporarily unavailable: retried",
    ),
];

impl ProviderError {
    /// Maps a Cloud API error (its HTTP status and code) to what Finestra does with it.
    pub fn from_code(http_status: u16, code: i32, title: String) -> Self {
        let (retryable, reason) = match KNOWN_CODES.iter().find(|k| k.code == code) {
            Some(k) => (k.retryable, k.reason),
            None if http_status >= 500 || http_status == 429 => (true, "PROVIDER_ERROR"),
            None => (false, "PROVIDER_ERROR"),
        };
        Self {
            retryable,
            code,
            title,
            reason,
        }
    }

    /// The network could not be reached, or answered nothing readable: retried.
    pub fn transport(why: String) -> Self {
        Self {
            retryable: true,
            code: 0,
            title: why,
            reason: "PROVIDER_UNREACHABLE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_retry_or_final_with_a_reason() {
        let cases = [
            (429, 130_429, true, "RATE_LIMITED"),
            (400, 131_056, true, "RATE_LIMITED"),
            (400, 131_047, false, "WINDOW_CLOSED"),
            (400, 131_026, false, "UNDELIVERABLE"),
            (400, 131_049, false, "FREQUENCY_CAPPED"),
            (400, 131_050, false, "MARKETING_OPT_OUT"),
            (400, 132_000, false, "TEMPLATE_PARAMS_MISMATCH"),
            (404, 132_001, false, "TEMPLATE_NOT_APPROVED"),
            (400, 132_015, false, "TEMPLATE_PAUSED"),
            (400, 132_016, false, "TEMPLATE_DISABLED"),
            (403, 131_031, false, "ACCOUNT_LOCKED"),
            (400, 131_053, false, "MEDIA_UPLOAD_FAILED"),
            (400, 131_052, false, "MEDIA_DOWNLOAD_FAILED"),
            (403, 368, false, "POLICY_BLOCKED"),
            (401, 190, false, "ACCESS_TOKEN_INVALID"),
            (400, 100, false, "INVALID_PARAMETER"),
            (500, 131_000, true, "PROVIDER_ERROR"),
            (503, 1, true, "PROVIDER_ERROR"),
            (500, 500, true, "PROVIDER_ERROR"),
            (429, 4, true, "PROVIDER_ERROR"),
            (400, 99_999, false, "PROVIDER_ERROR"),
        ];
        for (http, code, retryable, reason) in cases {
            let e = ProviderError::from_code(http, code, String::new());
            assert_eq!(
                (e.retryable, e.reason),
                (retryable, reason),
                "{http} {code}"
            );
        }
        assert!(ProviderError::transport("timeout".into()).retryable);
    }

    #[test]
    fn every_known_code_is_listed_once() {
        let mut codes: Vec<i32> = KNOWN_CODES.iter().map(|k| k.code).collect();
        codes.sort_unstable();
        let n = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }
}
