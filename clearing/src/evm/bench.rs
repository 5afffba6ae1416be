//! The settlement gas benchmark: deploy the contract on a node, give every
//! household a deposit, reconcile `trades` trades among `households`
//! households (full delivery) into one batch with the production code, and
//! settle it in one transaction. Gas depends only on the calldata and the
//! storage touched, not on the build profile or the node's speed.

use super::EvmError;
use super::chain::Chain;
use super::contract::{SettleInput, TestToken, VoltshareSettlement, plan_input, settle_call};
use super::{Deployment, deploy, fund_test_accounts};
use crate::settlement::{Delivery, reconcile};
use alloy::primitives::{Address, U256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use protocol::{
    AuctionParams, GridId, Hash32, HouseholdId, IntervalId, MicroPerKwh, SettlementBatch, Trade,
    WattHours,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// What the benchmark prints.
#[derive(Debug, Clone, Serialize)]
pub struct GasReport {
    pub trades: usize,
    pub households: usize,
    /// Entries in the batch: households plus the utility.
    pub accounts: usize,
    pub gas_used: u64,
    pub gas_per_trade: u64,
    pub gas_per_household: u64,
    pub calldata_bytes: usize,
    /// One plain ERC-20 transfer on the same chain, for comparison.
    pub erc20_transfer_gas: u64,
    pub contract: Address,
    pub tx_hash: String,
}

/// A deterministic book of `trades` trades among `households` households
/// (the first half sell, the rest buy), each household on several trades,
/// as a step-curve auction produces.
pub fn synthetic_trades(trades: usize, households: usize) -> Vec<Trade> {
    let households = households.max(2);
    let sellers = households / 2;
    let buyers = households - sellers;
    (0..trades)
        .map(|i| {
            let s = i % sellers;
            let b = (i * 7 + 3) % buyers;
            Trade {
                buyer: hh(sellers + b),
                seller: hh(s),
                buy_order: format!("{}-{}", hh(sellers + b), i + 1).into(),
                sell_order: format!("{}-{}", hh(s), i + 1).into(),
                quantity_wh: WattHours(100 + (i as u64 * 37) % 400),
                price: MicroPerKwh(150_000 + (i as u64 % 7) * 1_000),
                buyer_price: MicroPerKwh(160_000 + (i as u64 % 7) * 1_000),
            }
        })
        .collect()
}

fn hh(i: usize) -> HouseholdId {
    // Always a valid id: letters and digits only.
    HouseholdId::new(format!("h{i:04}")).unwrap_or_else(|_| unreachable!("h + digits is valid"))
}

/// The on-chain account of synthetic household `id`.
pub fn account_of(id: &HouseholdId) -> Address {
    Address::from_slice(&keccak256(id.as_str().as_bytes())[12..])
}

/// Runs the benchmark on `chain`, with `admin` deploying and funding and
/// `settler` settling (two funded keys of the node).
pub async fn settlement_gas(
    chain: &Chain,
    admin: &PrivateKeySigner,
    settler: &PrivateKeySigner,
    trades: usize,
    households: usize,
) -> Result<GasReport, EvmError> {
    let d: Deployment = deploy(chain, admin, None, settler.address(), admin.address()).await?;
    let book = synthetic_trades(trades, households);
    let mut deliveries = BTreeMap::new();
    for t in &book {
        deliveries
            .entry(t.seller.clone())
            .or_insert_with(|| Delivery {
                has_data: true,
                ..Delivery::default()
            })
            .export_wh += t.quantity_wh;
        deliveries
            .entry(t.buyer.clone())
            .or_insert_with(|| Delivery {
                has_data: true,
                ..Delivery::default()
            })
            .import_wh += t.quantity_wh;
    }
    let params = AuctionParams::default();
    let rec = reconcile(&book, &deliveries, &params);
    let utility = Address::repeat_byte(0xee);
    let mut accounts: Vec<Address> = rec
        .transfers
        .iter()
        .map(|t| account_of(&t.household))
        .collect();
    accounts.push(utility);
    // Every account already holds a deposit and a registry index, as in
    // steady operation: registering an account (three fresh slots) happens
    // once, in the first batch that names it, not per interval. A first
    // batch without entries registers them all.
    fund_test_accounts(chain, admin, &d, &accounts, 1_000_000_000).await?;
    let grid = GridId::new("bench").map_err(|e| EvmError::Config(e.to_string()))?;
    let h = |tag: &str| Hash32(keccak256(tag.as_bytes()).0);
    let batch = SettlementBatch {
        grid: grid.clone(),
        interval: IntervalId(1_750_000_500_000),
        prev_hash: h("prev"),
        orders_root: h("orders"),
        trades_root: h("trades"),
        readings_root: h("readings"),
        transfers: rec.transfers.clone(),
        utility: rec.utility,
    };
    let mut amounts: Vec<(Address, i64)> = rec
        .transfers
        .iter()
        .map(|t| (account_of(&t.household), t.amount.0))
        .collect();
    if batch.utility.0 != 0 {
        amounts.push((utility, batch.utility.0));
    }
    let first = SettlementBatch {
        interval: IntervalId(batch.interval.0 - 900_000),
        transfers: Vec::new(),
        utility: protocol::Micros(0),
        ..batch.clone()
    };
    let warm = SettleInput {
        entries: Default::default(),
        count: 0,
        ..plan_input(chain, d.contract, &amounts, &[]).await?
    };
    settle_direct(
        chain,
        settler,
        d.contract,
        settle_call(&grid, first.interval, &first, warm),
    )
    .await?;
    let input = plan_input(chain, d.contract, &amounts, &[]).await?;
    if !input.registrations.is_empty() {
        return Err(EvmError::Node(
            "benchmark accounts were not registered".into(),
        ));
    }
    let call = settle_call(&grid, batch.interval, &batch, input);
    let calldata_bytes = call.abi_encode().len();
    let receipt = settle_direct(chain, settler, d.contract, call).await?;
    let err = |e: alloy::contract::Error| EvmError::Node(e.to_string());
    let perr = |e: alloy::providers::PendingTransactionError| EvmError::Node(e.to_string());
    // Reference: one ERC-20 transfer between two holders.
    let t = TestToken::new(d.token, chain.operator(admin)?);
    t.mint(admin.address(), U256::from(10u64))
        .send()
        .await
        .map_err(err)?
        .get_receipt()
        .await
        .map_err(perr)?;
    let erc20 = t
        .transfer(settler.address(), U256::from(1u64))
        .send()
        .await
        .map_err(err)?
        .get_receipt()
        .await
        .map_err(perr)?;
    let n = trades.max(1) as u64;
    Ok(GasReport {
        trades,
        households: rec.transfers.len(),
        accounts: accounts.len(),
        gas_used: receipt.gas_used,
        gas_per_trade: receipt.gas_used / n,
        gas_per_household: receipt.gas_used / (rec.transfers.len().max(1) as u64),
        calldata_bytes,
        erc20_transfer_gas: erc20.gas_used,
        contract: d.contract,
        tx_hash: receipt.transaction_hash.to_string(),
    })
}

/// Sends one `settle` call from `settler` and waits for its receipt; a
/// revert is an error.
async fn settle_direct(
    chain: &Chain,
    settler: &PrivateKeySigner,
    contract: Address,
    call: VoltshareSettlement::settleCall,
) -> Result<alloy::rpc::types::TransactionReceipt, EvmError> {
    let c = VoltshareSettlement::new(contract, chain.operator(settler)?);
    let receipt = c
        .settle(
            call.grid,
            call.interval,
            call.ordersRoot,
            call.tradesRoot,
            call.readingsRoot,
            call.batchHash,
            call.registrations,
            call.entries,
        )
        .send()
        .await
        .map_err(|e| EvmError::Node(e.to_string()))?
        .get_receipt()
        .await
        .map_err(|e| EvmError::Node(e.to_string()))?;
    if !receipt.status() {
        return Err(EvmError::Node("benchmark settle reverted".into()));
    }
    Ok(receipt)
}
