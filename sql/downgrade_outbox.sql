-- Undo of outbox.sql: the relay functions (the outbox tables belong to the foundation).
DROP FUNCTION IF EXISTS noetl.outbox_pending_by_kind();
DROP FUNCTION IF EXISTS noetl.outbox_stats();
DROP FUNCTION IF EXISTS noetl.outbox_requeue_dead(bigint[]);
DROP FUNCTION IF EXISTS noetl.outbox_complete(jsonb, jsonb, integer, double precision,
                                              double precision);
DROP FUNCTION IF EXISTS noetl.outbox_claim(integer, integer, bigint, text);
DROP FUNCTION IF EXISTS noetl.outbox_slim(jsonb, bigint, bigint, integer);
DROP FUNCTION IF EXISTS noetl.outbox_cut_bytes(text, integer);
