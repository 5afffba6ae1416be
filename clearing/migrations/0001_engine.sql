-- Clearing engine store. Integers are Unix milliseconds, watt-hours, watts
-- and micro-units; hashes are lowercase hex; envelopes are the exact bytes
-- that were received or signed, so that every row can be re-verified.

CREATE TABLE households (
    household          TEXT PRIMARY KEY NOT NULL,
    settlement_address TEXT,
    enrolled_at        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    household  TEXT NOT NULL REFERENCES households(household),
    public_key BLOB NOT NULL,
    added_at   INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE TABLE meters (
    meter     TEXT PRIMARY KEY NOT NULL,
    household TEXT NOT NULL REFERENCES households(household)
) WITHOUT ROWID;

-- The engine's own public keys, so that the ledger can be verified from the
-- database alone.
CREATE TABLE engine_keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    public_key BLOB NOT NULL,
    added_at   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE readings (
    meter        TEXT NOT NULL REFERENCES meters(meter),
    seq          INTEGER NOT NULL,
    household    TEXT NOT NULL REFERENCES households(household),
    ts           INTEGER NOT NULL,
    import_wh    INTEGER NOT NULL,
    export_wh    INTEGER NOT NULL,
    pv_wh        INTEGER,
    grid_power_w INTEGER NOT NULL,
    pv_power_w   INTEGER,
    status       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    envelope     BLOB NOT NULL,
    digest       BLOB NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (meter, seq)
) WITHOUT ROWID;

CREATE INDEX readings_meter_ts ON readings(meter, ts);

CREATE TABLE orders (
    household      TEXT NOT NULL REFERENCES households(household),
    nonce          INTEGER NOT NULL,
    interval_start INTEGER NOT NULL,
    side           TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity_wh    INTEGER NOT NULL,
    limit_price    INTEGER NOT NULL,
    ts             INTEGER NOT NULL,
    replaces       INTEGER,
    key_id         TEXT NOT NULL,
    envelope       BLOB NOT NULL,
    digest         BLOB NOT NULL,
    received_at    INTEGER NOT NULL,
    PRIMARY KEY (household, nonce)
) WITHOUT ROWID;

CREATE INDEX orders_interval ON orders(interval_start, household, nonce);

CREATE TABLE intervals (
    interval_start  INTEGER PRIMARY KEY NOT NULL,
    clearing_price  INTEGER,
    volume_wh       INTEGER NOT NULL,
    trades          INTEGER NOT NULL,
    orders          INTEGER NOT NULL,
    orders_root     TEXT NOT NULL,
    trades_root     TEXT NOT NULL,
    result_json     TEXT NOT NULL,
    result_envelope BLOB NOT NULL,
    cleared_at      INTEGER NOT NULL
);

CREATE TABLE trades (
    interval_start INTEGER NOT NULL REFERENCES intervals(interval_start),
    idx            INTEGER NOT NULL,
    buyer          TEXT NOT NULL,
    seller         TEXT NOT NULL,
    buy_order      TEXT NOT NULL,
    sell_order     TEXT NOT NULL,
    quantity_wh    INTEGER NOT NULL,
    price          INTEGER NOT NULL,
    buyer_price    INTEGER NOT NULL,
    PRIMARY KEY (interval_start, idx)
) WITHOUT ROWID;

-- One row per settled interval: a hash chain ordered by seq.
CREATE TABLE settlements (
    interval_start INTEGER PRIMARY KEY NOT NULL REFERENCES intervals(interval_start),
    seq            INTEGER NOT NULL UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'submitted', 'confirmed', 'final')),
    hash           TEXT NOT NULL UNIQUE,
    prev_hash      TEXT NOT NULL,
    batch_json     TEXT NOT NULL,
    signature      BLOB NOT NULL,
    households     INTEGER NOT NULL,
    utility_micros INTEGER NOT NULL,
    confirmations  INTEGER NOT NULL DEFAULT 0,
    tx_hash        TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE transfers (
    interval_start INTEGER NOT NULL REFERENCES settlements(interval_start),
    household      TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    delivered_wh   INTEGER NOT NULL,
    received_wh    INTEGER NOT NULL,
    PRIMARY KEY (interval_start, household)
) WITHOUT ROWID;

-- The engine's reconciliation of an interval (written just before the batch
-- is submitted, replaced if a submission is retried).
CREATE TABLE reconciliations (
    interval_start INTEGER PRIMARY KEY NOT NULL REFERENCES intervals(interval_start),
    traded_micros  INTEGER NOT NULL,
    utility_micros INTEGER NOT NULL,
    lines_json     TEXT NOT NULL
);

-- Measured delivery per household and interval, the evidence behind a batch.
CREATE TABLE deliveries (
    interval_start INTEGER NOT NULL REFERENCES intervals(interval_start),
    household      TEXT NOT NULL,
    export_wh      INTEGER NOT NULL,
    import_wh      INTEGER NOT NULL,
    has_data       INTEGER NOT NULL,
    PRIMARY KEY (interval_start, household)
) WITHOUT ROWID;

CREATE TABLE reject_counts (
    reason TEXT PRIMARY KEY NOT NULL,
    count  INTEGER NOT NULL
) WITHOUT ROWID;
