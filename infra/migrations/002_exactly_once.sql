-- Migration 2: exactly once from the source to the table (README "Message contract").

-- What the tables have counted: per stream of events (one replayed file, or one symbol of one
-- producer run), the highest sequence number counted. A stream travels in one partition, in
-- order, so an event with seq <= last_seq is a repeat and is skipped. Written by the consumer
-- in the same transaction as the windows and offsets. Not per group: it describes the tables.
-- Small: one row per file ever replayed (kept, a file may be re-run any time) and one per
-- symbol per producer run (pruned 30 days after its last event: no repeat comes that late).
CREATE TABLE IF NOT EXISTS stream_marks (
    stream     text        PRIMARY KEY,
    last_seq   bigint      NOT NULL CHECK (last_seq > 0),
    source     text        NOT NULL,  -- binance, simulated or replay: replay marks are kept
    topic      text        NOT NULL,  -- where it was last seen (for inspection)
    partition  integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stream_marks_live_updated_idx
    ON stream_marks (updated_at) WHERE source <> 'replay';

-- The one consumer group that fills the tables. Another group refuses to start; taking over
-- (consumer.py --take-over) moves the stored offsets and this row in one transaction.
CREATE TABLE IF NOT EXISTS table_owner (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    group_id  text        NOT NULL,
    since     timestamptz NOT NULL DEFAULT now()
);
-- An upgraded database belongs to the group that wrote offsets last.
INSERT INTO table_owner (group_id)
SELECT group_id FROM consumer_offsets ORDER BY updated_at DESC, group_id LIMIT 1
ON CONFLICT DO NOTHING;

-- Repeats skipped in a flush interval (producer re-sends, re-run replays).
ALTER TABLE pipeline_metrics
    ADD COLUMN IF NOT EXISTS duplicate_events bigint NOT NULL DEFAULT 0;
