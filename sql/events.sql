-- Event log functions and the three statement-level triggers (envelope.md §2, §4.1-§4.3).

-- Publisher lane of an execution; 16 lanes, one publisher each at a time. Changing this
-- reorders publishing, so only a migration may change it.
CREATE OR REPLACE FUNCTION noetl.outbox_lane(execution_id bigint) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (hashint8(execution_id) & 15)::smallint
$$;

-- A JSON id (string ^[0-9]{1,19}$ or integer number) in 1..2^63-1, else null.
-- The regex tests run before any cast, so a bad value never raises.
CREATE OR REPLACE FUNCTION noetl.jsonb_to_id(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN v IS NULL OR jsonb_typeof(v) NOT IN ('string', 'number') THEN NULL
        WHEN (v #>> '{}') !~ '^[0-9]{1,19}$' THEN NULL
        WHEN (v #>> '{}')::numeric BETWEEN 1 AND 9223372036854775807 THEN (v #>> '{}')::bigint
    END
$$;

-- Canonical envelope of a row (§2.1): every key present, ids as strings, rfc3339 time.
-- payload_ref is only ever set on a slimmed stream body (outbox_claim).
CREATE OR REPLACE FUNCTION noetl.event_envelope(ev noetl.event) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'event_id', ev.event_id::text,
        'execution_id', ev.execution_id::text,
        'catalog_id', ev.catalog_id::text,
        'parent_event_id', ev.parent_event_id::text,
        'parent_execution_id', ev.parent_execution_id::text,
        'prev_event_id', ev.prev_event_id::text,
        'event_type', ev.event_type,
        'node_id', ev.node_id,
        'node_name', ev.node_name,
        'node_type', ev.node_type,
        'status', ev.status,
        'context', ev.context,
        'result', ev.result,
        'meta', ev.meta,
        'error', ev.error,
        'duration', ev.duration,
        'worker_id', ev.worker_id,
        'created_at', noetl.rfc3339(ev.created_at),
        'tenant_id', ev.tenant_id,
        'organization_id', ev.organization_id,
        'payload_ref', NULL
    )
$$;

-- Appends canonical envelopes (already normalised by the shared normaliser).
-- Returns one row per input element, in array order; ord is the 0-based array index.
--
-- * Execution locks are taken for every distinct execution, ascending, before any read,
--   so ids, prev_event_id chains and dedup checks are race-free per execution.
-- * A repeat (same meta.producer_event_id, or for call.*, step.exit and
--   command.started/completed/failed the same (event_type, node_name, command_id)) returns
--   the stored id with inserted = false; repeats inside the array are found too.
-- * event_id = greatest(snowflake_id(), last id of the execution + 1), where the last id is
--   the larger of execution.last_event_id and the newest stored event, so ids follow append
--   order even after clock skew or a second node.
-- * Terminal events of a command: the first one decides; command.completed/failed after a
--   call.* is the worker's bookkeeping; any other later terminal gets
--   meta.ignored = 'duplicate_terminal'. Decided from the log, not the command row, so it
--   does not matter whether the caller updates the row before or after appending.
-- * One INSERT for all new rows, in array order, so the triggers run once.
CREATE OR REPLACE FUNCTION noetl.append_events(events jsonb)
RETURNS TABLE (ord integer, event_id bigint, execution_id bigint, inserted boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c_dedup_types  CONSTANT text[] := '{step.exit,command.started,command.completed,command.failed}';
    c_term_types   CONSTANT text[] := '{call.done,call.error,command.completed,command.failed,command.cancelled}';
    v_n            integer;
    v_i            integer;
    v_e            jsonb;
    v_meta         jsonb;
    v_field        text;
    v_raw          jsonb;
    v_exec_of      bigint[] := '{}';
    v_exec_ids     bigint[];
    -- per-execution state, parallel to v_exec_ids
    v_x_catalog    bigint[] := '{}';
    v_x_parent     bigint[] := '{}';
    v_x_tenant     text[] := '{}';
    v_x_org        text[] := '{}';
    v_x_exists     boolean[] := '{}';
    v_x_last       bigint[] := '{}';
    v_x_prev       bigint[] := '{}';
    v_x_bumped     boolean[] := '{}';
    v_xrow         noetl.execution;
    v_k            integer;
    v_x            bigint;
    -- in-array lookups: producer ids, dedup keys, command.issued ids, terminal flags
    v_pkeys        text[] := '{}';
    v_pids         bigint[] := '{}';
    v_dkeys        text[] := '{}';
    v_dids         bigint[] := '{}';
    v_ikeys        text[] := '{}';
    v_iids         bigint[] := '{}';
    v_tkeys        text[] := '{}';
    v_t_any        boolean[] := '{}';
    v_t_cmd        boolean[] := '{}';
    v_pos          integer;
    v_type         text;
    v_node         text;
    v_cmd          bigint;
    v_pid          bigint;
    v_dkey         text;
    v_ckey         text;
    v_dup          bigint;
    v_id           bigint;
    v_catalog      bigint;
    v_parent_event bigint;
    v_parent_exec  bigint;
    v_any          boolean;
    v_cmdterm      boolean;
    v_status       text;
    v_row          noetl.event;
    v_rows         noetl.event[] := '{}';
    v_count        integer := 0;
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'append_events: events must be a JSON array' USING ERRCODE = '22023';
    END IF;
    v_n := jsonb_array_length(events);

    -- Pass 1: required fields, and the executions to lock.
    FOR v_i IN 0 .. v_n - 1 LOOP
        v_e := events -> v_i;
        IF jsonb_typeof(v_e) <> 'object' THEN
            RAISE EXCEPTION 'append_events: events[%] is not an object', v_i USING ERRCODE = '22023';
        END IF;
        v_raw := v_e -> 'execution_id';
        IF v_raw IS NULL OR jsonb_typeof(v_raw) = 'null' THEN
            RAISE EXCEPTION 'append_events: events[%]: missing required field execution_id', v_i
                USING ERRCODE = '22023';
        END IF;
        v_x := noetl.jsonb_to_id(v_raw);
        IF v_x IS NULL THEN
            RAISE EXCEPTION 'append_events: events[%]: invalid id in field execution_id: %', v_i, v_raw
                USING ERRCODE = '22023';
        END IF;
        IF coalesce(v_e ->> 'event_type', '') = '' THEN
            RAISE EXCEPTION 'append_events: events[%]: missing required field event_type', v_i
                USING ERRCODE = '22023';
        END IF;
        FOREACH v_field IN ARRAY ARRAY['catalog_id', 'parent_event_id', 'parent_execution_id'] LOOP
            v_raw := v_e -> v_field;
            IF v_raw IS NOT NULL AND jsonb_typeof(v_raw) <> 'null' AND noetl.jsonb_to_id(v_raw) IS NULL THEN
                RAISE EXCEPTION 'append_events: events[%]: invalid id in field %: %', v_i, v_field, v_raw
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
        v_exec_of[v_i + 1] := v_x;
    END LOOP;

    SELECT coalesce(array_agg(DISTINCT x ORDER BY x), '{}') INTO v_exec_ids FROM unnest(v_exec_of) AS x;

    -- Ascending order, before any row is read or locked (envelope.md §3.3).
    FOREACH v_x IN ARRAY v_exec_ids LOOP
        PERFORM pg_advisory_xact_lock(v_x);
    END LOOP;

    FOR v_k IN 1 .. coalesce(array_length(v_exec_ids, 1), 0) LOOP
        v_x := v_exec_ids[v_k];
        v_xrow := NULL;
        SELECT * INTO v_xrow FROM noetl.execution x WHERE x.execution_id = v_x;
        v_x_exists[v_k] := FOUND;
        v_x_catalog[v_k] := v_xrow.catalog_id;
        v_x_parent[v_k] := v_xrow.parent_execution_id;
        v_x_tenant[v_k] := v_xrow.tenant_id;
        v_x_org[v_k] := v_xrow.organization_id;
        SELECT max(e.event_id) INTO v_id FROM noetl.event e WHERE e.execution_id = v_x;
        v_x_prev[v_k] := v_id;
        v_x_last[v_k] := greatest(coalesce(v_xrow.last_event_id, 0), coalesce(v_id, 0));
        v_x_bumped[v_k] := false;
    END LOOP;

    -- Pass 2: dedup, fill, assign ids.
    FOR v_i IN 0 .. v_n - 1 LOOP
        v_e := events -> v_i;
        v_x := v_exec_of[v_i + 1];
        v_k := array_position(v_exec_ids, v_x);
        v_type := v_e ->> 'event_type';
        v_node := v_e ->> 'node_name';
        v_meta := CASE WHEN jsonb_typeof(v_e -> 'meta') = 'object' THEN v_e -> 'meta' ELSE '{}'::jsonb END;
        v_cmd := noetl.jsonb_to_id(v_meta -> 'command_id');
        v_pid := noetl.jsonb_to_id(v_meta -> 'producer_event_id');

        v_dup := NULL;
        IF v_pid IS NOT NULL THEN
            v_pos := array_position(v_pkeys, v_x || ':' || v_pid);
            IF v_pos IS NOT NULL THEN
                v_dup := v_pids[v_pos];
            ELSE
                SELECT e.event_id INTO v_dup FROM noetl.event e
                 WHERE e.execution_id = v_x AND e.producer_event_id = v_pid;
            END IF;
        END IF;
        v_dkey := NULL;
        IF v_cmd IS NOT NULL AND (v_type LIKE 'call.%' OR v_type = ANY (c_dedup_types)) THEN
            v_dkey := jsonb_build_array(v_x::text, v_cmd::text, v_type, v_node)::text;
            IF v_dup IS NULL THEN
                v_pos := array_position(v_dkeys, v_dkey);
                IF v_pos IS NOT NULL THEN
                    v_dup := v_dids[v_pos];
                ELSE
                    SELECT e.event_id INTO v_dup FROM noetl.event e
                     WHERE e.execution_id = v_x AND e.command_id = v_cmd
                       AND e.event_type = v_type AND e.node_name IS NOT DISTINCT FROM v_node
                     ORDER BY e.event_id
                     LIMIT 1;
                END IF;
            END IF;
        END IF;
        IF v_dup IS NOT NULL THEN
            ord := v_i; event_id := v_dup; execution_id := v_x; inserted := false;
            RETURN NEXT;
            CONTINUE;
        END IF;

        v_catalog := coalesce(noetl.jsonb_to_id(v_e -> 'catalog_id'), v_x_catalog[v_k]);
        IF v_catalog IS NULL THEN
            RAISE EXCEPTION 'append_events: events[%]: missing required field catalog_id (execution % has no noetl.execution row to take it from)', v_i, v_x
                USING ERRCODE = '22023';
        END IF;
        v_parent_exec := coalesce(noetl.jsonb_to_id(v_e -> 'parent_execution_id'), v_x_parent[v_k]);

        v_id := greatest(noetl.snowflake_id(), v_x_last[v_k] + 1);

        -- A worker event's parent is its command's command.issued.
        v_parent_event := noetl.jsonb_to_id(v_e -> 'parent_event_id');
        IF v_cmd IS NOT NULL THEN
            v_ckey := v_x || ':' || v_cmd;
            IF v_type = 'command.issued' THEN
                v_ikeys := v_ikeys || v_ckey;
                v_iids := v_iids || v_id;
            ELSIF v_parent_event IS NULL THEN
                v_pos := array_position(v_ikeys, v_ckey);
                IF v_pos IS NOT NULL THEN
                    v_parent_event := v_iids[v_pos];
                ELSE
                    SELECT c.event_id INTO v_parent_event FROM noetl.command c
                     WHERE c.execution_id = v_x AND c.command_id = v_cmd;
                    IF v_parent_event IS NULL THEN
                        SELECT min(e.event_id) INTO v_parent_event FROM noetl.event e
                         WHERE e.execution_id = v_x AND e.command_id = v_cmd
                           AND e.event_type = 'command.issued';
                    END IF;
                END IF;
            END IF;

            IF v_type = ANY (c_term_types) THEN
                v_pos := array_position(v_tkeys, v_ckey);
                IF v_pos IS NULL THEN
                    SELECT count(*) > 0, coalesce(bool_or(e.event_type LIKE 'command.%'), false)
                      INTO v_any, v_cmdterm
                      FROM noetl.event e
                     WHERE e.execution_id = v_x AND e.command_id = v_cmd
                       AND e.event_type = ANY (c_term_types)
                       AND NOT e.meta ? 'ignored';
                    v_tkeys := v_tkeys || v_ckey;
                    v_t_any := v_t_any || v_any;
                    v_t_cmd := v_t_cmd || v_cmdterm;
                    v_pos := array_length(v_tkeys, 1);
                END IF;
                IF v_t_cmd[v_pos]
                   OR (v_t_any[v_pos] AND v_type NOT IN ('command.completed', 'command.failed')) THEN
                    v_meta := v_meta || '{"ignored": "duplicate_terminal"}'::jsonb;
                ELSE
                    v_t_any[v_pos] := true;
                    v_t_cmd[v_pos] := v_t_cmd[v_pos] OR v_type LIKE 'command.%';
                END IF;
            END IF;
        END IF;

        v_status := nullif(v_e ->> 'status', '');
        IF v_status IS NULL THEN
            -- Same rule as the normaliser (§2.3) for an absent status.
            v_status := CASE
                WHEN lower(v_type) LIKE '%failed%' OR lower(v_type) LIKE '%error%' THEN 'FAILED'
                WHEN lower(v_type) LIKE '%completed%' OR lower(v_type) LIKE '%done%'
                  OR lower(v_type) LIKE '%exit%' THEN 'COMPLETED'
                ELSE 'RUNNING'
            END;
        END IF;

        v_row.event_id := v_id;
        v_row.execution_id := v_x;
        v_row.catalog_id := v_catalog;
        v_row.parent_event_id := v_parent_event;
        v_row.parent_execution_id := v_parent_exec;
        v_row.prev_event_id := v_x_prev[v_k];
        v_row.event_type := v_type;
        v_row.node_id := coalesce(v_e ->> 'node_id', v_node);
        v_row.node_name := v_node;
        v_row.node_type := v_e ->> 'node_type';
        v_row.status := v_status;
        v_row.context := nullif(v_e -> 'context', 'null'::jsonb);
        v_row.result := nullif(v_e -> 'result', 'null'::jsonb);
        v_row.meta := v_meta;
        v_row.error := v_e ->> 'error';
        v_row.duration := (v_e ->> 'duration')::double precision;
        v_row.worker_id := coalesce(v_e ->> 'worker_id', v_meta ->> 'worker_id');
        v_row.created_at := coalesce((v_e ->> 'created_at')::timestamptz, now());
        v_row.tenant_id := coalesce(v_e ->> 'tenant_id', v_x_tenant[v_k], 'default');
        v_row.organization_id := coalesce(v_e ->> 'organization_id', v_x_org[v_k], 'default');
        v_row.command_id := v_cmd;
        v_row.producer_event_id := v_pid;
        v_count := v_count + 1;
        v_rows[v_count] := v_row;

        v_x_last[v_k] := v_id;
        v_x_prev[v_k] := v_id;
        v_x_bumped[v_k] := true;
        IF v_pid IS NOT NULL THEN
            v_pkeys := v_pkeys || (v_x || ':' || v_pid);
            v_pids := v_pids || v_id;
        END IF;
        IF v_dkey IS NOT NULL THEN
            v_dkeys := v_dkeys || v_dkey;
            v_dids := v_dids || v_id;
        END IF;

        ord := v_i; event_id := v_id; execution_id := v_x; inserted := true;
        RETURN NEXT;
    END LOOP;

    IF v_count > 0 THEN
        INSERT INTO noetl.event SELECT * FROM unnest(v_rows);
        FOR v_k IN 1 .. coalesce(array_length(v_exec_ids, 1), 0) LOOP
            IF v_x_bumped[v_k] AND v_x_exists[v_k] THEN
                UPDATE noetl.execution x
                   SET last_event_id = greatest(x.last_event_id, v_x_last[v_k])
                 WHERE x.execution_id = v_exec_ids[v_k];
            END IF;
        END LOOP;
    END IF;
END
$$;

-- Trigger bodies. Statement-level with transition tables: one call per statement however
-- many rows, and an empty transition table (everything conflict-ignored) does nothing.

-- Outbox rows in event id order (append order), then one wake-up for the publishers.
-- project_events sets noetl.outbox_suppress so projected rows never re-enter the stream.
CREATE OR REPLACE FUNCTION noetl.event_outbox_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('noetl.outbox_suppress', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO noetl.event_outbox (execution_id, kind, source_id, lane, subject, msg_id, headers, payload)
    SELECT n.execution_id, 'event', n.event_id, noetl.outbox_lane(n.execution_id), NULL,
           'event:' || n.event_id,
           jsonb_build_object('Noetl-Event-Type', n.event_type,
                              'Noetl-Execution-Id', n.execution_id::text),
           noetl.event_envelope(n)
      FROM new_rows n
     ORDER BY n.event_id;
    IF FOUND THEN
        PERFORM pg_notify('noetl_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- One small NOTIFY per execution (§4.3), or one wildcard when a statement touches more
-- than 100 executions, so a bulk insert cannot flood the listeners' queues.
CREATE OR REPLACE FUNCTION noetl.event_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_execs integer;
BEGIN
    SELECT count(DISTINCT n.execution_id) INTO v_execs FROM new_rows n;
    IF v_execs > 100 THEN
        PERFORM pg_notify('noetl_event', '{"execution_id":"*"}');
    ELSIF v_execs > 0 THEN
        PERFORM pg_notify('noetl_event',
                          format('{"execution_id":"%s","event_id":"%s","count":%s,"terminal":%s}',
                                 s.execution_id, s.max_event_id, s.n,
                                 CASE WHEN s.terminal THEN 'true' ELSE 'false' END))
           FROM (SELECT n.execution_id, max(n.event_id) AS max_event_id, count(*) AS n,
                        bool_or(n.event_type IN ('playbook.completed', 'workflow.completed',
                                                 'playbook.failed', 'workflow.failed',
                                                 'execution.cancelled')) AS terminal
                   FROM new_rows n
                  GROUP BY n.execution_id
                  ORDER BY n.execution_id) s;
    END IF;
    RETURN NULL;
END
$$;

-- The command notification of §2.7 without server_url (outbox_claim merges it in).
-- execution_id and event_id are JSON numbers: NoETL workers parse them as int64.
CREATE OR REPLACE FUNCTION noetl.command_outbox_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO noetl.event_outbox (execution_id, kind, source_id, lane, subject, msg_id, headers, payload)
    SELECT n.execution_id, 'command', n.event_id, noetl.outbox_lane(n.execution_id),
           'noetl.commands.' || n.pool || '.' || n.execution_id,
           'command:' || n.event_id,
           jsonb_build_object('Noetl-Event-Type', 'command.issued',
                              'Noetl-Execution-Id', n.execution_id::text),
           jsonb_build_object('execution_id', n.execution_id,
                              'event_id', n.event_id,
                              'command_id', n.command_id::text,
                              'step', n.step_name,
                              'pool', n.pool,
                              'execution_pool', n.pool)
      FROM new_rows n
     ORDER BY n.event_id;
    IF FOUND THEN
        PERFORM pg_notify('noetl_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- Defined on the partitioned parent: Postgres fires statement triggers with transition
-- tables there for rows routed to any partition (partitions themselves may not have them).
CREATE TRIGGER event_outbox_trg
    AFTER INSERT ON noetl.event
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION noetl.event_outbox_trigger();

CREATE TRIGGER event_notify_trg
    AFTER INSERT ON noetl.event
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION noetl.event_notify_trigger();

CREATE TRIGGER command_outbox_trg
    AFTER INSERT ON noetl.command
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION noetl.command_outbox_trigger();
