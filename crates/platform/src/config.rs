//! Configuration from the environment, declared once. Each service declares its settings with
//! [`settings!`](crate::settings): a field, its variable (`FINESTRA_<NAME>`), its default as it
//! would be written in the environment, and a line of documentation. The reader and the
//! reference in docs/configuration.md both come from that declaration (a test keeps the page
//! in step), so a default is written in exactly one place.

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

/// One declared setting, as the reference documents it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The full variable name, `FINESTRA_...`.
    pub var: &'static str,
    /// The default, as written in the environment (empty: unset).
    pub default: &'static str,
    pub doc: &'static str,
}

/// Where settings are read from: the process environment, or a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as a [`Lookup`].
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// A type a setting can hold, parsed from its variable's text.
pub trait FromSetting: Sized {
    /// `var` is the variable's full name: a duration takes its unit from the name's suffix.
    fn from_setting(var: &str, raw: &str) -> Result<Self, String>;
}

macro_rules! from_str_settings {
    ($($ty:ty),*) => {$(
        impl FromSetting for $ty {
            fn from_setting(_var: &str, raw: &str) -> Result<Self, String> {
                raw.parse().map_err(|e: <$ty as FromStr>::Err| e.to_string())
            }
        }
    )*};
}
from_str_settings!(String, u16, u32, u64, usize, i64, SocketAddr);

/// A duration's unit is in its variable's name (`_MS`, `_SECS`, `_HOURS`), so an operator
/// never guesses it.
impl FromSetting for Duration {
    fn from_setting(var: &str, raw: &str) -> Result<Self, String> {
        let n: u64 = raw
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())?;
        if var.ends_with("_MS") {
            Ok(Duration::from_millis(n))
        } else if var.ends_with("_SECS") {
            Ok(Duration::from_secs(n))
        } else if var.ends_with("_HOURS") {
            n.checked_mul(3_600)
                .map(Duration::from_secs)
                .ok_or_else(|| "too many hours".to_owned())
        } else {
            Err("a duration's variable names its unit (_MS, _SECS or _HOURS)".to_owned())
        }
    }
}

/// Unset (or empty) is `None`.
impl<T: FromSetting> FromSetting for Option<T> {
    fn from_setting(var: &str, raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            Ok(None)
        } else {
            T::from_setting(var, raw).map(Some)
        }
    }
}

/// Reads `var` through `lookup`, or parses `default` when it is unset or blank.
pub fn read<T: FromSetting>(
    lookup: Lookup<'_>,
    var: &str,
    default: &str,
) -> Result<T, ConfigError> {
    let raw = lookup(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    T::from_setting(var, &raw).map_err(|reason| ConfigError::Invalid {
        name: var.to_owned(),
        value: raw,
        reason,
    })
}

/// Declares a settings struct: every field is read from `FINESTRA_<VAR>` with the default
/// given as its text, and `SETTINGS` lists them for the reference. A struct declared with
/// `: common("<grpc addr>", "<metrics addr>")` also carries the [`CommonConfig`] every
/// service shares, listening on those addresses unless told otherwise.
#[macro_export]
macro_rules! settings {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident $(: common($grpc:literal, $metrics:literal))? {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty = ($var:literal, $default:literal),
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $(
                #[doc = concat!("Shared settings; gRPC on ", $grpc, " and metrics on ", $metrics, " by default.")]
                pub common: $crate::config::CommonConfig,
            )?
            $(
                $(#[doc = $doc])*
                #[doc = concat!("\n\n`FINESTRA_", $var, "`, default `", $default, "`.")]
                pub $field: $ty,
            )*
        }

        impl $name {
            /// Every variable this struct reads, its default and what it does.
            pub const SETTINGS: &'static [$crate::config::Setting] = &[
                $(
                    $crate::config::Setting {
                        var: "FINESTRA_GRPC_ADDR",
                        default: $grpc,
                        doc: "Address of the gRPC listener (this service's own default).",
                    },
                    $crate::config::Setting {
                        var: "FINESTRA_METRICS_ADDR",
                        default: $metrics,
                        doc: "Address of `/metrics`, `/healthz` and `/readyz` (this service's own default).",
                    },
                )?
                $(
                    $crate::config::Setting {
                        var: concat!("FINESTRA_", $var),
                        default: $default,
                        doc: concat!($($doc),*),
                    },
                )*
            ];

            /// Reads every setting from the process environment.
            pub fn from_env() -> Result<Self, $crate::config::ConfigError> {
                Self::from_lookup(&$crate::config::process_env)
            }

            /// Reads every setting through `lookup` (a map in tests).
            pub fn from_lookup(
                lookup: $crate::config::Lookup<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok(Self {
                    $(
                        common: $crate::config::CommonConfig::for_service(lookup, $grpc, $metrics)?,
                    )?
                    $(
                        $field: $crate::config::read(lookup, concat!("FINESTRA_", $var), $default)?,
                    )*
                })
            }
        }
    };
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

crate::settings! {
    /// What every service reads besides its own settings: the stores, the broker, shutdown.
    pub struct SharedSettings {
        /// Postgres, the system of record (each service migrates and owns its schema).
        pub database_url: String = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finestra"),
        /// Redis, the hot state (windows, wallets, limits, idempotency claims).
        pub redis_url: String = ("REDIS_URL", "redis://127.0.0.1:6379"),
        /// Comma-separated bootstrap brokers.
        pub kafka_brokers: String = ("KAFKA_BROKERS", "127.0.0.1:9092"),
        /// Appended to every topic name, so several sets share one broker.
        pub topic_suffix: String = ("TOPIC_SUFFIX", ""),
        /// Prefix of every Redis key (`<prefix>:{tenant}:...`).
        pub redis_prefix: String = ("REDIS_PREFIX", "fin"),
        /// OTLP/gRPC endpoint for traces (unset: traces stay in the logs).
        pub otlp_endpoint: Option<String> = ("OTLP_ENDPOINT", ""),
        /// How long a SIGTERM'd service may take to drain before it gives up.
        pub shutdown_grace: Duration = ("SHUTDOWN_GRACE_SECS", "25"),
        /// Postgres connections of the service's pool.
        pub db_max_connections: u32 = ("DB_MAX_CONNECTIONS", "10"),
        /// Longest wait for one Redis reply (a pipeline counts as one).
        pub redis_timeout: Duration = ("REDIS_TIMEOUT_MS", "1000"),
    }
}

crate::settings! {
    /// Logging, read by every binary when it installs its subscriber.
    pub struct LogSettings {
        /// A `tracing` filter (`info`, `finestra_dispatch=debug,info`, ...).
        pub filter: String = ("LOG", "info,sqlx=warn,rdkafka=warn"),
        /// `text` or `json`.
        pub format: String = ("LOG_FORMAT", "text"),
    }
}

crate::settings! {
    /// The Kafka clients' tuning, read by every producer and consumer.
    pub struct KafkaSettings {
        /// How long a record may wait for others to share its produce request: each request
        /// is a write transaction on the broker's side, so under load a few ms buy throughput.
        pub linger: Duration = ("KAFKA_LINGER_MS", "2"),
        /// The longest a fetch waits at the broker for `FETCH_MIN_BYTES`.
        pub fetch_wait: Duration = ("KAFKA_FETCH_WAIT_MS", "50"),
        /// Bytes a fetch waits for (librdkafka `fetch.min.bytes`).
        pub fetch_min_bytes: u32 = ("KAFKA_FETCH_MIN_BYTES", "1"),
        /// Further librdkafka producer properties, `key=value` pairs separated by commas,
        /// applied after Finestra's own (for a broker that needs them; empty: none).
        pub producer_config: String = ("KAFKA_PRODUCER_CONFIG", ""),
    }
}

/// What every service needs: where the stores and the broker are, its listeners, telemetry
/// and shutdown. Read from [`SharedSettings`] and the service's own listen addresses.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    pub topics: Topics,
    pub redis_prefix: String,
    pub grpc_addr: SocketAddr,
    /// Serves `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: Duration,
    pub db_max_connections: u32,
    pub redis_timeout: Duration,
}

impl CommonConfig {
    /// `grpc` and `metrics` are the service's own default addresses, different per service so
    /// all run side by side on one machine.
    pub fn for_service(lookup: Lookup<'_>, grpc: &str, metrics: &str) -> Result<Self, ConfigError> {
        let shared = SharedSettings::from_lookup(lookup)?;
        Ok(Self {
            database_url: shared.database_url,
            redis_url: shared.redis_url,
            kafka_brokers: shared.kafka_brokers,
            topics: Topics::with_suffix(&shared.topic_suffix),
            redis_prefix: shared.redis_prefix,
            grpc_addr: read(lookup, "FINESTRA_GRPC_ADDR", grpc)?,
            metrics_addr: read(lookup, "FINESTRA_METRICS_ADDR", metrics)?,
            otlp_endpoint: shared.otlp_endpoint,
            shutdown_grace: shared.shutdown_grace,
            db_max_connections: shared.db_max_connections,
            redis_timeout: shared.redis_timeout,
        })
    }

    /// From the process environment.
    pub fn from_env(grpc: &str, metrics: &str) -> Result<Self, ConfigError> {
        Self::for_service(&process_env, grpc, metrics)
    }
}

/// Renders settings as the rows of a Markdown table (docs/configuration.md).
pub fn markdown_rows(settings: &[Setting]) -> String {
    let mut out = String::from("| variable | default | what it does |\n|---|---|---|\n");
    for s in settings {
        let default = if s.default.is_empty() {
            "(unset)".to_owned()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            s.var,
            default,
            s.doc.trim().replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    crate::settings! {
        /// A service's settings, for the tests.
        pub struct Example: common("0.0.0.0:7000", "0.0.0.0:9000") {
            /// A count.
            pub count: usize = ("EXAMPLE_COUNT", "4"),
            pub pause: Duration = ("EXAMPLE_PAUSE_MS", "250"),
            pub expiry: Duration = ("EXAMPLE_EXPIRY_HOURS", "2"),
            pub limit: Option<u64> = ("EXAMPLE_LIMIT", ""),
        }
    }

    fn lookup_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn topics_carry_the_suffix() {
        let t = Topics::with_suffix(".abc");
        assert_eq!(t.inbound, "finestra.inbound.v1.abc");
        assert_eq!(t.all().len(), 9);
        assert_eq!(Topics::with_suffix("").window, "finestra.window.v1");
    }

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let e = Example::from_lookup(&lookup_of(&[("FINESTRA_EXAMPLE_COUNT", "  ")])).unwrap();
        assert_eq!(e.count, 4);
        assert_eq!(e.pause, Duration::from_millis(250));
        assert_eq!(e.expiry, Duration::from_secs(7_200));
        assert_eq!(e.limit, None);
        assert_eq!(e.common.grpc_addr, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(e.common.redis_prefix, "fin");
        assert_eq!(e.common.redis_timeout, Duration::from_secs(1));
    }

    #[test]
    fn set_values_are_parsed_and_bad_ones_named() {
        let e = Example::from_lookup(&lookup_of(&[
            ("FINESTRA_EXAMPLE_LIMIT", "7"),
            ("FINESTRA_TOPIC_SUFFIX", ".t1"),
            ("FINESTRA_GRPC_ADDR", "127.0.0.1:1"),
        ]))
        .unwrap();
        assert_eq!(e.limit, Some(7));
        assert_eq!(e.common.topics.status, "finestra.status.v1.t1");
        assert_eq!(e.common.grpc_addr.port(), 1);
        let err = Example::from_lookup(&lookup_of(&[("FINESTRA_EXAMPLE_COUNT", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FINESTRA_EXAMPLE_COUNT=\"many\""), "{err}");
    }

    #[test]
    fn the_reference_lists_every_setting_with_its_default() {
        let vars: Vec<&str> = Example::SETTINGS.iter().map(|s| s.var).collect();
        assert_eq!(
            vars,
            [
                "FINESTRA_GRPC_ADDR",
                "FINESTRA_METRICS_ADDR",
                "FINESTRA_EXAMPLE_COUNT",
                "FINESTRA_EXAMPLE_PAUSE_MS",
                "FINESTRA_EXAMPLE_EXPIRY_HOURS",
                "FINESTRA_EXAMPLE_LIMIT"
            ]
        );
        let table = markdown_rows(Example::SETTINGS);
        assert!(
            table.contains("| `FINESTRA_EXAMPLE_COUNT` | `4` | A count. |"),
            "{table}"
        );
        assert!(
            table.contains("| `FINESTRA_EXAMPLE_LIMIT` | (unset) |"),
            "{table}"
        );
    }

    #[test]
    fn the_process_environment_is_read_too() {
        // Nothing sets FINESTRA_EXAMPLE_*: the declared defaults apply.
        assert_eq!(Example::from_env().unwrap().count, 4);
    }

    #[test]
    fn a_duration_takes_its_unit_from_its_name() {
        assert!(Duration::from_setting("FINESTRA_X", "5").is_err());
        assert_eq!(
            Duration::from_setting("FINESTRA_X_SECS", "5"),
            Ok(Duration::from_secs(5))
        );
    }

    #[test]
    fn every_shared_default_parses() {
        SharedSettings::from_lookup(&|_| None).unwrap();
        LogSettings::from_lookup(&|_| None).unwrap();
        KafkaSettings::from_lookup(&|_| None).unwrap();
    }
}
