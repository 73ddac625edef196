//! The state of one process, under one lock: each process sees its own
//! calls in flight and what the ledger says the others spent.

use super::{BudgetState, Figures, Reserved, SlotSpec};
use crate::error::CoreResult;
use hashbrown::HashMap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Default)]
struct Slot {
    period_start: i64,
    spent: u64,
    reserved: u64,
    fired: usize,
    /// Rolling periods: what was spent when, oldest first.
    recent: VecDeque<(i64, u64)>,
}

impl Slot {
    /// Moves the slot into the period of `spec`; true when a calendar period began.
    fn roll(&mut self, spec: &SlotSpec, now_us: i64) -> bool {
        if let Some(window) = spec.window_us {
            while let Some(&(at, cost)) = self.recent.front() {
                if at > now_us - window {
                    break;
                }
                self.recent.pop_front();
                self.spent = self.spent.saturating_sub(cost);
            }
            // Thresholds re-arm once spend slides back under them.
            self.fired = self.fired.min(spec.crossed(self.spent));
            return false;
        }
        if spec.period_start <= self.period_start {
            return false;
        }
        self.period_start = spec.period_start;
        self.spent = 0;
        self.fired = 0;
        true
    }

    fn add(&mut self, spec: &SlotSpec, amount: u64, now_us: i64) {
        self.spent = self.spent.saturating_add(amount);
        if spec.window_us.is_some() && amount > 0 {
            self.recent.push_back((now_us, amount));
        }
    }

    /// Fires the thresholds reached; the figures of the operation.
    fn fire(&mut self, spec: &SlotSpec, rolled: bool) -> Figures {
        let fired_before = self.fired;
        self.fired = self.fired.max(spec.crossed(self.spent));
        Figures {
            spent: self.spent,
            reserved: self.reserved,
            over: false,
            rolled,
            fired_before,
            fired: self.fired,
        }
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    /// Each reservation in flight: its estimate.
    held: HashMap<u64, u64>,
}

#[derive(Default)]
pub struct LocalState {
    inner: Mutex<Inner>,
}

impl BudgetState for LocalState {
    fn reserve(
        &self,
        slots: &[SlotSpec],
        id: u64,
        estimate: u64,
        now_us: i64,
    ) -> CoreResult<Reserved> {
        let mut inner = self.inner.lock();
        let unknown: Vec<usize> = (0..slots.len())
            .filter(|i| !inner.slots.contains_key(&slots[*i].id))
            .collect();
        if !unknown.is_empty() {
            return Ok(Reserved::Unknown(unknown));
        }
        let mut figures = Vec::with_capacity(slots.len());
        let mut refused = None;
        for (i, spec) in slots.iter().enumerate() {
            let slot = inner.slots.get_mut(&spec.id).expect("checked above");
            let rolled = slot.roll(spec, now_us);
            let over = spec.over(slot.spent, slot.reserved, estimate);
            if over && spec.blocks && refused.is_none() {
                refused = Some(i);
            }
            figures.push(Figures {
                spent: slot.spent,
                reserved: slot.reserved,
                over,
                rolled,
                fired_before: slot.fired,
                fired: slot.fired,
            });
        }
        if let Some(index) = refused {
            return Ok(Reserved::Refused { index, figures });
        }
        for spec in slots {
            let slot = inner.slots.get_mut(&spec.id).expect("checked above");
            slot.reserved = slot.reserved.saturating_add(estimate);
        }
        inner.held.insert(id, estimate);
        Ok(Reserved::Admitted(figures))
    }

    fn settle(
        &self,
        slots: &[SlotSpec],
        id: u64,
        actual: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Figures>> {
        let mut inner = self.inner.lock();
        let estimate = inner.held.remove(&id).unwrap_or(0);
        Ok(slots
            .iter()
            .map(|spec| {
                let Some(slot) = inner.slots.get_mut(&spec.id) else {
                    return Figures::default();
                };
                // In-flight calls stay reserved across a reset, and their cost
                // lands in the period they finish in.
                slot.reserved = slot.reserved.saturating_sub(estimate);
                let rolled = slot.roll(spec, now_us);
                slot.add(spec, actual, now_us);
                slot.fire(spec, rolled)
            })
            .collect())
    }

    fn merge(&self, slots: &[SlotSpec], recorded: &[u64], now_us: i64) -> CoreResult<Vec<Figures>> {
        let mut inner = self.inner.lock();
        Ok(slots
            .iter()
            .zip(recorded)
            .map(|(spec, &recorded)| match inner.slots.get_mut(&spec.id) {
                Some(slot) => {
                    let rolled = slot.roll(spec, now_us);
                    // What this process settled may not be recorded yet: the larger wins.
                    if recorded > slot.spent {
                        slot.add(spec, recorded - slot.spent, now_us);
                    }
                    slot.fire(spec, rolled)
                }
                None => {
                    let mut slot = Slot {
                        period_start: spec.period_start,
                        ..Slot::default()
                    };
                    // Spent at unknown times within a rolling window: counted as of now.
                    slot.add(spec, recorded, now_us);
                    // Thresholds passed before this process saw them stay quiet.
                    slot.fired = spec.crossed(slot.spent);
                    let figures = slot.fire(spec, false);
                    inner.slots.insert(spec.id.clone(), slot);
                    figures
                }
            })
            .collect())
    }

    fn figures(&self, slots: &[SlotSpec], now_us: i64) -> CoreResult<Vec<Option<Figures>>> {
        let inner = self.inner.lock();
        Ok(slots
            .iter()
            .map(|spec| {
                let mut view = inner.slots.get(&spec.id)?.clone_view();
                view.roll(spec, now_us);
                Some(view.fire_nothing())
            })
            .collect())
    }

    fn forget(&self, ids: &[Arc<str>]) {
        let mut inner = self.inner.lock();
        for id in ids {
            inner.slots.remove(id);
        }
    }
}

impl Slot {
    fn clone_view(&self) -> Slot {
        Slot {
            period_start: self.period_start,
            spent: self.spent,
            reserved: self.reserved,
            fired: self.fired,
            recent: self.recent.clone(),
        }
    }

    fn fire_nothing(&self) -> Figures {
        Figures {
            spent: self.spent,
            reserved: self.reserved,
            over: false,
            rolled: false,
            fired_before: self.fired,
            fired: self.fired,
        }
    }
}
