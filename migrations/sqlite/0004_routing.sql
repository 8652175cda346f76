-- Routing: what rules decided for each inquiry, who holds it, the offers
-- made, and associates' presence. The router's in-memory indexes are
-- rebuilt from these rows at start, so a restart resumes open offers and
-- timers where they were.

-- The rules' classification, written in the intake transaction.
ALTER TABLE inquiries ADD COLUMN queue TEXT;
ALTER TABLE inquiries ADD COLUMN requirements TEXT;      -- JSON routing::Requirements
ALTER TABLE inquiries ADD COLUMN sla_due_at INTEGER;     -- first-response deadline (ms)
ALTER TABLE inquiries ADD COLUMN sla_breached INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inquiries ADD COLUMN assignee TEXT;          -- associate id while assigned, last one after
ALTER TABLE inquiries ADD COLUMN waiting_since INTEGER;  -- when it (re)entered the queue
ALTER TABLE inquiries ADD COLUMN first_response_at INTEGER;
CREATE INDEX inquiries_by_assignee ON inquiries (assignee, status);

-- One row per offer. At most one open offer per inquiry is a rule the
-- router keeps and the schema enforces.
CREATE TABLE offers (
    id           INTEGER PRIMARY KEY,
    inquiry_id   INTEGER NOT NULL REFERENCES inquiries (id),
    associate_id TEXT    NOT NULL,
    offered_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    state        TEXT    NOT NULL,            -- open | accepted | declined | expired | withdrawn
    decided_at   INTEGER
);
CREATE UNIQUE INDEX offers_one_open ON offers (inquiry_id) WHERE state = 'open';
CREATE INDEX offers_by_associate ON offers (associate_id, state);
CREATE INDEX offers_by_inquiry ON offers (inquiry_id, associate_id);

-- Runtime presence; the roster file holds everything else about people.
CREATE TABLE presence (
    associate_id TEXT    PRIMARY KEY,
    presence     TEXT    NOT NULL,            -- available | busy | away | offline
    since        INTEGER NOT NULL,
    idle_since   INTEGER                      -- last time work was handed to them
);
