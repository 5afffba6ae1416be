//! The settlement contract's ABI (generated from the committed artifact, so
//! that the Rust side can never drift from what was compiled) and the batch
//! encoding: accounts by their index in the contract's registry (new ones
//! registered by the batch that first names them), 8 bytes per entry,
//! 32-byte roots. See the contract's header for why.

use super::EvmError;
use super::chain::Chain;
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::sol_types::SolValue;
use protocol::{GridId, Hash32, IntervalId, SettlementBatch};
use std::collections::BTreeMap;

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

/// The debit flag of an entry (bit 47 of its 64 bits).
const DEBIT: u64 = 1 << 47;
/// The largest magnitude an entry carries: 47 bits of micro-units (about
/// 140 million currency units, per household and interval).
pub const MAX_ENTRY_AMOUNT: u64 = DEBIT - 1;

/// The on-chain name of a grid: keccak-256 of its id.
pub fn grid_word(grid: &GridId) -> B256 {
    keccak256(grid.as_str().as_bytes())
}

/// A protocol hash as a 32-byte word.
pub fn word(h: &Hash32) -> B256 {
    B256::from(h.0)
}

/// Refuses an amount that does not fit an entry (named for the error).
pub fn check_amount(who: &str, amount: i64) -> Result<(), EvmError> {
    if amount.unsigned_abs() > MAX_ENTRY_AMOUNT {
        return Err(EvmError::Config(format!(
            "net amount {amount} of {who} exceeds the {MAX_ENTRY_AMOUNT} micro-units an on-chain entry holds"
        )));
    }
    Ok(())
}

/// One entry: registry index in bits 48..63, debit flag in bit 47,
/// magnitude below; 8 bytes big-endian. Sign and magnitude rather than two's
/// complement because calldata costs 4 gas per zero byte and 16 per non-zero
/// byte: a small debit in two's complement is six 0xff bytes.
pub fn entry_bytes(index: u16, amount: i64) -> Result<[u8; 8], EvmError> {
    check_amount(&format!("account #{index}"), amount)?;
    let mut e = (u64::from(index) << 48) | amount.unsigned_abs();
    if amount < 0 {
        e |= DEBIT;
    }
    Ok(e.to_be_bytes())
}

/// Packs entries into the `entries` argument of `settle`.
pub fn encode_entries(entries: &[(u16, i64)]) -> Result<Bytes, EvmError> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for (i, a) in entries {
        out.extend_from_slice(&entry_bytes(*i, *a)?);
    }
    Ok(Bytes::from(out))
}

/// Unpacks `entries` (the inverse of [`encode_entries`]); `None` if the
/// length is not a multiple of 8.
pub fn parse_entries(bytes: &[u8]) -> Option<Vec<(u16, i64)>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    bytes
        .chunks_exact(8)
        .map(|c| {
            let e = u64::from_be_bytes(c.try_into().ok()?);
            let index = u16::try_from(e >> 48).ok()?;
            let magnitude = i64::try_from(e & MAX_ENTRY_AMOUNT).ok()?;
            Some((
                index,
                if e & DEBIT != 0 {
                    -magnitude
                } else {
                    magnitude
                },
            ))
        })
        .collect()
}

/// A registration word: index in bits 160..175, the account below.
pub fn registration_word(index: u16, account: Address) -> U256 {
    (U256::from(index) << 160) | U256::from_be_slice(account.as_slice())
}

/// The account-dependent arguments of one `settle` call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SettleInput {
    /// Accounts this batch registers, in index order.
    pub registrations: Vec<U256>,
    /// The packed entries.
    pub entries: Bytes,
    /// Number of entries.
    pub count: usize,
}

/// Encodes `accounts` (address and signed amount, in batch order) against
/// the registry as the chain holds it now: known accounts by their index.
/// If any is new, the batch registers every unregistered account of
/// `universe` (the engine's whole account list, in a fixed order) and then
/// the batch's remaining new ones, at the next free indexes: batches
/// planned from the same registry while earlier ones are still in flight
/// thus assign the same indexes, and the contract takes a repeated
/// registration at the same index as a no-op. It refuses a registration
/// whose index is no longer right, so an input planned against a registry
/// that changed otherwise reverts instead of paying the wrong account.
pub async fn plan_input(
    chain: &Chain,
    contract: Address,
    accounts: &[(Address, i64)],
    universe: &[Address],
) -> Result<SettleInput, EvmError> {
    let mut order: Vec<Address> = Vec::with_capacity(universe.len() + accounts.len());
    for a in universe.iter().chain(accounts.iter().map(|(a, _)| a)) {
        if !order.contains(a) {
            order.push(*a);
        }
    }
    let (mut next, known) = chain.account_indexes(contract, order.clone()).await?;
    let mut index: BTreeMap<Address, u16> = order
        .iter()
        .zip(&known)
        .filter_map(|(a, k)| k.map(|k| (*a, k)))
        .collect();
    let mut registrations = Vec::new();
    if accounts.iter().any(|(a, _)| !index.contains_key(a)) {
        for a in &order {
            if index.contains_key(a) {
                continue;
            }
            let i = u16::try_from(next).map_err(|_| {
                EvmError::Config(format!(
                    "the contract's account registry is full ({next} accounts)"
                ))
            })?;
            next += 1;
            registrations.push(registration_word(i, *a));
            index.insert(*a, i);
        }
    }
    let entries: Vec<(u16, i64)> = accounts
        .iter()
        .map(|(a, amount)| {
            index
                .get(a)
                .map(|i| (*i, *amount))
                .ok_or_else(|| EvmError::Config(format!("account {a} has no registry index")))
        })
        .collect::<Result<_, _>>()?;
    Ok(SettleInput {
        registrations,
        count: entries.len(),
        entries: encode_entries(&entries)?,
    })
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

/// The `settle` call of a batch, given its planned [`SettleInput`].
pub fn settle_call(
    grid: &GridId,
    interval: IntervalId,
    batch: &SettlementBatch,
    input: SettleInput,
) -> VoltshareSettlement::settleCall {
    VoltshareSettlement::settleCall {
        grid: grid_word(grid),
        interval: interval.0,
        ordersRoot: word(&batch.orders_root),
        tradesRoot: word(&batch.trades_root),
        readingsRoot: word(&batch.readings_root),
        batchHash: word(&batch.hash()),
        registrations: input.registrations,
        entries: input.entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_stay_small() {
        let amounts = [
            0i64,
            1,
            -1,
            123_456_789,
            -987_654_321,
            MAX_ENTRY_AMOUNT as i64,
            -(MAX_ENTRY_AMOUNT as i64),
        ];
        let entries: Vec<(u16, i64)> = amounts
            .iter()
            .enumerate()
            .map(|(i, a)| (u16::try_from(i * 1000).unwrap_or(u16::MAX), *a))
            .collect();
        let bytes = encode_entries(&entries).expect("fits");
        assert_eq!(bytes.len(), 8 * entries.len());
        assert_eq!(parse_entries(&bytes), Some(entries));
        // A small debit of a low index costs two non-zero bytes, not six.
        let e = entry_bytes(3, -5).expect("fits");
        assert_eq!(e.iter().filter(|b| **b != 0).count(), 3);
        assert_eq!(parse_entries(&[0u8; 7]), None);
    }

    #[test]
    fn an_amount_beyond_47_bits_is_refused_by_name() {
        let err = entry_bytes(1, 1i64 << 47).expect_err("too large");
        assert!(err.to_string().contains("account #1"), "{err}");
        assert!(check_amount("h1", -(1i64 << 47)).is_err());
        assert!(check_amount("h1", i64::MIN).is_err());
    }

    #[test]
    fn registration_word_puts_the_index_above_the_address() {
        let a = Address::repeat_byte(0x11);
        let w = registration_word(7, a).to_be_bytes::<32>();
        assert_eq!(&w[12..], a.as_slice());
        assert_eq!(&w[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
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
