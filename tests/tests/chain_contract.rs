//! Tests of the Solidity settlement contract itself, on a real Anvil with the
//! committed artifact: the artifact is what the pinned solc-js compiles the
//! sources to; deposits, one-transaction settlement with an event per
//! account, the refusal of a repeated or unbalanced batch, settler-only
//! settlement, pausing, withdrawals; and the gas goal.

mod chain_common;

use chain_common::*;
use clearing::evm::alloy::primitives::{Address, B256, U256};
use clearing::evm::alloy::providers::Provider;
use clearing::evm::alloy::sol_types::{SolCall, SolEvent};
use clearing::evm::contract::{
    SettleInput, TestToken, VoltshareSettlement, digest_of, encode_entries, plan_input,
    registration_word,
};
use clearing::evm::{EvmError, is_already_settled};
use std::process::Command;

#[test]
fn artifact_is_what_the_sources_compile_to() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/contracts");
    let out = Command::new("node")
        .arg("compile.js")
        .arg("--check")
        .current_dir(&dir)
        .output()
        .expect("node is missing: run scripts/setup.d/20-contracts.sh");
    assert!(
        out.status.success(),
        "committed artifact differs from a fresh solc-js compile (or solc is missing: run scripts/setup.d/20-contracts.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn call(grid: B256, interval: u64, input: SettleInput) -> VoltshareSettlement::settleCall {
    VoltshareSettlement::settleCall {
        grid,
        interval,
        ordersRoot: B256::repeat_byte(1),
        tradesRoot: B256::repeat_byte(2),
        readingsRoot: B256::repeat_byte(3),
        batchHash: B256::repeat_byte(4),
        registrations: input.registrations,
        entries: input.entries,
    }
}

/// Entries by registry index, registering nothing.
fn by_index(entries: &[(u16, i64)]) -> SettleInput {
    SettleInput {
        registrations: Vec::new(),
        entries: encode_entries(entries).expect("fits"),
        count: entries.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_settles_once_per_interval_and_guards_its_roles() {
    let anvil = anvil(&[]);
    let chain = chain(&anvil);
    let d = deploy_all(&chain).await;
    // Two households that hold keys on Anvil (so they can withdraw).
    let (a, b) = (dev_key(2), dev_key(3));
    clearing::evm::fund_test_accounts(&chain, &dev_key(0), &d, &[a.address(), b.address()], 1_000)
        .await
        .expect("deposits");
    assert_eq!(
        chain
            .balance_of(d.contract, a.address())
            .await
            .expect("bal"),
        1_000
    );

    let settler = chain.operator(&dev_key(1)).expect("provider");
    let c = VoltshareSettlement::new(d.contract, settler.clone());
    let grid = B256::repeat_byte(0x61);
    let util = utility();
    // a receives 300, b pays 350, the utility gets 50: sums to zero. The
    // batch registers all three (indexes 0, 1, 2: a and b share a slot).
    let planned = plan_input(
        &chain,
        d.contract,
        &[(a.address(), 300), (b.address(), -350), (util, 50)],
        &[],
    )
    .await
    .expect("plan");
    assert_eq!(planned.registrations.len(), 3);
    assert_eq!(planned.entries.len(), 24, "8 bytes per entry");
    let s = call(grid, 7, planned);
    let receipt = c
        .settle(
            s.grid,
            s.interval,
            s.ordersRoot,
            s.tradesRoot,
            s.readingsRoot,
            s.batchHash,
            s.registrations.clone(),
            s.entries.clone(),
        )
        .send()
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(receipt.status(), "settle succeeds");
    // One Settled event per account, one BatchSettled.
    let settled: Vec<_> = receipt
        .inner
        .logs()
        .iter()
        .filter_map(|l| VoltshareSettlement::Settled::decode_log(&l.inner).ok())
        .collect();
    assert_eq!(settled.len(), 3);
    assert_eq!(settled[1].account, U256::from(1u64));
    let reg = VoltshareSettlement::new(d.contract, chain.provider());
    assert_eq!(
        reg.accountAt(U256::from(1u64)).call().await.expect("at"),
        b.address()
    );
    assert_eq!(
        reg.accountCount().call().await.expect("count"),
        U256::from(3u64)
    );
    assert_eq!(
        settled[1].amount,
        clearing::evm::alloy::primitives::I256::try_from(-350).expect("i256")
    );
    let batch_events = receipt
        .inner
        .logs()
        .iter()
        .filter(|l| l.topic0() == Some(&VoltshareSettlement::BatchSettled::SIGNATURE_HASH))
        .count();
    assert_eq!(batch_events, 1);
    assert_eq!(
        chain
            .balance_of(d.contract, a.address())
            .await
            .expect("bal"),
        1_300
    );
    assert_eq!(
        chain
            .balance_of(d.contract, b.address())
            .await
            .expect("bal"),
        650
    );
    assert_eq!(chain.balance_of(d.contract, util).await.expect("bal"), 50);
    assert_eq!(
        chain
            .batch_digest(d.contract, grid, 7)
            .await
            .expect("digest"),
        digest_of(s.ordersRoot, s.tradesRoot, s.readingsRoot, s.batchHash)
    );

    // The same batch again: refused in simulation and when mined.
    let err = chain
        .call(dev_key(1).address(), d.contract, s.abi_encode().into())
        .await
        .expect_err("a repeated batch reverts");
    match &err {
        EvmError::Reverted { data, .. } => assert!(is_already_settled(data.as_ref()), "{err:?}"),
        other => panic!("expected a revert, got {other:?}"),
    }
    let again = c
        .settle(
            s.grid,
            s.interval,
            s.ordersRoot,
            s.tradesRoot,
            s.readingsRoot,
            s.batchHash,
            s.registrations.clone(),
            s.entries.clone(),
        )
        .gas(300_000)
        .send()
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(!again.status(), "a repeated batch reverts on chain");
    assert_eq!(
        chain
            .balance_of(d.contract, a.address())
            .await
            .expect("bal"),
        1_300,
        "not paid twice"
    );
    // The same interval of another grid is a different batch.
    let other = call(B256::repeat_byte(0x62), 7, by_index(&[(0, 1), (1, -1)]));
    chain
        .call(dev_key(1).address(), d.contract, other.abi_encode().into())
        .await
        .expect("other grid settles");

    // Unbalanced: refused.
    let unbalanced = call(grid, 8, by_index(&[(0, 10), (1, -9)]));
    assert!(matches!(
        chain
            .call(
                dev_key(1).address(),
                d.contract,
                unbalanced.abi_encode().into()
            )
            .await,
        Err(EvmError::Reverted { .. })
    ));
    // An index no account holds, a registration out of order, or one of an
    // account already registered: refused, never booked to the wrong
    // account.
    for bad in [
        by_index(&[(0, 1), (3, -1)]),
        SettleInput {
            registrations: vec![registration_word(4, Address::repeat_byte(9))],
            ..by_index(&[])
        },
        SettleInput {
            registrations: vec![registration_word(3, a.address())],
            ..by_index(&[])
        },
    ] {
        assert!(matches!(
            chain
                .call(
                    dev_key(1).address(),
                    d.contract,
                    call(grid, 8, bad).abi_encode().into()
                )
                .await,
            Err(EvmError::Reverted { .. })
        ));
    }
    // A new account at the next index works (naming a registered one at
    // its own index again is a no-op), and a deposit made before its
    // registration moves into its balance.
    let late = Address::repeat_byte(0x42);
    clearing::evm::fund_test_accounts(&chain, &dev_key(0), &d, &[late], 70)
        .await
        .expect("deposit");
    assert_eq!(chain.balance_of(d.contract, late).await.expect("bal"), 70);
    let with_late = SettleInput {
        registrations: vec![
            registration_word(0, a.address()),
            registration_word(3, late),
        ],
        ..by_index(&[(3, -100), (2, 100)])
    };
    let l = call(grid, 9, with_late);
    let r = c
        .settle(
            l.grid,
            l.interval,
            l.ordersRoot,
            l.tradesRoot,
            l.readingsRoot,
            l.batchHash,
            l.registrations,
            l.entries,
        )
        .send()
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(r.status(), "registers and settles");
    assert_eq!(chain.balance_of(d.contract, late).await.expect("bal"), -30);
    assert_eq!(chain.balance_of(d.contract, util).await.expect("bal"), 150);
    // Only the settler may settle.
    let s8 = call(grid, 8, by_index(&[(0, 300), (1, -350), (2, 50)]));
    assert!(matches!(
        chain
            .call(a.address(), d.contract, s8.abi_encode().into())
            .await,
        Err(EvmError::Reverted { .. })
    ));
    // Only the pauser may pause; paused, nothing settles; unpaused, it does.
    let as_a = VoltshareSettlement::new(d.contract, chain.operator(&a).expect("p"));
    assert!(
        as_a.pause().send().await.is_err(),
        "a household cannot pause"
    );
    let op = VoltshareSettlement::new(d.contract, chain.operator(&dev_key(0)).expect("p"));
    op.pause()
        .send()
        .await
        .expect("pause")
        .get_receipt()
        .await
        .expect("paused");
    assert!(matches!(
        chain
            .call(dev_key(1).address(), d.contract, s8.abi_encode().into())
            .await,
        Err(EvmError::Reverted { .. })
    ));
    op.unpause()
        .send()
        .await
        .expect("unpause")
        .get_receipt()
        .await
        .expect("unpaused");
    chain
        .call(dev_key(1).address(), d.contract, s8.abi_encode().into())
        .await
        .expect("settles again");

    // Withdrawals: up to the positive balance, in tokens. A fresh provider:
    // the refused `pause` above may have taken a nonce in the old one's
    // cache (alloy fills nonce and gas concurrently), and a transaction
    // behind that gap would never be mined.
    let as_a = VoltshareSettlement::new(d.contract, chain.operator(&a).expect("p"));
    let before = chain
        .token_balance(d.token, a.address())
        .await
        .expect("tokens");
    as_a.withdraw(U256::from(1_300u64))
        .send()
        .await
        .expect("withdraw")
        .get_receipt()
        .await
        .expect("mined");
    assert_eq!(
        chain
            .token_balance(d.token, a.address())
            .await
            .expect("tokens"),
        before + U256::from(1_300u64)
    );
    assert_eq!(
        chain
            .balance_of(d.contract, a.address())
            .await
            .expect("bal"),
        0
    );
    assert!(
        as_a.withdraw(U256::from(1u64)).call().await.is_err(),
        "nothing left to withdraw"
    );
    // The token's own contract is an ordinary ERC-20.
    let token = TestToken::new(d.token, chain.provider());
    assert_eq!(token.decimals().call().await.expect("decimals"), 6);
    let _ = chain.provider().get_block_number().await.expect("alive");
    let _: Address = d.contract;
}

/// The gas goal: at most 2,000 gas per trade at 100 trades in an interval,
/// met with 16 and 20 households (6 and 5 trades per household). Net
/// amounts, not trades, go on-chain, so fewer trades per household cost
/// more per trade: with 30 households (3⅓ trades each) it is about 6 %
/// above the goal, and this test pins that figure so that a regression
/// shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gas_per_trade_at_100_trades() {
    let anvil = anvil(&[]);
    let chain = chain(&anvil);
    for (households, bound) in [(16, 2_000), (20, 2_000), (30, 2_150)] {
        let report =
            clearing::evm::bench::settlement_gas(&chain, &dev_key(0), &dev_key(1), 100, households)
                .await
                .expect("bench");
        println!("{}", serde_json::to_string(&report).expect("json"));
        assert_eq!(report.trades, 100);
        assert_eq!(report.households, households);
        assert!(report.gas_per_trade <= bound, "{report:?}");
        assert!(
            report.gas_per_trade * 17 < report.erc20_transfer_gas,
            "far below a transfer per trade"
        );
    }
}
