-- As migrations/sqlite/0005: a reply to an inquiry resolved longer ago
-- than `threading.reopen_window` opens a new inquiry linked to the old one.

ALTER TABLE inquiries ADD COLUMN linked_to BIGINT REFERENCES inquiries (id);
CREATE INDEX inquiries_by_linked_to ON inquiries (linked_to, id);
