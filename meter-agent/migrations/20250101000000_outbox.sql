-- The meter agent's outbox: signed readings kept until the clearing engine
-- acknowledges them.

-- The last sequence number issued per meter. Updated in the same transaction
-- as the outbox insert, so a restart never reuses or skips a number.
CREATE TABLE meter_seq (
    meter TEXT PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
) STRICT;

-- Signed reading envelopes (wire bytes), waiting for an acknowledgement.
CREATE TABLE outbox (
    meter TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    envelope BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (meter, seq)
) STRICT;

-- Readings the engine refused: kept for inspection, never resent.
CREATE TABLE dead_letter (
    meter TEXT NOT NULL,
    seq INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected_ms INTEGER NOT NULL,
    PRIMARY KEY (meter, seq)
) STRICT;
