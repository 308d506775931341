-- pipeline_writer: the least-privilege role consumer.py writes through in docker-compose.
--
-- Applied after init_db.sql (the tables must exist) by PostgreSQL's docker entrypoint on a new
-- volume; infra/10-role-passwords.sh then sets its password ($CONSUMER_DB_PASSWORD).
-- Idempotent. Self-contained on purpose: a table the consumer starts writing needs its line
-- here, and tests/test_writer_role.py fails until it has one.
--
-- Exactly what the consumer's SQL needs (consumer/aggregator/store.py, windows.py), nothing
-- else: no DELETE, TRUNCATE, DDL, or access to anything Grafana or other tools own.
--   five_min_bitcoin_event  INSERT ... ON CONFLICT DO UPDATE SET x = t.x + EXCLUDED.x: the
--                           update reads the row, so SELECT as well as INSERT and UPDATE
--   consumer_offsets        SELECT (stored offsets), compare-and-set UPDATE ... WHERE
--                           next_offset = expected RETURNING, INSERT ... RETURNING
--   pipeline_metrics        INSERT
--   dead_letter_events      INSERT, and its id sequence (bigserial default)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_writer') THEN
        CREATE ROLE pipeline_writer LOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pipeline_writer', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO pipeline_writer;
GRANT SELECT, INSERT, UPDATE ON five_min_bitcoin_event, consumer_offsets TO pipeline_writer;
GRANT INSERT ON pipeline_metrics, dead_letter_events TO pipeline_writer;
GRANT USAGE ON SEQUENCE dead_letter_events_id_seq TO pipeline_writer;
