//! The `evm` settlement backend: carries each recorded batch to the Voltshare
//! settlement contract (`deploy/contracts`) and follows it until it is final.
//!
//! # Life of a batch
//!
//! The batch is first appended to the engine's own hash chain (the
//! `settlements` table, through [`Ledger::record_batch`]) with status
//! `pending`. [`EvmSettlement::drive`], called on every settler round, then
//! moves each non-final row forward, oldest first:
//!
//! - **pending → submitted**: simulate `settle` (a revert such as a paused
//!   contract leaves the row pending); take the next nonce from the
//!   persisted nonce manager; sign locally; write the transaction (hash, raw
//!   bytes, nonce, fees) and the row's `tx_hash` in one SQLite transaction;
//!   only then broadcast. A crash between the write and the broadcast is
//!   healed by broadcasting the stored bytes again.
//! - **submitted → confirmed**: a successful receipt of any attempt. Without
//!   one: a transaction the node no longer knows (dropped from its pool) is
//!   broadcast again, byte for byte (same nonce, same hash: no gap); one
//!   that is still waiting after `bump_after_ms` is replaced by a new
//!   attempt with the same nonce and fees raised by `bump_percent` (recorded
//!   before it is broadcast, like the first).
//! - **confirmed → final**: `confirmations` blocks deep. While confirmed,
//!   the receipt is checked each round; if it is gone or names another block
//!   hash than recorded, a reorg removed the batch: the row goes back to
//!   `submitted` and the stored transaction is broadcast again.
//! - **final, audited**: a reorg deeper than `confirmations` can still
//!   remove a final batch. Every round, the final batches mined within
//!   `audit_blocks` of the head are checked against the canonical block
//!   hash at their height; one whose block is gone goes through the same
//!   path as a confirmed one (followed to its new block, or its stored
//!   transaction broadcast again with its nonce), so it settles once more
//!   and only once.
//!
//! # Accounts
//!
//! The contract names accounts by a 16-bit registry index (see the
//! contract's header: it is what keeps a batch near 1,600 gas per trade).
//! Each `settle` is planned against the registry as the chain holds it:
//! known accounts by index, new ones registered by the batch at the next
//! free indexes, written out so that the contract refuses a plan that has
//! gone stale. When a batch names a new account, it registers every
//! configured account the chain does not know yet, in a fixed order: batches
//! planned while earlier ones are in flight then agree on every index, and
//! the contract takes the repeated registrations as no-ops. A registration
//! costs about 70,000 gas once; the first batch registers every configured
//! account at once, which fits a 30M-gas block up to about 300 accounts (a
//! larger grid would need its accounts registered in chunks beforehand:
//! not built).
//!
//! # Never paid twice
//!
//! The contract refuses a second batch for a (grid, interval), so whatever
//! is retried, at most one `settle` per interval succeeds. A new nonce is
//! only ever used for an interval whose earlier transaction can no longer be
//! mined (it reverted, or its nonce was consumed); before signing, the
//! backend reads the contract's digest and adopts an existing settlement
//! instead of sending another.
//!
//! # Nonces
//!
//! `evm_nonces` holds the settler's next nonce per chain. A new nonce is
//! `max(stored, mined)`: the stored one covers our own transactions still in
//! flight (even dropped ones, which are re-broadcast), the mined one covers
//! transactions someone else sent from the same key.
//!
//! Time for fee bumping comes from the backend's own [`Clock`] (real time:
//! the engine's clock may be a scaled simulation clock).

pub mod bench;
pub mod chain;
pub mod contract;
pub mod verify;

use crate::error::{StoreError, to_i64, to_u64};
use crate::settlement::{
    self, Ledger, SettleFuture, Settlement, SettlementError, SettlementRecord, SettlementStatus,
};
pub use alloy;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolError, SolEvent};
use chain::{Broadcast, Chain, Fees, sign};
use contract::{VoltshareSettlement, batch_digest, grid_word};
use futures::future::BoxFuture;
use protocol::{Clock, GridId, HouseholdId, IntervalId, SettlementBatch};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Why the chain could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EvmError {
    #[error("evm config: {0}")]
    Config(String),
    #[error("node unreachable: {0}")]
    Unreachable(String),
    #[error("node refused: {0}")]
    Node(String),
    #[error("reverted: {message}")]
    Reverted {
        message: String,
        data: Option<alloy::primitives::Bytes>,
    },
    #[error("signing: {0}")]
    Sign(String),
    #[error("settler key: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chain holds another batch for interval {interval}: digest {onchain}, ours {ours}")]
    Conflict {
        interval: u64,
        onchain: B256,
        ours: B256,
    },
}

impl From<sqlx::Error> for EvmError {
    fn from(e: sqlx::Error) -> Self {
        EvmError::Store(StoreError::Db(e))
    }
}

impl From<EvmError> for SettlementError {
    fn from(e: EvmError) -> Self {
        match e {
            EvmError::Store(s) => SettlementError::Store(s),
            other => SettlementError::Backend(other.to_string()),
        }
    }
}

/// Configuration of the `evm` backend (the `[evm]` table of the engine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmSettings {
    /// JSON-RPC endpoint, `http://…`.
    pub rpc_url: String,
    /// The chain's id (signed into every transaction).
    pub chain_id: u64,
    /// The settlement contract.
    pub contract: String,
    /// File holding the settler's secp256k1 key, 64 hex digits.
    pub settler_key_file: PathBuf,
    /// The utility's account: where fees, shortfalls and excess are booked.
    pub utility_address: String,
    /// Blocks on top of the batch's block before it is final.
    #[serde(default = "d_confirmations")]
    pub confirmations: u64,
    /// Real milliseconds a transaction may wait in the pool before its fees
    /// are bumped.
    #[serde(default = "d_bump_after")]
    pub bump_after_ms: u64,
    /// Fee increase per bump, percent (nodes want at least 10).
    #[serde(default = "d_bump_percent")]
    pub bump_percent: u64,
    /// The most a bump may raise the max fee to, in gwei.
    #[serde(default = "d_max_fee_gwei")]
    pub max_fee_gwei: u64,
    /// Use legacy (gas price) transactions, for chains without EIP-1559.
    #[serde(default)]
    pub legacy: bool,
    /// Timeout of one RPC call, real milliseconds.
    #[serde(default = "d_rpc_timeout")]
    pub rpc_timeout_ms: u64,
    /// Block to search for settlement events from (the deployment block).
    #[serde(default)]
    pub from_block: u64,
    /// How many blocks back final batches are still audited: every round,
    /// each final batch mined within this many blocks of the head must
    /// still be in the canonical block recorded for it; one a deep reorg
    /// removed is settled again. 0 stops auditing at `final`.
    #[serde(default = "d_audit_blocks")]
    pub audit_blocks: u64,
}

fn d_confirmations() -> u64 {
    3
}
fn d_bump_after() -> u64 {
    30_000
}
fn d_bump_percent() -> u64 {
    25
}
fn d_max_fee_gwei() -> u64 {
    500
}
fn d_rpc_timeout() -> u64 {
    5_000
}
fn d_audit_blocks() -> u64 {
    // A day of 5-second blocks (Energy Web Chain, Gnosis).
    17_280
}

impl EvmSettings {
    /// Settings with defaults for everything optional.
    pub fn new(
        rpc_url: impl Into<String>,
        chain_id: u64,
        contract: Address,
        settler_key_file: PathBuf,
        utility: Address,
    ) -> EvmSettings {
        EvmSettings {
            rpc_url: rpc_url.into(),
            chain_id,
            contract: contract.to_string(),
            settler_key_file,
            utility_address: utility.to_string(),
            confirmations: d_confirmations(),
            bump_after_ms: d_bump_after(),
            bump_percent: d_bump_percent(),
            max_fee_gwei: d_max_fee_gwei(),
            legacy: false,
            rpc_timeout_ms: d_rpc_timeout(),
            from_block: 0,
            audit_blocks: d_audit_blocks(),
        }
    }

    /// Checks what parsing cannot (not the key file: that is read at start).
    pub fn validate(&self) -> Result<(), EvmError> {
        parse_address(&self.contract, "evm.contract")?;
        parse_address(&self.utility_address, "evm.utility_address")?;
        if !self.rpc_url.starts_with("http://") && !self.rpc_url.starts_with("https://") {
            return Err(EvmError::Config("evm.rpc_url: expected http://…".into()));
        }
        if self.confirmations == 0 {
            return Err(EvmError::Config(
                "evm.confirmations: must be at least 1".into(),
            ));
        }
        if self.bump_percent < 10 {
            return Err(EvmError::Config(
                "evm.bump_percent: nodes refuse replacements below 10 %".into(),
            ));
        }
        Ok(())
    }
}

/// Parses a `0x…` address, naming the key on failure.
pub fn parse_address(s: &str, key: &str) -> Result<Address, EvmError> {
    Address::from_str(s.trim()).map_err(|e| EvmError::Config(format!("{key} {s:?}: {e}")))
}

/// Reads a secp256k1 key file (hex, optional 0x).
pub fn read_key(path: &Path) -> Result<PrivateKeySigner, EvmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvmError::Key(format!("{}: {e}", path.display())))?;
    PrivateKeySigner::from_str(text.trim())
        .map_err(|e| EvmError::Key(format!("{}: {e}", path.display())))
}

/// Gas limit of a settle transaction: generous, so that it never depends on
/// an estimate (which would need the pending state of earlier nonces). A
/// registration writes three fresh slots and an event (about 70,000 gas).
fn gas_limit(entries: usize, registrations: usize) -> u64 {
    let n = |x: usize| u64::try_from(x).unwrap_or(u64::MAX / 200_000);
    150_000 + 25_000 * n(entries) + 100_000 * n(registrations)
}

/// The backend.
pub struct EvmSettlement {
    ledger: Ledger,
    pool: SqlitePool,
    chain: Chain,
    wallet: EthereumWallet,
    sender: Address,
    contract: Address,
    grid: GridId,
    accounts: BTreeMap<HouseholdId, Address>,
    utility: Address,
    settings: EvmSettings,
    clock: Arc<dyn Clock>,
    lock: Mutex<()>,
}

impl std::fmt::Debug for EvmSettlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmSettlement")
            .field("rpc", &self.chain.url())
            .field("contract", &self.contract)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// One stored transaction attempt.
#[derive(Debug, Clone)]
struct Attempt {
    hash: B256,
    nonce: u64,
    attempt: u64,
    fees: Fees,
    raw: Vec<u8>,
    state: String,
    sent_at: Option<u64>,
}

/// A non-final row of the settlements table.
#[derive(Debug, Clone)]
struct Row {
    interval: u64,
    status: SettlementStatus,
    batch: SettlementBatch,
    tx_hash: Option<B256>,
    block_number: Option<u64>,
    block_hash: Option<B256>,
}

impl EvmSettlement {
    /// The backend on `pool`. Does not touch the network: the node may be
    /// down at start-up; batches then wait as `pending`.
    pub fn new(
        pool: SqlitePool,
        ledger: Ledger,
        grid: GridId,
        settings: EvmSettings,
        accounts: BTreeMap<HouseholdId, Address>,
        clock: Arc<dyn Clock>,
    ) -> Result<EvmSettlement, EvmError> {
        settings.validate()?;
        let key = read_key(&settings.settler_key_file)?;
        let chain = Chain::http(
            &settings.rpc_url,
            Duration::from_millis(settings.rpc_timeout_ms),
        )?;
        Ok(EvmSettlement {
            ledger,
            pool,
            chain,
            sender: key.address(),
            wallet: EthereumWallet::from(key),
            contract: parse_address(&settings.contract, "evm.contract")?,
            utility: parse_address(&settings.utility_address, "evm.utility_address")?,
            grid,
            accounts,
            settings,
            clock,
            lock: Mutex::new(()),
        })
    }

    /// The chain client.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The settler's address.
    pub fn sender(&self) -> Address {
        self.sender
    }

    /// The contract's address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// The accounts and amounts of a batch (households in batch order, then
    /// the utility when its net is not zero), each checked to fit an
    /// on-chain entry.
    pub fn accounts_of(&self, batch: &SettlementBatch) -> Result<Vec<(Address, i64)>, EvmError> {
        let mut out = Vec::with_capacity(batch.transfers.len() + 1);
        for t in &batch.transfers {
            let a = self.accounts.get(&t.household).ok_or_else(|| {
                EvmError::Config(format!("{} has no settlement_address", t.household))
            })?;
            contract::check_amount(t.household.as_str(), t.amount.0)?;
            out.push((*a, t.amount.0));
        }
        if batch.utility.0 != 0 {
            contract::check_amount("the utility", batch.utility.0)?;
            out.push((self.utility, batch.utility.0));
        }
        Ok(out)
    }

    /// Plans the account arguments of a batch's `settle` (see
    /// [`contract::plan_input`]); the universe is every configured household
    /// account, by household id, then the utility.
    async fn plan(&self, batch: &SettlementBatch) -> Result<contract::SettleInput, EvmError> {
        let mut universe: Vec<Address> = self.accounts.values().copied().collect();
        universe.push(self.utility);
        contract::plan_input(
            &self.chain,
            self.contract,
            &self.accounts_of(batch)?,
            &universe,
        )
        .await
    }

    fn now(&self) -> u64 {
        self.clock.now().0
    }

    /// One round: moves every non-final batch forward, oldest first. Stops at
    /// the first node failure (the rest waits for the next round).
    pub async fn drive_once(&self) -> Result<(), EvmError> {
        let _one = self.lock.lock().await;
        if self.settings.audit_blocks > 0 {
            self.audit_final().await?;
        }
        let rows = self.open_rows().await?;
        if rows.is_empty() {
            return Ok(());
        }
        let head = self.chain.block_number().await?;
        for row in rows {
            let go_on = match row.status {
                SettlementStatus::Pending => self.step_pending(&row).await?,
                SettlementStatus::Submitted => {
                    self.step_submitted(&row, head).await?;
                    true
                }
                SettlementStatus::Confirmed => {
                    self.step_confirmed(&row, head).await?;
                    true
                }
                SettlementStatus::Final => true,
            };
            if !go_on {
                // Keep on-chain order equal to the hash chain's order.
                break;
            }
        }
        Ok(())
    }

    /// Re-checks the final batches of the last `audit_blocks` blocks: each
    /// must still sit in the block recorded for it (one block-hash read per
    /// batch). A reorg deeper than `confirmations` that removed one sends it
    /// back through [`Self::step_confirmed`]: followed to its new block if
    /// it was mined again, otherwise its stored transaction is broadcast
    /// again, byte for byte (same nonce: the contract's refusal of a second
    /// batch per interval and the nonce together make it settle once).
    async fn audit_final(&self) -> Result<(), EvmError> {
        let head = self.chain.block_number().await?;
        let since = head.saturating_sub(self.settings.audit_blocks);
        let finals: Vec<(i64, String)> = sqlx::query_as(
            "SELECT interval_start, block_hash FROM settlements WHERE backend = 'evm' AND status = 'final' \
             AND block_number >= ? ORDER BY seq",
        )
        .bind(to_i64(since, "block")?)
        .fetch_all(&self.pool)
        .await?;
        if finals.is_empty() {
            return Ok(());
        }
        let mut removed = Vec::new();
        for (interval, recorded) in finals {
            let interval = to_u64(interval, "interval")?;
            let row = self
                .row(interval)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("settlement {interval} vanished")))?;
            let Some(bn) = row.block_number else {
                removed.push(row);
                continue;
            };
            let canonical = self.chain.block_hash(bn).await?;
            if canonical.map(|h| h.to_string()).as_deref() != Some(recorded.as_str()) {
                removed.push(row);
            }
        }
        for row in removed {
            warn!(interval = row.interval, block = ?row.block_number, "a final batch's block left the canonical chain (deep reorg); auditing it");
            self.step_confirmed(&row, head).await?;
        }
        Ok(())
    }

    /// One row of the settlements table, whatever its status.
    async fn row(&self, interval: u64) -> Result<Option<Row>, EvmError> {
        Ok(self.rows(Some(interval)).await?.pop())
    }

    async fn open_rows(&self) -> Result<Vec<Row>, EvmError> {
        self.rows(None).await
    }

    /// The row of `interval`, or without one every non-final row.
    async fn rows(&self, interval: Option<u64>) -> Result<Vec<Row>, EvmError> {
        type R = (
            i64,
            String,
            String,
            Option<String>,
            Option<i64>,
            Option<String>,
        );
        let sql = match interval {
            None => {
                "SELECT interval_start, status, batch_json, tx_hash, block_number, block_hash FROM settlements \
                 WHERE backend = 'evm' AND status <> 'final' ORDER BY seq"
            }
            Some(_) => {
                "SELECT interval_start, status, batch_json, tx_hash, block_number, block_hash FROM settlements \
                 WHERE backend = 'evm' AND interval_start = ? ORDER BY seq"
            }
        };
        let mut q = sqlx::query_as(sql);
        if let Some(i) = interval {
            q = q.bind(to_i64(i, "interval")?);
        }
        let rows: Vec<R> = q.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(interval, status, json, tx, bn, bh)| {
                let corrupt = |w: String| {
                    EvmError::Store(StoreError::Corrupt(format!("settlement {interval}: {w}")))
                };
                Ok(Row {
                    interval: to_u64(interval, "interval")?,
                    status: SettlementStatus::parse(&status)
                        .ok_or_else(|| corrupt(format!("status {status}")))?,
                    batch: serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?,
                    tx_hash: tx
                        .map(|t| B256::from_str(&t).map_err(|e| corrupt(e.to_string())))
                        .transpose()?,
                    block_number: bn.map(|b| to_u64(b, "block")).transpose()?,
                    block_hash: bh
                        .map(|h| B256::from_str(&h).map_err(|e| corrupt(e.to_string())))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn attempts(&self, interval: u64) -> Result<Vec<Attempt>, EvmError> {
        type R = (
            String,
            i64,
            i64,
            String,
            String,
            Vec<u8>,
            String,
            Option<i64>,
        );
        let rows: Vec<R> = sqlx::query_as(
            "SELECT tx_hash, nonce, attempt, max_fee, priority_fee, raw, state, sent_at FROM evm_txs \
             WHERE interval_start = ? AND state IN ('signed', 'sent', 'replaced', 'mined') ORDER BY attempt",
        )
        .bind(to_i64(interval, "interval")?)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(h, n, a, mf, pf, raw, state, sent)| {
                let corrupt =
                    |w: String| EvmError::Store(StoreError::Corrupt(format!("evm tx {h}: {w}")));
                Ok(Attempt {
                    hash: B256::from_str(&h).map_err(|e| corrupt(e.to_string()))?,
                    nonce: to_u64(n, "nonce")?,
                    attempt: to_u64(a, "attempt")?,
                    fees: Fees {
                        max_fee: mf.parse().map_err(|_| corrupt("max_fee".into()))?,
                        priority_fee: pf.parse().map_err(|_| corrupt("priority_fee".into()))?,
                    },
                    raw,
                    state,
                    sent_at: sent.map(|s| to_u64(s, "sent_at")).transpose()?,
                })
            })
            .collect()
    }

    async fn set_status(
        &self,
        interval: u64,
        status: SettlementStatus,
        tx: Option<B256>,
        block: Option<(u64, B256)>,
        confirmations: u64,
    ) -> Result<(), EvmError> {
        sqlx::query(
            "UPDATE settlements SET status = ?, tx_hash = COALESCE(?, tx_hash), block_number = ?, block_hash = ?, \
             confirmations = ?, updated_at = ? WHERE interval_start = ?",
        )
        .bind(status.as_str())
        .bind(tx.map(|t| t.to_string()))
        .bind(block.map(|b| to_i64(b.0, "block")).transpose()?)
        .bind(block.map(|b| b.1.to_string()))
        .bind(to_i64(confirmations, "confirmations")?)
        .bind(to_i64(self.now(), "time")?)
        .bind(to_i64(interval, "interval")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_tx_state(
        &self,
        hash: B256,
        state: &str,
        sent_at: Option<u64>,
    ) -> Result<(), EvmError> {
        sqlx::query(
            "UPDATE evm_txs SET state = ?, sent_at = COALESCE(?, sent_at) WHERE tx_hash = ?",
        )
        .bind(state)
        .bind(sent_at.map(|t| to_i64(t, "time")).transpose()?)
        .bind(hash.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finds the settlement of `interval` on chain (when the contract holds
    /// our digest but we have no receipt for it) and records it as confirmed.
    async fn adopt(&self, row: &Row, head: u64) -> Result<bool, EvmError> {
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(VoltshareSettlement::BatchSettled::SIGNATURE_HASH)
            .topic1(grid_word(&self.grid))
            .topic2(B256::from(U256::from(row.interval)))
            .from_block(self.settings.from_block);
        let logs = self.chain.logs(&filter).await?;
        let Some(log) = logs.iter().rev().find(|l| !l.removed) else {
            return Ok(false);
        };
        let (Some(tx), Some(bn), Some(bh)) =
            (log.transaction_hash, log.block_number, log.block_hash)
        else {
            return Ok(false);
        };
        let conf = head.saturating_sub(bn) + 1;
        let status = self.status_for(conf);
        self.set_status(row.interval, status, Some(tx), Some((bn, bh)), conf)
            .await?;
        info!(interval = row.interval, tx = %tx, "settlement found on chain; adopted");
        Ok(true)
    }

    fn status_for(&self, confirmations: u64) -> SettlementStatus {
        if confirmations >= self.settings.confirmations {
            SettlementStatus::Final
        } else {
            SettlementStatus::Confirmed
        }
    }

    /// Pending: (re)broadcast a signed attempt, or sign a new one. Returns
    /// false when the batch cannot go out now (later ones wait behind it).
    async fn step_pending(&self, row: &Row) -> Result<bool, EvmError> {
        let attempts = self.attempts(row.interval).await?;
        if let Some(a) = attempts
            .iter()
            .rev()
            .find(|a| a.state == "signed" || a.state == "sent")
        {
            // Signed (and recorded) but perhaps never broadcast: send the same bytes.
            return self.send(row.interval, a).await;
        }
        let ours = batch_digest(&row.batch);
        let onchain = self
            .chain
            .batch_digest(self.contract, grid_word(&self.grid), row.interval)
            .await?;
        if onchain == ours {
            let head = self.chain.block_number().await?;
            return self.adopt(row, head).await;
        }
        if onchain != B256::ZERO {
            return Err(EvmError::Conflict {
                interval: row.interval,
                onchain,
                ours,
            });
        }
        let plan = self.plan(&row.batch).await?;
        let size = (plan.count, plan.registrations.len());
        let call = contract::settle_call(&self.grid, IntervalId(row.interval), &row.batch, plan);
        let input = call.abi_encode();
        // Simulate first: a paused contract or a missing role must not burn
        // nonces and gas on transactions that revert.
        if let Err(e) = self
            .chain
            .call(self.sender, self.contract, input.clone().into())
            .await
        {
            if let EvmError::Reverted { message, .. } = &e {
                warn!(interval = row.interval, %message, "settle would revert; batch stays pending");
                return Ok(false);
            }
            return Err(e);
        }
        let mined = self.chain.mined_nonce(self.sender).await?;
        let fees = self.chain.fees(self.settings.legacy).await?;
        let chain_id = self.settings.chain_id;
        let sender = self.sender.to_string();
        // Nonce allocation, signing record and the row's tx_hash in one
        // SQLite transaction: the hash is on disk before any broadcast.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT next_nonce FROM evm_nonces WHERE chain_id = ? AND sender = ?",
        )
        .bind(to_i64(chain_id, "chain id")?)
        .bind(&sender)
        .fetch_optional(&mut *tx)
        .await?;
        let nonce = stored
            .map(|n| to_u64(n, "nonce"))
            .transpose()?
            .unwrap_or(0)
            .max(mined);
        let signed = self.sign_settle(input.clone(), nonce, fees, size).await?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO evm_txs (tx_hash, interval_start, chain_id, sender, nonce, attempt, max_fee, priority_fee, raw, \
             state, created_at, sent_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, 'signed', ?, NULL)",
        )
        .bind(signed.hash.to_string())
        .bind(to_i64(row.interval, "interval")?)
        .bind(to_i64(chain_id, "chain id")?)
        .bind(&sender)
        .bind(to_i64(nonce, "nonce")?)
        .bind(fees.max_fee.to_string())
        .bind(fees.priority_fee.to_string())
        .bind(&signed.raw)
        .bind(to_i64(now, "time")?)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO evm_nonces (chain_id, sender, next_nonce) VALUES (?, ?, ?) \
             ON CONFLICT(chain_id, sender) DO UPDATE SET next_nonce = excluded.next_nonce",
        )
        .bind(to_i64(chain_id, "chain id")?)
        .bind(&sender)
        .bind(to_i64(nonce + 1, "nonce")?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE settlements SET tx_hash = ?, updated_at = ? WHERE interval_start = ?")
            .bind(signed.hash.to_string())
            .bind(to_i64(now, "time")?)
            .bind(to_i64(row.interval, "interval")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        debug!(interval = row.interval, nonce, tx = %signed.hash, "settlement signed and recorded");
        let a = Attempt {
            hash: signed.hash,
            nonce,
            attempt: 0,
            fees,
            raw: signed.raw,
            state: "signed".into(),
            sent_at: None,
        };
        self.send(row.interval, &a).await
    }

    async fn sign_settle(
        &self,
        input: Vec<u8>,
        nonce: u64,
        fees: Fees,
        (entries, registrations): (usize, usize),
    ) -> Result<chain::SignedTx, EvmError> {
        let mut req = TransactionRequest::default()
            .with_from(self.sender)
            .with_to(self.contract)
            .with_input(input)
            .with_nonce(nonce)
            .with_chain_id(self.settings.chain_id)
            .with_gas_limit(gas_limit(entries, registrations));
        if self.settings.legacy {
            req = req.with_gas_price(fees.max_fee);
        } else {
            req = req
                .with_max_fee_per_gas(fees.max_fee)
                .with_max_priority_fee_per_gas(fees.priority_fee);
        }
        sign(&self.wallet, req).await
    }

    /// Broadcasts an attempt; on acceptance the row is `submitted`.
    async fn send(&self, interval: u64, a: &Attempt) -> Result<bool, EvmError> {
        match self.chain.broadcast(&a.raw).await? {
            Broadcast::Accepted => {
                self.set_tx_state(a.hash, "sent", Some(a.sent_at.unwrap_or(self.now())))
                    .await?;
                self.set_status(interval, SettlementStatus::Submitted, Some(a.hash), None, 0)
                    .await?;
                info!(interval, nonce = a.nonce, attempt = a.attempt, tx = %a.hash, "settlement submitted");
                Ok(true)
            }
            Broadcast::NonceTooLow => {
                // The nonce is used: by this very transaction (mined; the
                // submitted step will find the receipt) or by another one.
                if self.chain.receipt(a.hash).await?.is_some() {
                    self.set_status(interval, SettlementStatus::Submitted, Some(a.hash), None, 0)
                        .await?;
                    return Ok(true);
                }
                warn!(
                    interval,
                    nonce = a.nonce,
                    "nonce consumed elsewhere; the batch will get a new one"
                );
                self.fail_attempts(interval).await?;
                Ok(false)
            }
            Broadcast::Refused(why) => {
                warn!(interval, tx = %a.hash, %why, "node refused the settlement transaction");
                Ok(false)
            }
        }
    }

    async fn fail_attempts(&self, interval: u64) -> Result<(), EvmError> {
        sqlx::query(
            "UPDATE evm_txs SET state = 'failed' WHERE interval_start = ? AND state <> 'failed'",
        )
        .bind(to_i64(interval, "interval")?)
        .execute(&self.pool)
        .await?;
        self.set_status(interval, SettlementStatus::Pending, None, None, 0)
            .await
    }

    async fn step_submitted(&self, row: &Row, head: u64) -> Result<(), EvmError> {
        let attempts = self.attempts(row.interval).await?;
        for a in &attempts {
            let Some(r) = self.chain.receipt(a.hash).await? else {
                continue;
            };
            let (Some(bn), Some(bh)) = (r.block_number, r.block_hash) else {
                continue;
            };
            if r.status() {
                sqlx::query(
                    "UPDATE evm_txs SET state = CASE WHEN tx_hash = ? THEN 'mined' ELSE 'replaced' END \
                     WHERE interval_start = ? AND state IN ('signed', 'sent', 'replaced', 'mined')",
                )
                .bind(a.hash.to_string())
                .bind(to_i64(row.interval, "interval")?)
                .execute(&self.pool)
                .await?;
                let conf = head.saturating_sub(bn) + 1;
                self.set_status(
                    row.interval,
                    self.status_for(conf),
                    Some(a.hash),
                    Some((bn, bh)),
                    conf,
                )
                .await?;
                info!(interval = row.interval, tx = %a.hash, block = bn, gas = r.gas_used, "settlement mined");
                return Ok(());
            }
            // Reverted: the nonce is spent. Settled by something else?
            let onchain = self
                .chain
                .batch_digest(self.contract, grid_word(&self.grid), row.interval)
                .await?;
            warn!(interval = row.interval, tx = %a.hash, "settlement transaction reverted");
            self.fail_attempts(row.interval).await?;
            if onchain == batch_digest(&row.batch) {
                self.adopt(row, head).await?;
            }
            return Ok(());
        }
        let Some(latest) = attempts
            .iter()
            .filter(|a| a.state != "mined")
            .max_by_key(|a| a.attempt)
        else {
            // Nothing to wait for (rows lost?): sign afresh.
            return self
                .set_status(row.interval, SettlementStatus::Pending, None, None, 0)
                .await;
        };
        let latest = latest.clone();
        if !self.chain.knows(latest.hash).await? {
            info!(interval = row.interval, tx = %latest.hash, nonce = latest.nonce, "transaction unknown to the node (dropped); broadcasting it again");
            self.send(row.interval, &latest).await?;
            return Ok(());
        }
        let waited = self
            .now()
            .saturating_sub(latest.sent_at.unwrap_or(self.now()));
        if waited >= self.settings.bump_after_ms {
            self.bump(row, &latest).await?;
        }
        Ok(())
    }

    /// Replaces a stuck attempt by one with the same nonce and higher fees.
    async fn bump(&self, row: &Row, old: &Attempt) -> Result<(), EvmError> {
        let current = self.chain.fees(self.settings.legacy).await?;
        let pct = u128::from(100 + self.settings.bump_percent);
        let cap = u128::from(self.settings.max_fee_gwei) * 1_000_000_000;
        let raise = |v: u128| v.saturating_mul(pct).div_ceil(100).max(v + 1);
        let mut fees = Fees {
            max_fee: raise(old.fees.max_fee).max(current.max_fee),
            priority_fee: if self.settings.legacy {
                0
            } else {
                raise(old.fees.priority_fee).max(current.priority_fee)
            },
        };
        if fees.max_fee > cap {
            warn!(
                interval = row.interval,
                "fee cap reached; not bumping further"
            );
            return Ok(());
        }
        fees.priority_fee = fees.priority_fee.min(fees.max_fee);
        // Planned again: the registry cannot have changed under a batch that
        // is still waiting, unless an earlier one was mined meanwhile, and
        // then the old plan would revert anyway.
        let plan = self.plan(&row.batch).await?;
        let size = (plan.count, plan.registrations.len());
        let input = contract::settle_call(&self.grid, IntervalId(row.interval), &row.batch, plan)
            .abi_encode();
        let signed = self.sign_settle(input, old.nonce, fees, size).await?;
        let now = self.now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO evm_txs (tx_hash, interval_start, chain_id, sender, nonce, attempt, max_fee, priority_fee, raw, \
             state, created_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'signed', ?, NULL)",
        )
        .bind(signed.hash.to_string())
        .bind(to_i64(row.interval, "interval")?)
        .bind(to_i64(self.settings.chain_id, "chain id")?)
        .bind(self.sender.to_string())
        .bind(to_i64(old.nonce, "nonce")?)
        .bind(to_i64(old.attempt + 1, "attempt")?)
        .bind(fees.max_fee.to_string())
        .bind(fees.priority_fee.to_string())
        .bind(&signed.raw)
        .bind(to_i64(now, "time")?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE evm_txs SET state = 'replaced' WHERE tx_hash = ?")
            .bind(old.hash.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE settlements SET tx_hash = ?, updated_at = ? WHERE interval_start = ?")
            .bind(signed.hash.to_string())
            .bind(to_i64(now, "time")?)
            .bind(to_i64(row.interval, "interval")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        info!(interval = row.interval, nonce = old.nonce, attempt = old.attempt + 1, max_fee = fees.max_fee, tx = %signed.hash, "fee bumped");
        let a = Attempt {
            hash: signed.hash,
            nonce: old.nonce,
            attempt: old.attempt + 1,
            fees,
            raw: signed.raw,
            state: "signed".into(),
            sent_at: None,
        };
        self.send(row.interval, &a).await?;
        Ok(())
    }

    async fn step_confirmed(&self, row: &Row, head: u64) -> Result<(), EvmError> {
        let Some(tx) = row.tx_hash else {
            return self
                .set_status(row.interval, SettlementStatus::Pending, None, None, 0)
                .await;
        };
        let receipt = self.chain.receipt(tx).await?;
        let canonical = match (&receipt, row.block_number) {
            (Some(r), Some(bn)) if r.block_hash == row.block_hash && r.block_number == Some(bn) => {
                // The receipt may be served from a stale index: check the
                // block hash at that height too.
                self.chain.block_hash(bn).await? == row.block_hash
            }
            _ => false,
        };
        if canonical {
            let bn = row.block_number.unwrap_or(head);
            let conf = head.saturating_sub(bn) + 1;
            let status = self.status_for(conf);
            let block = row.block_number.zip(row.block_hash);
            self.set_status(row.interval, status, None, block, conf)
                .await?;
            if status == SettlementStatus::Final {
                info!(interval = row.interval, tx = %tx, confirmations = conf, "settlement final");
            }
            return Ok(());
        }
        if let Some(r) = receipt.filter(|r| r.status())
            && let (Some(bn), Some(bh)) = (r.block_number, r.block_hash)
        {
            // Re-mined in another block after a reorg: follow it.
            warn!(interval = row.interval, tx = %tx, block = bn, "settlement moved to another block (reorg)");
            let conf = head.saturating_sub(bn) + 1;
            return self
                .set_status(
                    row.interval,
                    self.status_for(conf),
                    None,
                    Some((bn, bh)),
                    conf,
                )
                .await;
        }
        warn!(interval = row.interval, tx = %tx, block = ?row.block_number, "reorg removed a settled batch; submitting it again");
        self.set_status(row.interval, SettlementStatus::Submitted, None, None, 0)
            .await?;
        let attempts = self.attempts(row.interval).await?;
        match attempts.into_iter().find(|a| a.hash == tx) {
            Some(a) => {
                self.set_tx_state(a.hash, "sent", None).await?;
                self.send(row.interval, &a).await?;
            }
            // Adopted from the chain, no bytes of our own: sign afresh (the
            // contract refuses a double settlement, and pending checks the
            // digest first).
            None => {
                self.set_status(row.interval, SettlementStatus::Pending, None, None, 0)
                    .await?
            }
        }
        Ok(())
    }

    async fn submit_inner(
        &self,
        batch: &SettlementBatch,
    ) -> Result<SettlementRecord, SettlementError> {
        // Refuse before recording: a batch that cannot be encoded would
        // block the chain forever.
        self.accounts_of(batch)?;
        let now = to_i64(self.now(), "time")?;
        self.ledger
            .record_batch(batch, SettlementStatus::Pending, "evm", now)
            .await?;
        if let Err(error) = self.drive_once().await {
            warn!(interval = batch.interval.0, %error, "settlement recorded; chain not reached yet");
        }
        settlement::record(&self.pool, batch.interval)
            .await?
            .ok_or_else(|| SettlementError::Backend("recorded batch vanished".into()))
    }
}

impl Settlement for EvmSettlement {
    fn name(&self) -> &'static str {
        "evm"
    }

    fn submit<'a>(&'a self, batch: &'a SettlementBatch) -> SettleFuture<'a> {
        Box::pin(self.submit_inner(batch))
    }

    fn drive(&self) -> BoxFuture<'_, Result<(), SettlementError>> {
        Box::pin(async move { self.drive_once().await.map_err(SettlementError::from) })
    }
}

/// Where a deployment ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub chain_id: u64,
    pub contract: Address,
    pub token: Address,
    pub block: u64,
    pub settler: Address,
    pub pauser: Address,
    pub admin: Address,
}

/// Deploys the settlement contract (and, without `token`, a freely mintable
/// test token: for Anvil and tests only). `deployer` becomes the admin.
pub async fn deploy(
    chain: &Chain,
    deployer: &PrivateKeySigner,
    token: Option<Address>,
    settler: Address,
    pauser: Address,
) -> Result<Deployment, EvmError> {
    let p = chain.operator(deployer)?;
    let err = |e: alloy::contract::Error| EvmError::Node(e.to_string());
    let token = match token {
        Some(t) => t,
        None => *contract::TestToken::deploy(p.clone())
            .await
            .map_err(err)?
            .address(),
    };
    let c = VoltshareSettlement::deploy(p.clone(), token, deployer.address(), settler, pauser)
        .await
        .map_err(err)?;
    Ok(Deployment {
        chain_id: chain.chain_id().await?,
        contract: *c.address(),
        token,
        block: chain.block_number().await?,
        settler,
        pauser,
        admin: deployer.address(),
    })
}

/// Mints test tokens to `funder` and deposits `amount` for each account
/// (Anvil and tests: `TestToken` mints freely).
pub async fn fund_test_accounts(
    chain: &Chain,
    funder: &PrivateKeySigner,
    d: &Deployment,
    accounts: &[Address],
    amount: u64,
) -> Result<(), EvmError> {
    let p = chain.operator(funder)?;
    let err = |e: alloy::contract::Error| EvmError::Node(e.to_string());
    let perr = |e: alloy::providers::PendingTransactionError| EvmError::Node(e.to_string());
    let token = contract::TestToken::new(d.token, p.clone());
    let total = U256::from(amount) * U256::from(accounts.len());
    token
        .mint(funder.address(), total)
        .send()
        .await
        .map_err(err)?
        .get_receipt()
        .await
        .map_err(perr)?;
    token
        .approve(d.contract, total)
        .send()
        .await
        .map_err(err)?
        .get_receipt()
        .await
        .map_err(perr)?;
    let c = VoltshareSettlement::new(d.contract, p.clone());
    for a in accounts {
        c.depositFor(*a, U256::from(amount))
            .send()
            .await
            .map_err(err)?
            .get_receipt()
            .await
            .map_err(perr)?;
    }
    Ok(())
}

/// Whether revert data is the contract's `AlreadySettled` error.
pub fn is_already_settled(data: Option<&alloy::primitives::Bytes>) -> bool {
    data.is_some_and(|d| d.starts_with(&VoltshareSettlement::AlreadySettled::SELECTOR))
}

/// The fixed development keys of Anvil's default mnemonic (`test test … junk`):
/// public knowledge, for local chains only.
pub const ANVIL_KEYS: [&str; 4] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];

/// Parses one of [`ANVIL_KEYS`] (or any hex key).
pub fn key_from_hex(s: &str) -> Result<PrivateKeySigner, EvmError> {
    PrivateKeySigner::from_str(s.trim()).map_err(|e| EvmError::Key(e.to_string()))
}

/// The Anvil binary that `scripts/setup.d/20-contracts.sh` installs from
/// npm (`VOLTSHARE_ANVIL` overrides it), if it is there.
pub fn anvil_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VOLTSHARE_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    p.exists().then_some(p)
}
