//! A tenant's wallet and its reservations (docs/rules.md §7), as pure rules: reserve atomically
//! against what is available, then capture or release each reservation exactly once, whatever
//! order and however often the events arrive.

use std::collections::BTreeMap;

use crate::pricing::Micros;

/// The largest amount one input may carry (a top-up, a credit limit, a threshold, a fixed
/// markup): 10^15 µ, a billion units of the currency. With it, balances, limits and their
/// sums stay far below 2^53 µ, where the hot wallet's Lua numbers (doubles) stop being exact.
pub const MAX_AMOUNT_MICROS: Micros = 1_000_000_000_000_000;

/// Whether `amount` is an amount a client may give (0..=[`MAX_AMOUNT_MICROS`]).
pub fn is_acceptable_amount(amount: Micros) -> bool {
    (0..=MAX_AMOUNT_MICROS).contains(&amount)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wallet {
    /// Prepaid money (top-ups minus captured charges). May go negative within the credit limit.
    pub balance: Micros,
    /// Postpaid headroom, ≥ 0.
    pub credit_limit: Micros,
    /// Sum of open reservations.
    pub reserved: Micros,
}

impl Wallet {
    /// `balance + credit_limit − reserved`, saturating (inputs are bounded, so it never
    /// saturates in practice; a corrupt row must not panic a read).
    pub fn available(&self) -> Micros {
        self.balance
            .saturating_add(self.credit_limit)
            .saturating_sub(self.reserved)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    Open { amount: Micros },
    Captured { amount: Micros },
    Released { amount: Micros },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalletError {
    #[error("insufficient funds: {needed} needed, {available} available")]
    InsufficientFunds { needed: Micros, available: Micros },
    #[error("an amount must not be negative")]
    Negative,
    #[error("message {0} was reserved with another amount")]
    AmountMismatch(String),
}

/// What an operation did; repeats are answered, never applied twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already in the requested state (a re-delivered event or a retried call).
    AlreadyDone,
    /// The reservation ended the other way (captured vs released) or never existed.
    Ignored,
}

/// A wallet with its reservations by message id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub wallet: Wallet,
    pub reservations: BTreeMap<String, Reservation>,
}

impl Account {
    pub fn top_up(&mut self, amount: Micros) -> Result<(), WalletError> {
        if amount < 0 {
            return Err(WalletError::Negative);
        }
        self.wallet.balance += amount;
        Ok(())
    }

    /// Reserves `amount` for `message_id` if available; idempotent by message id.
    pub fn reserve(&mut self, message_id: &str, amount: Micros) -> Result<Outcome, WalletError> {
        if amount < 0 {
            return Err(WalletError::Negative);
        }
        if let Some(existing) = self.reservations.get(message_id) {
            let same = match existing {
                Reservation::Open { amount: a }
                | Reservation::Captured { amount: a }
                | Reservation::Released { amount: a } => *a == amount,
            };
            return if same {
                Ok(Outcome::AlreadyDone)
            } else {
                Err(WalletError::AmountMismatch(message_id.to_owned()))
            };
        }
        let available = self.wallet.available();
        if available < amount {
            return Err(WalletError::InsufficientFunds {
                needed: amount,
                available,
            });
        }
        self.wallet.reserved += amount;
        self.reservations
            .insert(message_id.to_owned(), Reservation::Open { amount });
        Ok(Outcome::Applied)
    }

    /// Delivered: the reserved amount is charged. At most once; never after a release.
    pub fn capture(&mut self, message_id: &str) -> Outcome {
        match self.reservations.get(message_id).copied() {
            Some(Reservation::Open { amount }) => {
                self.wallet.reserved -= amount;
                self.wallet.balance -= amount;
                self.reservations
                    .insert(message_id.to_owned(), Reservation::Captured { amount });
                Outcome::Applied
            }
            Some(Reservation::Captured { .. }) => Outcome::AlreadyDone,
            Some(Reservation::Released { .. }) | None => Outcome::Ignored,
        }
    }

    /// Failed, blocked or expired: the reservation is freed. At most once; never after a capture.
    pub fn release(&mut self, message_id: &str) -> Outcome {
        match self.reservations.get(message_id).copied() {
            Some(Reservation::Open { amount }) => {
                self.wallet.reserved -= amount;
                self.reservations
                    .insert(message_id.to_owned(), Reservation::Released { amount });
                Outcome::Applied
            }
            Some(Reservation::Released { .. }) => Outcome::AlreadyDone,
            Some(Reservation::Captured { .. }) | None => Outcome::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserve_capture_release_exactly_once() {
        let mut a = Account::default();
        a.top_up(100).expect("top up");
        assert_eq!(a.reserve("m1", 60), Ok(Outcome::Applied));
        assert_eq!(
            a.reserve("m1", 60),
            Ok(Outcome::AlreadyDone),
            "a retried reservation"
        );
        assert_eq!(
            a.reserve("m1", 61),
            Err(WalletError::AmountMismatch("m1".into()))
        );
        assert_eq!(
            a.reserve("m2", 50),
            Err(WalletError::InsufficientFunds {
                needed: 50,
                available: 40
            })
        );
        assert_eq!(a.capture("m1"), Outcome::Applied);
        assert_eq!(
            a.capture("m1"),
            Outcome::AlreadyDone,
            "delivered twice, charged once"
        );
        assert_eq!(
            a.release("m1"),
            Outcome::Ignored,
            "no release after a capture"
        );
        assert_eq!(
            a.wallet,
            Wallet {
                balance: 40,
                credit_limit: 0,
                reserved: 0
            }
        );
        assert_eq!(a.reserve("m2", 40), Ok(Outcome::Applied));
        assert_eq!(a.release("m2"), Outcome::Applied);
        assert_eq!(
            a.capture("m2"),
            Outcome::Ignored,
            "no capture after a release"
        );
        assert_eq!(a.wallet.available(), 40);
    }

    #[test]
    fn credit_limit_is_headroom() {
        let mut a = Account {
            wallet: Wallet {
                balance: 10,
                credit_limit: 50,
                reserved: 0,
            },
            ..Account::default()
        };
        assert_eq!(a.reserve("m", 60), Ok(Outcome::Applied));
        assert_eq!(a.capture("m"), Outcome::Applied);
        assert_eq!(a.wallet.balance, -50);
        assert_eq!(a.wallet.available(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u8, Micros),
        Capture(u8),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 1i64..40).prop_map(|(m, a)| Op::Reserve(m, a)),
            (0u8..12).prop_map(Op::Capture),
            (0u8..12).prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn funds_are_never_overdrawn_and_money_is_conserved(
            ops in proptest::collection::vec(op(), 0..80),
            start in 0i64..200,
            credit in 0i64..50,
        ) {
            let mut a = Account { wallet: Wallet { balance: start, credit_limit: credit, reserved: 0 }, ..Account::default() };
            for op in ops {
                match op {
                    Op::Reserve(m, amount) => { let _ = a.reserve(&format!("m{m}"), amount); }
                    Op::Capture(m) => { a.capture(&format!("m{m}")); }
                    Op::Release(m) => { a.release(&format!("m{m}")); }
                }
                prop_assert!(a.wallet.available() >= 0, "available went negative: {:?}", a.wallet);
                let open: Micros = a.reservations.values().map(|r| match r { Reservation::Open { amount } => *amount, _ => 0 }).sum();
                let captured: Micros = a.reservations.values().map(|r| match r { Reservation::Captured { amount } => *amount, _ => 0 }).sum();
                prop_assert_eq!(a.wallet.reserved, open);
                prop_assert_eq!(a.wallet.balance, start - captured, "balance = top-ups − captured charges");
            }
        }
    }
}
