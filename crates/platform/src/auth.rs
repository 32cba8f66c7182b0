//! API-key authentication and tenant authorization, shared by every tenant-facing service.
//!
//! Keys look like `fin_live_<40 base62 chars>` (or `fin_test_…`); only their SHA-256 is stored
//! by the accounts service; keys and tenants are looked up through a [`Directory`] (the accounts
//! schema's read model implements it).
//! [`RequireKey`] wraps a gRPC service: it turns `authorization: Bearer <key>` into a
//! [`Principal`] in the request's extensions, or answers UNAUTHENTICATED. Handlers then call
//! [`Principal::authorize`] for the tenant the request names: another tenant's or partner's
//! data answers NOT_FOUND (existence is never confirmed), a missing scope PERMISSION_DENIED.
//!
//! Lookups are cached for at most [`CACHE_TTL`], so a revoked key stops working everywhere
//! within that time even if no invalidation reaches a service; invalidation on the accounts
//! event makes it immediate.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use moka::future::Cache;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::status::{self, Reason};

/// Upper bound of how long a key or tenant lookup is trusted without asking Postgres.
pub const CACHE_TTL: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Read,
    Send,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Send => "send",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "send" => Some(Scope::Send),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Who a key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Operator,
    Partner {
        partner_id: String,
    },
    Tenant {
        partner_id: String,
        tenant_id: String,
    },
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub owner: Owner,
    pub scopes: Vec<Scope>,
}

/// What authorization needs to know of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRef {
    pub tenant_id: String,
    pub partner_id: String,
}

impl Principal {
    /// `admin` implies every scope; `send` implies `read`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| {
            *s == scope || *s == Scope::Admin || (*s == Scope::Send && scope == Scope::Read)
        })
    }

    pub fn require(&self, scope: Scope) -> Result<(), Status> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(status::with_reason(
                Code::PermissionDenied,
                Reason::PermissionDenied,
                format!("this key lacks the {} scope", scope.as_str()),
                &[("scope", scope.as_str()), ("key_id", &self.key_id)],
            ))
        }
    }

    pub fn is_operator(&self) -> bool {
        self.owner == Owner::Operator
    }

    /// Whether the tenant is within this key's reach (its own, its partner's, or any for the
    /// operator).
    pub fn sees_tenant(&self, tenant: &TenantRef) -> bool {
        match &self.owner {
            Owner::Operator => true,
            Owner::Partner { partner_id } => *partner_id == tenant.partner_id,
            Owner::Tenant { tenant_id, .. } => *tenant_id == tenant.tenant_id,
        }
    }

    pub fn sees_partner(&self, partner_id: &str) -> bool {
        match &self.owner {
            Owner::Operator => true,
            Owner::Partner { partner_id: p } => p == partner_id,
            Owner::Tenant { .. } => false,
        }
    }

    /// The check every tenant-scoped RPC makes: the tenant must exist within reach
    /// (NOT_FOUND otherwise, whether or not it exists), then the key needs `scope`.
    pub fn authorize(
        &self,
        tenant: Option<&TenantRef>,
        tenant_id: &str,
        scope: Scope,
    ) -> Result<(), Status> {
        match tenant {
            Some(t) if self.sees_tenant(t) => self.require(scope),
            _ => Err(status::not_found("tenant_id", tenant_id)),
        }
    }
}

/// Takes the principal `RequireKey` put on the request.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no API key"))
}

/// Requests that name the tenant they are about (`for_tenant!` implements it).
pub trait ForTenant {
    fn tenant_id(&self) -> &str;
}

macro_rules! for_tenant {
    ($($t:ident),* $(,)?) => {
        $(impl ForTenant for finestra_proto::v1::$t {
            fn tenant_id(&self) -> &str {
                &self.tenant_id
            }
        })*
    };
}

// The tenant-level requests of the accounts service.
for_tenant!(
    UpdateTenantRequest,
    SetTenantLimitsRequest,
    SetTenantStatusRequest,
    AddNumberRequest,
    ListNumbersRequest,
    RotateNumberSecretRequest,
    GetNumberRequest,
    UpdateNumberRequest,
    SetNumberStatusRequest,
    CreateTemplateRequest,
    GetTemplateRequest,
    ListTemplatesRequest,
    DeleteTemplateRequest,
    SubmitTemplateRequest,
    SyncTemplatesRequest,
    EditTemplateRequest,
    GetNumberHealthRequest,
    SetOptOutKeywordsRequest,
    GetOptOutKeywordsRequest,
);
// Of billing.
for_tenant!(
    QuoteMessageRequest,
    GetWalletRequest,
    ListWalletHistoryRequest,
    TopUpRequest,
    SetCreditLimitRequest,
    ListUsageRequest,
    GetInvoiceRequest,
);
// Of dispatch.
for_tenant!(
    SendMessageRequest,
    SendMessagesRequest,
    GetMessageRequest,
    ListMessagesRequest,
    StreamEventsRequest,
    CreateWebhookRequest,
    ListWebhooksRequest,
    RotateWebhookSecretRequest,
    DeleteWebhookRequest,
    ListDeadLettersRequest,
    RedriveRequest,
    MarkReadRequest,
    BlockUsersRequest,
    UploadMediaRequest,
    GetMediaRequest,
    GetScheduledMessageRequest,
    CancelScheduledMessageRequest,
    UpsertContactRequest,
    GetContactRequest,
    ListContactsRequest,
    GetContactImportRequest,
    BlockContactsRequest,
    SaveSegmentRequest,
    ListSegmentsRequest,
    DeleteSegmentRequest,
    ListConversationsRequest,
    GetConversationRequest,
    CreateCampaignRequest,
    GetCampaignRequest,
    ListCampaignsRequest,
    QuoteCampaignRequest,
    CampaignActionRequest,
    ListCampaignRecipientsRequest,
);

/// A request its key may act on (see [`Authenticator::authorize`]).
#[derive(Debug)]
pub struct Authorized<T> {
    pub principal: Arc<Principal>,
    pub tenant: Arc<TenantRef>,
    pub request: T,
}

/// A new key: `<prefix><40 base62 chars>` (about 238 bits of entropy).
pub fn generate_key(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{body}")
}

/// `fin_live_` or `fin_test_` followed by 40 base62 characters.
pub fn is_key_shaped(key: &str) -> bool {
    let body = key
        .strip_prefix("fin_live_")
        .or_else(|| key.strip_prefix("fin_test_"));
    body.is_some_and(|b| b.len() == 40 && b.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// What is stored of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Where keys and tenants are looked up. The accounts service owns them; its schema's read
/// model (`finestra_registry::AccountsDirectory`) implements this, so no service holds SQL of
/// the accounts schema of its own.
pub trait Directory: Send + Sync + 'static {
    /// The active principal of a key, by the hex SHA-256 of the key (and its last use
    /// noted). `None` for an unknown or revoked key, or one whose owner is suspended.
    fn principal(&self, key_hash: &str) -> BoxFuture<'_, Result<Option<Principal>, sqlx::Error>>;
    /// A tenant and its partner, whatever their status.
    fn tenant(&self, tenant_id: &str) -> BoxFuture<'_, Result<Option<TenantRef>, sqlx::Error>>;
}

/// Resolves keys and tenants through a [`Directory`], with short-lived caches.
#[derive(Clone)]
pub struct Authenticator {
    directory: Arc<dyn Directory>,
    keys: Cache<[u8; 32], Option<Arc<Principal>>>,
    tenants: Cache<String, Option<Arc<TenantRef>>>,
}

impl Authenticator {
    pub fn new(directory: Arc<dyn Directory>) -> Self {
        Self {
            directory,
            keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
            tenants: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// The principal of an `authorization` header value (`Bearer <key>`).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<Principal>, Status> {
        let key = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                status::with_reason(
                    Code::Unauthenticated,
                    Reason::Unauthenticated,
                    "an API key is required: authorization: Bearer <key>",
                    &[],
                )
            })?;
        // Anything not shaped like a key is refused without a store round trip, so made-up
        // tokens cannot flood Postgres or push real keys out of the cache.
        if !is_key_shaped(key) {
            return Err(status::with_reason(
                Code::Unauthenticated,
                Reason::Unauthenticated,
                "unknown or revoked API key",
                &[],
            ));
        }
        // The cache is keyed by the raw digest: no hex string is built on the hot path.
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = match self.keys.get(&digest).await {
            Some(found) => found,
            None => {
                let directory = self.directory.clone();
                self.keys
                    .try_get_with(digest, async move {
                        let hash = hex::encode(digest);
                        Ok::<_, sqlx::Error>(directory.principal(&hash).await?.map(Arc::new))
                    })
                    .await
                    .map_err(|e| status::store("authenticating a key", &e))?
            }
        };
        found.ok_or_else(|| {
            status::with_reason(
                Code::Unauthenticated,
                Reason::Unauthenticated,
                "unknown or revoked API key",
                &[],
            )
        })
    }

    /// The tenant's owner, `None` if it does not exist. A suspended tenant is still reached by
    /// its partner and the operator (its own keys stop at authentication): what it may do is
    /// each service's rule (dispatch refuses its sends with TENANT_SUSPENDED).
    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<Arc<TenantRef>>, Status> {
        // Hot path: a cached answer, without building the loader.
        if let Some(found) = self.tenants.get(tenant_id).await {
            return Ok(found);
        }
        let directory = self.directory.clone();
        let id = tenant_id.to_owned();
        self.tenants
            .try_get_with(tenant_id.to_owned(), async move {
                Ok::<_, sqlx::Error>(directory.tenant(&id).await?.map(Arc::new))
            })
            .await
            .map_err(|e| status::store("looking up a tenant", &e))
    }

    /// Authenticated principal + the tenant it names, authorized for `scope`.
    pub async fn authorize_tenant(
        &self,
        principal: &Principal,
        tenant_id: &str,
        scope: Scope,
    ) -> Result<Arc<TenantRef>, Status> {
        let tenant = self.tenant(tenant_id).await?;
        principal.authorize(tenant.as_deref(), tenant_id, scope)?;
        tenant.ok_or_else(|| status::not_found("tenant_id", tenant_id))
    }

    /// The request, once its key may act with `scope` on the tenant it names: another
    /// tenant's or partner's is NOT_FOUND, a missing scope PERMISSION_DENIED. The preamble of
    /// every tenant-facing RPC.
    pub async fn authorize<T: ForTenant>(
        &self,
        request: tonic::Request<T>,
        scope: Scope,
    ) -> Result<Authorized<T>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let tenant = self
            .authorize_tenant(&principal, request.tenant_id(), scope)
            .await?;
        Ok(Authorized {
            principal,
            tenant,
            request,
        })
    }

    /// Drops cached entries after an accounts change (a revoked key: all keys, since the
    /// cache is keyed by hash; a changed tenant: that tenant).
    pub fn invalidate_keys(&self) {
        self.keys.invalidate_all();
    }

    pub async fn invalidate_tenant(&self, tenant_id: &str) {
        self.tenants.invalidate(tenant_id).await;
    }
}

/// Drops cached keys and tenants as the control plane announces changes on the accounts
/// topic (`AccountChanged`), so a revocation takes effect at once rather than after the
/// cache's TTL. Every instance reads every announcement: it assigns itself every partition
/// (the group id librdkafka requires is never joined, and nothing is committed under it).
pub fn spawn_invalidation(
    auth: Authenticator,
    brokers: &str,
    topic: &str,
    shutdown: crate::Shutdown,
) -> Result<tokio::task::JoinHandle<()>, crate::kafka::BusError> {
    use rdkafka::Message as _;
    use rdkafka::consumer::StreamConsumer;
    // Assigned, not subscribed: no group to join, so it listens from the moment it starts.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "finestra-auth-cache")
        .set("enable.auto.commit", "false")
        .create()?;
    let topic = topic.to_owned();
    let consumer = Arc::new(consumer);
    Ok(tokio::spawn(async move {
        // The broker may be down at start: keep trying (the caches' TTL bounds staleness
        // meanwhile).
        loop {
            let (c, t) = (consumer.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || assign_all(&c, &t)).await {
                Ok(Ok(n)) if n > 0 => break,
                Ok(Ok(_)) => tracing::warn!(topic, "no partitions to listen to yet; retrying"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "listening for account changes failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for account changes failed; retrying")
                }
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        loop {
            let message = tokio::select! {
                () = shutdown.wait() => break,
                m = consumer.recv() => m,
            };
            let envelope = match message {
                Ok(m) => <finestra_proto::v1::Envelope as prost::Message>::decode(
                    m.payload().unwrap_or_default(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "reading account changes failed");
                    continue;
                }
            };
            if let Ok(finestra_proto::v1::Envelope {
                tenant_id,
                payload: Some(finestra_proto::v1::envelope::Payload::AccountChanged(_)),
                ..
            }) = envelope
            {
                auth.invalidate_keys();
                if !tenant_id.is_empty() {
                    auth.invalidate_tenant(&tenant_id).await;
                }
            }
        }
    }))
}

/// Assigns every partition of `topic` from its end; returns how many.
fn assign_all(
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
) -> Result<usize, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer as _;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition_offset(topic, p.id(), rdkafka::Offset::End)?;
        }
    }
    consumer.assign(&partitions)?;
    Ok(partitions.count())
}

/// Wraps a gRPC service so every call is authenticated first.
#[derive(Clone)]
pub struct RequireKey<S> {
    inner: S,
    auth: Authenticator,
}

impl<S> RequireKey<S> {
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self { inner, auth }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireKey<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RequireKey<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is the one that is ready; keep it for this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match auth.authenticate(header.as_deref()).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// A client interceptor that sends `authorization: Bearer <key>` on every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(key: &str) -> Result<Self, Status> {
        format!("Bearer {key}")
            .parse()
            .map(|v| Self(Some(v)))
            .map_err(|_| {
                Status::invalid_argument("the API key has characters a header cannot carry")
            })
    }

    /// Sends no `authorization` header at all.
    pub fn anonymous() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        crate::trace::inject_metadata(request.metadata_mut());
        Ok(request)
    }
}

/// A channel whose calls carry the key.
pub type AuthedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(owner: Owner, scopes: &[Scope]) -> Principal {
        Principal {
            key_id: "k".into(),
            owner,
            scopes: scopes.to_vec(),
        }
    }

    fn tenant_a() -> TenantRef {
        TenantRef {
            tenant_id: "a".into(),
            partner_id: "x".into(),
        }
    }

    #[test]
    fn reach_follows_the_hierarchy() {
        let a = tenant_a();
        let all = [Scope::Admin];
        assert!(
            principal(Owner::Operator, &all)
                .authorize(Some(&a), "a", Scope::Admin)
                .is_ok()
        );
        assert!(
            principal(
                Owner::Partner {
                    partner_id: "x".into()
                },
                &all
            )
            .authorize(Some(&a), "a", Scope::Admin)
            .is_ok()
        );
        let other_partner = principal(
            Owner::Partner {
                partner_id: "y".into(),
            },
            &all,
        );
        assert_eq!(
            other_partner
                .authorize(Some(&a), "a", Scope::Read)
                .map_err(|s| s.code()),
            Err(Code::NotFound)
        );
        let other_tenant = principal(
            Owner::Tenant {
                partner_id: "x".into(),
                tenant_id: "b".into(),
            },
            &all,
        );
        assert_eq!(
            other_tenant
                .authorize(Some(&a), "a", Scope::Read)
                .map_err(|s| s.code()),
            Err(Code::NotFound)
        );
        assert_eq!(
            principal(Owner::Operator, &all)
                .authorize(None, "ghost", Scope::Read)
                .map_err(|s| s.code()),
            Err(Code::NotFound),
            "an unknown tenant looks like someone else's"
        );
    }

    #[test]
    fn scopes_nest_admin_over_send_over_read() {
        let own = principal(
            Owner::Tenant {
                partner_id: "x".into(),
                tenant_id: "a".into(),
            },
            &[Scope::Read],
        );
        assert!(own.authorize(Some(&tenant_a()), "a", Scope::Read).is_ok());
        let denied = own
            .authorize(Some(&tenant_a()), "a", Scope::Send)
            .map_err(|s| s.code());
        assert_eq!(denied, Err(Code::PermissionDenied));
        let sender = principal(Owner::Operator, &[Scope::Send]);
        assert!(sender.has(Scope::Read) && sender.has(Scope::Send) && !sender.has(Scope::Admin));
        assert!(principal(Owner::Operator, &[Scope::Admin]).has(Scope::Send));
    }

    #[test]
    fn keys_are_prefixed_random_and_stored_as_a_hash() {
        let a = generate_key("fin_test_");
        let b = generate_key("fin_test_");
        assert!(a.starts_with("fin_test_") && a.len() == 49);
        assert_ne!(a, b);
        assert_eq!(hash_key(&a).len(), 64);
        assert!(!hash_key(&a).contains(&a[9..]));
    }
}
