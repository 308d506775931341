-- Migration 4: what the consumer needs to notice a Kafka log that was replaced or lost
-- messages unread (consumer/aggregator/core/log_check.py). Idempotent.

-- The topic's id (Kafka's, where the broker gives one) when each offset was stored: an id
-- that differs from the topic's now means a new topic of the same name, whose offsets mean
-- nothing to the old ones. NULL: stored before this migration, or by a broker without ids.
ALTER TABLE consumer_offsets ADD COLUMN IF NOT EXISTS topic_id uuid;

-- Offsets skipped in a flush interval because Kafka had removed their messages before they
-- were read (retention, delete-records): events lost before the consumer saw them.
ALTER TABLE pipeline_metrics
    ADD COLUMN IF NOT EXISTS skipped_offsets bigint NOT NULL DEFAULT 0;
