//! The WhatsApp Cloud API's wire format, shared by ingest (parses it), the CLI and the tests
//! (build it), the provider connector and the simulator (speak it).

pub mod build;
pub mod send;
pub mod signature;
pub mod templates;
pub mod webhook;

/// The header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
