-- The execution API's transactions (api.md §7.2, §8.1, §8.2; dsl.md §6.2): one call per
-- step of "append the event, update the command row, evaluate, append the decisions", built
-- on append_events, command_apply_event, start_execution, issue_commands and execution_save.
--
-- The engine itself runs in Python between two calls of one transaction:
--   event_ingest   appends worker events, updates their command rows, and returns what a pass
--                  needs (the cached state when the caller has none, the events after it);
--   engine_apply   appends the engine's events, inserts its commands and saves the state;
--   execute_start  the start of an execution: parent check, dedup, row, then engine_apply.
-- All take the execution's advisory lock first (re-entrant), as every writer of its log does.

-- Dedup keys of POST /api/execute (api.md §7.2 `dedup`): a key and parent map to the first
-- execution until expires_at.
CREATE TABLE noetl.execution_dedup (
    execution_id        bigint PRIMARY KEY,
    parent_execution_id bigint,
    dedup_key           text NOT NULL,
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX execution_dedup_key ON noetl.execution_dedup (coalesce(parent_execution_id, 0), dedup_key);

-- Appends worker events of one execution and applies each new one to its command row.
--   events    canonical envelopes (the shared normaliser's output), all of this execution
--   outcomes  parallel array: {outcome: ok|error, error: text} for terminal events (the
--             engine's terminal_outcome), null otherwise
--   cached_position  the position of a state the caller holds in memory, or null
--   drive     false: store only (an accepted batch); no pass data is returned
-- Returns {found, ids, inserted, drives, terminal, catalog_id, pool, parent_execution_id,
-- state_position, state, events}. `drives` is true when an actionable event was the first
-- terminal of its command (its row turned terminal here) and the execution is not terminal;
-- then `events` holds the envelopes after the state the caller should fold from: its own
-- (cached_position, state null) when that is at least the stored one, else the stored
-- `state`. found = false (nothing written) when the execution has no row.
CREATE OR REPLACE FUNCTION noetl.event_ingest(
    execution_id bigint,
    events jsonb,
    outcomes jsonb,
    cached_position bigint,
    drive boolean
) RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- What a pass needs without a new event (a batch being processed, the status route):
-- the stored state unless the caller's cached position is at least as new, and the events
-- after it. Same shape as event_ingest, with drives = not terminal.
CREATE OR REPLACE FUNCTION noetl.engine_load(execution_id bigint, cached_position bigint)
RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- Stores one engine decision: appends `events` (canonical envelopes without ids), inserts
-- `commands` ([{command_id, step, tool_kind, context, meta, event_index}], event_index being
-- the position of its command.issued in `events`) through issue_commands, and saves the
-- execution: `state` (null keeps the stored one) with its position set to the newest id,
-- `status` (null keeps RUNNING), `error`. A terminal status deletes the execution's local
-- keychain rows (api.md §10). Returns {ids (in `events` order), position, status}.
CREATE OR REPLACE FUNCTION noetl.engine_apply(
    execution_id bigint,
    events jsonb,
    commands jsonb,
    state jsonb,
    status text,
    error text
) RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- POST /api/execute (api.md §7.2) in one call: checks the parent (outcome parent_not_found),
-- applies `dedup` (outcome duplicate with the first execution's id), creates the execution
-- row with its pool, then stores the engine's start decision as engine_apply does.
-- Returns {outcome: started|duplicate|parent_not_found, execution_id, ids, status}.
CREATE OR REPLACE FUNCTION noetl.execute_start(
    execution_id bigint,
    catalog_id bigint,
    pool text,
    parent_execution_id bigint,
    dedup_key text,
    dedup_window_s integer,
    events jsonb,
    commands jsonb,
    state jsonb,
    status text,
    error text
) RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- POST /api/events/batch acceptance (api.md §8.2), one transaction: idempotency by key
-- (same body: the first acceptance again, duplicate; another body: idempotency_key_conflict),
-- the backlog limit (batch_backlog_full), the execution row for a worker-started execution
-- (catalog_id given, no row yet: created with `pool`; unknown catalog: execution_not_found),
-- then every event stored and applied to its command row (event_ingest without a pass),
-- `batch.accepted`, the noetl.event_batch row and NOTIFY noetl_event_batch.
-- `events` already carry meta.batch_request_id = request_id. Returns {outcome: accepted |
-- duplicate | conflict | backlog_full | execution_not_found, request_id, event_ids,
-- queue_depth, idempotency_key}.
CREATE OR REPLACE FUNCTION noetl.accept_event_batch(
    execution_id bigint,
    request_id bigint,
    idempotency_key text,
    body_sha256 text,
    catalog_id bigint,
    pool text,
    events jsonb,
    outcomes jsonb,
    max_queue integer
) RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- Takes an accepted batch for processing, in the caller's transaction (which then runs the
-- engine pass and event_batch_finish): the row is locked FOR UPDATE SKIP LOCKED, so two
-- server processes never process one batch; null when it is gone, taken or not accepted.
-- Writes batch.processing.
CREATE OR REPLACE FUNCTION noetl.event_batch_take(execution_id bigint, request_id bigint, holder text)
RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Ends a batch: batch.completed (COMPLETED, commands_generated) or batch.failed (FAILED,
-- error_code, message), the row's state, and NOTIFY noetl_event_batch.
CREATE OR REPLACE FUNCTION noetl.event_batch_finish(
    execution_id bigint,
    request_id bigint,
    commands_generated integer,
    error_code text,
    message text
) RETURNS void
LANGUAGE plpgsql AS $$
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
