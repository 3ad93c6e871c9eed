-- Undo of projection.sql: its functions, dependants first.
DROP FUNCTION IF EXISTS noetl.playbook_report(date, date);
DROP FUNCTION IF EXISTS noetl.event_envelopes(bigint[], bigint[]);
DROP FUNCTION IF EXISTS noetl.projector_reject_add(text, text, bigint[], text[], text[], bigint[],
                                                   bigint[], text[], text[], integer[], jsonb[],
                                                   bytea[]);
DROP FUNCTION IF EXISTS noetl.project_events(jsonb);
DROP FUNCTION IF EXISTS noetl.step_rank(text, text);
DROP FUNCTION IF EXISTS noetl.step_terminal_status(text, text);
DROP FUNCTION IF EXISTS noetl.execution_terminal_status(text);
DROP FUNCTION IF EXISTS noetl.projection_invalid(text, text, text, text, text, text, text, jsonb,
                                                 jsonb, jsonb, jsonb, jsonb, jsonb, jsonb,
                                                 jsonb, jsonb, jsonb, jsonb, jsonb, jsonb,
                                                 jsonb);
DROP FUNCTION IF EXISTS noetl.projection_id(text);
