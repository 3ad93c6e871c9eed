-- Undoes 0004_commands: drops the functions of commands.sql, dependents first.
DROP FUNCTION IF EXISTS noetl.dashboard_stats();
DROP FUNCTION IF EXISTS noetl.find_stuck_executions(integer);
DROP FUNCTION IF EXISTS noetl.finalize_execution(bigint, text);
DROP FUNCTION IF EXISTS noetl.cancel_executions(bigint, text, boolean, text);
DROP FUNCTION IF EXISTS noetl.command_close_cancelled(bigint, text);
DROP FUNCTION IF EXISTS noetl.command_cancel_events(bigint, text, text);
DROP FUNCTION IF EXISTS noetl.execution_is_terminal(bigint);
DROP FUNCTION IF EXISTS noetl.runtime_deregister(text);
DROP FUNCTION IF EXISTS noetl.command_renotify(double precision, double precision, double precision,
                                               double precision, integer);
DROP FUNCTION IF EXISTS noetl.command_notify_again(bigint[], bigint[]);
DROP FUNCTION IF EXISTS noetl.command_apply_event(bigint, bigint, text, text);
DROP FUNCTION IF EXISTS noetl.get_command(bigint, double precision);
DROP FUNCTION IF EXISTS noetl.claim_command(bigint, text, double precision, double precision,
                                            double precision, jsonb);
DROP FUNCTION IF EXISTS noetl.issue_commands(jsonb);
DROP FUNCTION IF EXISTS noetl.start_execution(bigint, bigint, text, bigint, bigint);
DROP FUNCTION IF EXISTS noetl.command_response_meta(noetl.command, double precision);
DROP FUNCTION IF EXISTS noetl.command_reclaim_reason(text, timestamptz, timestamptz, timestamptz,
                                                     double precision, double precision,
                                                     double precision, timestamptz);
