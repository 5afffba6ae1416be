//! The settlement contract's ABI (generated from the committed artifact, so
//! that the Rust side can never drift from what was compiled) and the batch
//! encoding: one packed 32-byte word per account, 32-byte roots.
//!
//! A word is the account's address in bits 96..255, a debit flag in bit 95
//! and the amount's magnitude in bits 0..94. Sign and magnitude rather than two's
//! complement because calldata costs 4 gas per zero byte and 16 per non-zero
//! byte: a small debit in two's complement is eleven 0xff bytes.

use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::SolValue;
use protocol::{GridId, Hash32, IntervalId, SettlementBatch};

// The generated deploy function takes the constructor's arguments plus the
// provider: more than clippy's default of seven.
#[allow(clippy::too_many_arguments)]
mod bindings {
    //! Generated from the committed artifact.
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        VoltshareSettlement,
        "../deploy/contracts/artifacts/VoltshareSettlement.json"
    );
}
pub use bindings::VoltshareSettlement;

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TestToken,
    "../deploy/contracts/artifacts/TestToken.json"
);

/// The debit flag of an entry word.
const DEBIT: u128 = 1 << 95;

/// The on-chain name of a grid: keccak-256 of its id.
pub fn grid_word(grid: &GridId) -> B256 {
    keccak256(grid.as_str().as_bytes())
}

/// A protocol hash as a 32-byte word.
pub fn word(h: &Hash32) -> B256 {
    B256::from(h.0)
}

/// Packs an account and a signed amount (micro-units) into one word.
pub fn entry_word(account: Address, amount: i64) -> B256 {
    let mut w = [0u8; 32];
    w[..20].copy_from_slice(account.as_slice());
    let mut low = u128::from(amount.unsigned_abs());
    if amount < 0 {
        low |= DEBIT;
    }
    w[20..].copy_from_slice(&low.to_be_bytes()[4..]);
    B256::from(w)
}

/// Unpacks a word (the inverse of [`entry_word`]).
pub fn parse_entry(w: &B256) -> (Address, i128) {
    let account = Address::from_slice(&w[..20]);
    let mut low = [0u8; 16];
    low[4..].copy_from_slice(&w[20..]);
    let low = u128::from_be_bytes(low);
    let magnitude = i128::try_from(low & (DEBIT - 1)).unwrap_or(i128::MAX);
    let amount = if low & DEBIT != 0 {
        -magnitude
    } else {
        magnitude
    };
    (account, amount)
}

/// What `batchDigest(grid, interval)` holds once a batch with these roots is
/// settled (the contract's `digestOf`).
pub fn digest_of(orders: B256, trades: B256, readings: B256, batch_hash: B256) -> B256 {
    keccak256((orders, trades, readings, batch_hash).abi_encode())
}

/// The digest the contract stores for `batch`.
pub fn batch_digest(batch: &SettlementBatch) -> B256 {
    digest_of(
        word(&batch.orders_root),
        word(&batch.trades_root),
        word(&batch.readings_root),
        word(&batch.hash()),
    )
}

/// The `settle` call of a batch, given each account's on-chain address
/// (households in the batch's order, then the utility if its net is not
/// zero).
pub fn settle_call(
    grid: &GridId,
    interval: IntervalId,
    batch: &SettlementBatch,
    entries: Vec<B256>,
) -> VoltshareSettlement::settleCall {
    VoltshareSettlement::settleCall {
        grid: grid_word(grid),
        interval: interval.0,
        ordersRoot: word(&batch.orders_root),
        tradesRoot: word(&batch.trades_root),
        readingsRoot: word(&batch.readings_root),
        batchHash: word(&batch.hash()),
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_words_round_trip_and_stay_small() {
        let a = Address::repeat_byte(0x11);
        for amount in [
            0i64,
            1,
            -1,
            123_456_789,
            -987_654_321,
            i64::MAX,
            i64::MIN + 1,
        ] {
            let w = entry_word(a, amount);
            assert_eq!(parse_entry(&w), (a, i128::from(amount)), "{amount}");
        }
        // A small debit costs one extra non-zero byte, not eleven.
        let w = entry_word(a, -5);
        assert_eq!(w[20..].iter().filter(|b| **b != 0).count(), 2);
    }

    #[test]
    fn digest_matches_abi_encoding_of_four_words() {
        let (o, t, r, b) = (
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            B256::repeat_byte(3),
            B256::repeat_byte(4),
        );
        let mut bytes = Vec::new();
        for w in [o, t, r, b] {
            bytes.extend_from_slice(w.as_slice());
        }
        assert_eq!(digest_of(o, t, r, b), keccak256(bytes));
    }
}
