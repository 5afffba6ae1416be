//! A thin client of one EVM node's JSON-RPC: every call has a timeout, and
//! errors say whether the node answered (a revert, a refused transaction) or
//! could not be reached (retry later). Signing is local; the node only ever
//! sees signed bytes.

use super::EvmError;
use super::contract::{TestToken, VoltshareSettlement};
use alloy::consensus::TxEnvelope;
use alloy::eips::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::{Filter, Log, TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use std::future::Future;
use std::time::Duration;

/// A connection to one node.
#[derive(Debug, Clone)]
pub struct Chain {
    provider: RootProvider,
    timeout: Duration,
    url: String,
}

/// A transaction signed locally: its hash and the exact bytes to broadcast.
#[derive(Debug, Clone)]
pub struct SignedTx {
    pub hash: B256,
    pub raw: Vec<u8>,
}

/// What the node said to a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// Accepted into the pool (or it already had it).
    Accepted,
    /// The nonce is already used on chain.
    NonceTooLow,
    /// Refused for another reason (the node's message).
    Refused(String),
}

/// Fees for one transaction, in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// EIP-1559 max fee, or the legacy gas price.
    pub max_fee: u128,
    /// EIP-1559 priority fee (0 for legacy).
    pub priority_fee: u128,
}

fn rpc_err(e: RpcError<TransportErrorKind>) -> EvmError {
    match e.as_error_resp() {
        Some(p) => EvmError::Node(p.message.to_string()),
        None => EvmError::Unreachable(e.to_string()),
    }
}

impl Chain {
    /// A client of the node at `url` (http only: see the workspace's TLS note).
    pub fn http(url: &str, timeout: Duration) -> Result<Chain, EvmError> {
        let parsed = url
            .parse()
            .map_err(|e| EvmError::Config(format!("rpc url {url:?}: {e}")))?;
        Ok(Chain {
            provider: RootProvider::new_http(parsed),
            timeout,
            url: url.to_owned(),
        })
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying provider (for contract bindings).
    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    async fn rpc<T, F>(&self, f: F) -> Result<T, EvmError>
    where
        F: Future<Output = Result<T, RpcError<TransportErrorKind>>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(rpc_err),
            Err(_) => Err(EvmError::Unreachable(format!(
                "{} did not answer within {:?}",
                self.url, self.timeout
            ))),
        }
    }

    pub async fn chain_id(&self) -> Result<u64, EvmError> {
        self.rpc(async { self.provider.get_chain_id().await }).await
    }

    pub async fn block_number(&self) -> Result<u64, EvmError> {
        self.rpc(async { self.provider.get_block_number().await })
            .await
    }

    /// The account's nonce as of the latest block (transactions mined).
    pub async fn mined_nonce(&self, who: Address) -> Result<u64, EvmError> {
        self.rpc(async { self.provider.get_transaction_count(who).latest().await })
            .await
    }

    /// Current fees: EIP-1559 estimate, or the legacy gas price.
    pub async fn fees(&self, legacy: bool) -> Result<Fees, EvmError> {
        if legacy {
            let p = self
                .rpc(async { self.provider.get_gas_price().await })
                .await?;
            return Ok(Fees {
                max_fee: p,
                priority_fee: 0,
            });
        }
        let e = self
            .rpc(async { self.provider.estimate_eip1559_fees().await })
            .await?;
        Ok(Fees {
            max_fee: e.max_fee_per_gas,
            priority_fee: e.max_priority_fee_per_gas,
        })
    }

    /// Broadcasts signed bytes.
    pub async fn broadcast(&self, raw: &[u8]) -> Result<Broadcast, EvmError> {
        let r = tokio::time::timeout(self.timeout, self.provider.send_raw_transaction(raw)).await;
        match r {
            Err(_) => Err(EvmError::Unreachable(format!(
                "{} did not answer within {:?}",
                self.url, self.timeout
            ))),
            Ok(Ok(_)) => Ok(Broadcast::Accepted),
            Ok(Err(e)) => match e.as_error_resp() {
                None => Err(EvmError::Unreachable(e.to_string())),
                Some(p) => {
                    let m = p.message.to_lowercase();
                    // Node wording differs (geth, Nethermind, Besu, Anvil);
                    // these cover the ones we run against.
                    if m.contains("already known")
                        || m.contains("alreadyknown")
                        || m.contains("known transaction")
                        || m.contains("already imported")
                    {
                        Ok(Broadcast::Accepted)
                    } else if m.contains("nonce too low") || m.contains("noncetoolow") {
                        Ok(Broadcast::NonceTooLow)
                    } else {
                        Ok(Broadcast::Refused(p.message.to_string()))
                    }
                }
            },
        }
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, EvmError> {
        self.rpc(async { self.provider.get_transaction_receipt(hash).await })
            .await
    }

    /// Whether the node knows the transaction at all (pool or chain).
    pub async fn knows(&self, hash: B256) -> Result<bool, EvmError> {
        Ok(self
            .rpc(async { self.provider.get_transaction_by_hash(hash).await })
            .await?
            .is_some())
    }

    /// The hash of the canonical block at `number`, if it exists.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, EvmError> {
        let b = self
            .rpc(async { self.provider.get_block_by_number(number.into()).await })
            .await?;
        Ok(b.map(|b| b.header.hash))
    }

    pub async fn logs(&self, filter: &Filter) -> Result<Vec<Log>, EvmError> {
        self.rpc(async { self.provider.get_logs(filter).await })
            .await
    }

    /// `eth_call` of `input` on `to` from `from`; `Err(Node)` carries a revert.
    pub async fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes, EvmError> {
        let tx = TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(input);
        match tokio::time::timeout(self.timeout, self.provider.call(tx)).await {
            Err(_) => Err(EvmError::Unreachable(format!("{} timed out", self.url))),
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => match e.as_error_resp() {
                Some(p) => Err(EvmError::Reverted {
                    message: p.message.to_string(),
                    data: p.as_revert_data(),
                }),
                None => Err(EvmError::Unreachable(e.to_string())),
            },
        }
    }

    /// A household's (or the utility's) balance in the contract.
    pub async fn balance_of(&self, contract: Address, who: Address) -> Result<i128, EvmError> {
        let c = VoltshareSettlement::new(contract, &self.provider);
        let v = self
            .rpc(async { c.balanceOf(who).call().await.map_err(contract_err) })
            .await?;
        i128::try_from(v).map_err(|_| EvmError::Node(format!("balance {v} out of range")))
    }

    /// The registry index of each account (`None`: not registered) and the
    /// next free index.
    pub async fn account_indexes(
        &self,
        contract: Address,
        accounts: Vec<Address>,
    ) -> Result<(u64, Vec<Option<u16>>), EvmError> {
        let c = VoltshareSettlement::new(contract, &self.provider);
        let r = self
            .rpc(async { c.indexesOf(accounts).call().await.map_err(contract_err) })
            .await?;
        let bad = |v: &U256| EvmError::Node(format!("registry index {v} out of range"));
        let next = u64::try_from(r.next).map_err(|_| bad(&r.next))?;
        let known = r
            .indexPlusOne
            .iter()
            .map(|p| match u32::try_from(*p) {
                Ok(0) => Ok(None),
                Ok(q) => u16::try_from(q - 1).map(Some).map_err(|_| bad(p)),
                Err(_) => Err(bad(p)),
            })
            .collect::<Result<_, _>>()?;
        Ok((next, known))
    }

    /// The stored digest of (grid, interval); zero if none.
    pub async fn batch_digest(
        &self,
        contract: Address,
        grid: B256,
        interval: u64,
    ) -> Result<B256, EvmError> {
        let c = VoltshareSettlement::new(contract, &self.provider);
        self.rpc(async {
            c.batchDigest(grid, interval)
                .call()
                .await
                .map_err(contract_err)
        })
        .await
    }

    /// An ERC-20 balance.
    pub async fn token_balance(&self, token: Address, who: Address) -> Result<U256, EvmError> {
        let t = TestToken::new(token, &self.provider);
        self.rpc(async { t.balanceOf(who).call().await.map_err(contract_err) })
            .await
    }

    /// A raw JSON-RPC request (Anvil's test methods, for instance).
    pub async fn raw(
        &self,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, EvmError> {
        self.rpc(async { self.provider.raw_request(method.into(), params).await })
            .await
    }

    /// A provider that signs with `key` and fills nonce, gas and fees by
    /// itself: for one-off operator actions (deploy, deposits), never for
    /// settlement, whose nonces the backend manages.
    pub fn operator(
        &self,
        key: &PrivateKeySigner,
    ) -> Result<impl Provider + Clone + use<>, EvmError> {
        let url = self
            .url
            .parse()
            .map_err(|e| EvmError::Config(format!("rpc url: {e}")))?;
        Ok(ProviderBuilder::new()
            .wallet(EthereumWallet::from(key.clone()))
            .connect_http(url))
    }
}

/// Maps a contract-binding error to ours, keeping revert data.
pub fn contract_err(e: alloy::contract::Error) -> RpcError<TransportErrorKind> {
    match e {
        alloy::contract::Error::TransportError(t) => t,
        other => RpcError::Transport(TransportErrorKind::Custom(other.to_string().into())),
    }
}

/// Signs a transaction request locally.
pub async fn sign(wallet: &EthereumWallet, req: TransactionRequest) -> Result<SignedTx, EvmError> {
    let env: TxEnvelope = req
        .build(wallet)
        .await
        .map_err(|e| EvmError::Sign(e.to_string()))?;
    Ok(SignedTx {
        hash: *env.tx_hash(),
        raw: env.encoded_2718(),
    })
}
