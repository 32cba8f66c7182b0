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

/// Records that carry several events (`MessageStatuses`), and back.
pub mod packing {
    use crate::v1::envelope::Payload;
    use crate::v1::{Envelope, MessageStatuses, PackedStatus};

    /// The events a record carries, in order: the envelope itself, or each status of a
    /// `MessageStatuses` as the envelope it would have had alone (its own id and time, the
    /// record's tenant and recording time). Consumers apply them one by one, so a packed
    /// record and the same statuses in records of their own have the same effect.
    pub fn unpack(envelope: Envelope) -> Vec<Envelope> {
        match envelope.payload {
            Some(Payload::MessageStatuses(MessageStatuses { statuses })) => statuses
                .into_iter()
                .map(|p| Envelope {
                    event_id: p.event_id,
                    tenant_id: envelope.tenant_id.clone(),
                    occurred_at: p.occurred_at,
                    recorded_at: envelope.recorded_at,
                    payload: p.status.map(Payload::MessageStatus),
                })
                .collect(),
            _ => vec![envelope],
        }
    }

    /// One envelope for `statuses` (envelopes of one tenant and conversation, each with a
    /// `MessageStatus`), in order; a single one stays as it is. `None` when any is not a
    /// status.
    pub fn pack(mut statuses: Vec<Envelope>) -> Option<Envelope> {
        if statuses.len() == 1 {
            return statuses.pop();
        }
        let first = statuses.first()?;
        let event_id = format!("stb:{}+{}", first.event_id, statuses.len() - 1);
        let tenant_id = first.tenant_id.clone();
        let occurred_at = first.occurred_at;
        let recorded_at = first.recorded_at;
        let statuses = statuses
            .into_iter()
            .map(|e| match e.payload {
                Some(Payload::MessageStatus(status)) => Some(PackedStatus {
                    event_id: e.event_id,
                    occurred_at: e.occurred_at,
                    status: Some(status),
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Envelope {
            event_id,
            tenant_id,
            occurred_at,
            recorded_at,
            payload: Some(Payload::MessageStatuses(MessageStatuses { statuses })),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::v1::MessageStatus;

        fn status(id: &str, status: &str, at: i64) -> Envelope {
            Envelope {
                event_id: id.into(),
                tenant_id: "t".into(),
                occurred_at: Some(crate::time::from_micros(at)),
                recorded_at: Some(crate::time::from_micros(99)),
                payload: Some(Payload::MessageStatus(MessageStatus {
                    message_id: "wamid.1".into(),
                    status: status.into(),
                    ..Default::default()
                })),
            }
        }

        #[test]
        fn a_packed_record_unpacks_to_the_envelopes_it_was_made_of_in_order() {
            let alone = vec![
                status("st:1:sent", "sent", 1),
                status("st:1:delivered", "delivered", 2),
            ];
            let packed = pack(alone.clone()).expect("statuses pack");
            assert_eq!(packed.event_id, "stb:st:1:sent+1");
            assert_eq!(unpack(packed), alone);
        }

        #[test]
        fn a_single_status_and_other_events_stay_as_they_are() {
            let one = status("st:1:sent", "sent", 1);
            assert_eq!(pack(vec![one.clone()]), Some(one.clone()));
            assert_eq!(unpack(one.clone()), vec![one.clone()]);
            let other = Envelope {
                payload: None,
                ..one.clone()
            };
            assert_eq!(pack(vec![one, other]), None);
        }
    }
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
