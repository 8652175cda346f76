-- The spine: inquiries, the messages they gather, thread keys that let
-- replies find their inquiry, an append-only event log, and the outbox.
-- Times are Unix milliseconds (UTC) so the schema ports to PostgreSQL as is.

CREATE TABLE inquiries (
    id              INTEGER PRIMARY KEY,      -- allocated by the writer; the reference derives from it
    reference       TEXT    NOT NULL,         -- Reference::from_id(id): unique by construction, no index needed
    channel         TEXT    NOT NULL,         -- "adapter/name"
    medium          TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    urgency         TEXT    NOT NULL,
    customer_name   TEXT,
    customer_email  TEXT,
    customer_phone  TEXT,
    customer_handle TEXT,
    subject         TEXT,
    language        TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX inquiries_by_status  ON inquiries (status, id);
CREATE INDEX inquiries_by_channel ON inquiries (channel, id);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    inquiry_id    INTEGER NOT NULL REFERENCES inquiries (id),
    channel       TEXT    NOT NULL,
    provider_id   TEXT    NOT NULL,
    received_at   INTEGER NOT NULL,
    sender        TEXT    NOT NULL,           -- JSON Customer as this message gave it
    subject       TEXT,
    body          TEXT    NOT NULL,
    language      TEXT,
    attachments   TEXT    NOT NULL,           -- JSON array of AttachmentMeta
    metadata      TEXT    NOT NULL,           -- JSON object
    reply_context TEXT    NOT NULL,           -- JSON, adapter-defined
    UNIQUE (channel, provider_id)             -- idempotent intake
);
CREATE INDEX messages_by_inquiry ON messages (inquiry_id, id);

CREATE TABLE thread_keys (
    key        TEXT    NOT NULL,
    inquiry_id INTEGER NOT NULL REFERENCES inquiries (id),
    PRIMARY KEY (key, inquiry_id)
);

CREATE TABLE inquiry_events (
    id         INTEGER PRIMARY KEY,
    inquiry_id INTEGER NOT NULL REFERENCES inquiries (id),
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    detail     TEXT    NOT NULL               -- JSON object
);
CREATE INDEX inquiry_events_by_inquiry ON inquiry_events (inquiry_id, id);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    inquiry_id      INTEGER NOT NULL REFERENCES inquiries (id),
    kind            TEXT    NOT NULL,         -- "ack"
    channel         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,         -- JSON: template, language, in_reply_to, reply_context
    status          TEXT    NOT NULL,         -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    done_at         INTEGER
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at, id);
