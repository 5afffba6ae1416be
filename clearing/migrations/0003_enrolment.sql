-- Enrolment by the operator (`voltshare clearing approve/rotate/revoke`) next
-- to the configuration file, and change detection for the running engine.

-- Where a household or key came from: 'config' (the engine's configuration
-- file, synced at start-up) or 'operator' (an approved signed request). The
-- start-up sync revokes only 'config' keys that left the configuration, so a
-- restart never undoes an operator's approval or rotation.
ALTER TABLE households ADD COLUMN source TEXT NOT NULL DEFAULT 'config';
ALTER TABLE keys ADD COLUMN source TEXT NOT NULL DEFAULT 'config';

-- Every approved request: the exact signed envelope, so that anyone can
-- check later that the household itself asked for its key.
CREATE TABLE enrolment_requests (
    key_id      TEXT PRIMARY KEY NOT NULL REFERENCES keys(key_id),
    household   TEXT NOT NULL REFERENCES households(household),
    kind        TEXT NOT NULL CHECK (kind IN ('enrol', 'rotate')),
    envelope    BLOB NOT NULL,
    approved_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One counter that every change of households, keys or meters bumps (by
-- trigger, so no writer can forget it). The engine compares it before each
-- intake batch and reloads its in-memory registry when it moved: a key
-- revoked by another process is refused from the next batch on, without a
-- restart.
CREATE TABLE registry_version (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

CREATE TRIGGER households_ins AFTER INSERT ON households
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER households_upd AFTER UPDATE ON households
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER keys_ins AFTER INSERT ON keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER keys_upd AFTER UPDATE ON keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER keys_del AFTER DELETE ON keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER meters_ins AFTER INSERT ON meters
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER meters_upd AFTER UPDATE ON meters
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER meters_del AFTER DELETE ON meters
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
