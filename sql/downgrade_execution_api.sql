-- Undoes 0005_execution_api: drops the functions and the table of execution_api.sql.
DROP FUNCTION IF EXISTS noetl.event_batch_finish(bigint, bigint, integer, text, text);
DROP FUNCTION IF EXISTS noetl.event_batch_take(bigint, bigint, text);
DROP FUNCTION IF EXISTS noetl.accept_event_batch(bigint, bigint, text, text, bigint, text, jsonb,
                                                 jsonb, integer);
DROP FUNCTION IF EXISTS noetl.execute_start(bigint, bigint, text, bigint, text, integer, jsonb,
                                            jsonb, jsonb, text, text);
DROP FUNCTION IF EXISTS noetl.engine_apply(bigint, jsonb, jsonb, jsonb, text, text);
DROP FUNCTION IF EXISTS noetl.engine_load(bigint, bigint);
DROP FUNCTION IF EXISTS noetl.event_ingest(bigint, jsonb, jsonb, bigint, boolean);
DROP TABLE IF EXISTS noetl.execution_dedup;
