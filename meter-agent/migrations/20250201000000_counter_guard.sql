-- Counters never go backwards: the last accepted counters per meter (the
-- guard's baseline, so a reset while the agent was down is caught after a
-- restart too) and the polls the guard refused to publish.
CREATE TABLE counter_baseline (
    meter TEXT PRIMARY KEY NOT NULL,
    at_ms INTEGER NOT NULL,
    import_wh INTEGER NOT NULL,
    export_wh INTEGER NOT NULL,
    pv_wh INTEGER
) STRICT;

CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    import_wh INTEGER NOT NULL,
    export_wh INTEGER NOT NULL,
    pv_wh INTEGER
) STRICT;
