-- Outbox claims. With SQLite one process owns the file and keeps its
-- claims in memory; the columns exist so that one statement text records
-- deliveries on both backends (see migrations/postgres).

ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;
