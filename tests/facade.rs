//! A whole platform with the Cloud API gateway in front (the gateway suites): the chain, the
//! accounts service (templates, numbers) and the gateway, with HTTP helpers that speak the
//! Cloud API as a business's code would.

use finestra_platform::auth::Scope as KeyScope;
use finestra_testkit::Started;
use serde_json::Value;

use crate::chain::Chain;

/// The Graph API version a client would put in its paths.
pub const VERSION: &str = "v21.0";

pub struct Facade {
    pub chain: Chain,
    pub accounts: Started,
    pub gateway: Started,
    /// `http://` and the gateway's listener.
    pub base: String,
    /// A `send` + `admin` key of the tenant, as a business's token.
    pub token: String,
}

/// An answer: HTTP status, JSON body and headers.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The Cloud API error code, 0 when the answer is not an error.
    pub fn code(&self) -> i64 {
        self.body["error"]["code"].as_i64().unwrap_or(0)
    }

    pub fn message_id(&self) -> &str {
        self.body["messages"][0]["id"].as_str().unwrap_or_default()
    }
}

impl Facade {
    pub async fn start() -> anyhow::Result<Self> {
        let chain = Chain::start(1_000).await?;
        let accounts = finestra_testkit::start_accounts_with_network(
            &chain.scope,
            &chain.sim.base_url(),
            &chain.sim.token,
        )
        .await?;
        let gateway = finestra_testkit::start_gateway(
            &chain.scope,
            &chain.dispatch_url,
            &accounts.running.grpc_url(),
        )
        .await?;
        let addr = gateway
            .running
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("the gateway has an HTTP listener"))?;
        let token = chain
            .scope
            .tenant_key("acme", &[KeyScope::Send, KeyScope::Admin])
            .await?;
        Ok(Self {
            chain,
            accounts,
            gateway,
            base: format!("http://{addr}"),
            token,
        })
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
        self.accounts.stop().await;
        self.chain.stop().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{VERSION}/{path}", self.base)
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("HTTP {status}, not JSON ({e}): {text}"))?;
        Ok(Answer {
            status,
            body,
            headers,
        })
    }

    /// POSTs a JSON body to `path` with `token` (none when `None`) and `headers`.
    pub async fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = self.chain.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        Self::answer(request.send().await?).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.post_as(path, Some(&self.token), body, &[]).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let request = self.chain.http.get(self.url(path)).bearer_auth(&self.token);
        Self::answer(request.send().await?).await
    }

    /// `POST /{number}/messages`.
    pub async fn message(&self, body: &Value) -> anyhow::Result<Answer> {
        self.post(&format!("{}/messages", self.chain.number), body)
            .await
    }
}
