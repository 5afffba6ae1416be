-- Enrolment requests carry the household's signed request file (as
-- `voltshare enroll` writes it), so that approving one enrols it in the
-- engine through the same verification as `voltshare clearing approve`.
-- Requests filed before this column existed have none and cannot be
-- approved into the engine.
ALTER TABLE enrolment_requests ADD COLUMN request TEXT;
