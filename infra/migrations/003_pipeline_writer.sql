-- Migration 3: pipeline_writer, the least-privilege role consumer.py writes through in
-- docker-compose (infra/10-role-passwords.sh sets its password, $CONSUMER_DB_PASSWORD, on a
-- new volume). Idempotent. A table the consumer starts writing needs its grant in a new
-- migration, and tests/test_roles.py fails until it has one.
--
-- Exactly what the consumer's SQL needs (consumer/aggregator/store.py, windows.py), nothing
-- else: no TRUNCATE, no DDL, no access to anything Grafana or other tools own.
--   five_min_bitcoin_event  INSERT ... ON CONFLICT DO UPDATE SET x = t.x + EXCLUDED.x: the
--                           update reads the row, so SELECT as well as INSERT and UPDATE
--   consumer_offsets        SELECT (stored offsets), compare-and-set UPDATE ... WHERE
--                           next_offset = expected RETURNING, INSERT ... RETURNING; DELETE:
--                           a take-over drops the new group's out-of-date rows
--   pipeline_metrics        INSERT
--   dead_letter_events      INSERT ... ON CONFLICT DO NOTHING (no target: no SELECT), its id sequence
--   stream_marks            SELECT (loaded at assignment), INSERT ... ON CONFLICT DO UPDATE
--                           (GREATEST reads the row), DELETE (idle live marks are pruned)
--   table_owner             SELECT ... FOR SHARE in every flush (a row lock: needs UPDATE),
--                           INSERT (the first group claims), UPDATE (take-over)
--   schema_migrations       SELECT: at start, to see that nothing is left to apply
-- Without CREATEROLE (a database whose owner is not a superuser) the role is skipped quietly,
-- like grafana_reader in migration 1; another database may be creating it at this moment.
DO $$
BEGIN
    CREATE ROLE pipeline_writer LOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- there already
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'pipeline_writer not created: this user lacks CREATEROLE';
END
$$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_writer') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO pipeline_writer', current_database());
        GRANT USAGE ON SCHEMA public TO pipeline_writer;
        GRANT SELECT, INSERT, UPDATE ON five_min_bitcoin_event TO pipeline_writer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON consumer_offsets, stream_marks
            TO pipeline_writer;
        GRANT INSERT ON pipeline_metrics, dead_letter_events TO pipeline_writer;
        GRANT USAGE ON SEQUENCE dead_letter_events_id_seq TO pipeline_writer;
        GRANT SELECT, INSERT, UPDATE ON table_owner TO pipeline_writer;
        GRANT SELECT ON schema_migrations TO pipeline_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pipeline_writer not granted: this user may not grant';
END
$$;
