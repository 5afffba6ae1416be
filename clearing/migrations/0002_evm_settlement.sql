-- The EVM settlement backend. A batch is first recorded in the hash chain
-- (`settlements`, status 'pending'); the backend then carries it on-chain and
-- moves its status through 'submitted', 'confirmed' and 'final'.

-- Which backend carries the row ('ledger' rows are final when written), and
-- where on the chain the batch was included (to notice a reorg).
ALTER TABLE settlements ADD COLUMN backend TEXT NOT NULL DEFAULT 'ledger';
ALTER TABLE settlements ADD COLUMN block_number INTEGER;
ALTER TABLE settlements ADD COLUMN block_hash TEXT;

-- The settler account's next nonce per chain: persisted so that a restart
-- neither reuses a nonce (two batches fighting for one slot) nor skips one
-- (every later transaction stuck behind the gap).
CREATE TABLE evm_nonces (
    chain_id   INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    next_nonce INTEGER NOT NULL,
    PRIMARY KEY (chain_id, sender)
) WITHOUT ROWID;

-- Every signed settlement transaction, written before it is broadcast: after
-- a crash the exact bytes are sent again (same hash, same nonce). A fee bump
-- is a new attempt for the same nonce; the older attempt becomes 'replaced'
-- but is still watched, since either may be mined.
CREATE TABLE evm_txs (
    tx_hash        TEXT PRIMARY KEY NOT NULL,
    interval_start INTEGER NOT NULL REFERENCES settlements(interval_start),
    chain_id       INTEGER NOT NULL,
    sender         TEXT NOT NULL,
    nonce          INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    -- Fees in wei as decimal text (they may exceed 63 bits).
    max_fee        TEXT NOT NULL,
    priority_fee   TEXT NOT NULL,
    raw            BLOB NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('signed', 'sent', 'replaced', 'mined', 'failed')),
    created_at     INTEGER NOT NULL,
    sent_at        INTEGER,
    UNIQUE (chain_id, sender, nonce, attempt)
) WITHOUT ROWID;

CREATE INDEX evm_txs_interval ON evm_txs(interval_start, attempt);
