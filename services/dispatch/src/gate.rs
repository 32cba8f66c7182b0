//! The worker's send gate: at most N provider calls at once, handed out in weighted round
//! robin over tenants and, inside a tenant, round robin over its numbers
//! (`domain::fairness::FairQueue`), so a tenant with many messages due at once takes its
//! weight's share of the calls and the others keep theirs (docs/fairness.md).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use finestra_domain::fairness::{FairQueue, Lane as _};
use tokio::sync::oneshot;

type Waiters = FairQueue<String, FairQueue<String, VecDeque<oneshot::Sender<Permit>>>>;

pub struct Gate {
    state: Mutex<State>,
}

struct State {
    available: usize,
    waiting: Waiters,
}

/// One provider call's place; handed to the next waiter when dropped.
pub struct Permit {
    gate: Option<Arc<Gate>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

impl Gate {
    pub fn new(places: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                available: places.max(1),
                waiting: FairQueue::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere (every change is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a call of `tenant` (with `weight`) from `number`; `None` only if the gate
    /// went away.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        weight: u32,
        number: &str,
    ) -> Option<Permit> {
        let waiter = {
            let mut state = self.lock();
            if state.available > 0 && state.waiting.is_empty() {
                state.available -= 1;
                return Some(Permit {
                    gate: Some(self.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            state
                .waiting
                .push_nested(&tenant.to_owned(), weight, &number.to_owned(), |q| {
                    q.push_back(tx)
                });
            metrics::gauge!("finestra_dispatch_gate_waiting").set(state.waiting.len() as f64);
            rx
        };
        // A waiter that goes away with a place in its channel drops it, which passes it on.
        waiter.await.ok()
    }

    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut state = self.lock();
                match state.waiting.pop() {
                    Some(tx) => tx,
                    None => {
                        state.available += 1;
                        return;
                    }
                }
            };
            match next.send(Permit {
                gate: Some(self.clone()),
            }) {
                Ok(()) => return,
                // That waiter is gone: the place goes to the next one.
                Err(mut unused) => {
                    unused.gate = None;
                }
            }
        }
    }

    /// Calls waiting for a place.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_go_round_tenants_by_weight_and_none_is_lost() {
        let gate = Gate::new(1);
        let held = gate.acquire("a", 1, "n1").await.expect("free place");
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // a queues 6, b (weight 2) queues 4, in that order.
        for (tenant, weight, n) in [("a", 1, 6), ("b", 2, 4)] {
            for i in 0..n {
                let gate = gate.clone();
                let order_tx = order_tx.clone();
                let ready = tokio::sync::oneshot::channel::<()>();
                tasks.push(tokio::spawn(async move {
                    let _ = ready.0.send(());
                    let p = gate.acquire(tenant, weight, "n").await.expect("place");
                    order_tx.send((tenant, i)).expect("open");
                    drop(p);
                }));
                ready.1.await.expect("started");
                tokio::task::yield_now().await;
            }
        }
        while gate.waiting() < 10 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        drop(order_tx);
        let mut order = Vec::new();
        while let Some(x) = order_rx.recv().await {
            order.push(x.0);
        }
        assert_eq!(order, ["a", "b", "b", "a", "b", "b", "a", "a", "a", "a"]);
        // Every place came back.
        let again = gate.acquire("c", 1, "n").await;
        assert!(again.is_some());
        assert_eq!(gate.waiting(), 0);
    }
}
