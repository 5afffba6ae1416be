-- Rejects of authenticated senders by household, meter and reason: what a
-- household's dashboard shows of its own refused readings and orders. They
-- were counted in memory only, so a restart of the engine wiped a
-- household's record of refusals while the engine-wide totals
-- (`reject_counts`) survived. Orders carry no meter: their meter is ''.
-- Updated in the same transaction as the batch that acknowledged them.

CREATE TABLE sender_reject_counts (
    household TEXT NOT NULL,
    meter     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (household, meter, reason)
) WITHOUT ROWID;
