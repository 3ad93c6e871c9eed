-- Monthly partitions of noetl.event, retention and the maintenance entry points
-- (envelope.md §3.4, §4.1, §4.6). Partition DDL is the only dynamic SQL: names and bounds go
-- through format() with %I / %L.

-- Creates missing partitions event_YYYY_MM for the current UTC month and months_ahead more.
-- A transaction-level advisory lock serialises concurrent callers (migration, maintenance
-- playbook, projector) so the existence check and the CREATE cannot race.
CREATE OR REPLACE FUNCTION noetl.event_partition_ensure(months_ahead integer DEFAULT 3)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    v_name  text;
    v_lo    bigint;
    v_hi    bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817859, 0);
    FOR i IN 0 .. greatest(coalesce(months_ahead, 3), 0) LOOP
        v_name := 'event_' || to_char(v_month, 'YYYY_MM');
        v_lo := noetl.snowflake_floor(v_month AT TIME ZONE 'UTC');
        v_hi := noetl.snowflake_floor((v_month + interval '1 month') AT TIME ZONE 'UTC');
        IF to_regclass(format('noetl.%I', v_name)) IS NULL THEN
            -- Postgres would refuse too, but with a message that does not say what to do.
            IF EXISTS (SELECT 1 FROM noetl.event_default d
                        WHERE d.execution_id >= v_lo AND d.execution_id < v_hi) THEN
                RAISE EXCEPTION 'noetl.event_default holds rows for %, so partition % cannot be created; move them out of event_default first',
                    to_char(v_month, 'YYYY-MM'), v_name
                    USING ERRCODE = '55000';
            END IF;
            EXECUTE format('CREATE TABLE noetl.%I PARTITION OF noetl.event FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_lo, v_hi);
            RETURN NEXT v_name;
        END IF;
        v_month := v_month + interval '1 month';
    END LOOP;
END
$$;

-- Upper bound of each monthly partition of noetl.event, read from the catalog, so
-- partitions are found by their bounds and not by their names.
CREATE OR REPLACE FUNCTION noetl.event_partitions()
RETURNS TABLE (partition_name text, lower_bound bigint, upper_bound bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(b.expr FROM 'FROM \(''?(-?[0-9]+)''?\)')::bigint,
           substring(b.expr FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
     WHERE i.inhparent = 'noetl.event'::regclass
       AND b.expr <> 'DEFAULT'
$$;

-- Drops whole months whose upper bound is at or below snowflake_floor(before); never the
-- current month (or later) and never the default partition. Returns the names dropped.
CREATE OR REPLACE FUNCTION noetl.event_partition_drop(before timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_bound bigint := least(
        noetl.snowflake_floor(before),
        noetl.snowflake_floor(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'));
    v_name  text;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817859, 0);
    FOR v_name IN
        SELECT p.partition_name FROM noetl.event_partitions() p
         WHERE p.upper_bound <= v_bound
         ORDER BY p.upper_bound
    LOOP
        EXECUTE format('DROP TABLE noetl.%I', v_name);
        RETURN NEXT v_name;
    END LOOP;
END
$$;

-- Deletes the other per-execution rows of executions created before the bound (events go
-- with their partitions). Returns the number of rows deleted.
CREATE OR REPLACE FUNCTION noetl.purge_executions(before timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_bound bigint := noetl.snowflake_floor(before);
    v_rows  integer;
    v_total integer := 0;
BEGIN
    DELETE FROM noetl.command WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    DELETE FROM noetl.transient WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    DELETE FROM noetl.event_batch WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    DELETE FROM noetl.step_run WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    DELETE FROM noetl.execution_summary WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    DELETE FROM noetl.execution WHERE execution_id < v_bound;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    RETURN v_total;
END
$$;

-- Maintenance entry points for the system/ playbooks (§4.6). SECURITY DEFINER so the
-- playbooks' database user needs only EXECUTE; search_path pinned against hijacking.

-- Returns the number of partitions created.
CREATE OR REPLACE FUNCTION noetl.maintenance_partitions(months_ahead integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)::integer FROM noetl.event_partition_ensure(coalesce(months_ahead, 3))
$$;

-- Retention of days > 0 (0 or less keeps everything, NOETL_EVENT_RETENTION_DAYS = 0).
-- Returns partitions dropped plus rows purged.
CREATE OR REPLACE FUNCTION noetl.maintenance_retention(days integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_before  timestamptz;
    v_dropped integer;
BEGIN
    IF days IS NULL OR days <= 0 THEN
        RETURN 0;
    END IF;
    v_before := now() - make_interval(days => days);
    SELECT count(*) INTO v_dropped FROM noetl.event_partition_drop(v_before);
    RETURN v_dropped + noetl.purge_executions(v_before);
END
$$;

-- Expired keychain rows (unless auto_renew keeps them for renewal) and dead letters older
-- than dead_letter_days. Returns rows deleted.
CREATE OR REPLACE FUNCTION noetl.maintenance_cleanup(dead_letter_days integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rows  integer;
    v_total integer := 0;
BEGIN
    DELETE FROM noetl.keychain WHERE expires_at < now() AND NOT auto_renew;
    GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    IF dead_letter_days IS NOT NULL AND dead_letter_days > 0 THEN
        DELETE FROM noetl.event_outbox_dead
         WHERE dead_at < now() - make_interval(days => dead_letter_days);
        GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
        DELETE FROM noetl.projector_reject
         WHERE received_at < now() - make_interval(days => dead_letter_days);
        GET DIAGNOSTICS v_rows = ROW_COUNT; v_total := v_total + v_rows;
    END IF;
    RETURN v_total;
END
$$;

-- Finalizes RUNNING executions without an event for age_s seconds, as
-- POST /api/executions/{id}/finalize does (api.md §7.6): one command.cancelled per open
-- command (and its row CANCELLED), then playbook.failed with the reason as error, under
-- the execution lock, in this transaction. Returns the number finalized.
CREATE OR REPLACE FUNCTION noetl.maintenance_finalize_abandoned(age_s integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c_reason   CONSTANT text := 'Abandoned or timed out';
    v_cutoff   timestamptz := now() - make_interval(secs => greatest(coalesce(age_s, 0), 0));
    v_x        noetl.execution;
    v_events   jsonb;
    v_last_id  bigint;
    v_done     integer := 0;
BEGIN
    FOR v_x IN
        SELECT * FROM noetl.execution x
         WHERE x.status = 'RUNNING'
           AND greatest(x.updated_at, noetl.snowflake_time(nullif(x.last_event_id, 0))) < v_cutoff
         ORDER BY x.execution_id
    LOOP
        PERFORM pg_advisory_xact_lock(v_x.execution_id);
        -- Re-read under the lock: an engine pass may have moved it meanwhile.
        SELECT * INTO v_x FROM noetl.execution x WHERE x.execution_id = v_x.execution_id;
        CONTINUE WHEN v_x.status <> 'RUNNING'
            OR greatest(v_x.updated_at, noetl.snowflake_time(nullif(v_x.last_event_id, 0))) >= v_cutoff
            OR EXISTS (SELECT 1 FROM noetl.event e
                        WHERE e.execution_id = v_x.execution_id
                          AND e.event_type IN ('playbook.completed', 'workflow.completed',
                                               'playbook.failed', 'workflow.failed',
                                               'execution.cancelled'));

        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'execution_id', c.execution_id::text,
                   'event_type', 'command.cancelled',
                   'node_name', c.step_name,
                   'node_type', c.tool_kind,
                   'status', 'CANCELLED',
                   'context', jsonb_build_object('command_id', c.command_id::text, 'reason', c_reason),
                   'meta', jsonb_build_object('command_id', c.command_id::text, 'reason', c_reason,
                                              'cancelled_by', 'system'),
                   'parent_event_id', c.event_id::text)
                 ORDER BY c.command_id), '[]'::jsonb)
          INTO v_events
          FROM noetl.command c
         WHERE c.execution_id = v_x.execution_id
           AND c.status IN ('PENDING', 'CLAIMED', 'RUNNING');

        v_events := v_events || jsonb_build_array(jsonb_build_object(
            'execution_id', v_x.execution_id::text,
            'event_type', 'playbook.failed',
            'node_name', 'finalize',
            'status', 'FAILED',
            'error', c_reason,
            'context', jsonb_build_object('reason', c_reason),
            'meta', jsonb_build_object('reason', c_reason, 'finalized_by', 'system')));

        SELECT max(a.event_id) INTO v_last_id FROM noetl.append_events(v_events) a;

        UPDATE noetl.command c
           SET status = 'CANCELLED', completed_at = now(), error = c_reason, updated_at = now(),
               latest_event_id = (SELECT max(e.event_id) FROM noetl.event e
                                   WHERE e.execution_id = c.execution_id
                                     AND e.command_id = c.command_id)
         WHERE c.execution_id = v_x.execution_id
           AND c.status IN ('PENDING', 'CLAIMED', 'RUNNING');

        PERFORM noetl.execution_save(v_x.execution_id, NULL, NULL, 'FAILED', NULL,
                                     v_last_id, 'playbook.failed', 'finalize', c_reason);

        -- Local keychain entries live as long as their execution (api.md §10).
        DELETE FROM noetl.keychain k
         WHERE k.execution_id = v_x.execution_id AND k.scope_type = 'local';

        v_done := v_done + 1;
    END LOOP;
    RETURN v_done;
END
$$;

-- A migrated database has partitions for this month and three ahead.
SELECT noetl.event_partition_ensure(3);
