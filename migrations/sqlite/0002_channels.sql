-- Provider channels: customer identity across channels (the same phone on
-- SMS, WhatsApp and voice), and delivery state reported by providers for
-- the messages we send.

ALTER TABLE inquiries ADD COLUMN customer_key TEXT;
CREATE INDEX inquiries_by_customer ON inquiries (customer_key, channel, id);

ALTER TABLE outbox ADD COLUMN provider_message_id TEXT;
ALTER TABLE outbox ADD COLUMN provider_status TEXT;
CREATE INDEX outbox_by_provider_message ON outbox (channel, provider_message_id);
