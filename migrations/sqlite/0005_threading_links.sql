-- Threading across resolution: a reply to an inquiry resolved longer ago
-- than `threading.reopen_window` opens a new inquiry linked to the old
-- one. `linked_to` is the old inquiry's id (its reference derives from
-- it); the index lets a later reply to the old thread find the newer
-- inquiry that continues it.

ALTER TABLE inquiries ADD COLUMN linked_to INTEGER REFERENCES inquiries (id);
CREATE INDEX inquiries_by_linked_to ON inquiries (linked_to, id);
