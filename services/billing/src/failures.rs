//! Which of billing's own errors are a store not answering (a client may retry the call) and
//! which are not: the one place that tells, so the gRPC edge maps every such error alike
//! (`UNAVAILABLE` with retry info, or `INTERNAL`; docs/rules.md §8).

use finestra_platform::status::StoreFailure;

use crate::pg::CardError;
use crate::pricer::PriceError;
use crate::reconcile::ReconcileError;
use crate::settle::SettleError;

impl StoreFailure for SettleError {
    fn is_transient(&self) -> bool {
        match self {
            SettleError::Store(e) => e.is_transient(),
            SettleError::Redis(e) => e.is_transient(),
        }
    }
}

impl StoreFailure for ReconcileError {
    fn is_transient(&self) -> bool {
        match self {
            ReconcileError::Store(e) => e.is_transient(),
            ReconcileError::Redis(e) => e.is_transient(),
        }
    }
}

impl StoreFailure for PriceError {
    fn is_transient(&self) -> bool {
        matches!(self, PriceError::Store(e) if e.is_transient())
    }
}

impl StoreFailure for CardError {
    fn is_transient(&self) -> bool {
        matches!(self, CardError::Store(e) if e.is_transient())
    }
}
