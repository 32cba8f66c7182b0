//! Everything a Finestra service binary shares, so that no service copies it: configuration
//! from `FINESTRA_*`, tracing with OpenTelemetry, Prometheus metrics, gRPC health and
//! reflection, graceful shutdown, and the Postgres, Redis and Kafka clients.

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod paging;
pub mod partitions;
pub mod retention;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod stores;
pub mod telemetry;
pub mod trace;

pub use clock::SystemClock;
pub use config::{CommonConfig, ConfigError, Topics};
pub use service::{Running, StartError};
pub use shutdown::Shutdown;
