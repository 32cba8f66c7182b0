//! The product's rules (docs/rules.md) as pure code. No tokio, no stores, no proto types:
//! time comes in through [`Clock`] or as arguments, so every rule is testable exhaustively.

pub mod campaign;
pub mod contacts;
pub mod delivery;
pub mod fair_clock;
pub mod fairness;
pub mod frequency;
pub mod health;
pub mod ids;
pub mod local_time;
pub mod media;
pub mod opt_out;
pub mod pacing;
pub mod pricing;
pub mod send;
pub mod template;
pub mod time;
pub mod user;
pub mod wallet;
pub mod window;

pub use time::{Clock, FixedClock, Timestamp, is_plausible_event_time};
pub use user::{UserKey, UserKeyError};
pub use window::{Flag, LastInbound, WindowChange, WindowState};
