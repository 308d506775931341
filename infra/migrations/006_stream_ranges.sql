-- Migration 6: the seqs each stream has counted, as ranges (consumer/aggregator/core/
-- coverage.py), instead of one high-water mark: history filled in behind a stream (a trades
-- file from before a live stream's start, overlapping files) is then counted once, in
-- whatever order it arrives. stream_marks keeps each stream's highest seq, source and place
-- (and the age by which idle live streams are pruned). Idempotent.
CREATE TABLE IF NOT EXISTS stream_ranges (
    stream     text   NOT NULL,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    PRIMARY KEY (stream, first_seq),
    CHECK (first_seq <= last_seq)
);

-- A mark said "everything up to last_seq"; seqs start at 1.
INSERT INTO stream_ranges (stream, first_seq, last_seq)
SELECT stream, 1, last_seq FROM stream_marks
ON CONFLICT DO NOTHING;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_writer') THEN
        -- SELECT: loaded at assignment; INSERT and DELETE: a flush joins a stream's ranges
        -- (and ON CONFLICT reads the row); DELETE also when idle live streams are pruned.
        GRANT SELECT, INSERT, UPDATE, DELETE ON stream_ranges TO pipeline_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pipeline_writer not granted: this user may not grant';
END
$$;
