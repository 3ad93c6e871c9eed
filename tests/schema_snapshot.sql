CREATE SCHEMA noetl;

CREATE FUNCTION noetl.accept_event_batch(execution_id bigint, request_id bigint, idempotency_key text, body_sha256 text, catalog_id bigint, pool text, events jsonb, outcomes jsonb, max_queue integer) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_exec    bigint := accept_event_batch.execution_id;
    v_batch   noetl.event_batch;
    v_depth   integer;
    v_ingest  jsonb;
    v_ids     bigint[];
    v_n       integer := jsonb_array_length(events);
BEGIN
    PERFORM pg_advisory_xact_lock(v_exec);
    IF idempotency_key IS NOT NULL THEN
        SELECT * INTO v_batch FROM noetl.event_batch b
         WHERE b.execution_id = v_exec AND b.idempotency_key = accept_event_batch.idempotency_key;
        IF FOUND THEN
            SELECT count(*) INTO v_depth FROM noetl.event_batch b
             WHERE b.state IN ('accepted', 'processing');
            RETURN jsonb_build_object(
                'outcome', CASE WHEN v_batch.body_sha256 IS NOT DISTINCT FROM body_sha256
                                THEN 'duplicate' ELSE 'conflict' END,
                'request_id', v_batch.request_id::text,
                'event_ids', to_jsonb(v_batch.event_ids),
                'queue_depth', v_depth,
                'idempotency_key', v_batch.idempotency_key);
        END IF;
    END IF;
    SELECT count(*) INTO v_depth FROM noetl.event_batch b WHERE b.state IN ('accepted', 'processing');
    IF v_depth >= max_queue THEN
        RETURN jsonb_build_object('outcome', 'backlog_full', 'queue_depth', v_depth);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_exec) THEN
        IF catalog_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM noetl.catalog c WHERE c.catalog_id = accept_event_batch.catalog_id) THEN
            RETURN jsonb_build_object('outcome', 'execution_not_found');
        END IF;
        PERFORM noetl.start_execution(v_exec, catalog_id, pool, NULL, NULL);
    END IF;

    v_ingest := noetl.event_ingest(v_exec,
                                   events || jsonb_build_array(jsonb_build_object(
                                       'execution_id', v_exec::text,
                                       'event_type', 'batch.accepted',
                                       'node_name', 'events.batch',
                                       'status', 'PENDING',
                                       'context', jsonb_build_object('request_id', request_id::text,
                                                                     'event_count', v_n),
                                       'meta', jsonb_build_object('batch_request_id', request_id::text))),
                                   outcomes, NULL, false);
    SELECT array_agg(i::bigint ORDER BY n) INTO v_ids
      FROM jsonb_array_elements_text(v_ingest -> 'ids') WITH ORDINALITY AS a(i, n)
     WHERE n <= v_n;
    INSERT INTO noetl.event_batch (execution_id, request_id, idempotency_key, body_sha256, state,
                                   event_ids)
    VALUES (v_exec, request_id, idempotency_key, body_sha256, 'accepted', coalesce(v_ids, '{}'));
    PERFORM pg_notify('noetl_event_batch',
                      jsonb_build_object('request_id', request_id::text, 'state', 'accepted')::text);
    RETURN jsonb_build_object(
        'outcome', 'accepted',
        'request_id', request_id::text,
        'event_ids', to_jsonb(coalesce(v_ids, '{}')),
        'queue_depth', v_depth + 1,
        'idempotency_key', idempotency_key);
END
$$;

CREATE FUNCTION noetl.append_events(events jsonb) RETURNS TABLE(ord integer, event_id bigint, execution_id bigint, inserted boolean)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.cancel_executions(execution_id bigint, reason text DEFAULT 'User requested cancellation'::text, cascade boolean DEFAULT true, cancelled_by text DEFAULT 'api'::text) RETURNS SETOF bigint
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_root    bigint := cancel_executions.execution_id;
    v_reason  text := coalesce(cancel_executions.reason, 'User requested cancellation');
    v_by      text := coalesce(cancel_executions.cancelled_by, 'api');
    v_cascade boolean := coalesce(cancel_executions.cascade, true);
    v_locked  bigint[] := '{}';
    v_new     bigint[];
    v_targets bigint[] := '{}';
    v_x       bigint;
    v_details jsonb;
    v_events  jsonb := '[]'::jsonb;
    v_last    record;
BEGIN
    -- Lock the whole tree in ascending order; a child started meanwhile shows up on the
    -- next round and is locked too.
    LOOP
        WITH RECURSIVE tree(id) AS (
            SELECT v_root
            UNION
            SELECT x.execution_id FROM noetl.execution x JOIN tree t ON x.parent_execution_id = t.id
             WHERE v_cascade
        )
        SELECT array_agg(t.id ORDER BY t.id) INTO v_new FROM tree t WHERE t.id <> ALL (v_locked);
        EXIT WHEN v_new IS NULL;
        FOREACH v_x IN ARRAY v_new LOOP
            PERFORM pg_advisory_xact_lock(v_x);
        END LOOP;
        v_locked := v_locked || v_new;
    END LOOP;

    IF NOT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_root)
       OR noetl.execution_is_terminal(v_root) THEN
        RETURN;
    END IF;
    v_targets := ARRAY[v_root];
    FOR v_x IN SELECT t FROM unnest(v_locked) AS t WHERE t <> v_root ORDER BY t LOOP
        IF EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_x)
           AND NOT noetl.execution_is_terminal(v_x) THEN
            v_targets := v_targets || v_x;
        END IF;
    END LOOP;

    FOREACH v_x IN ARRAY v_targets LOOP
        v_details := jsonb_build_object(
            'reason', v_reason,
            'cancelled_by', v_by,
            'cascade', v_cascade,
            'parent_cancel_id', CASE WHEN v_x <> v_root THEN v_root::text END);
        v_events := v_events || noetl.command_cancel_events(v_x, v_reason, v_by)
                    || jsonb_build_array(jsonb_build_object(
                           'execution_id', v_x::text,
                           'event_type', 'execution.cancelled',
                           'node_name', 'cancel',
                           'status', 'CANCELLED',
                           'context', v_details,
                           'meta', v_details || '{"actionable": true}'::jsonb));
    END LOOP;

    -- One append for every execution, so the triggers run once.
    FOR v_last IN
        SELECT a.execution_id, max(a.event_id) AS last_id
          FROM noetl.append_events(v_events) a
         GROUP BY a.execution_id
    LOOP
        PERFORM noetl.command_close_cancelled(v_last.execution_id, v_reason);
        PERFORM noetl.execution_save(v_last.execution_id, NULL, NULL, 'CANCELLED', NULL,
                                     v_last.last_id, 'execution.cancelled', 'cancel', NULL);
        DELETE FROM noetl.keychain k
         WHERE k.execution_id = v_last.execution_id AND k.scope_type = 'local';
    END LOOP;

    RETURN QUERY SELECT t FROM unnest(v_targets) WITH ORDINALITY AS u(t, n) ORDER BY u.n;
END
$$;

CREATE FUNCTION noetl.catalog_archive(path text, version integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_changed integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_archive.path));
    UPDATE noetl.catalog c
       SET archived_at = now()
     WHERE c.path = catalog_archive.path
       AND (catalog_archive.version IS NULL OR c.version = catalog_archive.version)
       AND c.archived_at IS NULL;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_changed > 0 THEN
        PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_archive.path)));
    END IF;
    RETURN v_changed;
END
$$;

CREATE FUNCTION noetl.snowflake_id() RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_node    bigint := coalesce(nullif(current_setting('noetl.node_id', true), '')::bigint, 1);
    v_last    bigint := coalesce(nullif(current_setting('noetl._last_snowflake', true), '')::bigint, 0);
    v_last_ms bigint := v_last >> 22;
    v_before  bigint;
    v_ms      bigint;
    v_seq     bigint;
    v_id      bigint;
BEGIN
    IF v_node < 0 OR v_node > 1023 THEN
        RAISE EXCEPTION 'noetl.node_id must be 0..1023, got %', v_node USING ERRCODE = '22023';
    END IF;
    LOOP
        v_before := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1704067200000;
        v_seq := nextval('noetl.snowflake_seq') & 4095;
        v_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1704067200000;
        CONTINUE WHEN v_ms <> v_before;
        v_id := (v_ms << 22) | (v_node << 12) | v_seq;
        EXIT WHEN v_id > v_last;
        IF v_ms < v_last_ms THEN
            -- The clock went back: keep the last millisecond (or the one after it).
            v_id := (v_last_ms << 22) | (v_node << 12) | v_seq;
            IF v_id <= v_last THEN
                v_id := ((v_last_ms + 1) << 22) | (v_node << 12) | v_seq;
            END IF;
            EXIT;
        END IF;
        -- Same millisecond, sequence wrapped: wait for the next millisecond, then draw again.
        WHILE floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1704067200000 <= v_last_ms LOOP
        END LOOP;
    END LOOP;
    PERFORM set_config('noetl._last_snowflake', v_id::text, false);
    RETURN v_id;
END
$$;

CREATE TABLE noetl.catalog (
    catalog_id bigint DEFAULT noetl.snowflake_id() NOT NULL,
    path text NOT NULL,
    version integer NOT NULL,
    kind text NOT NULL,
    content text,
    payload jsonb,
    layout jsonb,
    meta jsonb,
    credential_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    archived_at timestamp with time zone
);

CREATE FUNCTION noetl.catalog_get(catalog_id bigint) RETURNS SETOF noetl.catalog
    LANGUAGE sql STABLE
    AS $$
    SELECT * FROM noetl.catalog c WHERE c.catalog_id = catalog_get.catalog_id
$$;

CREATE FUNCTION noetl.catalog_latest(path text) RETURNS SETOF noetl.catalog
    LANGUAGE sql STABLE
    AS $$
    SELECT * FROM noetl.catalog c
     WHERE c.path = catalog_latest.path AND c.archived_at IS NULL
     ORDER BY c.version DESC
     LIMIT 1
$$;

CREATE FUNCTION noetl.catalog_register(path text, kind text, content text, payload jsonb, layout jsonb, meta jsonb) RETURNS TABLE(catalog_id bigint, version integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_version integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_register.path));
    INSERT INTO noetl.resource (name) VALUES (catalog_register.kind) ON CONFLICT (name) DO NOTHING;
    SELECT coalesce(max(c.version), 0) + 1 INTO v_version
      FROM noetl.catalog c WHERE c.path = catalog_register.path;
    RETURN QUERY
    INSERT INTO noetl.catalog AS c (path, version, kind, content, payload, layout, meta)
    VALUES (catalog_register.path, v_version, catalog_register.kind, catalog_register.content,
            catalog_register.payload, catalog_register.layout, catalog_register.meta)
    RETURNING c.catalog_id, c.version;
    PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_register.path)));
END
$$;

CREATE FUNCTION noetl.catalog_restore(path text, version integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_changed integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_restore.path));
    UPDATE noetl.catalog c
       SET archived_at = NULL
     WHERE c.path = catalog_restore.path
       AND (catalog_restore.version IS NULL OR c.version = catalog_restore.version)
       AND c.archived_at IS NOT NULL;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_changed > 0 THEN
        PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_restore.path)));
    END IF;
    RETURN v_changed;
END
$$;

CREATE FUNCTION noetl.catalog_version(path text, version integer) RETURNS SETOF noetl.catalog
    LANGUAGE sql STABLE
    AS $$
    SELECT * FROM noetl.catalog c
     WHERE c.path = catalog_version.path AND c.version = catalog_version.version
$$;

CREATE FUNCTION noetl.claim_command(command_event_id bigint, claimant text, lease_s double precision, stale_s double precision, hard_timeout_s double precision, locality jsonb DEFAULT NULL::jsonb) RETURNS TABLE(outcome text, holder text, reason text, execution_id bigint, command_id bigint, event_id bigint, catalog_id bigint, parent_execution_id bigint, step_name text, tool_kind text, pool text, status text, attempts integer, worker_id text, claimed_at timestamp with time zone, context jsonb, meta jsonb, reclaimed_from_worker text, reclaimed_reason text, claim_event_id bigint)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    c_terminal CONSTANT text[] := '{COMPLETED,FAILED,CANCELLED}';
    v_now      timestamptz := now();
    v_exec     bigint;
    v_cmd      noetl.command;
    v_xstatus  text;
    v_holder   noetl.runtime;
    v_from     text;
    v_why      text;
    v_meta     jsonb;
    v_claim_id bigint;
BEGIN
    SELECT c.execution_id INTO v_exec
      FROM noetl.command c
     WHERE c.event_id = command_event_id
     ORDER BY c.execution_id
     LIMIT 1;
    IF v_exec IS NULL THEN
        outcome := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(v_exec);
    SELECT * INTO v_cmd
      FROM noetl.command c
     WHERE c.execution_id = v_exec AND c.event_id = command_event_id
       FOR UPDATE;
    IF NOT FOUND THEN  -- purged between the lookup and the lock
        outcome := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT x.status INTO v_xstatus FROM noetl.execution x WHERE x.execution_id = v_exec;

    IF v_cmd.status = ANY (c_terminal) THEN
        outcome := 'already_terminal';
        reason := 'command_' || lower(v_cmd.status);
    ELSIF v_xstatus = ANY (c_terminal) THEN
        outcome := 'already_terminal';
        reason := 'execution_' || lower(v_xstatus);
    ELSIF v_cmd.status IN ('CLAIMED', 'RUNNING') AND v_cmd.worker_id = claimant THEN
        outcome := 'claimed';  -- a retried claim: same payload, no event
    ELSIF v_cmd.status IN ('CLAIMED', 'RUNNING') THEN
        SELECT * INTO v_holder
          FROM noetl.runtime r
         WHERE r.kind = 'worker_pool' AND r.name = v_cmd.worker_id;
        v_why := noetl.command_reclaim_reason(v_holder.status, v_holder.heartbeat, v_cmd.claimed_at,
                                              v_cmd.heartbeat_at, lease_s, stale_s,
                                              hard_timeout_s, v_now);
        IF v_why IS NULL THEN
            outcome := 'active_claim';
        ELSE
            v_from := v_cmd.worker_id;
        END IF;
    END IF;

    IF outcome IS NULL THEN
        -- PENDING (or a status this function does not know), or a reclaim: grant it.
        v_meta := jsonb_build_object('command_id', v_cmd.command_id::text,
                                     'worker_id', claimant,
                                     'attempts', v_cmd.attempts + 1,
                                     'actionable', false,
                                     'informative', true);
        IF locality IS NOT NULL AND jsonb_typeof(locality) = 'object' THEN
            v_meta := v_meta || jsonb_build_object('locality', locality);
        END IF;
        IF v_from IS NOT NULL OR v_why IS NOT NULL THEN
            v_meta := v_meta || jsonb_build_object('reclaimed', true,
                                                   'reclaimed_from_worker', v_from,
                                                   'reclaimed_reason', v_why);
        END IF;
        SELECT a.event_id INTO v_claim_id
          FROM noetl.append_events(jsonb_build_array(jsonb_build_object(
                   'execution_id', v_exec::text,
                   'catalog_id', v_cmd.catalog_id::text,
                   'parent_event_id', v_cmd.event_id::text,
                   'event_type', 'command.claimed',
                   'node_name', v_cmd.step_name,
                   'node_type', v_cmd.tool_kind,
                   'status', 'RUNNING',
                   'worker_id', claimant,
                   'context', jsonb_build_object('command_id', v_cmd.command_id::text,
                                                 'worker_id', claimant),
                   'meta', v_meta))) a;
        UPDATE noetl.command c
           SET status = 'CLAIMED',
               worker_id = claimant,
               claimed_at = v_now,
               heartbeat_at = NULL,  -- the previous holder's heartbeats do not extend this lease
               attempts = c.attempts + 1,
               latest_event_id = greatest(c.latest_event_id, v_claim_id),
               updated_at = v_now
         WHERE c.execution_id = v_exec AND c.command_id = v_cmd.command_id
        RETURNING * INTO v_cmd;
        outcome := 'claimed';
        reclaimed_from_worker := v_from;
        reclaimed_reason := v_why;
        claim_event_id := v_claim_id;
    END IF;

    holder := v_cmd.worker_id;
    execution_id := v_cmd.execution_id;
    command_id := v_cmd.command_id;
    event_id := v_cmd.event_id;
    catalog_id := v_cmd.catalog_id;
    parent_execution_id := v_cmd.parent_execution_id;
    step_name := v_cmd.step_name;
    tool_kind := v_cmd.tool_kind;
    pool := v_cmd.pool;
    status := v_cmd.status;
    attempts := v_cmd.attempts;
    worker_id := v_cmd.worker_id;
    claimed_at := v_cmd.claimed_at;
    context := v_cmd.context;
    meta := noetl.command_response_meta(v_cmd, lease_s);
    RETURN NEXT;
END
$$;

CREATE FUNCTION noetl.command_apply_event(execution_id bigint, event_id bigint, outcome text DEFAULT NULL::text, error text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    c_terminal CONSTANT text[] := '{COMPLETED,FAILED,CANCELLED}';
    v_now      timestamptz := now();
    v_ev       noetl.event;
    v_cmd      noetl.command;
    v_result   jsonb;
    v_rstatus  text;
    v_status   text;
    v_error    text;
    v_errval   jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(command_apply_event.execution_id);
    SELECT * INTO v_ev FROM noetl.event e
     WHERE e.execution_id = command_apply_event.execution_id
       AND e.event_id = command_apply_event.event_id;
    IF NOT FOUND OR v_ev.command_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_cmd FROM noetl.command c
     WHERE c.execution_id = v_ev.execution_id AND c.command_id = v_ev.command_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF v_ev.event_type IN ('command.started', 'command.heartbeat') THEN
        IF v_cmd.status IN ('CLAIMED', 'RUNNING')
           AND (v_ev.worker_id IS NULL OR v_cmd.worker_id IS NULL OR v_ev.worker_id = v_cmd.worker_id) THEN
            v_cmd.status := 'RUNNING';
            v_cmd.heartbeat_at := v_now;
            IF v_ev.event_type = 'command.started' THEN
                v_cmd.started_at := v_now;
            END IF;
        END IF;
    ELSIF v_ev.event_type IN ('call.done', 'call.error', 'command.completed', 'command.failed',
                              'command.cancelled')
          AND NOT (v_cmd.status = ANY (c_terminal))
          AND NOT (v_ev.meta ? 'ignored') THEN
        v_result := CASE WHEN jsonb_typeof(v_ev.context -> 'result') = 'object'
                         THEN v_ev.context -> 'result' ELSE v_ev.result END;
        IF jsonb_typeof(v_result) = 'object' THEN
            v_rstatus := lower(coalesce(CASE WHEN jsonb_typeof(v_result -> 'context') = 'object'
                                             THEN v_result -> 'context' ->> 'status' END,
                                        v_result ->> 'status'));
        END IF;
        v_status := CASE
            WHEN v_ev.event_type = 'command.cancelled' THEN 'CANCELLED'
            WHEN command_apply_event.outcome = 'error' THEN 'FAILED'
            WHEN command_apply_event.outcome = 'ok' THEN 'COMPLETED'
            WHEN v_ev.event_type IN ('call.error', 'command.failed') THEN 'FAILED'
            WHEN v_ev.status IN ('FAILED', 'ERROR') THEN 'FAILED'
            WHEN v_rstatus IN ('error', 'failed', 'failure', 'timeout') THEN 'FAILED'
            ELSE 'COMPLETED'
        END;
        IF v_status <> 'COMPLETED' THEN
            v_errval := coalesce(v_ev.context -> 'error', v_result -> 'context' -> 'error',
                                 v_result -> 'error');
            v_error := coalesce(
                command_apply_event.error,
                v_ev.error,
                CASE jsonb_typeof(v_errval)
                    WHEN 'string' THEN v_errval #>> '{}'
                    WHEN 'object' THEN coalesce(v_errval ->> 'message', v_errval::text)
                END,
                v_ev.context ->> 'reason');
        END IF;
        v_cmd.status := v_status;
        v_cmd.completed_at := v_now;
        v_cmd.result := v_result;
        v_cmd.error := v_error;
    END IF;

    UPDATE noetl.command c
       SET status = v_cmd.status,
           started_at = v_cmd.started_at,
           heartbeat_at = v_cmd.heartbeat_at,
           completed_at = v_cmd.completed_at,
           result = v_cmd.result,
           error = v_cmd.error,
           latest_event_id = greatest(c.latest_event_id, v_ev.event_id),
           updated_at = v_now
     WHERE c.execution_id = v_cmd.execution_id AND c.command_id = v_cmd.command_id;
    RETURN v_cmd.status;
END
$$;

CREATE FUNCTION noetl.command_cancel_events(execution_id bigint, reason text, cancelled_by text) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_events jsonb;
BEGIN
    WITH opened AS (
        SELECT c.command_id, c.event_id, c.step_name, c.tool_kind
          FROM noetl.command c
         WHERE c.execution_id = command_cancel_events.execution_id
           AND c.status IN ('PENDING', 'CLAIMED', 'RUNNING')
         ORDER BY c.command_id
           FOR UPDATE OF c
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'execution_id', command_cancel_events.execution_id::text,
               'event_type', 'command.cancelled',
               'node_name', o.step_name,
               'node_type', o.tool_kind,
               'status', 'CANCELLED',
               'parent_event_id', o.event_id::text,
               'context', jsonb_build_object('command_id', o.command_id::text,
                                             'reason', command_cancel_events.reason),
               'meta', jsonb_build_object('command_id', o.command_id::text,
                                          'reason', command_cancel_events.reason,
                                          'cancelled_by', command_cancel_events.cancelled_by))
             ORDER BY o.command_id), '[]'::jsonb)
      INTO v_events
      FROM opened o;
    RETURN v_events;
END
$$;

CREATE FUNCTION noetl.command_close_cancelled(execution_id bigint, reason text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_n integer;
BEGIN
    UPDATE noetl.command c
       SET status = 'CANCELLED', completed_at = now(), error = command_close_cancelled.reason,
           updated_at = now(),
           latest_event_id = (SELECT max(e.event_id) FROM noetl.event e
                               WHERE e.execution_id = c.execution_id
                                 AND e.command_id = c.command_id)
     WHERE c.execution_id = command_close_cancelled.execution_id
       AND c.status IN ('PENDING', 'CLAIMED', 'RUNNING');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE FUNCTION noetl.command_notify_again(execution_ids bigint[], command_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_n integer;
BEGIN
    WITH bumped AS (
        UPDATE noetl.command c
           SET notify_count = c.notify_count + 1, notified_at = now(), updated_at = now()
          FROM unnest(execution_ids, command_ids) AS k(execution_id, command_id)
         WHERE c.execution_id = k.execution_id AND c.command_id = k.command_id
        RETURNING c.execution_id, c.command_id, c.event_id, c.step_name, c.pool, c.notify_count
    )
    INSERT INTO noetl.event_outbox (execution_id, kind, source_id, lane, subject, msg_id, headers, payload)
    SELECT b.execution_id, 'command', b.event_id, noetl.outbox_lane(b.execution_id),
           'noetl.commands.' || b.pool || '.' || b.execution_id,
           'command:' || b.event_id || ':' || b.notify_count,
           jsonb_build_object('Noetl-Event-Type', 'command.issued',
                              'Noetl-Execution-Id', b.execution_id::text),
           jsonb_build_object('execution_id', b.execution_id,
                              'event_id', b.event_id,
                              'command_id', b.command_id::text,
                              'step', b.step_name,
                              'pool', b.pool,
                              'execution_pool', b.pool)
      FROM bumped b
     ORDER BY b.event_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        PERFORM pg_notify('noetl_outbox', '');
    END IF;
    RETURN v_n;
END
$$;

CREATE FUNCTION noetl.command_outbox_trigger() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.command_reclaim_reason(holder_status text, holder_heartbeat timestamp with time zone, claimed_at timestamp with time zone, heartbeat_at timestamp with time zone, lease_s double precision, stale_s double precision, hard_timeout_s double precision, decided_at timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN holder_status = 'offline' THEN 'worker_offline'
        WHEN greatest(claimed_at, heartbeat_at) + make_interval(secs => lease_s) > decided_at THEN NULL
        WHEN holder_status IS NULL OR holder_status NOT IN ('ready', 'busy') THEN 'worker_inactive'
        WHEN holder_heartbeat < decided_at - make_interval(secs => stale_s) THEN 'worker_heartbeat_stale'
        WHEN claimed_at + make_interval(secs => hard_timeout_s) <= decided_at THEN 'hard_timeout'
    END
$$;

CREATE FUNCTION noetl.command_renotify(pending_after_s double precision, lease_s double precision, stale_s double precision, hard_timeout_s double precision, lim integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_execs bigint[];
    v_cmds  bigint[];
BEGIN
    WITH due AS (
        SELECT c.execution_id, c.command_id
          FROM noetl.command c
          LEFT JOIN noetl.runtime w ON w.kind = 'worker_pool' AND w.name = c.worker_id
         WHERE c.status IN ('PENDING', 'CLAIMED', 'RUNNING')
           AND CASE WHEN c.status = 'PENDING'
                    THEN c.notified_at < now() - make_interval(secs => pending_after_s)
                    ELSE noetl.command_reclaim_reason(w.status, w.heartbeat, c.claimed_at,
                                                      c.heartbeat_at, lease_s, stale_s,
                                                      hard_timeout_s, now()) IS NOT NULL
               END
           AND NOT EXISTS (SELECT 1 FROM noetl.execution x
                            WHERE x.execution_id = c.execution_id
                              AND x.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
         ORDER BY c.notified_at, c.event_id
         LIMIT greatest(lim, 0)
           FOR UPDATE OF c SKIP LOCKED
    )
    SELECT array_agg(d.execution_id), array_agg(d.command_id) INTO v_execs, v_cmds FROM due d;
    IF v_execs IS NULL THEN
        RETURN 0;
    END IF;
    RETURN noetl.command_notify_again(v_execs, v_cmds);
END
$$;

CREATE TABLE noetl.command (
    execution_id bigint NOT NULL,
    command_id bigint NOT NULL,
    event_id bigint NOT NULL,
    catalog_id bigint NOT NULL,
    parent_execution_id bigint,
    parent_command_id bigint,
    step_name text NOT NULL,
    tool_kind text NOT NULL,
    pool text NOT NULL,
    status text DEFAULT 'PENDING'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    worker_id text,
    claimed_at timestamp with time zone,
    heartbeat_at timestamp with time zone,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    context jsonb NOT NULL,
    meta jsonb DEFAULT '{}'::jsonb NOT NULL,
    result jsonb,
    error text,
    latest_event_id bigint,
    notify_count integer DEFAULT 0 NOT NULL,
    notified_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE FUNCTION noetl.command_response_meta(c noetl.command, lease_s double precision) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT c.meta || jsonb_build_object(
        'command_id', c.command_id::text,
        'step', c.step_name,
        'tool_kind', c.tool_kind,
        'pool', c.pool,
        'attempts', c.attempts,
        'lease_seconds', lease_s,
        'execution_id', c.execution_id::text,
        'catalog_id', c.catalog_id::text)
$$;

CREATE FUNCTION noetl.dashboard_stats() RETURNS TABLE(total_executions bigint, successful_executions bigint, failed_executions bigint, cancelled_executions bigint, active_workflows bigint, total_playbooks bigint, as_of timestamp with time zone)
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(sum(s.runs), 0)::bigint,
           coalesce(sum(s.completed), 0)::bigint,
           coalesce(sum(s.failed), 0)::bigint,
           coalesce(sum(s.cancelled), 0)::bigint,
           coalesce(sum(s.runs - s.completed - s.failed - s.cancelled), 0)::bigint,
           (SELECT count(DISTINCT c.path) FROM noetl.catalog c
             WHERE c.archived_at IS NULL AND c.kind IN ('playbook', 'agent')),
           (SELECT noetl.snowflake_time(max(e.last_event_id)) FROM noetl.execution_summary e)
      FROM noetl.playbook_stats s
$$;

CREATE FUNCTION noetl.duration_bounds() RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT '{100,250,500,1000,2500,5000,10000,30000,60000,120000,300000,600000,1800000,3600000,10800000,43200000,86400000}'::bigint[]
$$;

CREATE FUNCTION noetl.duration_bucket(ms double precision) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT coalesce(
        (SELECT b.i::integer - 1
           FROM unnest(noetl.duration_bounds()) WITH ORDINALITY AS b(upper_ms, i)
          WHERE ms <= b.upper_ms
          ORDER BY b.i
          LIMIT 1),
        17)
$$;

CREATE FUNCTION noetl.engine_apply(execution_id bigint, events jsonb, commands jsonb, state jsonb, status text, error text) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_exec   bigint := engine_apply.execution_id;
    v_ids    bigint[] := '{}';
    v_last   bigint;
    v_n      integer := coalesce(jsonb_array_length(events), 0);
    v_tail   jsonb;
    v_pos    bigint;
    v_status text;
BEGIN
    PERFORM pg_advisory_xact_lock(v_exec);
    IF v_n > 0 THEN
        SELECT array_agg(a.event_id ORDER BY a.ord) INTO v_ids FROM noetl.append_events(events) a;
        SELECT max(i) INTO v_last FROM unnest(v_ids) AS i;
        v_tail := events -> (v_n - 1);
    END IF;
    IF jsonb_typeof(commands) = 'array' AND jsonb_array_length(commands) > 0 THEN
        PERFORM noetl.issue_commands((
            SELECT jsonb_agg(c.cmd || jsonb_build_object(
                       'execution_id', v_exec::text,
                       'event_id', v_ids[(c.cmd ->> 'event_index')::integer + 1]::text)
                     ORDER BY c.n)
              FROM jsonb_array_elements(commands) WITH ORDINALITY AS c(cmd, n)));
    END IF;
    IF state IS NOT NULL THEN
        v_pos := greatest(coalesce((state ->> 'position')::bigint, 0), coalesce(v_last, 0));
        state := state || jsonb_build_object('position', v_pos);
    END IF;
    v_status := noetl.execution_save(v_exec, NULL, NULL, status, state, v_last,
                                     v_tail ->> 'event_type', v_tail ->> 'node_name', error);
    IF status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
        DELETE FROM noetl.keychain k WHERE k.execution_id = v_exec AND k.scope_type = 'local';
    END IF;
    RETURN jsonb_build_object('ids', to_jsonb(v_ids), 'position', v_pos, 'status', v_status);
END
$$;

CREATE FUNCTION noetl.engine_load(execution_id bigint, cached_position bigint) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_exec   bigint := engine_load.execution_id;
    v_x      noetl.execution;
    v_pos    bigint;
    v_from   bigint;
    v_state  jsonb;
    v_events jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(v_exec);
    SELECT * INTO v_x FROM noetl.execution x WHERE x.execution_id = v_exec;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('found', false);
    END IF;
    v_pos := coalesce((v_x.state ->> 'position')::bigint, 0);
    IF cached_position IS NOT NULL AND cached_position >= v_pos THEN
        v_from := cached_position;
    ELSE
        v_from := v_pos;
        v_state := v_x.state;
    END IF;
    SELECT coalesce(jsonb_agg(noetl.event_envelope(e) ORDER BY e.event_id), '[]'::jsonb)
      INTO v_events
      FROM noetl.event e
     WHERE e.execution_id = v_exec AND e.event_id > v_from;
    RETURN jsonb_build_object(
        'found', true,
        'ids', '[]'::jsonb,
        'inserted', '[]'::jsonb,
        'drives', NOT (v_x.status IN ('COMPLETED', 'FAILED', 'CANCELLED')),
        'terminal', v_x.status IN ('COMPLETED', 'FAILED', 'CANCELLED'),
        'status', v_x.status,
        'catalog_id', v_x.catalog_id,
        'pool', v_x.pool,
        'parent_execution_id', v_x.parent_execution_id,
        'state_position', v_pos,
        'state', v_state,
        'trace', CASE WHEN v_events IS NOT NULL AND v_state IS NOT NULL THEN
                     (SELECT e.meta -> 'trace' FROM noetl.event e
                       WHERE e.execution_id = v_exec AND e.event_type = 'playbook.started'
                       ORDER BY e.event_id LIMIT 1) END,
        'events', v_events);
END
$$;

CREATE FUNCTION noetl.event_batch_finish(execution_id bigint, request_id bigint, commands_generated integer, error_code text, message text) RETURNS void
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_state text := CASE WHEN error_code IS NULL THEN 'completed' ELSE 'failed' END;
BEGIN
    PERFORM pg_advisory_xact_lock(event_batch_finish.execution_id);
    UPDATE noetl.event_batch b
       SET state = v_state, commands_generated = coalesce(event_batch_finish.commands_generated, 0),
           error_code = event_batch_finish.error_code, message = event_batch_finish.message,
           updated_at = now()
     WHERE b.execution_id = event_batch_finish.execution_id
       AND b.request_id = event_batch_finish.request_id;
    PERFORM noetl.append_events(jsonb_build_array(jsonb_build_object(
        'execution_id', event_batch_finish.execution_id::text,
        'event_type', CASE WHEN error_code IS NULL THEN 'batch.completed' ELSE 'batch.failed' END,
        'node_name', 'events.batch',
        'status', CASE WHEN error_code IS NULL THEN 'COMPLETED' ELSE 'FAILED' END,
        'error', message,
        'context', jsonb_build_object('request_id', event_batch_finish.request_id::text,
                                      'commands_generated', coalesce(event_batch_finish.commands_generated, 0),
                                      'error_code', error_code,
                                      'message', message),
        'meta', jsonb_build_object('batch_request_id', event_batch_finish.request_id::text))));
    PERFORM pg_notify('noetl_event_batch',
                      jsonb_build_object('request_id', event_batch_finish.request_id::text,
                                         'state', v_state)::text);
END
$$;

CREATE FUNCTION noetl.event_batch_take(execution_id bigint, request_id bigint, holder text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_batch noetl.event_batch;
BEGIN
    PERFORM pg_advisory_xact_lock(event_batch_take.execution_id);
    SELECT * INTO v_batch FROM noetl.event_batch b
     WHERE b.execution_id = event_batch_take.execution_id
       AND b.request_id = event_batch_take.request_id
       AND b.state = 'accepted'
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE noetl.event_batch b
       SET state = 'processing', claimed_by = holder, updated_at = now()
     WHERE b.execution_id = v_batch.execution_id AND b.request_id = v_batch.request_id;
    PERFORM noetl.append_events(jsonb_build_array(jsonb_build_object(
        'execution_id', v_batch.execution_id::text,
        'event_type', 'batch.processing',
        'node_name', 'events.batch',
        'status', 'RUNNING',
        'context', jsonb_build_object('request_id', v_batch.request_id::text,
                                      'event_count', coalesce(array_length(v_batch.event_ids, 1), 0)),
        'meta', jsonb_build_object('batch_request_id', v_batch.request_id::text))));
    RETURN true;
END
$$;

CREATE TABLE noetl.event (
    event_id bigint NOT NULL,
    execution_id bigint NOT NULL,
    catalog_id bigint NOT NULL,
    parent_event_id bigint,
    parent_execution_id bigint,
    prev_event_id bigint,
    event_type text NOT NULL,
    node_id text,
    node_name text,
    node_type text,
    status text NOT NULL,
    context jsonb,
    result jsonb,
    meta jsonb DEFAULT '{}'::jsonb NOT NULL,
    error text,
    duration double precision,
    worker_id text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    tenant_id text DEFAULT 'default'::text NOT NULL,
    organization_id text DEFAULT 'default'::text NOT NULL,
    command_id bigint,
    producer_event_id bigint
)
PARTITION BY RANGE (execution_id);

CREATE FUNCTION noetl.event_envelope(ev noetl.event) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
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

CREATE FUNCTION noetl.event_envelopes(execution_ids bigint[], event_ids bigint[]) RETURNS TABLE(execution_id bigint, event_id bigint, envelope jsonb)
    LANGUAGE sql STABLE
    AS $$
    SELECT e.execution_id, e.event_id, noetl.event_envelope(e)
      FROM unnest(execution_ids, event_ids) AS k(execution_id, event_id)
      JOIN noetl.event e ON e.execution_id = k.execution_id AND e.event_id = k.event_id
$$;

CREATE FUNCTION noetl.event_ingest(execution_id bigint, events jsonb, outcomes jsonb, cached_position bigint, drive boolean) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    c_terminal CONSTANT text[] := '{COMPLETED,FAILED,CANCELLED}';
    v_exec     bigint := event_ingest.execution_id;
    v_x        noetl.execution;
    r          record;
    v_ids      jsonb := '[]';
    v_inserted jsonb := '[]';
    v_drives   boolean := false;
    v_ev       jsonb;
    v_out      jsonb;
    v_cmd      bigint;
    v_before   text;
    v_after    text;
    v_pos      bigint;
    v_from     bigint;
    v_state    jsonb;
    v_events   jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(v_exec);
    SELECT * INTO v_x FROM noetl.execution x WHERE x.execution_id = v_exec;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('found', false);
    END IF;

    FOR r IN SELECT a.ord, a.event_id, a.inserted FROM noetl.append_events(events) a ORDER BY a.ord LOOP
        v_ids := v_ids || to_jsonb(r.event_id);
        v_inserted := v_inserted || to_jsonb(r.inserted);
        CONTINUE WHEN NOT r.inserted;
        v_ev := events -> r.ord;
        v_cmd := noetl.jsonb_to_id(v_ev -> 'meta' -> 'command_id');
        CONTINUE WHEN v_cmd IS NULL;
        SELECT c.status INTO v_before FROM noetl.command c
         WHERE c.execution_id = v_exec AND c.command_id = v_cmd;
        CONTINUE WHEN NOT FOUND;
        v_out := outcomes -> r.ord;
        v_after := noetl.command_apply_event(v_exec, r.event_id,
                                             CASE WHEN jsonb_typeof(v_out) = 'object' THEN v_out ->> 'outcome' END,
                                             CASE WHEN jsonb_typeof(v_out) = 'object' THEN v_out ->> 'error' END);
        IF NOT (v_before = ANY (c_terminal)) AND v_after = ANY (c_terminal)
           AND coalesce(v_ev -> 'meta' ->> 'actionable', 'true') <> 'false' THEN
            v_drives := true;
        END IF;
    END LOOP;

    v_drives := v_drives AND NOT (v_x.status = ANY (c_terminal));
    v_pos := coalesce((v_x.state ->> 'position')::bigint, 0);
    IF v_drives AND drive THEN
        IF cached_position IS NOT NULL AND cached_position >= v_pos THEN
            v_from := cached_position;
        ELSE
            v_from := v_pos;
            v_state := v_x.state;
        END IF;
        SELECT coalesce(jsonb_agg(noetl.event_envelope(e) ORDER BY e.event_id), '[]'::jsonb)
          INTO v_events
          FROM noetl.event e
         WHERE e.execution_id = v_exec AND e.event_id > v_from;
    END IF;

    RETURN jsonb_build_object(
        'found', true,
        'ids', v_ids,
        'inserted', v_inserted,
        'drives', v_drives,
        'terminal', v_x.status = ANY (c_terminal),
        'status', v_x.status,
        'catalog_id', v_x.catalog_id,
        'pool', v_x.pool,
        'parent_execution_id', v_x.parent_execution_id,
        'state_position', v_pos,
        'state', v_state,
        'trace', CASE WHEN v_events IS NOT NULL AND v_state IS NOT NULL THEN
                     (SELECT e.meta -> 'trace' FROM noetl.event e
                       WHERE e.execution_id = v_exec AND e.event_type = 'playbook.started'
                       ORDER BY e.event_id LIMIT 1) END,
        'events', v_events);
END
$$;

CREATE FUNCTION noetl.event_notify_trigger() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.event_outbox_trigger() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.event_partition_drop(before timestamp with time zone) RETURNS SETOF text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.event_partition_ensure(months_ahead integer DEFAULT 3) RETURNS SETOF text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.event_partitions() RETURNS TABLE(partition_name text, lower_bound bigint, upper_bound bigint)
    LANGUAGE sql STABLE
    AS $$
    SELECT c.relname::text,
           substring(b.expr FROM 'FROM \(''?(-?[0-9]+)''?\)')::bigint,
           substring(b.expr FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
     WHERE i.inhparent = 'noetl.event'::regclass
       AND b.expr <> 'DEFAULT'
$$;

CREATE FUNCTION noetl.execute_start(execution_id bigint, catalog_id bigint, pool text, parent_execution_id bigint, dedup_key text, dedup_window_s integer, events jsonb, commands jsonb, state jsonb, status text, error text) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_exec    bigint := execute_start.execution_id;
    v_parent  bigint := execute_start.parent_execution_id;
    v_first   bigint;
    v_applied jsonb;
BEGIN
    IF v_parent IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_parent) THEN
        RETURN jsonb_build_object('outcome', 'parent_not_found');
    END IF;
    IF dedup_key IS NOT NULL THEN
        -- serialises concurrent requests with one key; the two-int form keeps clear of
        -- the execution locks (one-bigint form)
        PERFORM pg_advisory_xact_lock(1313817859, hashtext(coalesce(v_parent, 0)::text || ':' || dedup_key));
        SELECT d.execution_id INTO v_first
          FROM noetl.execution_dedup d
         WHERE coalesce(d.parent_execution_id, 0) = coalesce(v_parent, 0)
           AND d.dedup_key = execute_start.dedup_key
           AND d.expires_at > now();
        IF v_first IS NOT NULL THEN
            RETURN jsonb_build_object('outcome', 'duplicate', 'execution_id', v_first);
        END IF;
        DELETE FROM noetl.execution_dedup d
         WHERE coalesce(d.parent_execution_id, 0) = coalesce(v_parent, 0)
           AND d.dedup_key = execute_start.dedup_key;
        INSERT INTO noetl.execution_dedup (execution_id, parent_execution_id, dedup_key, expires_at)
        VALUES (v_exec, v_parent, dedup_key, now() + make_interval(secs => coalesce(dedup_window_s, 300)));
    END IF;
    PERFORM pg_advisory_xact_lock(v_exec);
    PERFORM noetl.start_execution(v_exec, catalog_id, pool, v_parent, NULL);
    v_applied := noetl.engine_apply(v_exec, events, commands, state, status, error);
    RETURN v_applied || jsonb_build_object('outcome', 'started', 'execution_id', v_exec);
END
$$;

CREATE FUNCTION noetl.execution_is_terminal(execution_id bigint) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT EXISTS (SELECT 1 FROM noetl.execution x
                    WHERE x.execution_id = execution_is_terminal.execution_id
                      AND x.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
        OR EXISTS (SELECT 1 FROM noetl.event e
                    WHERE e.execution_id = execution_is_terminal.execution_id
                      AND e.event_type IN ('playbook.completed', 'workflow.completed',
                                           'playbook.failed', 'workflow.failed',
                                           'execution.cancelled'))
$$;

CREATE FUNCTION noetl.execution_save(execution_id bigint, catalog_id bigint, parent_execution_id bigint, status text, state jsonb, last_event_id bigint, last_event_type text, last_node_name text, error text) RETURNS text
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    c_terminal CONSTANT text[] := '{COMPLETED,FAILED,CANCELLED}';
    v_status   text;
BEGIN
    INSERT INTO noetl.execution AS x (
        execution_id, catalog_id, parent_execution_id, pool, status, state,
        last_event_id, last_event_type, last_node_name, start_time, end_time, error,
        created_at, updated_at)
    VALUES (
        execution_save.execution_id,
        -- NOT NULL is checked before ON CONFLICT, so an update without catalog_id needs the
        -- stored one here.
        coalesce(execution_save.catalog_id,
                 (SELECT s.catalog_id FROM noetl.execution s
                   WHERE s.execution_id = execution_save.execution_id)),
        execution_save.parent_execution_id,
        'default', coalesce(execution_save.status, 'RUNNING'), coalesce(execution_save.state, '{}'),
        coalesce(execution_save.last_event_id, 0), execution_save.last_event_type,
        execution_save.last_node_name, now(),
        CASE WHEN execution_save.status = ANY (c_terminal) THEN now() END,
        execution_save.error, now(), now())
    ON CONFLICT (execution_id) DO UPDATE SET
        catalog_id = coalesce(execution_save.catalog_id, x.catalog_id),
        parent_execution_id = coalesce(execution_save.parent_execution_id, x.parent_execution_id),
        status = CASE WHEN x.status = ANY (c_terminal) THEN x.status
                      ELSE coalesce(execution_save.status, x.status) END,
        end_time = CASE WHEN x.status = ANY (c_terminal) THEN x.end_time
                        WHEN execution_save.status = ANY (c_terminal) THEN coalesce(x.end_time, now())
                        ELSE x.end_time END,
        error = CASE WHEN x.status = ANY (c_terminal) THEN x.error
                     ELSE coalesce(execution_save.error, x.error) END,
        state = coalesce(execution_save.state, x.state),
        last_event_id = greatest(x.last_event_id, execution_save.last_event_id),
        last_event_type = coalesce(execution_save.last_event_type, x.last_event_type),
        last_node_name = coalesce(execution_save.last_node_name, x.last_node_name),
        updated_at = now()
    RETURNING x.status INTO v_status;
    RETURN v_status;
END
$$;

CREATE FUNCTION noetl.execution_terminal_status(event_type text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE event_type
        WHEN 'playbook.completed' THEN 'COMPLETED'
        WHEN 'workflow.completed' THEN 'COMPLETED'
        WHEN 'playbook.failed' THEN 'FAILED'
        WHEN 'workflow.failed' THEN 'FAILED'
        WHEN 'execution.cancelled' THEN 'CANCELLED'
    END
$$;

CREATE FUNCTION noetl.finalize_execution(execution_id bigint, reason text DEFAULT 'Abandoned or timed out'::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_x      bigint := finalize_execution.execution_id;
    v_reason text := coalesce(finalize_execution.reason, 'Abandoned or timed out');
    v_events jsonb;
    v_last   bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(v_x);
    IF NOT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_x) THEN
        RETURN 'not_found';
    END IF;
    IF noetl.execution_is_terminal(v_x) THEN
        RETURN 'already_completed';
    END IF;
    v_events := noetl.command_cancel_events(v_x, v_reason, 'finalize')
                || jsonb_build_array(jsonb_build_object(
                       'execution_id', v_x::text,
                       'event_type', 'playbook.failed',
                       'node_name', 'finalize',
                       'status', 'FAILED',
                       'error', v_reason,
                       'context', jsonb_build_object('reason', v_reason, 'error', v_reason),
                       'meta', jsonb_build_object('reason', v_reason, 'finalized_by', 'api')));
    SELECT max(a.event_id) INTO v_last FROM noetl.append_events(v_events) a;
    PERFORM noetl.command_close_cancelled(v_x, v_reason);
    PERFORM noetl.execution_save(v_x, NULL, NULL, 'FAILED', NULL, v_last, 'playbook.failed',
                                 'finalize', v_reason);
    DELETE FROM noetl.keychain k WHERE k.execution_id = v_x AND k.scope_type = 'local';
    RETURN 'finalized';
END
$$;

CREATE FUNCTION noetl.find_stuck_executions(older_than_minutes integer) RETURNS SETOF bigint
    LANGUAGE sql STABLE
    AS $$
    SELECT x.execution_id
      FROM noetl.execution x
     WHERE x.status IN ('RUNNING', 'PAUSED')
       AND x.start_time < now() - make_interval(mins => older_than_minutes)
       AND NOT noetl.execution_is_terminal(x.execution_id)
     ORDER BY x.execution_id
$$;

CREATE FUNCTION noetl.get_command(command_event_id bigint, lease_s double precision) RETURNS TABLE(execution_id bigint, command_id bigint, event_id bigint, catalog_id bigint, step_name text, tool_kind text, pool text, status text, attempts integer, worker_id text, context jsonb, meta jsonb)
    LANGUAGE sql STABLE
    AS $$
    SELECT c.execution_id, c.command_id, c.event_id, c.catalog_id, c.step_name, c.tool_kind,
           c.pool, c.status, c.attempts, c.worker_id, c.context,
           noetl.command_response_meta(c, lease_s)
      FROM noetl.command c
     WHERE c.event_id = command_event_id
     ORDER BY c.execution_id
     LIMIT 1
$$;

CREATE FUNCTION noetl.hist_add(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT coalesce(array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i), '{}')
      FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
$$;

CREATE FUNCTION noetl.hist_quantile(hist bigint[], q double precision) RETURNS double precision
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    v_bounds bigint[] := noetl.duration_bounds();
    v_total  numeric := 0;
    v_rank   numeric;
    v_cum    numeric := 0;
    v_count  numeric;
    v_lower  double precision;
    v_upper  double precision;
    i        integer;
BEGIN
    SELECT coalesce(sum(c), 0) INTO v_total FROM unnest(hist) AS c;
    IF v_total <= 0 THEN
        RETURN NULL;
    END IF;
    v_rank := greatest(0.0, least(1.0, q))::numeric * v_total;
    FOR i IN 1 .. coalesce(array_length(hist, 1), 0) LOOP
        v_count := coalesce(hist[i], 0);
        IF v_count > 0 AND v_cum + v_count >= v_rank THEN
            v_lower := CASE WHEN i = 1 THEN 0 ELSE v_bounds[i - 1] END;
            IF i > cardinality(v_bounds) THEN
                RETURN v_lower;
            END IF;
            v_upper := v_bounds[i];
            RETURN v_lower + (v_upper - v_lower) * ((v_rank - v_cum) / v_count)::double precision;
        END IF;
        v_cum := v_cum + v_count;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE FUNCTION noetl.issue_commands(commands jsonb) RETURNS integer
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_i     integer;
    v_c     jsonb;
    v_field text;
    v_x     bigint;
    v_execs bigint[] := '{}';
    v_n     integer;
BEGIN
    IF commands IS NULL OR jsonb_typeof(commands) <> 'array' THEN
        RAISE EXCEPTION 'issue_commands: commands must be a JSON array' USING ERRCODE = '22023';
    END IF;
    FOR v_i IN 0 .. jsonb_array_length(commands) - 1 LOOP
        v_c := commands -> v_i;
        IF jsonb_typeof(v_c) <> 'object' THEN
            RAISE EXCEPTION 'issue_commands: commands[%] is not an object', v_i USING ERRCODE = '22023';
        END IF;
        FOREACH v_field IN ARRAY ARRAY['execution_id', 'command_id', 'event_id'] LOOP
            IF noetl.jsonb_to_id(v_c -> v_field) IS NULL THEN
                RAISE EXCEPTION 'issue_commands: commands[%]: missing or invalid id in field %', v_i, v_field
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
        IF coalesce(v_c ->> 'step', v_c ->> 'step_name', '') = '' THEN
            RAISE EXCEPTION 'issue_commands: commands[%]: missing required field step', v_i
                USING ERRCODE = '22023';
        END IF;
        IF coalesce(v_c ->> 'tool_kind', '') = '' THEN
            RAISE EXCEPTION 'issue_commands: commands[%]: missing required field tool_kind', v_i
                USING ERRCODE = '22023';
        END IF;
        IF jsonb_typeof(v_c -> 'context') IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'issue_commands: commands[%]: field context must be an object', v_i
                USING ERRCODE = '22023';
        END IF;
        v_execs := v_execs || noetl.jsonb_to_id(v_c -> 'execution_id');
    END LOOP;

    FOR v_x IN SELECT DISTINCT x FROM unnest(v_execs) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(v_x);
        IF NOT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = v_x)
           AND EXISTS (SELECT 1 FROM jsonb_array_elements(commands) AS a(c)
                        WHERE noetl.jsonb_to_id(a.c -> 'execution_id') = v_x
                          AND (noetl.jsonb_to_id(a.c -> 'catalog_id') IS NULL
                               OR coalesce(a.c ->> 'pool', '') = '')) THEN
            RAISE EXCEPTION 'issue_commands: execution % has no noetl.execution row to take catalog_id and pool from', v_x
                USING ERRCODE = '22023';
        END IF;
    END LOOP;

    -- One statement, in array order, so the outbox trigger runs once.
    INSERT INTO noetl.command (execution_id, command_id, event_id, catalog_id, parent_execution_id,
                               parent_command_id, step_name, tool_kind, pool, context, meta)
    SELECT k.execution_id, k.command_id, noetl.jsonb_to_id(a.c -> 'event_id'),
           coalesce(x.catalog_id, noetl.jsonb_to_id(a.c -> 'catalog_id')),
           x.parent_execution_id,
           noetl.jsonb_to_id(a.c -> 'parent_command_id'),
           coalesce(nullif(a.c ->> 'step', ''), a.c ->> 'step_name'),
           a.c ->> 'tool_kind',
           coalesce(x.pool, a.c ->> 'pool'),
           a.c -> 'context',
           CASE WHEN jsonb_typeof(a.c -> 'meta') = 'object' THEN a.c -> 'meta' ELSE '{}'::jsonb END
      FROM jsonb_array_elements(commands) WITH ORDINALITY AS a(c, n)
     CROSS JOIN LATERAL (SELECT noetl.jsonb_to_id(a.c -> 'execution_id') AS execution_id,
                                noetl.jsonb_to_id(a.c -> 'command_id') AS command_id) k
      LEFT JOIN noetl.execution x ON x.execution_id = k.execution_id
     ORDER BY a.n
    ON CONFLICT (execution_id, command_id) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

CREATE FUNCTION noetl.jsonb_to_id(v jsonb) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE
        WHEN v IS NULL OR jsonb_typeof(v) NOT IN ('string', 'number') THEN NULL
        WHEN (v #>> '{}') !~ '^[0-9]{1,19}$' THEN NULL
        WHEN (v #>> '{}')::numeric BETWEEN 1 AND 9223372036854775807 THEN (v #>> '{}')::bigint
    END
$_$;

CREATE FUNCTION noetl.lease_acquire(name text, holder text, ttl_s double precision) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    INSERT INTO noetl.runtime AS r (kind, name, status, lease_holder, lease_until, heartbeat,
                                    created_at, updated_at)
    VALUES ('lease', lease_acquire.name, 'ready', lease_acquire.holder,
            v_now + make_interval(secs => lease_acquire.ttl_s), v_now, v_now, v_now)
    ON CONFLICT (kind, name) DO UPDATE SET
        lease_holder = excluded.lease_holder,
        lease_until = excluded.lease_until,
        heartbeat = v_now,
        updated_at = v_now
    WHERE r.lease_holder IS NULL
       OR r.lease_until IS NULL
       OR r.lease_until <= v_now
       OR r.lease_holder = excluded.lease_holder;
    RETURN FOUND;
END
$$;

CREATE FUNCTION noetl.lease_release(name text, holder text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
BEGIN
    UPDATE noetl.runtime r
       SET lease_holder = NULL, lease_until = NULL, updated_at = clock_timestamp()
     WHERE r.kind = 'lease' AND r.name = lease_release.name AND r.lease_holder = lease_release.holder;
    RETURN FOUND;
END
$$;

CREATE FUNCTION noetl.maintenance_cleanup(dead_letter_days integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION noetl.maintenance_finalize_abandoned(age_s integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION noetl.maintenance_partitions(months_ahead integer) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT count(*)::integer FROM noetl.event_partition_ensure(coalesce(months_ahead, 3))
$$;

CREATE FUNCTION noetl.maintenance_retention(days integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION noetl.outbox_claim("limit" integer, max_body_bytes integer, batch_max_bytes bigint, server_url text) RETURNS TABLE(outbox_id bigint, execution_id bigint, kind text, subject text, msg_id text, headers jsonb, body text, slimmed boolean, dead boolean, created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    c_lane_lock CONSTANT integer := 1313817858;
    v_start     integer := floor(random() * 16)::integer;
    v_lane      smallint;
    v_n         integer;
    v_remaining integer := "limit";
    v_lanes     smallint[] := '{}';
    v_counts    integer[] := '{}';
BEGIN
    IF "limit" IS NULL OR "limit" < 1 OR max_body_bytes IS NULL OR max_body_bytes < 1
       OR batch_max_bytes IS NULL OR batch_max_bytes < 1 THEN
        RAISE EXCEPTION 'outbox_claim: limit, max_body_bytes and batch_max_bytes must be positive'
            USING ERRCODE = '22023';
    END IF;

    FOR v_i IN 0 .. 15 LOOP
        EXIT WHEN v_remaining <= 0;
        v_lane := ((v_start + v_i) % 16)::smallint;
        SELECT count(*)::integer INTO v_n
          FROM (SELECT 1 FROM noetl.event_outbox o
                 WHERE o.lane = v_lane AND o.available_at <= now()
                 ORDER BY o.outbox_id
                 LIMIT v_remaining) due;
        CONTINUE WHEN v_n = 0;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(c_lane_lock, v_lane);
        v_lanes := v_lanes || v_lane;
        v_counts := v_counts || v_n;
        v_remaining := v_remaining - v_n;
    END LOOP;

    IF cardinality(v_lanes) = 0 THEN
        RETURN;
    END IF;

    -- One statement for every owned lane: lock, render, slim, cut at the byte budget, and
    -- move the rows that cannot be sent. The running sum is over outbox_id order, so what
    -- the budget cuts is a suffix of every lane and the next claim resumes in order.
    -- (OFFSET 0 keeps each rendered body a single evaluation.)
    RETURN QUERY
    WITH rendered AS (
        SELECT o.outbox_id, o.execution_id, o.kind, o.subject, o.msg_id, o.headers,
               o.created_at, b.body, b.slimmed, octet_length(b.body) > max_body_bytes AS too_large
          FROM unnest(v_lanes, v_counts) AS l(lane, n)
          CROSS JOIN LATERAL (
              SELECT x.outbox_id, x.execution_id, x.kind, x.source_id, x.subject, x.msg_id,
                     x.headers, x.payload, x.created_at
                FROM noetl.event_outbox x
               WHERE x.lane = l.lane AND x.available_at <= now()
               ORDER BY x.outbox_id
               LIMIT l.n
               FOR UPDATE SKIP LOCKED) o
          CROSS JOIN LATERAL (
              SELECT CASE WHEN o.kind = 'command'
                          THEN (o.payload || jsonb_build_object('server_url', server_url))::text
                          ELSE o.payload::text END AS full_body
              OFFSET 0) f
          CROSS JOIN LATERAL (
              SELECT CASE
                         WHEN octet_length(f.full_body) <= max_body_bytes THEN f.full_body
                         WHEN o.kind = 'event'
                         THEN noetl.outbox_slim(o.payload, o.execution_id, o.source_id,
                                                octet_length(f.full_body))::text
                         ELSE f.full_body
                     END AS body,
                     octet_length(f.full_body) > max_body_bytes AND o.kind = 'event' AS slimmed
              OFFSET 0) b
    ), kept AS (
        SELECT r.* FROM (
            SELECT r.*, sum(CASE WHEN r.too_large THEN 0 ELSE octet_length(r.body) END)
                            OVER (ORDER BY r.outbox_id) AS used,
                   CASE WHEN r.too_large THEN 0 ELSE octet_length(r.body) END AS own
              FROM rendered r) r
         WHERE r.used <= batch_max_bytes OR r.used = r.own
    ), buried AS (
        INSERT INTO noetl.event_outbox_dead
               (outbox_id, execution_id, kind, source_id, lane, subject, msg_id, headers,
                payload, attempts, available_at, last_error, created_at, reason)
        SELECT o.outbox_id, o.execution_id, o.kind, o.source_id, o.lane, o.subject, o.msg_id,
               o.headers, o.payload, o.attempts, o.available_at,
               format('body of %s bytes exceeds the %s-byte limit%s', octet_length(k.body),
                      max_body_bytes, CASE WHEN k.slimmed THEN ' even after slimming' END),
               o.created_at, 'too_large'
          FROM kept k
          JOIN noetl.event_outbox o
            ON o.execution_id = k.execution_id AND o.outbox_id = k.outbox_id
         WHERE k.too_large
        ON CONFLICT DO NOTHING
    ), removed AS (
        DELETE FROM noetl.event_outbox o
         USING kept k
         WHERE k.too_large AND o.execution_id = k.execution_id AND o.outbox_id = k.outbox_id
    )
    SELECT k.outbox_id, k.execution_id, k.kind, k.subject, k.msg_id, k.headers,
           CASE WHEN k.too_large THEN NULL ELSE k.body END, k.slimmed, k.too_large,
           k.created_at
      FROM kept k
     ORDER BY k.outbox_id;
END
$$;

CREATE FUNCTION noetl.outbox_complete(published jsonb, failed jsonb, max_attempts integer, retry_base_s double precision, retry_max_s double precision) RETURNS TABLE(deleted integer, retried integer, dead integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_deleted integer := 0;
    v_retried integer := 0;
    v_dead    integer := 0;
    v_bad     text;
BEGIN
    IF published IS NOT NULL AND jsonb_typeof(published) <> 'array'
       OR failed IS NOT NULL AND jsonb_typeof(failed) <> 'array' THEN
        RAISE EXCEPTION 'outbox_complete: published and failed must be JSON arrays'
            USING ERRCODE = '22023';
    END IF;

    IF jsonb_array_length(coalesce(published, '[]')) > 0 THEN
        DELETE FROM noetl.event_outbox o
         USING jsonb_to_recordset(published) AS p(execution_id bigint, outbox_id bigint)
         WHERE o.execution_id = p.execution_id AND o.outbox_id = p.outbox_id;
        GET DIAGNOSTICS v_deleted = ROW_COUNT;
    END IF;

    IF jsonb_array_length(coalesce(failed, '[]')) > 0 THEN
        SELECT f.class INTO v_bad
          FROM jsonb_to_recordset(failed) AS f(class text)
         WHERE f.class IS NULL OR f.class NOT IN ('transient', 'too_large', 'permanent')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'outbox_complete: unknown failure class %', coalesce(v_bad, 'null')
                USING ERRCODE = '22023';
        END IF;

        WITH f AS (
            SELECT * FROM jsonb_to_recordset(failed)
                       AS f(execution_id bigint, outbox_id bigint, error text, class text)
        ), moved AS (
            DELETE FROM noetl.event_outbox o
             USING f
             WHERE o.execution_id = f.execution_id AND o.outbox_id = f.outbox_id
               AND (f.class <> 'transient' OR o.attempts + 1 >= max_attempts)
            RETURNING o.*, f.error AS f_error, f.class AS f_class
        )
        INSERT INTO noetl.event_outbox_dead
               (outbox_id, execution_id, kind, source_id, lane, subject, msg_id, headers,
                payload, attempts, available_at, last_error, created_at, reason)
        SELECT m.outbox_id, m.execution_id, m.kind, m.source_id, m.lane, m.subject, m.msg_id,
               m.headers, m.payload, m.attempts + 1, m.available_at, left(m.f_error, 2000),
               m.created_at,
               CASE m.f_class WHEN 'transient' THEN 'max_attempts' ELSE m.f_class END
          FROM moved m
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_dead = ROW_COUNT;

        UPDATE noetl.event_outbox o
           SET attempts = o.attempts + 1,
               last_error = left(f.error, 2000),
               available_at = now() + make_interval(
                   secs => least(retry_max_s, retry_base_s * power(2, least(o.attempts, 60))))
          FROM jsonb_to_recordset(failed)
               AS f(execution_id bigint, outbox_id bigint, error text, class text)
         WHERE o.execution_id = f.execution_id AND o.outbox_id = f.outbox_id
           AND f.class = 'transient';
        GET DIAGNOSTICS v_retried = ROW_COUNT;
    END IF;

    deleted := v_deleted; retried := v_retried; dead := v_dead;
    RETURN NEXT;
END
$$;

CREATE FUNCTION noetl.outbox_cut_bytes(s text, max_bytes integer) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    v text := left(s, max_bytes);
BEGIN
    WHILE octet_length(v) > max_bytes LOOP
        v := left(v, length(v) - (octet_length(v) - max_bytes + 3) / 4);
    END LOOP;
    RETURN v;
END
$$;

CREATE FUNCTION noetl.outbox_lane(execution_id bigint) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT (hashint8(execution_id) & 15)::smallint
$$;

CREATE FUNCTION noetl.outbox_pending_by_kind() RETURNS TABLE(kind text, pending bigint)
    LANGUAGE sql STABLE
    AS $$
    SELECT k.kind, count(o.outbox_id)
      FROM (VALUES ('event'), ('command')) AS k(kind)
      LEFT JOIN noetl.event_outbox o ON o.kind = k.kind
     GROUP BY k.kind
$$;

CREATE FUNCTION noetl.outbox_requeue_dead(outbox_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_n integer;
BEGIN
    WITH moved AS (
        DELETE FROM noetl.event_outbox_dead d
         WHERE outbox_ids IS NULL OR d.outbox_id = ANY (outbox_ids)
        RETURNING d.*
    )
    INSERT INTO noetl.event_outbox
           (outbox_id, execution_id, kind, source_id, lane, subject, msg_id, headers, payload,
            attempts, available_at, last_error, created_at)
    SELECT m.outbox_id, m.execution_id, m.kind, m.source_id, noetl.outbox_lane(m.execution_id),
           m.subject, m.msg_id, m.headers, m.payload, 0, now(), m.last_error, m.created_at
      FROM moved m
     ORDER BY m.outbox_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        PERFORM pg_notify('noetl_outbox', '');
    END IF;
    RETURN v_n;
END
$$;

CREATE FUNCTION noetl.outbox_slim(payload jsonb, execution_id bigint, event_id bigint, full_bytes integer) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT payload || jsonb_build_object(
        'context', NULL,
        'result', NULL,
        'meta', coalesce((SELECT jsonb_object_agg(m.key, m.value)
                            FROM jsonb_each(CASE WHEN jsonb_typeof(payload -> 'meta') = 'object'
                                                 THEN payload -> 'meta' END) m
                           WHERE m.key IN ('command_id', 'worker_id', 'attempt', 'attempts')),
                         '{}'::jsonb),
        'error', noetl.outbox_cut_bytes(payload ->> 'error', 8192),
        'payload_ref', jsonb_build_object(
            'kind', 'event',
            'uri', 'noetl://execution/' || execution_id || '/event/' || event_id,
            'bytes', full_bytes))
$$;

CREATE FUNCTION noetl.outbox_stats() RETURNS TABLE(pending bigint, due bigint, oldest_seconds double precision, dead bigint)
    LANGUAGE sql STABLE
    AS $$
    SELECT count(*),
           count(*) FILTER (WHERE o.available_at <= now()),
           coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0),
           (SELECT count(*) FROM noetl.event_outbox_dead)
      FROM noetl.event_outbox o
$$;

CREATE FUNCTION noetl.playbook_report(date_from date, date_to date) RETURNS TABLE(path text, catalog_ids bigint[], runs bigint, completed bigint, failed bigint, cancelled bigint, running bigint, success_rate double precision, p50_ms double precision, p95_ms double precision, mean_ms double precision)
    LANGUAGE sql STABLE
    AS $$
    SELECT g.path, g.catalog_ids, g.runs, g.completed, g.failed, g.cancelled,
           g.runs - g.completed - g.failed - g.cancelled,
           g.completed::double precision / nullif(g.completed + g.failed + g.cancelled, 0),
           noetl.hist_quantile(g.hist, 0.5),
           noetl.hist_quantile(g.hist, 0.95),
           g.duration_ms_sum::double precision / nullif(g.completed + g.failed + g.cancelled, 0)
      FROM (SELECT c.path,
                   array_agg(DISTINCT s.catalog_id ORDER BY s.catalog_id) AS catalog_ids,
                   sum(s.runs)::bigint AS runs,
                   sum(s.completed)::bigint AS completed,
                   sum(s.failed)::bigint AS failed,
                   sum(s.cancelled)::bigint AS cancelled,
                   sum(s.duration_ms_sum)::bigint AS duration_ms_sum,
                   noetl.hist_sum(s.duration_hist) AS hist
              FROM noetl.playbook_stats s
              LEFT JOIN noetl.catalog c ON c.catalog_id = s.catalog_id
             WHERE s.day BETWEEN date_from AND date_to
             GROUP BY c.path, CASE WHEN c.path IS NULL THEN s.catalog_id END) g
     ORDER BY g.path NULLS LAST, g.catalog_ids
$$;

CREATE FUNCTION noetl.project_events(events jsonb) RETURNS TABLE(inserted integer, duplicate integer, rejected jsonb)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_batch    jsonb;
    v_valid    integer;
    v_cmd_x    bigint[];
    v_cmd_c    bigint[];
    v_empty_c  bigint[];
    v_empty_d  date[];
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'project_events: events must be a JSON array' USING ERRCODE = '22023';
    END IF;
    -- Projected rows must not re-enter the outbox on the primary (the trigger reads this).
    PERFORM set_config('noetl.outbox_suppress', 'on', true);

    WITH f AS MATERIALIZED (
        SELECT (p.ord - 1)::integer AS ord,
               noetl.projection_invalid(jsonb_typeof(p.e), r.event_id, r.execution_id,
                   r.catalog_id, r.parent_event_id, r.parent_execution_id, r.prev_event_id,
                   r.event_type, r.node_id, r.node_name, r.node_type, r.status, r.context,
                   r.result, r.meta, r.error, r.duration, r.worker_id, r.created_at,
                   r.tenant_id, r.organization_id) AS reason,
               r.*
          FROM jsonb_array_elements(events) WITH ORDINALITY AS p(e, ord)
         CROSS JOIN LATERAL jsonb_to_record(
                   CASE WHEN jsonb_typeof(p.e) = 'object' THEN p.e ELSE '{}'::jsonb END)
               AS r(event_id text, execution_id text, catalog_id text, parent_event_id text,
                    parent_execution_id text, prev_event_id text, event_type jsonb,
                    node_id jsonb, node_name jsonb, node_type jsonb, status jsonb,
                    context jsonb, result jsonb, meta jsonb, error jsonb, duration jsonb,
                    worker_id jsonb, created_at jsonb, tenant_id jsonb, organization_id jsonb)
    ), valid AS MATERIALIZED (
        SELECT q.ord,
               q.event_id::bigint AS event_id,
               q.execution_id::bigint AS execution_id,
               q.catalog_id::bigint AS catalog_id,
               q.parent_event_id::bigint AS parent_event_id,
               q.parent_execution_id::bigint AS parent_execution_id,
               q.prev_event_id::bigint AS prev_event_id,
               q.event_type #>> '{}' AS event_type,
               coalesce(q.node_id, q.node_name) #>> '{}' AS node_id,
               q.node_name #>> '{}' AS node_name,
               q.node_type #>> '{}' AS node_type,
               coalesce(nullif(q.status #>> '{}', ''), CASE
                   WHEN lower(q.event_type #>> '{}') LIKE '%failed%'
                     OR lower(q.event_type #>> '{}') LIKE '%error%' THEN 'FAILED'
                   WHEN lower(q.event_type #>> '{}') LIKE '%completed%'
                     OR lower(q.event_type #>> '{}') LIKE '%done%'
                     OR lower(q.event_type #>> '{}') LIKE '%exit%' THEN 'COMPLETED'
                   ELSE 'RUNNING' END) AS status,
               q.context,
               q.result,
               q.meta,
               q.error #>> '{}' AS error,
               (q.duration #>> '{}')::double precision AS duration,
               coalesce(q.worker_id #>> '{}', q.meta ->> 'worker_id') AS worker_id,
               (q.created_at #>> '{}')::timestamptz AS created_at,
               coalesce(q.tenant_id #>> '{}', 'default') AS tenant_id,
               coalesce(q.organization_id #>> '{}', 'default') AS organization_id,
               noetl.projection_id(q.meta ->> 'command_id') AS command_id,
               noetl.projection_id(q.meta ->> 'producer_event_id') AS producer_event_id
          FROM (SELECT g.ord, g.event_id, g.execution_id, g.catalog_id, g.parent_event_id,
                       g.parent_execution_id, g.prev_event_id, g.event_type, g.node_id,
                       g.node_name, g.node_type, g.status, g.context, g.result,
                       coalesce(g.meta, '{}'::jsonb) AS meta, g.error, g.duration, g.worker_id,
                       g.created_at, g.tenant_id, g.organization_id
                  FROM f g
                 WHERE g.reason IS NULL) q
    ), ins AS (
        INSERT INTO noetl.event (event_id, execution_id, catalog_id, parent_event_id,
                                 parent_execution_id, prev_event_id, event_type, node_id,
                                 node_name, node_type, status, context, result, meta, error,
                                 duration, worker_id, created_at, tenant_id, organization_id,
                                 command_id, producer_event_id)
        SELECT v.event_id, v.execution_id, v.catalog_id, v.parent_event_id,
               v.parent_execution_id, v.prev_event_id, v.event_type, v.node_id,
               v.node_name, v.node_type, v.status, v.context, v.result, v.meta, v.error,
               v.duration, v.worker_id, v.created_at, v.tenant_id, v.organization_id,
               v.command_id, v.producer_event_id
          FROM valid v
         ORDER BY v.ord
        ON CONFLICT (execution_id, event_id) DO NOTHING
        RETURNING 1
    ), agg AS (
        -- the batch's contribution per execution
        SELECT v.execution_id,
               min(v.event_id) AS first_event_id,
               max(v.event_id) AS last_event_id,
               min(v.created_at) AS started_at,
               bool_or(v.parent_execution_id IS NOT NULL) AS has_parent
          FROM valid v
         GROUP BY v.execution_id
    ), first_ev AS (
        SELECT DISTINCT ON (v.execution_id) v.execution_id, v.catalog_id, v.tenant_id,
               v.organization_id
          FROM valid v ORDER BY v.execution_id, v.event_id
    ), parent_ev AS (
        SELECT DISTINCT ON (v.execution_id) v.execution_id, v.parent_execution_id
          FROM valid v WHERE v.parent_execution_id IS NOT NULL
         ORDER BY v.execution_id, v.event_id
    ), last_ev AS (
        SELECT DISTINCT ON (v.execution_id) v.execution_id, v.event_type, v.node_name
          FROM valid v ORDER BY v.execution_id, v.event_id DESC
    ), term_ev AS (
        SELECT DISTINCT ON (t.execution_id) t.execution_id, t.event_id, t.term, t.created_at,
               left(t.error, 4096) AS error
          FROM (SELECT v.execution_id, v.event_id, v.created_at, v.error,
                       noetl.execution_terminal_status(v.event_type) AS term
                  FROM valid v) t
         WHERE t.term IS NOT NULL
         ORDER BY t.execution_id, t.event_id
    ), batch AS (
        SELECT a.execution_id, a.first_event_id, a.last_event_id, a.started_at,
               fe.catalog_id, fe.tenant_id, fe.organization_id, pe.parent_execution_id,
               le.event_type AS last_event_type, le.node_name AS last_node_name,
               te.event_id AS terminal_event_id, te.term, te.created_at AS ended_at, te.error
          FROM agg a
          JOIN first_ev fe ON fe.execution_id = a.execution_id
          JOIN last_ev le ON le.execution_id = a.execution_id
          LEFT JOIN parent_ev pe ON pe.execution_id = a.execution_id
          LEFT JOIN term_ev te ON te.execution_id = a.execution_id
    ), cmds AS (
        SELECT DISTINCT v.execution_id, v.command_id FROM valid v WHERE v.command_id IS NOT NULL
    )
    SELECT (SELECT count(*) FROM ins)::integer,
           (SELECT count(*) FROM valid)::integer,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('index', r.ord, 'reason', r.reason)
                                      ORDER BY r.ord), '[]'::jsonb)
              FROM f r WHERE r.reason IS NOT NULL),
           (SELECT jsonb_agg(to_jsonb(b) ORDER BY b.execution_id) FROM batch b),
           (SELECT array_agg(c.execution_id ORDER BY c.execution_id, c.command_id) FROM cmds c),
           (SELECT array_agg(c.command_id ORDER BY c.execution_id, c.command_id) FROM cmds c)
      INTO inserted, v_valid, rejected, v_batch, v_cmd_x, v_cmd_c;
    duplicate := v_valid - inserted;
    IF v_batch IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;

    -- The read models: under the projection lock of every execution in the batch, taken in
    -- ascending order before any of their rows is read (the rows above needed no lock:
    -- noetl.event only ever takes conflict-ignored inserts).
    PERFORM pg_advisory_xact_lock(1313817859, l.k)
       FROM (SELECT DISTINCT hashint8(x.execution_id) AS k
               FROM jsonb_to_recordset(v_batch) AS x(execution_id bigint)
              ORDER BY 1
             OFFSET 0) l;

    WITH b AS (
        SELECT *
          FROM jsonb_to_recordset(v_batch)
               AS x(execution_id bigint, first_event_id bigint, last_event_id bigint,
                    started_at timestamptz, catalog_id bigint, tenant_id text,
                    organization_id text, parent_execution_id bigint, last_event_type text,
                    last_node_name text, terminal_event_id bigint, term text,
                    ended_at timestamptz, error text)
    ), m AS (
        -- merge with the stored row; o.* is null for a new execution
        SELECT a.execution_id,
               o.execution_id IS NOT NULL AS existed,
               o AS old_row,
               CASE WHEN o.execution_id IS NULL OR a.first_event_id < o.first_event_id
                    THEN a.catalog_id ELSE o.catalog_id END AS catalog_id,
               CASE WHEN o.parent_execution_id IS NULL THEN a.parent_execution_id
                    WHEN a.parent_execution_id IS NULL
                      OR a.parent_execution_id = o.parent_execution_id THEN o.parent_execution_id
                    -- two different parents: the lowest id that carries one decides
                    ELSE (SELECT e.parent_execution_id FROM noetl.event e
                           WHERE e.execution_id = a.execution_id
                             AND e.parent_execution_id IS NOT NULL
                           ORDER BY e.event_id LIMIT 1)
               END AS parent_execution_id,
               CASE WHEN o.execution_id IS NULL OR a.first_event_id < o.first_event_id
                    THEN a.tenant_id ELSE o.tenant_id END AS tenant_id,
               CASE WHEN o.execution_id IS NULL OR a.first_event_id < o.first_event_id
                    THEN a.organization_id ELSE o.organization_id END AS organization_id,
               (noetl.snowflake_time(a.execution_id) AT TIME ZONE 'UTC')::date AS day,
               least(o.started_at, a.started_at) AS started_at,
               least(o.first_event_id, a.first_event_id) AS first_event_id,
               greatest(o.last_event_id, a.last_event_id) AS last_event_id,
               CASE WHEN o.execution_id IS NULL OR a.last_event_id > o.last_event_id
                    THEN a.last_event_type ELSE o.last_event_type END AS last_event_type,
               CASE WHEN o.execution_id IS NULL OR a.last_event_id > o.last_event_id
                    THEN a.last_node_name ELSE o.last_node_name END AS last_node_name,
               a.terminal_event_id IS NOT NULL
                   AND (o.terminal_event_id IS NULL OR a.terminal_event_id < o.terminal_event_id)
                   AS term_wins,
               a.terminal_event_id, a.term, a.ended_at, a.error,
               o.status AS o_status, o.ended_at AS o_ended_at,
               o.terminal_event_id AS o_terminal_event_id, o.error AS o_error
          FROM b a
          LEFT JOIN LATERAL (SELECT * FROM noetl.execution_summary s
                              WHERE s.execution_id = a.execution_id OFFSET 0) o ON true
    ), n AS (
        SELECT m.execution_id, m.existed, m.old_row,
               -- column order of noetl.execution_summary (tables.sql)
               ROW(m.execution_id, m.catalog_id, m.parent_execution_id, m.tenant_id,
                   m.organization_id, m.day,
                   CASE WHEN m.term_wins THEN m.term ELSE coalesce(m.o_status, 'RUNNING') END,
                   m.started_at,
                   w.ended_at,
                   CASE WHEN w.ended_at IS NOT NULL
                        THEN greatest(0, round(extract(epoch FROM w.ended_at - m.started_at)
                                               * 1000))::bigint END,
                   m.first_event_id, m.last_event_id, m.last_event_type, m.last_node_name,
                   CASE WHEN m.term_wins THEN m.terminal_event_id ELSE m.o_terminal_event_id END,
                   CASE WHEN m.term_wins THEN m.error ELSE m.o_error END
               )::noetl.execution_summary AS new_row
          FROM m
         CROSS JOIN LATERAL (SELECT CASE WHEN m.term_wins THEN m.ended_at ELSE m.o_ended_at END
                                        AS ended_at) w
    ), changed AS MATERIALIZED (
        SELECT n.* FROM n WHERE NOT n.existed OR n.new_row IS DISTINCT FROM n.old_row
    ), up AS (
        INSERT INTO noetl.execution_summary
        SELECT (c.new_row).* FROM changed c ORDER BY c.execution_id
        ON CONFLICT (execution_id) DO UPDATE SET
            catalog_id = EXCLUDED.catalog_id,
            parent_execution_id = EXCLUDED.parent_execution_id,
            tenant_id = EXCLUDED.tenant_id,
            organization_id = EXCLUDED.organization_id,
            day = EXCLUDED.day,
            status = EXCLUDED.status,
            started_at = EXCLUDED.started_at,
            ended_at = EXCLUDED.ended_at,
            duration_ms = EXCLUDED.duration_ms,
            first_event_id = EXCLUDED.first_event_id,
            last_event_id = EXCLUDED.last_event_id,
            last_event_type = EXCLUDED.last_event_type,
            last_node_name = EXCLUDED.last_node_name,
            terminal_event_id = EXCLUDED.terminal_event_id,
            error = EXCLUDED.error
        RETURNING 1
    ), contrib AS MATERIALIZED (
        -- minus the old contribution of each changed row, plus its new one
        SELECT x.catalog_id, x.day, x.sign, x.status, x.duration_ms,
               CASE WHEN x.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
                         AND x.duration_ms IS NOT NULL
                    THEN noetl.duration_bucket(x.duration_ms) END AS bucket
          FROM (SELECT (c.old_row).catalog_id, (c.old_row).day, -1 AS sign,
                       (c.old_row).status, (c.old_row).duration_ms
                  FROM changed c WHERE c.existed
                UNION ALL
                SELECT (c.new_row).catalog_id, (c.new_row).day, 1,
                       (c.new_row).status, (c.new_row).duration_ms
                  FROM changed c) x
    ), hist AS (
        SELECT k.catalog_id, k.day, array_agg(coalesce(h.n, 0) ORDER BY g.i) AS duration_hist
          FROM (SELECT DISTINCT catalog_id, day FROM contrib) k
         CROSS JOIN generate_series(0, 17) AS g(i)
          LEFT JOIN (SELECT catalog_id, day, bucket, sum(sign)::bigint AS n
                       FROM contrib WHERE bucket IS NOT NULL
                      GROUP BY 1, 2, 3) h
                 ON h.catalog_id = k.catalog_id AND h.day = k.day AND h.bucket = g.i
         GROUP BY k.catalog_id, k.day
    ), delta AS (
        SELECT x.catalog_id, x.day,
               sum(x.sign)::bigint AS runs,
               coalesce(sum(x.sign) FILTER (WHERE x.status = 'COMPLETED'), 0)::bigint AS completed,
               coalesce(sum(x.sign) FILTER (WHERE x.status = 'FAILED'), 0)::bigint AS failed,
               coalesce(sum(x.sign) FILTER (WHERE x.status = 'CANCELLED'), 0)::bigint AS cancelled,
               coalesce(sum(x.sign * x.duration_ms) FILTER (WHERE x.bucket IS NOT NULL), 0)::bigint
                   AS duration_ms_sum
          FROM contrib x
         GROUP BY x.catalog_id, x.day
    ), st AS (
        INSERT INTO noetl.playbook_stats AS s
               (catalog_id, day, runs, completed, failed, cancelled, duration_ms_sum, duration_hist)
        SELECT d.catalog_id, d.day, d.runs, d.completed, d.failed, d.cancelled,
               d.duration_ms_sum, h.duration_hist
          FROM delta d JOIN hist h USING (catalog_id, day)
         WHERE d.runs <> 0 OR d.completed <> 0 OR d.failed <> 0 OR d.cancelled <> 0
            OR d.duration_ms_sum <> 0 OR h.duration_hist <> '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}'
         ORDER BY d.catalog_id, d.day
        ON CONFLICT (catalog_id, day) DO UPDATE SET
            runs = s.runs + EXCLUDED.runs,
            completed = s.completed + EXCLUDED.completed,
            failed = s.failed + EXCLUDED.failed,
            cancelled = s.cancelled + EXCLUDED.cancelled,
            duration_ms_sum = s.duration_ms_sum + EXCLUDED.duration_ms_sum,
            duration_hist = noetl.hist_add(s.duration_hist, EXCLUDED.duration_hist)
        RETURNING s.catalog_id, s.day, s.runs
    )
    SELECT (SELECT array_agg(t.catalog_id) FROM st t WHERE t.runs = 0),
           (SELECT array_agg(t.day) FROM st t WHERE t.runs = 0)
      INTO v_empty_c, v_empty_d;

    -- A (catalog, day) whose last execution moved away (its lowest event named another
    -- catalog) is not in the GROUP BY over execution_summary either.
    IF v_empty_c IS NOT NULL THEN
        DELETE FROM noetl.playbook_stats s
         USING unnest(v_empty_c, v_empty_d) AS z(catalog_id, day)
         WHERE s.catalog_id = z.catalog_id AND s.day = z.day AND s.runs = 0;
    END IF;

    -- step_run: recomputed from the log (this statement sees the rows inserted above).
    IF v_cmd_x IS NOT NULL THEN
        WITH ev AS MATERIALIZED (
            SELECT k.execution_id, k.command_id, e.event_id, e.event_type, e.node_name,
                   e.node_type, e.created_at, e.worker_id, e.error,
                   noetl.step_rank(e.event_type, e.status) AS rank,
                   noetl.step_terminal_status(e.event_type, e.status) AS term,
                   CASE WHEN jsonb_typeof(e.meta -> 'attempts') = 'number'
                             AND (e.meta -> 'attempts')::numeric BETWEEN 1 AND 2147483647
                        THEN floor((e.meta -> 'attempts')::numeric)::integer
                   END AS attempts
              FROM unnest(v_cmd_x, v_cmd_c) AS k(execution_id, command_id)
             -- one index probe per command (a lateral subquery the planner cannot turn into a
             -- hash join over the whole partition, whatever the statistics say)
             CROSS JOIN LATERAL (
                   SELECT x.event_id, x.event_type, x.node_name, x.node_type, x.created_at,
                          x.worker_id, x.error, x.status, x.meta
                     FROM noetl.event x
                    WHERE x.execution_id = k.execution_id AND x.command_id = k.command_id
                   OFFSET 0) e
        ), a AS (
            SELECT ev.execution_id, ev.command_id,
                   max(ev.rank) AS max_rank,
                   min(ev.event_id) FILTER (WHERE ev.rank = 0) AS rank0_id,
                   min(ev.event_id) FILTER (WHERE ev.rank = 1) AS rank1_id,
                   min(ev.event_id) FILTER (WHERE ev.rank = 2) AS rank2_id,
                   coalesce(max(ev.attempts), 0) AS attempt,
                   max(ev.event_id) AS last_event_id
              FROM ev GROUP BY ev.execution_id, ev.command_id
        ), issued AS (
            SELECT DISTINCT ON (ev.execution_id, ev.command_id) ev.execution_id, ev.command_id,
                   ev.node_name, ev.node_type, ev.created_at
              FROM ev WHERE ev.event_type = 'command.issued'
             ORDER BY ev.execution_id, ev.command_id, ev.event_id
        ), claimed AS (
            SELECT DISTINCT ON (ev.execution_id, ev.command_id) ev.execution_id, ev.command_id,
                   ev.created_at, ev.worker_id
              FROM ev WHERE ev.event_type = 'command.claimed'
             ORDER BY ev.execution_id, ev.command_id, ev.event_id DESC
        ), started AS (
            SELECT DISTINCT ON (ev.execution_id, ev.command_id) ev.execution_id, ev.command_id,
                   ev.created_at
              FROM ev WHERE ev.event_type = 'command.started'
             ORDER BY ev.execution_id, ev.command_id, ev.event_id DESC
        ), term AS (
            SELECT DISTINCT ON (ev.execution_id, ev.command_id) ev.execution_id, ev.command_id,
                   ev.event_id, ev.term, ev.created_at, left(ev.error, 4096) AS error
              FROM ev WHERE ev.term IS NOT NULL
             ORDER BY ev.execution_id, ev.command_id, ev.event_id
        )
        INSERT INTO noetl.step_run AS s
               (execution_id, command_id, step_name, tool_kind, status, status_event_id,
                attempt, worker_id, issued_at, claimed_at, started_at, ended_at, duration_ms,
                error, last_event_id)
        SELECT a.execution_id, a.command_id, i.node_name, i.node_type,
               CASE a.max_rank WHEN 3 THEN t.term WHEN 2 THEN 'RUNNING'
                               WHEN 1 THEN 'CLAIMED' ELSE 'PENDING' END,
               CASE a.max_rank WHEN 3 THEN t.event_id WHEN 2 THEN a.rank2_id
                               WHEN 1 THEN a.rank1_id ELSE a.rank0_id END,
               a.attempt, c.worker_id, i.created_at, c.created_at, r.created_at, t.created_at,
               CASE WHEN t.created_at IS NOT NULL
                         AND coalesce(r.created_at, c.created_at, i.created_at) IS NOT NULL
                    THEN greatest(0, round(extract(epoch FROM t.created_at
                             - coalesce(r.created_at, c.created_at, i.created_at)) * 1000))::bigint
               END,
               t.error, a.last_event_id
          FROM a
          LEFT JOIN issued i ON i.execution_id = a.execution_id AND i.command_id = a.command_id
          LEFT JOIN claimed c ON c.execution_id = a.execution_id AND c.command_id = a.command_id
          LEFT JOIN started r ON r.execution_id = a.execution_id AND r.command_id = a.command_id
          LEFT JOIN term t ON t.execution_id = a.execution_id AND t.command_id = a.command_id
         ORDER BY a.execution_id, a.command_id
        ON CONFLICT (execution_id, command_id) DO UPDATE SET
            step_name = EXCLUDED.step_name,
            tool_kind = EXCLUDED.tool_kind,
            status = EXCLUDED.status,
            status_event_id = EXCLUDED.status_event_id,
            attempt = EXCLUDED.attempt,
            worker_id = EXCLUDED.worker_id,
            issued_at = EXCLUDED.issued_at,
            claimed_at = EXCLUDED.claimed_at,
            started_at = EXCLUDED.started_at,
            ended_at = EXCLUDED.ended_at,
            duration_ms = EXCLUDED.duration_ms,
            error = EXCLUDED.error,
            last_event_id = EXCLUDED.last_event_id
        WHERE (s.step_name, s.tool_kind, s.status, s.status_event_id, s.attempt, s.worker_id,
               s.issued_at, s.claimed_at, s.started_at, s.ended_at, s.duration_ms, s.error,
               s.last_event_id)
              IS DISTINCT FROM
              (EXCLUDED.step_name, EXCLUDED.tool_kind, EXCLUDED.status, EXCLUDED.status_event_id,
               EXCLUDED.attempt, EXCLUDED.worker_id, EXCLUDED.issued_at, EXCLUDED.claimed_at,
               EXCLUDED.started_at, EXCLUDED.ended_at, EXCLUDED.duration_ms, EXCLUDED.error,
               EXCLUDED.last_event_id);
    END IF;

    RETURN NEXT;
END
$$;

CREATE FUNCTION noetl.projection_id(t text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN length(t) BETWEEN 1 AND 19 AND t !~ '[^0-9]'
         AND (length(t) < 19 OR t COLLATE "C" <= '9223372036854775807')
        THEN nullif(t::bigint, 0)
    END
$$;

CREATE FUNCTION noetl.projection_invalid(kind text, event_id text, execution_id text, catalog_id text, parent_event_id text, parent_execution_id text, prev_event_id text, event_type jsonb, node_id jsonb, node_name jsonb, node_type jsonb, status jsonb, context jsonb, result jsonb, meta jsonb, error jsonb, duration jsonb, worker_id jsonb, created_at jsonb, tenant_id jsonb, organization_id jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE
        WHEN kind IS DISTINCT FROM 'object' THEN 'event: not an object'
        WHEN noetl.projection_id(event_id) IS NULL THEN 'event_id: missing or not an id'
        WHEN noetl.projection_id(execution_id) IS NULL THEN 'execution_id: missing or not an id'
        WHEN noetl.projection_id(catalog_id) IS NULL THEN 'catalog_id: missing or not an id'
        WHEN parent_event_id IS NOT NULL AND noetl.projection_id(parent_event_id) IS NULL
             THEN 'parent_event_id: not an id'
        WHEN parent_execution_id IS NOT NULL AND noetl.projection_id(parent_execution_id) IS NULL
             THEN 'parent_execution_id: not an id'
        WHEN prev_event_id IS NOT NULL AND noetl.projection_id(prev_event_id) IS NULL
             THEN 'prev_event_id: not an id'
        -- (a bounded repetition such as {1,128} makes the regex ten times slower)
        WHEN jsonb_typeof(event_type) IS DISTINCT FROM 'string'
             OR length(event_type #>> '{}') NOT BETWEEN 1 AND 128
             OR (event_type #>> '{}') ~ '[^A-Za-z0-9_.:-]'
             THEN 'event_type: missing or not 1..128 of [A-Za-z0-9_.:-]'
        WHEN jsonb_typeof(node_id) <> 'string' OR length(node_id #>> '{}') > 512
             THEN 'node_id: not a string of at most 512 characters'
        WHEN jsonb_typeof(node_name) <> 'string' OR length(node_name #>> '{}') > 512
             THEN 'node_name: not a string of at most 512 characters'
        WHEN jsonb_typeof(node_type) <> 'string' OR length(node_type #>> '{}') > 128
             THEN 'node_type: not a string of at most 128 characters'
        WHEN jsonb_typeof(status) <> 'string' OR length(status #>> '{}') > 32
             THEN 'status: not a string of at most 32 characters'
        WHEN jsonb_typeof(context) <> 'object' THEN 'context: not an object'
        WHEN jsonb_typeof(result) <> 'object' THEN 'result: not an object'
        WHEN jsonb_typeof(meta) <> 'object' THEN 'meta: not an object'
        WHEN jsonb_typeof(error) <> 'string' THEN 'error: not a string'
        WHEN jsonb_typeof(duration) <> 'number' OR duration::numeric NOT BETWEEN 0 AND 1e308
             THEN 'duration: not a number >= 0'
        WHEN jsonb_typeof(worker_id) <> 'string' OR length(worker_id #>> '{}') > 256
             THEN 'worker_id: not a string of at most 256 characters'
        -- the shape and the offset; the calendar is the cast's (canonical 'Z' skips the regex)
        WHEN jsonb_typeof(created_at) IS DISTINCT FROM 'string'
             OR (created_at #>> '{}') NOT LIKE '____-__-__%'
             OR (right(created_at #>> '{}', 1) NOT IN ('Z', 'z')
                 AND (created_at #>> '{}') !~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d(:?\d\d)?$')
             THEN 'created_at: missing or not RFC 3339 with an offset'
        WHEN jsonb_typeof(tenant_id) <> 'string' OR length(tenant_id #>> '{}') > 128
             THEN 'tenant_id: not a string of at most 128 characters'
        WHEN jsonb_typeof(organization_id) <> 'string' OR length(organization_id #>> '{}') > 128
             THEN 'organization_id: not a string of at most 128 characters'
    END
$_$;

CREATE FUNCTION noetl.projector_reject_add(stream text, consumer text, stream_seq bigint[], subject text[], msg_id text[], execution_id bigint[], event_id bigint[], reason text[], error text[], deliveries integer[], headers jsonb[], body bytea[]) RETURNS integer
    LANGUAGE sql
    AS $$
    WITH added AS (
        INSERT INTO noetl.projector_reject (stream, stream_seq, consumer, subject, msg_id,
                                           execution_id, event_id, reason, error, deliveries,
                                           headers, body)
        SELECT projector_reject_add.stream, r.stream_seq, projector_reject_add.consumer,
               r.subject, r.msg_id, r.execution_id, r.event_id, r.reason, r.error,
               r.deliveries, r.headers, r.body
          FROM unnest(stream_seq, subject, msg_id, execution_id, event_id, reason, error,
                      deliveries, headers, body)
               AS r(stream_seq, subject, msg_id, execution_id, event_id, reason, error,
                    deliveries, headers, body)
         ORDER BY r.stream_seq
        ON CONFLICT ON CONSTRAINT projector_reject_pkey DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM added
$$;

CREATE FUNCTION noetl.purge_executions(before timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION noetl.rfc3339(ts timestamp with time zone) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION noetl.runtime_deregister(name text) RETURNS TABLE(runtime_id bigint, renotified integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_execs bigint[];
    v_cmds  bigint[];
BEGIN
    UPDATE noetl.runtime r
       SET status = 'offline', updated_at = now()
     WHERE r.kind = 'worker_pool' AND r.name = runtime_deregister.name
    RETURNING r.runtime_id INTO runtime_id;
    renotified := 0;
    IF runtime_id IS NOT NULL THEN
        WITH mine AS (
            SELECT c.execution_id, c.command_id
              FROM noetl.command c
             WHERE c.status IN ('CLAIMED', 'RUNNING')
               AND c.worker_id = runtime_deregister.name
               AND NOT EXISTS (SELECT 1 FROM noetl.execution x
                                WHERE x.execution_id = c.execution_id
                                  AND x.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
             ORDER BY c.event_id
               FOR UPDATE OF c SKIP LOCKED
        )
        SELECT array_agg(m.execution_id), array_agg(m.command_id) INTO v_execs, v_cmds FROM mine m;
        IF v_execs IS NOT NULL THEN
            renotified := noetl.command_notify_again(v_execs, v_cmds);
        END IF;
    END IF;
    RETURN NEXT;
END
$$;

CREATE FUNCTION noetl.snowflake_floor(ts timestamp with time zone) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT (floor(extract(epoch FROM ts) * 1000)::bigint - 1704067200000) << 22
$$;

CREATE FUNCTION noetl.snowflake_time(id bigint) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT timestamptz '2024-01-01 00:00:00+00' + (id >> 22) * interval '1 millisecond'
$$;

CREATE FUNCTION noetl.start_execution(execution_id bigint, catalog_id bigint, pool text, parent_execution_id bigint DEFAULT NULL::bigint, parent_event_id bigint DEFAULT NULL::bigint) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO noetl.execution (execution_id, catalog_id, parent_execution_id, parent_event_id,
                                 pool, status, last_event_id, start_time)
    VALUES (start_execution.execution_id, start_execution.catalog_id,
            start_execution.parent_execution_id, start_execution.parent_event_id,
            start_execution.pool, 'RUNNING', 0, now())
    ON CONFLICT (execution_id) DO NOTHING;
    RETURN FOUND;
END
$$;

CREATE FUNCTION noetl.step_rank(event_type text, status text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN noetl.step_terminal_status(event_type, status) IS NOT NULL THEN 3
        WHEN event_type IN ('command.started', 'command.heartbeat') THEN 2
        WHEN event_type = 'command.claimed' THEN 1
        ELSE 0
    END
$$;

CREATE FUNCTION noetl.step_terminal_status(event_type text, status text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN event_type = 'command.completed' THEN 'COMPLETED'
        WHEN event_type IN ('command.failed', 'call.error') THEN 'FAILED'
        WHEN event_type = 'command.cancelled' THEN 'CANCELLED'
        WHEN event_type = 'call.done' AND status = 'COMPLETED' THEN 'COMPLETED'
        WHEN event_type = 'call.done' AND status IN ('FAILED', 'ERROR') THEN 'FAILED'
    END
$$;

CREATE AGGREGATE noetl.hist_sum(bigint[]) (
    SFUNC = noetl.hist_add,
    STYPE = bigint[],
    COMBINEFUNC = noetl.hist_add,
    PARALLEL = safe
);

CREATE TABLE noetl.alembic_version (
    version_num character varying(32) NOT NULL
);

CREATE TABLE noetl.credential (
    id bigint DEFAULT noetl.snowflake_id() NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    data_encrypted text NOT NULL,
    schema jsonb,
    meta jsonb,
    tags text[],
    description text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE noetl.event_batch (
    execution_id bigint NOT NULL,
    request_id bigint DEFAULT noetl.snowflake_id() NOT NULL,
    idempotency_key text,
    body_sha256 text,
    state text NOT NULL,
    event_ids bigint[] NOT NULL,
    commands_generated integer DEFAULT 0 NOT NULL,
    error_code text,
    message text,
    claimed_by text,
    lease_until timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE noetl.event_default (
    event_id bigint CONSTRAINT event_event_id_not_null NOT NULL,
    execution_id bigint CONSTRAINT event_execution_id_not_null NOT NULL,
    catalog_id bigint CONSTRAINT event_catalog_id_not_null NOT NULL,
    parent_event_id bigint,
    parent_execution_id bigint,
    prev_event_id bigint,
    event_type text CONSTRAINT event_event_type_not_null NOT NULL,
    node_id text,
    node_name text,
    node_type text,
    status text CONSTRAINT event_status_not_null NOT NULL,
    context jsonb,
    result jsonb,
    meta jsonb DEFAULT '{}'::jsonb CONSTRAINT event_meta_not_null NOT NULL,
    error text,
    duration double precision,
    worker_id text,
    created_at timestamp with time zone DEFAULT now() CONSTRAINT event_created_at_not_null NOT NULL,
    tenant_id text DEFAULT 'default'::text CONSTRAINT event_tenant_id_not_null NOT NULL,
    organization_id text DEFAULT 'default'::text CONSTRAINT event_organization_id_not_null NOT NULL,
    command_id bigint,
    producer_event_id bigint
);

CREATE TABLE noetl.event_outbox (
    outbox_id bigint NOT NULL,
    execution_id bigint NOT NULL,
    kind text NOT NULL,
    source_id bigint NOT NULL,
    lane smallint NOT NULL,
    subject text,
    msg_id text NOT NULL,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    payload jsonb NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    available_at timestamp with time zone DEFAULT now() NOT NULL,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL
)
WITH (autovacuum_vacuum_scale_factor='0.0', autovacuum_vacuum_threshold='1000', autovacuum_vacuum_insert_scale_factor='0.0', autovacuum_vacuum_insert_threshold='1000', autovacuum_analyze_scale_factor='0.0', autovacuum_analyze_threshold='1000', autovacuum_vacuum_cost_delay='0', fillfactor='90');

CREATE TABLE noetl.event_outbox_dead (
    outbox_id bigint NOT NULL,
    execution_id bigint NOT NULL,
    kind text NOT NULL,
    source_id bigint NOT NULL,
    lane smallint NOT NULL,
    subject text,
    msg_id text NOT NULL,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    payload jsonb NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    available_at timestamp with time zone DEFAULT now() NOT NULL,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    reason text NOT NULL,
    dead_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE noetl.event_outbox ALTER COLUMN outbox_id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME noetl.event_outbox_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE noetl.execution (
    execution_id bigint NOT NULL,
    catalog_id bigint NOT NULL,
    parent_execution_id bigint,
    parent_event_id bigint,
    tenant_id text DEFAULT 'default'::text NOT NULL,
    organization_id text DEFAULT 'default'::text NOT NULL,
    pool text NOT NULL,
    status text NOT NULL,
    state jsonb DEFAULT '{}'::jsonb NOT NULL,
    last_event_id bigint NOT NULL,
    last_event_type text,
    last_node_name text,
    start_time timestamp with time zone NOT NULL,
    end_time timestamp with time zone,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE noetl.execution_dedup (
    execution_id bigint NOT NULL,
    parent_execution_id bigint,
    dedup_key text NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE noetl.execution_summary (
    execution_id bigint NOT NULL,
    catalog_id bigint NOT NULL,
    parent_execution_id bigint,
    tenant_id text NOT NULL,
    organization_id text NOT NULL,
    day date NOT NULL,
    status text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    ended_at timestamp with time zone,
    duration_ms bigint,
    first_event_id bigint NOT NULL,
    last_event_id bigint NOT NULL,
    last_event_type text,
    last_node_name text,
    terminal_event_id bigint,
    error text
);

CREATE TABLE noetl.keychain (
    cache_key text NOT NULL,
    keychain_name text NOT NULL,
    catalog_id bigint NOT NULL,
    credential_type text NOT NULL,
    cache_type text NOT NULL,
    scope_type text NOT NULL,
    execution_id bigint,
    parent_execution_id bigint,
    data_encrypted text NOT NULL,
    schema jsonb,
    renew_config text,
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    accessed_at timestamp with time zone DEFAULT now() NOT NULL,
    access_count integer DEFAULT 0 NOT NULL,
    auto_renew boolean DEFAULT false NOT NULL
);

CREATE TABLE noetl.playbook_stats (
    catalog_id bigint NOT NULL,
    day date NOT NULL,
    runs bigint DEFAULT 0 NOT NULL,
    completed bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL,
    cancelled bigint DEFAULT 0 NOT NULL,
    duration_ms_sum bigint DEFAULT 0 NOT NULL,
    duration_hist bigint[] DEFAULT '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}'::bigint[] NOT NULL
);

CREATE TABLE noetl.projector_reject (
    stream text NOT NULL,
    stream_seq bigint NOT NULL,
    consumer text NOT NULL,
    subject text NOT NULL,
    msg_id text,
    execution_id bigint,
    event_id bigint,
    reason text NOT NULL,
    error text NOT NULL,
    deliveries integer NOT NULL,
    headers jsonb,
    body bytea NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE noetl.resource (
    name text NOT NULL,
    meta jsonb
);

CREATE TABLE noetl.runtime (
    runtime_id bigint DEFAULT noetl.snowflake_id() NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    uri text,
    status text NOT NULL,
    labels jsonb,
    capabilities jsonb,
    runtime jsonb,
    capacity integer,
    heartbeat timestamp with time zone DEFAULT now() NOT NULL,
    lease_holder text,
    lease_until timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE noetl.snowflake_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE noetl.step_run (
    execution_id bigint NOT NULL,
    command_id bigint NOT NULL,
    step_name text,
    tool_kind text,
    status text NOT NULL,
    status_event_id bigint NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    worker_id text,
    issued_at timestamp with time zone,
    claimed_at timestamp with time zone,
    started_at timestamp with time zone,
    ended_at timestamp with time zone,
    duration_ms bigint,
    error text,
    last_event_id bigint NOT NULL
);

CREATE TABLE noetl.transient (
    execution_id bigint NOT NULL,
    var_name text NOT NULL,
    var_type text NOT NULL,
    var_value jsonb NOT NULL,
    source_step text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    accessed_at timestamp with time zone DEFAULT now() NOT NULL,
    access_count integer DEFAULT 0 NOT NULL
);

CREATE VIEW noetl.v_dead_letters AS
 SELECT 'outbox'::text AS source,
    (d.outbox_id)::text AS dead_key,
    d.execution_id,
    d.source_id AS event_id,
    d.kind,
    COALESCE(d.subject, d.msg_id) AS subject,
    d.reason,
    "left"(d.last_error, 500) AS error,
    d.attempts,
    d.dead_at
   FROM noetl.event_outbox_dead d
UNION ALL
 SELECT 'projector'::text AS source,
    ((r.stream || ':'::text) || r.stream_seq) AS dead_key,
    r.execution_id,
    r.event_id,
    'event'::text AS kind,
    r.subject,
    r.reason,
    "left"(r.error, 500) AS error,
    r.deliveries AS attempts,
    r.received_at AS dead_at
   FROM noetl.projector_reject r
  ORDER BY 10 DESC;

CREATE VIEW noetl.v_outbox_backlog AS
 SELECT kind,
    lane,
    count(*) AS pending,
    count(*) FILTER (WHERE (available_at <= now())) AS due,
    count(*) FILTER (WHERE (attempts > 0)) AS retrying,
    max(attempts) AS max_attempts,
    min(created_at) AS oldest_created_at,
    round(EXTRACT(epoch FROM (now() - min(created_at))), 3) AS oldest_seconds
   FROM noetl.event_outbox o
  GROUP BY kind, lane
  ORDER BY kind, lane;

CREATE VIEW noetl.v_pending_commands AS
 SELECT execution_id,
    command_id,
    event_id,
    step_name,
    tool_kind,
    pool,
    status,
    attempts,
    worker_id,
    created_at,
    (now() - created_at) AS age,
    claimed_at,
    heartbeat_at,
    notify_count,
    notified_at
   FROM noetl.command c
  WHERE (status = ANY (ARRAY['PENDING'::text, 'CLAIMED'::text, 'RUNNING'::text]))
  ORDER BY created_at;

CREATE VIEW noetl.v_recent_events AS
 SELECT event_id,
    execution_id,
    created_at,
    event_type,
    node_name,
    status,
    command_id,
    worker_id,
    duration,
    "left"(error, 200) AS error
   FROM noetl.event e
  WHERE (event_id >= noetl.snowflake_floor((now() - '01:00:00'::interval)))
  ORDER BY event_id DESC
 LIMIT 1000;

ALTER TABLE ONLY noetl.event ATTACH PARTITION noetl.event_default DEFAULT;

ALTER TABLE ONLY noetl.alembic_version
    ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num);

ALTER TABLE ONLY noetl.catalog
    ADD CONSTRAINT catalog_path_version_key UNIQUE (path, version);

ALTER TABLE ONLY noetl.catalog
    ADD CONSTRAINT catalog_pkey PRIMARY KEY (catalog_id);

ALTER TABLE ONLY noetl.command
    ADD CONSTRAINT command_pkey PRIMARY KEY (execution_id, command_id);

ALTER TABLE ONLY noetl.credential
    ADD CONSTRAINT credential_name_key UNIQUE (name);

ALTER TABLE ONLY noetl.credential
    ADD CONSTRAINT credential_pkey PRIMARY KEY (id);

ALTER TABLE ONLY noetl.event
    ADD CONSTRAINT event_pkey PRIMARY KEY (execution_id, event_id);

ALTER TABLE ONLY noetl.event_batch
    ADD CONSTRAINT event_batch_pkey PRIMARY KEY (execution_id, request_id);

ALTER TABLE ONLY noetl.event_default
    ADD CONSTRAINT event_default_pkey PRIMARY KEY (execution_id, event_id);

ALTER TABLE ONLY noetl.event_outbox_dead
    ADD CONSTRAINT event_outbox_dead_pkey PRIMARY KEY (execution_id, outbox_id);

ALTER TABLE ONLY noetl.event_outbox
    ADD CONSTRAINT event_outbox_pkey PRIMARY KEY (execution_id, outbox_id);

ALTER TABLE ONLY noetl.execution_dedup
    ADD CONSTRAINT execution_dedup_pkey PRIMARY KEY (execution_id);

ALTER TABLE ONLY noetl.execution
    ADD CONSTRAINT execution_pkey PRIMARY KEY (execution_id);

ALTER TABLE ONLY noetl.execution_summary
    ADD CONSTRAINT execution_summary_pkey PRIMARY KEY (execution_id);

ALTER TABLE ONLY noetl.keychain
    ADD CONSTRAINT keychain_pkey PRIMARY KEY (cache_key);

ALTER TABLE ONLY noetl.playbook_stats
    ADD CONSTRAINT playbook_stats_pkey PRIMARY KEY (catalog_id, day);

ALTER TABLE ONLY noetl.projector_reject
    ADD CONSTRAINT projector_reject_pkey PRIMARY KEY (stream, stream_seq);

ALTER TABLE ONLY noetl.resource
    ADD CONSTRAINT resource_pkey PRIMARY KEY (name);

ALTER TABLE ONLY noetl.runtime
    ADD CONSTRAINT runtime_kind_name_key UNIQUE (kind, name);

ALTER TABLE ONLY noetl.runtime
    ADD CONSTRAINT runtime_pkey PRIMARY KEY (runtime_id);

ALTER TABLE ONLY noetl.step_run
    ADD CONSTRAINT step_run_pkey PRIMARY KEY (execution_id, command_id);

ALTER TABLE ONLY noetl.transient
    ADD CONSTRAINT transient_pkey PRIMARY KEY (execution_id, var_name);

CREATE INDEX catalog_created_at_idx ON noetl.catalog USING btree (created_at DESC);

CREATE INDEX catalog_kind_idx ON noetl.catalog USING btree (kind);

CREATE INDEX command_event_id_idx ON noetl.command USING btree (event_id);

CREATE INDEX command_open_idx ON noetl.command USING btree (status, notified_at) WHERE (status = ANY (ARRAY['PENDING'::text, 'CLAIMED'::text, 'RUNNING'::text]));

CREATE INDEX credential_type_idx ON noetl.credential USING btree (type);

CREATE INDEX event_command_idx ON ONLY noetl.event USING btree (execution_id, command_id) WHERE (command_id IS NOT NULL);

CREATE INDEX event_type_idx ON ONLY noetl.event USING btree (execution_id, event_type, event_id DESC);

CREATE UNIQUE INDEX event_producer_event_id_key ON ONLY noetl.event USING btree (execution_id, producer_event_id) WHERE (producer_event_id IS NOT NULL);

CREATE INDEX event_parent_execution_idx ON ONLY noetl.event USING btree (parent_execution_id) WHERE (parent_execution_id IS NOT NULL);

CREATE UNIQUE INDEX event_batch_idempotency_key ON noetl.event_batch USING btree (execution_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX event_batch_open_idx ON noetl.event_batch USING btree (state) WHERE (state = ANY (ARRAY['accepted'::text, 'processing'::text]));

CREATE INDEX event_default_execution_id_command_id_idx ON noetl.event_default USING btree (execution_id, command_id) WHERE (command_id IS NOT NULL);

CREATE INDEX event_default_execution_id_event_type_event_id_idx ON noetl.event_default USING btree (execution_id, event_type, event_id DESC);

CREATE UNIQUE INDEX event_default_execution_id_producer_event_id_idx ON noetl.event_default USING btree (execution_id, producer_event_id) WHERE (producer_event_id IS NOT NULL);

CREATE INDEX event_default_parent_execution_id_idx ON noetl.event_default USING btree (parent_execution_id) WHERE (parent_execution_id IS NOT NULL);

CREATE INDEX event_outbox_dead_dead_at_idx ON noetl.event_outbox_dead USING btree (dead_at);

CREATE INDEX event_outbox_lane_idx ON noetl.event_outbox USING btree (lane, outbox_id);

CREATE INDEX execution_catalog_idx ON noetl.execution USING btree (catalog_id, execution_id DESC);

CREATE UNIQUE INDEX execution_dedup_key ON noetl.execution_dedup USING btree (COALESCE(parent_execution_id, (0)::bigint), dedup_key);

CREATE INDEX execution_open_idx ON noetl.execution USING btree (status) WHERE (status = ANY (ARRAY['RUNNING'::text, 'PAUSED'::text]));

CREATE INDEX execution_parent_idx ON noetl.execution USING btree (parent_execution_id) WHERE (parent_execution_id IS NOT NULL);

CREATE INDEX execution_summary_catalog_idx ON noetl.execution_summary USING btree (catalog_id, execution_id DESC);

CREATE INDEX execution_summary_parent_idx ON noetl.execution_summary USING btree (parent_execution_id) WHERE (parent_execution_id IS NOT NULL);

CREATE INDEX execution_summary_status_idx ON noetl.execution_summary USING btree (status, execution_id DESC);

CREATE INDEX keychain_execution_idx ON noetl.keychain USING btree (execution_id);

CREATE INDEX keychain_expires_at_idx ON noetl.keychain USING btree (expires_at);

CREATE INDEX step_run_step_idx ON noetl.step_run USING btree (execution_id, step_name);

ALTER INDEX noetl.event_command_idx ATTACH PARTITION noetl.event_default_execution_id_command_id_idx;

ALTER INDEX noetl.event_type_idx ATTACH PARTITION noetl.event_default_execution_id_event_type_event_id_idx;

ALTER INDEX noetl.event_producer_event_id_key ATTACH PARTITION noetl.event_default_execution_id_producer_event_id_idx;

ALTER INDEX noetl.event_parent_execution_idx ATTACH PARTITION noetl.event_default_parent_execution_id_idx;

ALTER INDEX noetl.event_pkey ATTACH PARTITION noetl.event_default_pkey;

CREATE TRIGGER command_outbox_trg AFTER INSERT ON noetl.command REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION noetl.command_outbox_trigger();

CREATE TRIGGER event_notify_trg AFTER INSERT ON noetl.event REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION noetl.event_notify_trigger();

CREATE TRIGGER event_outbox_trg AFTER INSERT ON noetl.event REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION noetl.event_outbox_trigger();

ALTER TABLE ONLY noetl.catalog
    ADD CONSTRAINT catalog_kind_fkey FOREIGN KEY (kind) REFERENCES noetl.resource(name);

ALTER TABLE ONLY noetl.keychain
    ADD CONSTRAINT keychain_catalog_id_fkey FOREIGN KEY (catalog_id) REFERENCES noetl.catalog(catalog_id);
