-- The schema of the Bitcoin price pipeline, whole: the numbered migrations of
-- infra/migrations/, in order (five_min_bitcoin_event, pipeline_metrics, rolling_avg_30min,
-- consumer_offsets, dead_letter_events, stream_marks, table_owner, the grafana_reader and
-- pipeline_writer roles). Each migration is idempotent.
--
-- For reading, and for applying by hand with psql from the repository root:
--     psql -v ON_ERROR_STOP=1 -f infra/init_db.sql eventsdb
-- consumer.py (at every start) and PostgreSQL's entrypoint (infra/00-migrate.sh) apply the
-- same files and record each in schema_migrations; a database set up with this file gets
-- those records from the consumer's first start. A new migration is one more line here
-- (tests/integration/test_migrations.py checks that every file is listed, in order).
\ir migrations/001_initial_schema.sql
\ir migrations/002_exactly_once.sql
\ir migrations/003_pipeline_writer.sql
\ir migrations/004_log_checks.sql
\ir migrations/005_trade_statistics.sql
\ir migrations/006_stream_ranges.sql
