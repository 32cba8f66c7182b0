//! Finestra's wire contract. Generated from `proto/finestra/v1`; nothing hand-written here
//! besides small conversions that every service needs.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("finestra.v1");
}

/// Encoded `FileDescriptorSet` of every Finestra proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("finestra_descriptor");

pub use prost;
pub use prost_types;

/// Topic names of the event bus (without a deployment suffix).
pub mod topics {
    pub const INBOUND: &str = "finestra.inbound.v1";
    pub const STATUS: &str = "finestra.status.v1";
    pub const USER: &str = "finestra.user.v1";
    pub const WINDOW: &str = "finestra.window.v1";
    pub const DLQ: &str = "finestra.dlq.v1";
    pub const ACCOUNTS: &str = "finestra.accounts.v1";
    pub const PROVIDER: &str = "finestra.provider.v1";
    pub const BILLING: &str = "finestra.billing.v1";
    pub const OUTBOUND: &str = "finestra.outbound.v1";
    pub const ALL: [&str; 9] = [
        INBOUND, STATUS, USER, WINDOW, DLQ, ACCOUNTS, PROVIDER, BILLING, OUTBOUND,
    ];
}

/// Conversions between protobuf timestamps and microseconds since the Unix epoch, the unit
/// the domain and the stores use.
pub mod time {
    use prost_types::Timestamp;

    pub fn from_micros(micros: i64) -> Timestamp {
        Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
        }
    }

    pub fn to_micros(ts: &Timestamp) -> i64 {
        ts.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(ts.nanos) / 1_000)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_including_negative_times() {
            for micros in [
                0,
                1,
                999_999,
                1_000_000,
                -1,
                -1_000_001,
                1_764_000_000_123_456,
            ] {
                assert_eq!(to_micros(&from_micros(micros)), micros);
            }
        }
    }
}
