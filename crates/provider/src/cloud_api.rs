//! The Cloud API over HTTP: `{base}/{version}/...` with the bearer token.

use std::time::Duration;

use finestra_cloudapi::templates::{self, Content, Created, Listed, Page};
use futures::future::BoxFuture;
use reqwest::Method;

use crate::{Deleted, MediaInfo, Provider, ProviderError, Submission};

/// Pages a listing follows at most (a business account holds up to a few hundred templates).
const MAX_PAGES: usize = 50;

pub struct CloudApi {
    http: reqwest::Client,
    base_url: String,
    version: String,
    token: String,
}

/// What a call carries.
enum Body {
    Empty,
    Json(Vec<u8>),
    Form(reqwest::multipart::Form),
}

/// The network's error for a non-2xx answer: its Cloud API error, or the bare HTTP status.
fn network_error(status: u16, body: &[u8]) -> ProviderError {
    let (code, title) = finestra_cloudapi::send::error_explained(body)
        .unwrap_or((i32::from(status), format!("HTTP {status}")));
    ProviderError::from_code(status, code, title)
}

/// A successful answer: its HTTP status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl CloudApi {
    pub fn new(
        base_url: &str,
        version: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(256)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
            token: token.to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}/{}", self.base_url, self.version, path)
    }

    /// One call; any answer outside 2xx becomes the network's error (404 is left to the
    /// caller when `absent_ok`).
    async fn call(
        &self,
        method: Method,
        url: String,
        query: &[(&str, &str)],
        body: Body,
        absent_ok: bool,
    ) -> Result<Answer, ProviderError> {
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(tp) = finestra_platform::trace::current() {
            request = request.header(finestra_platform::trace::TRACEPARENT, tp);
        }
        request = match body {
            Body::Empty => request,
            Body::Json(json) => request
                .header("content-type", "application/json")
                .body(json),
            Body::Form(form) => request.multipart(form),
        };
        let answer = request
            .send()
            .await
            .map_err(|e| ProviderError::transport(e.to_string()))?;
        let status = answer.status().as_u16();
        let body = answer
            .bytes()
            .await
            .map_err(|e| ProviderError::transport(e.to_string()))?
            .to_vec();
        if (200..300).contains(&status) || (absent_ok && status == 404) {
            return Ok(Answer { status, body });
        }
        Err(network_error(status, &body))
    }

    fn json(value: &serde_json::Value) -> Body {
        Body::Json(value.to_string().into_bytes())
    }
}

fn unreadable(what: &str) -> ProviderError {
    ProviderError::from_code(200, 0, format!("an unreadable answer to {what}"))
}

impl Provider for CloudApi {
    fn send<'a>(
        &'a self,
        phone_number_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let answer = self
                .call(
                    Method::POST,
                    self.url(&format!("{phone_number_id}/messages")),
                    &[],
                    Body::Json(body.to_vec()),
                    false,
                )
                .await?;
            finestra_cloudapi::send::accepted_id(&answer.body).ok_or_else(|| {
                ProviderError::from_code(answer.status, 0, "an answer without a message id".into())
            })
        })
    }

    fn submit_template<'a>(
        &'a self,
        waba_id: &'a str,
        s: Submission<'a>,
    ) -> BoxFuture<'a, Result<Created, ProviderError>> {
        Box::pin(async move {
            let body = templates::submission(s.name, s.language, s.category, s.content);
            let answer = self
                .call(
                    Method::POST,
                    self.url(&format!("{waba_id}/message_templates")),
                    &[],
                    Self::json(&body),
                    false,
                )
                .await?;
            serde_json::from_slice(&answer.body).map_err(|_| unreadable("a submission"))
        })
    }

    fn edit_template<'a>(
        &'a self,
        provider_template_id: &'a str,
        category: Option<&'a str>,
        content: &'a Content,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let body = templates::edit(category, content);
            self.call(
                Method::POST,
                self.url(provider_template_id),
                &[],
                Self::json(&body),
                false,
            )
            .await
            .map(|_| ())
        })
    }

    fn delete_template<'a>(
        &'a self,
        waba_id: &'a str,
        name: &'a str,
        provider_template_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Deleted, ProviderError>> {
        Box::pin(async move {
            let mut query = vec![("name", name)];
            if let Some(id) = provider_template_id {
                query.push(("hsm_id", id));
            }
            let answer = self
                .call(
                    Method::DELETE,
                    self.url(&format!("{waba_id}/message_templates")),
                    &query,
                    Body::Empty,
                    true,
                )
                .await?;
            Ok(if answer.status == 404 {
                Deleted::Absent
            } else {
                Deleted::Deleted
            })
        })
    }

    fn list_templates<'a>(
        &'a self,
        waba_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Listed>, ProviderError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            let mut after = String::new();
            for _ in 0..MAX_PAGES {
                let mut query = vec![("limit", "100")];
                if !after.is_empty() {
                    query.push(("after", after.as_str()));
                }
                let answer = self
                    .call(
                        Method::GET,
                        self.url(&format!("{waba_id}/message_templates")),
                        &query,
                        Body::Empty,
                        false,
                    )
                    .await?;
                let page: Page =
                    serde_json::from_slice(&answer.body).map_err(|_| unreadable("a listing"))?;
                let next = page.next_after().map(str::to_owned);
                all.extend(page.data);
                match next {
                    Some(cursor) => after = cursor,
                    None => return Ok(all),
                }
            }
            // A partial listing would read as templates deleted at the network.
            Err(ProviderError::from_code(
                200,
                0,
                format!("the listing has more than {MAX_PAGES} pages"),
            ))
        })
    }

    fn mark_read<'a>(
        &'a self,
        phone_number_id: &'a str,
        message_id: &'a str,
        typing: bool,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let body = finestra_cloudapi::send::mark_read(message_id, typing);
            self.call(
                Method::POST,
                self.url(&format!("{phone_number_id}/messages")),
                &[],
                Self::json(&body),
                false,
            )
            .await
            .map(|_| ())
        })
    }

    fn block_users<'a>(
        &'a self,
        phone_number_id: &'a str,
        users: &'a [String],
        block: bool,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        Box::pin(async move {
            let body = finestra_cloudapi::send::block_users(users);
            let method = if block { Method::POST } else { Method::DELETE };
            let answer = self
                .call(
                    method,
                    self.url(&format!("{phone_number_id}/block_users")),
                    &[],
                    Self::json(&body),
                    false,
                )
                .await?;
            finestra_cloudapi::send::blocked_users(&answer.body, block)
                .ok_or_else(|| unreadable("a block"))
        })
    }

    fn upload_media<'a>(
        &'a self,
        phone_number_id: &'a str,
        content_type: &'a str,
        filename: &'a str,
        data: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let file = reqwest::multipart::Part::bytes(data)
                .file_name(filename.to_owned())
                .mime_str(content_type)
                .map_err(|e| ProviderError::from_code(400, 100, e.to_string()))?;
            let form = reqwest::multipart::Form::new()
                .text("messaging_product", "whatsapp")
                .text("type", content_type.to_owned())
                .part("file", file);
            let answer = self
                .call(
                    Method::POST,
                    self.url(&format!("{phone_number_id}/media")),
                    &[],
                    Body::Form(form),
                    false,
                )
                .await?;
            finestra_cloudapi::send::uploaded_id(&answer.body)
                .ok_or_else(|| unreadable("an upload"))
        })
    }

    fn media_info<'a>(
        &'a self,
        media_id: &'a str,
        phone_number_id: &'a str,
    ) -> BoxFuture<'a, Result<MediaInfo, ProviderError>> {
        Box::pin(async move {
            let answer = self
                .call(
                    Method::GET,
                    self.url(media_id),
                    &[("phone_number_id", phone_number_id)],
                    Body::Empty,
                    false,
                )
                .await?;
            serde_json::from_slice(&answer.body).map_err(|_| unreadable("a media lookup"))
        })
    }

    fn download_media<'a>(
        &'a self,
        url: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, ProviderError>> {
        Box::pin(async move {
            let too_large = || {
                ProviderError::from_code(
                    200,
                    131_052,
                    format!("the file is larger than {max_bytes} bytes"),
                )
            };
            let mut answer = self
                .http
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| ProviderError::transport(e.to_string()))?;
            let status = answer.status().as_u16();
            if !(200..300).contains(&status) {
                let body = answer.bytes().await.unwrap_or_default();
                return Err(network_error(status, &body));
            }
            if answer.content_length().is_some_and(|n| n > max_bytes) {
                return Err(too_large());
            }
            let mut data = Vec::new();
            while let Some(chunk) = answer
                .chunk()
                .await
                .map_err(|e| ProviderError::transport(e.to_string()))?
            {
                if (data.len() + chunk.len()) as u64 > max_bytes {
                    return Err(too_large());
                }
                data.extend_from_slice(&chunk);
            }
            Ok(data)
        })
    }
}
