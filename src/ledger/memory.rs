use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    deadline, hold_refusal, Amount, Balance, Charge, EntryKind, Hold, HoldId, JournalEntry, Ledger,
    LedgerError, Memo, Settlement,
};
use crate::auth::UserId;
use crate::clock::unix_now;

/// A ledger in memory, for tests and embedding. One lock makes every operation atomic.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<UserId, Balance>,
    holds: HashMap<HoldId, OpenHold>,
    /// Every hold that ended; an expired one keeps what a late settle needs.
    ended: HashMap<HoldId, Option<OpenHold>>,
    references: HashSet<(UserId, String)>,
    journal: Vec<JournalEntry>,
    /// What each settled hold charged.
    charges: HashMap<HoldId, Charge>,
}

#[derive(Debug)]
struct OpenHold {
    account: UserId,
    amount: Amount,
    expires_at: u64,
    memo: Memo,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation checks before it mutates, so a poisoned lock holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn record(
        &mut self,
        account: &UserId,
        kind: EntryKind,
        amount: i64,
        hold: Option<HoldId>,
    ) -> &mut JournalEntry {
        let seq = self.journal.len() as u64 + 1;
        self.journal.push(JournalEntry {
            seq,
            account: account.clone(),
            kind,
            amount,
            hold,
            reference: None,
            memo: None,
            units_returned: None,
            held: None,
            upstream: None,
            at: unix_now(),
        });
        let last = self.journal.len() - 1;
        &mut self.journal[last]
    }

    /// Ends an open hold with `charge`; `false` if it was not open.
    fn end(
        &mut self,
        id: HoldId,
        charge: Amount,
        units: Option<u32>,
        kind: EntryKind,
    ) -> Result<bool, LedgerError> {
        let Some(hold) = self.holds.get(&id) else {
            return Ok(false);
        };
        if charge > hold.amount {
            return Err(LedgerError::ChargeExceedsHold);
        }
        let Some(hold) = self.holds.remove(&id) else {
            return Ok(false);
        };
        let balance = self.accounts.entry(hold.account.clone()).or_default();
        balance.held -= hold.amount.get();
        balance.charged += charge.get();
        balance.available += hold.amount.signed() - charge.signed();
        let entry = self.record(&hold.account, kind, charge.signed(), Some(id));
        entry.memo = Some(hold.memo.clone());
        entry.units_returned = units;
        entry.held = Some(hold.amount.get());
        let kept = (kind == EntryKind::Expire).then_some(hold);
        self.ended.insert(id, kept);
        if let (EntryKind::Settle, Some(units)) = (kind, units) {
            self.charges.insert(id, Charge::new(charge, units));
        }
        Ok(true)
    }

    /// Charges an expired hold's `charge` from the available balance, once.
    fn settle_late(
        &mut self,
        id: HoldId,
        charge: Amount,
        units: u32,
    ) -> Result<Settlement, LedgerError> {
        let Some(ended) = self.ended.get_mut(&id) else {
            return Err(LedgerError::UnknownHold);
        };
        let Some(hold) = ended.as_ref() else {
            return Ok(Settlement::AlreadyEnded);
        };
        if charge > hold.amount {
            return Err(LedgerError::ChargeExceedsHold);
        }
        let Some(hold) = ended.take() else {
            return Ok(Settlement::AlreadyEnded);
        };
        let balance = self.accounts.entry(hold.account.clone()).or_default();
        balance.charged += charge.get();
        balance.available -= charge.signed();
        let entry = self.record(
            &hold.account,
            EntryKind::LateSettle,
            charge.signed(),
            Some(id),
        );
        entry.held = Some(hold.amount.get());
        entry.memo = Some(hold.memo);
        entry.units_returned = Some(units);
        self.charges.insert(id, Charge::new(charge, units));
        Ok(Settlement::AfterExpiry)
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn hold(
        &self,
        account: &UserId,
        amount: Amount,
        ttl: Duration,
        memo: Memo,
    ) -> Result<Hold, LedgerError> {
        let mut state = self.state();
        let balance = state.accounts.entry(account.clone()).or_default();
        hold_refusal(balance.available, amount)?;
        balance.available -= amount.signed();
        balance.held += amount.get();
        let id = HoldId::new();
        let expires_at = deadline(unix_now(), ttl);
        state.holds.insert(
            id,
            OpenHold {
                account: account.clone(),
                amount,
                expires_at,
                memo: memo.clone(),
            },
        );
        state
            .record(account, EntryKind::Hold, amount.signed(), Some(id))
            .memo = Some(memo);
        Ok(Hold {
            id,
            account: account.clone(),
            amount,
        })
    }

    async fn settle(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
    ) -> Result<Settlement, LedgerError> {
        self.settle_from(hold, charge, units_returned, None).await
    }

    async fn settle_from(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
        upstream: Option<&str>,
    ) -> Result<Settlement, LedgerError> {
        let mut state = self.state();
        let settlement = if state.end(hold, charge, Some(units_returned), EntryKind::Settle)? {
            Settlement::Settled
        } else {
            state.settle_late(hold, charge, units_returned)?
        };
        if settlement != Settlement::AlreadyEnded {
            if let Some(entry) = state.journal.last_mut() {
                entry.upstream = upstream.map(str::to_owned);
            }
        }
        Ok(settlement)
    }

    async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
        let mut state = self.state();
        if state.end(hold, Amount::ZERO, None, EntryKind::Release)? {
            return Ok(());
        }
        // An expired hold released: nothing was delivered, so no late settle may charge it.
        match state.ended.get_mut(&hold) {
            Some(expired) => {
                *expired = None;
                Ok(())
            }
            None => Err(LedgerError::UnknownHold),
        }
    }

    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
        let mut state = self.state();
        if let Some(open) = state.holds.get_mut(&hold) {
            open.expires_at = deadline(unix_now(), ttl);
            return Ok(true);
        }
        if state.ended.contains_key(&hold) {
            Ok(false)
        } else {
            Err(LedgerError::UnknownHold)
        }
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError> {
        Ok(self
            .state()
            .accounts
            .get(account)
            .copied()
            .unwrap_or_default())
    }

    async fn deposit(
        &self,
        account: &UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, LedgerError> {
        let mut state = self.state();
        let reference = (account.clone(), reference.to_owned());
        if state.references.contains(&reference) {
            return Ok(false);
        }
        let balance = state.accounts.entry(account.clone()).or_default();
        let (Some(available), Some(deposited)) = (
            balance.available.checked_add(amount),
            balance.deposited.checked_add(amount),
        ) else {
            return Err(LedgerError::Overflow);
        };
        balance.available = available;
        balance.deposited = deposited;
        state.references.insert(reference.clone());
        let reference = reference.1;
        state
            .record(account, EntryKind::Deposit, amount, None)
            .reference = Some(reference);
        Ok(true)
    }

    async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
        let mut state = self.state();
        let due: Vec<HoldId> = state
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            state.end(*id, Amount::ZERO, None, EntryKind::Expire)?;
        }
        Ok(due.len())
    }

    async fn journal(
        &self,
        account: &UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let state = self.state();
        let start = after_seq.unwrap_or(0) as usize;
        Ok(state
            .journal
            .iter()
            .skip(start)
            .filter(|e| &e.account == account)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn charged(&self, hold: HoldId) -> Result<Option<Charge>, LedgerError> {
        Ok(self.state().charges.get(&hold).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_settle_names_its_upstream_in_the_journal_and_a_repeat_changes_nothing() {
        let ledger = MemoryLedger::new();
        let alice = UserId::new("alice").unwrap();
        ledger.deposit(&alice, 50, "opening").await.unwrap();
        let ttl = Duration::from_secs(60);
        let memo = Memo::new("r1", "m", 2);
        let hold = ledger.hold(&alice, Amount::new(20), ttl, memo).await;
        let hold = hold.unwrap().id;
        let settled = ledger.settle_from(hold, Amount::new(10), 1, Some("m#1"));
        assert_eq!(settled.await.unwrap(), Settlement::Settled);
        let again = ledger.settle_from(hold, Amount::new(10), 1, Some("m#0"));
        assert_eq!(again.await.unwrap(), Settlement::AlreadyEnded);
        let journal = ledger.journal(&alice, None, 10).await.unwrap();
        let settle = journal.iter().find(|e| e.kind == EntryKind::Settle);
        assert_eq!(settle.unwrap().upstream.as_deref(), Some("m#1"));
        assert_eq!(journal.len(), 3, "deposit, hold, settle");
    }
}
