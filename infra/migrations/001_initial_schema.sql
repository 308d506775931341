-- Migration 1: the schema of the first release (infra/init_db.sql up to then), unchanged.
-- Idempotent, like every migration: on a database that release created it changes nothing and is
-- only recorded. Prices are NUMERIC (exact), times timestamptz (UTC).
--
-- Migrations are applied in version order, each once, and recorded in schema_migrations, by
-- consumer.py at every start and by PostgreSQL's docker entrypoint (infra/00-migrate.sh) on a
-- new volume.

-- Which migrations this database has had (the runners insert the row after each file).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per symbol and 5-minute tumbling window (event time, aligned to UTC).
-- The statistics are a mergeable value: counts and sums add, min/max take the extreme,
-- open/close follow event time. consumer/aggregator/windows.py holds the merge, in Python and in SQL.
CREATE TABLE IF NOT EXISTS five_min_bitcoin_event (
    symbol          text        NOT NULL,
    five_min_start  timestamptz NOT NULL,
    five_min_end    timestamptz NOT NULL,
    event_count     bigint      NOT NULL CHECK (event_count > 0),
    price_sum       numeric     NOT NULL,
    avg_value       numeric     GENERATED ALWAYS AS (price_sum / event_count) STORED,
    min_value       numeric     NOT NULL,
    max_value       numeric     NOT NULL,
    open_value      numeric     NOT NULL,  -- price of the first event by event time
    close_value     numeric     NOT NULL,  -- price of the last event by event time
    first_event_at  timestamptz NOT NULL,
    last_event_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, five_min_start),
    CHECK (five_min_end = five_min_start + interval '5 minutes'),
    CHECK (min_value <= max_value)
);
CREATE INDEX IF NOT EXISTS five_min_bitcoin_event_start_idx
    ON five_min_bitcoin_event (five_min_start);
CREATE INDEX IF NOT EXISTS five_min_bitcoin_event_last_event_idx
    ON five_min_bitcoin_event (last_event_at);

-- One row per flush per consumer instance.
CREATE TABLE IF NOT EXISTS pipeline_metrics (
    metric_timestamp           timestamptz      NOT NULL,
    instance_id                text             NOT NULL,
    interval_seconds           double precision NOT NULL,  -- since this instance's last flush
    events_processed           bigint           NOT NULL,  -- valid events, live and replayed
    live_events                bigint           NOT NULL,
    replayed_events            bigint           NOT NULL,
    events_per_second          double precision NOT NULL,
    processing_lag_seconds     double precision,           -- mean over live events; NULL if none
    max_processing_lag_seconds double precision,           -- max over live events; NULL if none
    data_size_kb               numeric(16, 3)   NOT NULL,  -- key + value bytes of all messages
    consumer_offset_lag        bigint,                     -- messages behind the partition ends
    late_events                bigint           NOT NULL,
    invalid_events             bigint           NOT NULL,
    windows_updated            integer          NOT NULL,
    flush_duration_ms          double precision NOT NULL,
    PRIMARY KEY (metric_timestamp, instance_id)
);

-- The consumer's own offsets, written in the same transaction as the windows they produced:
-- this is what makes the aggregates exactly once.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Messages that could not be processed, kept whole (up to the size limit) for inspection.
CREATE TABLE IF NOT EXISTS dead_letter_events (
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    raw_key     bytea,
    raw_value   bytea,
    raw_size    integer     NOT NULL,  -- bytes of the original value (raw_value may be cut)
    error       text        NOT NULL,
    received_at timestamptz NOT NULL,
    UNIQUE (topic, partition, "offset")
);

-- 30-minute rolling average per symbol: for each window, the event-weighted mean price of the
-- windows that start in the 30 minutes ending at its end (itself and up to five before it).
-- Defined over time (RANGE), so gaps in the data shrink the window instead of reaching back.
CREATE OR REPLACE VIEW rolling_avg_30min AS
SELECT
    symbol,
    five_min_start,
    five_min_end,
    sum(price_sum) OVER last_30_min / sum(event_count) OVER last_30_min AS rolling_avg_price,
    sum(event_count) OVER last_30_min AS rolling_event_count,
    count(*) OVER last_30_min AS rolling_window_count
FROM five_min_bitcoin_event
WINDOW last_30_min AS (
    PARTITION BY symbol
    ORDER BY five_min_start
    RANGE BETWEEN interval '25 minutes' PRECEDING AND CURRENT ROW
);

-- Read-only role for dashboards. Created without a password; deployments set one
-- (infra/10-role-passwords.sh in docker-compose). Skipped quietly without CREATEROLE. Roles
-- belong to the whole server: another database may be creating it at this moment.
DO $$
BEGIN
    CREATE ROLE grafana_reader LOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- there already
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'grafana_reader not created: this user lacks CREATEROLE';
END
$$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO grafana_reader', current_database());
        GRANT USAGE ON SCHEMA public TO grafana_reader;
        GRANT SELECT ON five_min_bitcoin_event, pipeline_metrics, rolling_avg_30min
            TO grafana_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'grafana_reader not granted: this user may not grant';
END
$$;
