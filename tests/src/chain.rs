//! A real Anvil chain for the fault tests that settle on chain: the
//! contracts deployed from the committed artifact, the households' accounts
//! funded, the settler's key in a file, and a TCP proxy in front of the RPC
//! endpoint that can be cut (the node unreachable) and restored.

use clearing::evm::alloy::node_bindings::{Anvil, AnvilInstance};
use clearing::evm::alloy::primitives::Address;
use clearing::evm::chain::Chain;
use clearing::evm::{ANVIL_KEYS, Deployment, EvmSettings, fund_test_accounts, key_from_hex};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Anvil, the deployed contracts, the settler key file.
pub struct ChainSetup {
    _anvil: AnvilInstance,
    pub endpoint: String,
    pub port: u16,
    pub deployment: Deployment,
    pub settler_key_file: PathBuf,
}

impl std::fmt::Debug for ChainSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSetup")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The settlement account of household `i` on chain.
pub fn account(i: usize) -> Address {
    Address::repeat_byte(u8::try_from(0x10 + i).expect("small"))
}

/// The utility's account.
pub fn utility() -> Address {
    Address::repeat_byte(0xee)
}

/// Starts Anvil (a block every second, so that confirmations accrue on the
/// real clock), deploys the contracts, funds `households` accounts and
/// writes the settler's key to `dir/settler.key`.
pub async fn setup(dir: &Path, households: usize) -> ChainSetup {
    let path = clearing::evm::anvil_path().expect(
        "Anvil is missing: run scripts/setup.d/20-contracts.sh (npm ci in deploy/contracts)",
    );
    let anvil = Anvil::at(path).args(["--block-time", "1"]).spawn();
    let endpoint = anvil.endpoint();
    let port = anvil.port();
    let chain = Chain::http(&endpoint, Duration::from_secs(5)).expect("rpc url");
    let admin = key_from_hex(ANVIL_KEYS[0]).expect("dev key");
    let settler = key_from_hex(ANVIL_KEYS[1]).expect("dev key");
    let deployment =
        clearing::evm::deploy(&chain, &admin, None, settler.address(), admin.address())
            .await
            .expect("deploy");
    let accounts: Vec<Address> = (0..households).map(account).collect();
    fund_test_accounts(&chain, &admin, &deployment, &accounts, 1_000_000_000)
        .await
        .expect("deposits");
    let settler_key_file = dir.join("settler.key");
    std::fs::write(&settler_key_file, ANVIL_KEYS[1]).expect("settler key file");
    ChainSetup {
        _anvil: anvil,
        endpoint,
        port,
        deployment,
        settler_key_file,
    }
}

impl ChainSetup {
    /// The engine's `evm` settings for this chain, through `rpc_url`.
    pub fn settings(&self, rpc_url: &str) -> EvmSettings {
        let mut evm = EvmSettings::new(
            rpc_url,
            self.deployment.chain_id,
            self.deployment.contract,
            self.settler_key_file.clone(),
            utility(),
        );
        evm.confirmations = 1;
        evm.rpc_timeout_ms = 1_000;
        evm
    }

    /// A client of the chain (directly, not through a proxy).
    pub fn client(&self) -> Chain {
        Chain::http(&self.endpoint, Duration::from_secs(5)).expect("rpc url")
    }
}

/// A TCP proxy on a fixed loopback port in front of `127.0.0.1:target`.
/// [`Proxy::cut`] closes the listener and every open connection (the node
/// is unreachable: connections are refused); [`Proxy::restore`] listens on
/// the same port again.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut p = Proxy {
            port,
            target,
            task: None,
        };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection's task, which closes both sockets.
            let mut open = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                open.spawn(async move {
                    let Ok(mut node) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                });
                while open.try_join_next().is_some() {}
            }
        }));
    }

    /// The endpoint through the proxy.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes the node unreachable.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Makes it reachable again, on the same port.
    pub async fn restore(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let watch = protocol::Stopwatch::start();
        loop {
            match socket.bind(([127, 0, 0, 1], self.port).into()) {
                Ok(()) => break,
                Err(e) if watch.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding the proxy on port {}: {e}", self.port),
            }
        }
        let listener = socket.listen(64).expect("listen");
        self.serve(listener);
    }
}

/// The chain's set of batches against the database's.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChainComparison {
    pub batches_in_database: u64,
    /// Settlement rows by status (`pending`, `submitted`, `confirmed`, `final`).
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Batches whose digest on chain differs from the stored batch's.
    pub digest_mismatches: u64,
    /// Cleared intervals without a batch in the database that have one on
    /// chain.
    pub batches_on_chain_not_in_database: u64,
}

impl ChainSetup {
    /// Compares every stored batch with the digest the contract holds for
    /// its interval, and checks that no other cleared interval has one.
    pub async fn compare(
        &self,
        pool: &sqlx::SqlitePool,
        grid: &protocol::GridId,
    ) -> ChainComparison {
        use clearing::evm::contract::{batch_digest, grid_word};
        let rpc = self.client();
        let word = grid_word(grid);
        let digest = |interval: i64| {
            let rpc = rpc.clone();
            let contract = self.deployment.contract;
            async move {
                rpc.batch_digest(contract, word, u64::try_from(interval).expect("interval"))
                    .await
                    .expect("reading a batch digest from the contract")
            }
        };
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT interval_start, batch_json, status FROM settlements ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .expect("settlements");
        let mut c = ChainComparison {
            batches_in_database: rows.len() as u64,
            ..Default::default()
        };
        for (interval, json, status) in &rows {
            *c.statuses.entry(status.clone()).or_insert(0) += 1;
            let batch: protocol::SettlementBatch =
                serde_json::from_str(json).expect("stored batch");
            c.digest_mismatches += u64::from(digest(*interval).await != batch_digest(&batch));
        }
        let settled: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
        let cleared: Vec<i64> = sqlx::query_scalar("SELECT interval_start FROM intervals")
            .fetch_all(pool)
            .await
            .expect("intervals");
        for s in cleared.iter().filter(|s| !settled.contains(s)) {
            c.batches_on_chain_not_in_database += u64::from(!digest(*s).await.is_zero());
        }
        c
    }
}

/// Waits until no settlement is `pending` or `submitted` (real seconds).
pub async fn wait_all_confirmed(pool: &sqlx::SqlitePool, secs: u64) {
    crate::util::wait_for(
        "every recorded batch to be confirmed on chain",
        Duration::from_secs(secs),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM settlements WHERE status IN ('pending', 'submitted')",
            )
            .fetch_one(pool)
            .await
            .ok()?;
            (open == 0).then_some(())
        },
    )
    .await;
}
