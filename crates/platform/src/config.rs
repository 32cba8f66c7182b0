//! Configuration from the environment. Every variable is `FINESTRA_*` and has a default that
//! works on one machine with `make up`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// Reads `FINESTRA_<name>`, or `default` when unset or empty.
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(format!("FINESTRA_{name}")) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads and parses `FINESTRA_<name>`, or `default` when unset or empty.
pub fn env_parse<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(format!("FINESTRA_{name}")) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name: format!("FINESTRA_{name}"),
                value: v,
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

pub fn env_addr(name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    let fallback: SocketAddr =
        default
            .parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                name: format!("FINESTRA_{name} (default)"),
                value: default.to_owned(),
                reason: e.to_string(),
            })?;
    env_parse(name, fallback)
}

/// The names of the event topics. A deployment (or a test) may append a suffix so several
/// sets coexist on one broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub inbound: String,
    pub status: String,
    pub user: String,
    pub window: String,
    pub dlq: String,
    pub accounts: String,
    pub provider: String,
    pub billing: String,
    pub outbound: String,
}

impl Topics {
    pub fn with_suffix(suffix: &str) -> Self {
        use finestra_proto::topics as t;
        Self {
            inbound: format!("{}{suffix}", t::INBOUND),
            status: format!("{}{suffix}", t::STATUS),
            user: format!("{}{suffix}", t::USER),
            window: format!("{}{suffix}", t::WINDOW),
            dlq: format!("{}{suffix}", t::DLQ),
            accounts: format!("{}{suffix}", t::ACCOUNTS),
            provider: format!("{}{suffix}", t::PROVIDER),
            billing: format!("{}{suffix}", t::BILLING),
            outbound: format!("{}{suffix}", t::OUTBOUND),
        }
    }

    pub fn all(&self) -> [&str; 9] {
        [
            &self.inbound,
            &self.status,
            &self.user,
            &self.window,
            &self.dlq,
            &self.accounts,
            &self.provider,
            &self.billing,
            &self.outbound,
        ]
    }
}

/// What every service needs: where the stores and the broker are, telemetry and shutdown.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    pub topics: Topics,
    /// Prefix of every Redis key (`<prefix>:{tenant}:...`), `fin` by default.
    pub redis_prefix: String,
    pub grpc_addr: SocketAddr,
    /// Serves `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    pub otlp_endpoint: Option<String>,
    /// How long a SIGTERM'd service may take to drain before it gives up.
    pub shutdown_grace: Duration,
    pub db_max_connections: u32,
    /// Longest wait for one Redis reply (a pipeline counts as one).
    pub redis_timeout_ms: u64,
}

impl CommonConfig {
    /// `default_grpc` and `default_metrics` differ per service so all run side by side on one
    /// machine.
    pub fn from_env(default_grpc: &str, default_metrics: &str) -> Result<Self, ConfigError> {
        let otlp = env_string("OTLP_ENDPOINT", "");
        Ok(Self {
            database_url: env_string(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/finestra",
            ),
            redis_url: env_string("REDIS_URL", "redis://127.0.0.1:6379"),
            kafka_brokers: env_string("KAFKA_BROKERS", "127.0.0.1:9092"),
            topics: Topics::with_suffix(&env_string("TOPIC_SUFFIX", "")),
            redis_prefix: env_string("REDIS_PREFIX", "fin"),
            grpc_addr: env_addr("GRPC_ADDR", default_grpc)?,
            metrics_addr: env_addr("METRICS_ADDR", default_metrics)?,
            otlp_endpoint: (!otlp.is_empty()).then_some(otlp),
            shutdown_grace: Duration::from_secs(env_parse("SHUTDOWN_GRACE_SECS", 25u64)?),
            db_max_connections: env_parse("DB_MAX_CONNECTIONS", 10u32)?,
            redis_timeout_ms: env_parse("REDIS_TIMEOUT_MS", 1_000u64)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_carry_the_suffix() {
        let t = Topics::with_suffix(".abc");
        assert_eq!(t.inbound, "finestra.inbound.v1.abc");
        assert_eq!(t.all().len(), 9);
        assert_eq!(Topics::with_suffix("").window, "finestra.window.v1");
    }
}
