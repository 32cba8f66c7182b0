//! The Cloud API's verification of a callback URL, done before a Cloud API format endpoint is
//! saved: `GET <url>?hub.mode=subscribe&hub.verify_token=<token>&hub.challenge=<n>` must answer
//! 200 with the challenge as its body, as the network checks a business's endpoint.

use rand::Rng as _;

/// The longest answer read.
const MAX_ANSWER_BYTES: usize = 1_024;

/// Asks `url` for the challenge; `Err` says what it answered instead.
pub async fn verify(http: &reqwest::Client, url: &str, verify_token: &str) -> Result<(), String> {
    let challenge = rand::rng()
        .random_range(100_000_000u64..1_000_000_000)
        .to_string();
    let mut target = reqwest::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
    target
        .query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", verify_token)
        .append_pair("hub.challenge", &challenge);
    let answer = http
        .get(target)
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("it answered HTTP {}", status.as_u16()));
    }
    // The challenge is a few digits: more than this is not an answer to it.
    let mut answer = answer;
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err("its answer was not the challenge".into());
        }
    }
    if String::from_utf8_lossy(&body).trim() != challenge {
        return Err("its answer was not the challenge".into());
    }
    Ok(())
}
