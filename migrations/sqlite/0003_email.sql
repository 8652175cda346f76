-- The email channel: per-mailbox checkpoints, committed in the same
-- transaction as the messages they cover; quarantined (unparseable) mail;
-- the raw bytes of taken mail, up to a size limit, so the full message
-- with its attachments stays available.

CREATE TABLE email_checkpoints (
    channel      TEXT    NOT NULL,            -- "imap/<name>"
    mailbox      TEXT    NOT NULL,            -- IMAP mailbox name, e.g. INBOX
    uidvalidity  INTEGER NOT NULL,
    last_uid     INTEGER NOT NULL,            -- highest UID committed (taken or quarantined)
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (channel, mailbox)
);

CREATE TABLE email_quarantine (
    id           INTEGER PRIMARY KEY,
    channel      TEXT    NOT NULL,
    mailbox      TEXT    NOT NULL,
    uidvalidity  INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    reason       TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    raw          BLOB,                        -- NULL when over the kept-bytes limit
    created_at   INTEGER NOT NULL,
    UNIQUE (channel, mailbox, uidvalidity, uid)
);

CREATE TABLE email_raw (
    channel      TEXT    NOT NULL,
    provider_id  TEXT    NOT NULL,            -- messages.provider_id
    raw          BLOB    NOT NULL,
    PRIMARY KEY (channel, provider_id)
);
