-- Most inquiries have no customer key (generic webhooks), no link and, at
-- intake, no assignee; most outbox entries never get a provider message
-- id. Indexing only the rows that have a value saves intake an index
-- insert per such column. Every query on these columns compares them with
-- `=` (or asks IS NOT NULL), which SQLite knows implies the index's WHERE.
DROP INDEX IF EXISTS inquiries_by_customer;
CREATE INDEX inquiries_by_customer ON inquiries (customer_key, channel, id)
    WHERE customer_key IS NOT NULL;
DROP INDEX IF EXISTS inquiries_by_linked_to;
CREATE INDEX inquiries_by_linked_to ON inquiries (linked_to, id)
    WHERE linked_to IS NOT NULL;
DROP INDEX IF EXISTS inquiries_by_assignee;
CREATE INDEX inquiries_by_assignee ON inquiries (assignee, status)
    WHERE assignee IS NOT NULL;
DROP INDEX IF EXISTS outbox_by_provider_message;
CREATE INDEX outbox_by_provider_message ON outbox (channel, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
