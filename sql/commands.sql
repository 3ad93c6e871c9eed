-- Commands: issue, claim, apply worker events, re-notify, cancel and finalize executions
-- (envelope.md §3.3, §4.1, §4.5; worker-protocol.md §5, §6, §8; api.md §7.6, §8.3, §8.4, §13).
--
-- Every function here that changes a command's status or an execution takes the execution's
-- advisory lock (pg_advisory_xact_lock(execution_id)) before it reads or locks a row, several
-- in ascending order, as append_events does; the locks are re-entrant, so a caller that
-- already holds them (a route that appended first) loses nothing. Call them in READ
-- COMMITTED: each statement after the lock then sees what the previous holder committed.
-- The re-notifiers (command_renotify, runtime_deregister) only bump notify counters: they
-- take no execution lock and skip rows locked right now (SKIP LOCKED), so they never wait.

-- Why a claim held by worker W may be taken over (envelope.md §4.5, rows 5-10), or null
-- while the claim must be kept. W's registry row gives holder_status and holder_heartbeat,
-- both null when W has no row. Shared by claim_command and command_renotify, so the claim
-- and the reaper never disagree. `at` is the decision time (the caller's now()).
CREATE OR REPLACE FUNCTION noetl.command_reclaim_reason(
    holder_status text,
    holder_heartbeat timestamptz,
    claimed_at timestamptz,
    heartbeat_at timestamptz,
    lease_s double precision,
    stale_s double precision,
    hard_timeout_s double precision,
    decided_at timestamptz
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN holder_status = 'offline' THEN 'worker_offline'
        WHEN greatest(claimed_at, heartbeat_at) + make_interval(secs => lease_s) > decided_at THEN NULL
        WHEN holder_status IS NULL OR holder_status NOT IN ('ready', 'busy') THEN 'worker_inactive'
        WHEN holder_heartbeat < decided_at - make_interval(secs => stale_s) THEN 'worker_heartbeat_stale'
        WHEN claimed_at + make_interval(secs => hard_timeout_s) <= decided_at THEN 'hard_timeout'
    END
$$;

-- The `meta` of the claim and GET /api/commands responses (worker-protocol.md §5): the
-- command's own meta (loop iteration keys, trace) plus the claim keys, ids as strings.
CREATE OR REPLACE FUNCTION noetl.command_response_meta(c noetl.command, lease_s double precision)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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

-- Creates the execution row at start (api.md §7.2) with the pool chosen for the whole
-- execution (worker-protocol.md §2), before the start events are appended, so append_events
-- takes catalog_id, parent and tenant from it. Status RUNNING, last_event_id 0; an existing
-- row is left as it is. Returns true when the row was created.
CREATE OR REPLACE FUNCTION noetl.start_execution(
    execution_id bigint,
    catalog_id bigint,
    pool text,
    parent_execution_id bigint DEFAULT NULL,
    parent_event_id bigint DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Inserts the engine's new commands as noetl.command rows PENDING; the command outbox trigger
-- then writes one notification each. Input: a JSON array of
--   {execution_id, command_id, event_id (its command.issued), step | step_name, tool_kind,
--    context (object: the body the claim returns), meta?, catalog_id?, pool?,
--    parent_command_id?}
-- with ids as strings or numbers. catalog_id and parent_execution_id come from the execution
-- row, and so does the pool (the input's pool is used only when there is no execution row).
-- A command already stored (same execution_id, command_id) is skipped, so a retried
-- transaction issues nothing twice. Returns the number of rows inserted.
-- A missing or malformed field raises SQLSTATE 22023 naming it.
CREATE OR REPLACE FUNCTION noetl.issue_commands(commands jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- POST /api/commands/{event_id}/claim (envelope.md §4.5; worker-protocol.md §5).
-- Arguments in the order of envelope.md §4.1: (event_id of the command.issued, worker_id,
-- lease_s, stale_s, hard_timeout_s), plus the request's optional locality object, copied to
-- the command.claimed meta. Always returns one row:
--   outcome      not_found | already_terminal | active_claim | claimed
--   holder       the worker holding the claim afterwards (active_claim: the other worker)
--   reason       already_terminal only: command_completed|failed|cancelled,
--                execution_completed|failed|cancelled
--   execution_id .. claimed_at, context: the command row after the decision (null for
--                not_found); meta: the response meta (command_response_meta)
--   reclaimed_from_worker, reclaimed_reason: set when this claim took another worker's
--   claim_event_id: the command.claimed this call appended; null when it wrote none (every
--                outcome but a fresh claim, including a retried claim by the same worker)
-- Finds the row by event_id, takes the execution lock, then the row lock (concurrent claims
-- queue behind it and exactly one wins), and only then decides; first match wins.
CREATE OR REPLACE FUNCTION noetl.claim_command(
    command_event_id bigint,
    claimant text,
    lease_s double precision,
    stale_s double precision,
    hard_timeout_s double precision,
    locality jsonb DEFAULT NULL
) RETURNS TABLE (
    outcome text,
    holder text,
    reason text,
    execution_id bigint,
    command_id bigint,
    event_id bigint,
    catalog_id bigint,
    parent_execution_id bigint,
    step_name text,
    tool_kind text,
    pool text,
    status text,
    attempts integer,
    worker_id text,
    claimed_at timestamptz,
    context jsonb,
    meta jsonb,
    reclaimed_from_worker text,
    reclaimed_reason text,
    claim_event_id bigint
)
LANGUAGE plpgsql AS $$
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

-- GET /api/commands/{event_id} (api.md §8.3): the claim's payload without claiming; no row
-- when there is no such command.
CREATE OR REPLACE FUNCTION noetl.get_command(command_event_id bigint, lease_s double precision)
RETURNS TABLE (
    execution_id bigint,
    command_id bigint,
    event_id bigint,
    catalog_id bigint,
    step_name text,
    tool_kind text,
    pool text,
    status text,
    attempts integer,
    worker_id text,
    context jsonb,
    meta jsonb
)
LANGUAGE sql STABLE AS $$
    SELECT c.execution_id, c.command_id, c.event_id, c.catalog_id, c.step_name, c.tool_kind,
           c.pool, c.status, c.attempts, c.worker_id, c.context,
           noetl.command_response_meta(c, lease_s)
      FROM noetl.command c
     WHERE c.event_id = command_event_id
     ORDER BY c.execution_id
     LIMIT 1
$$;

-- Updates a command row from a worker event already stored by append_events (api.md §8.1
-- step 3), in the route's transaction: "append, update the command, evaluate".
--   command.started            -> RUNNING, started_at, heartbeat_at
--   command.heartbeat          -> RUNNING, heartbeat_at (extends the lease)
--     both only for a CLAIMED/RUNNING row and only from its holder (or when either worker is
--     unknown): a reclaimed worker's late heartbeats must not keep the new claim alive, and a
--     command changes hands only through a claim
--   call.done, command.completed -> COMPLETED, or FAILED when the outcome is an error
--   call.error, command.failed   -> FAILED
--   command.cancelled            -> CANCELLED
--     terminal ones only when the row is not terminal yet and the event is not
--     meta.ignored: the first terminal wins and stays (dsl.md §6.10)
-- Every event of the command raises latest_event_id. `outcome` is engine.terminal_outcome's
-- 'ok' / 'error' and `error` its message; when null they are read from the event (status
-- FAILED/ERROR, or result status error/failed/failure/timeout, means an error). result is the
-- event's context.result, else its result. Returns the row's status afterwards, or null when
-- the event has no command or the command has no row.
CREATE OR REPLACE FUNCTION noetl.command_apply_event(
    execution_id bigint,
    event_id bigint,
    outcome text DEFAULT NULL,
    error text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
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

-- Rings the doorbell again for commands the caller has locked: notify_count + 1,
-- notified_at = now(), and one command outbox row each with the body and headers of
-- command_outbox_trigger and msg_id command:<event_id>:<notify_count + 1> (so JetStream keeps
-- deliberate re-notifications but drops the publisher's retries of one). The trigger fires
-- only on INSERT into noetl.command, so this writes the outbox rows itself and sends one
-- NOTIFY noetl_outbox. Returns the number of rows re-notified.
CREATE OR REPLACE FUNCTION noetl.command_notify_again(execution_ids bigint[], command_ids bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
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

-- The command reaper (worker-protocol.md §6; envelope.md §4.1): open commands of non-terminal
-- executions that a worker would otherwise never hear of again, up to `lim`:
--   PENDING ones notified more than pending_after_s ago, and
--   CLAIMED/RUNNING ones another worker's claim would take (command_reclaim_reason).
-- Longest-unnotified first, so a backlog above `lim` rotates instead of starving its tail.
-- Rows locked by a claim or an engine pass right now are skipped (SKIP LOCKED): they are
-- being handled, and the reaper never waits behind one. It never changes a command's status
-- and never writes an event. Returns the number re-notified.
CREATE OR REPLACE FUNCTION noetl.command_renotify(
    pending_after_s double precision,
    lease_s double precision,
    stale_s double precision,
    hard_timeout_s double precision,
    lim integer
) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- Deregistration (worker-protocol.md §8; api.md §8.4): marks the worker_pool row `offline`
-- and, in the same transaction, re-notifies that worker's CLAIMED/RUNNING commands of
-- non-terminal executions, every one of them (no limit: they are reclaimable at once, rule 5
-- of envelope.md §4.5). Idempotent; an unknown name changes nothing. Returns the runtime_id
-- (null when unknown) and the number re-notified.
CREATE OR REPLACE FUNCTION noetl.runtime_deregister(name text)
RETURNS TABLE (runtime_id bigint, renotified integer)
LANGUAGE plpgsql AS $$
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

-- True when the execution has an execution-terminal event (api.md §7.4 rule 1) or a terminal
-- status in noetl.execution.
CREATE OR REPLACE FUNCTION noetl.execution_is_terminal(execution_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM noetl.execution x
                    WHERE x.execution_id = execution_is_terminal.execution_id
                      AND x.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
        OR EXISTS (SELECT 1 FROM noetl.event e
                    WHERE e.execution_id = execution_is_terminal.execution_id
                      AND e.event_type IN ('playbook.completed', 'workflow.completed',
                                           'playbook.failed', 'workflow.failed',
                                           'execution.cancelled'))
$$;

-- One command.cancelled envelope per open command of the execution (api.md §7.6), in
-- command_id order, after locking those rows; the caller appends them and then calls
-- command_close_cancelled. Shape as the engine's (_cancel_commands), parent the command.issued.
CREATE OR REPLACE FUNCTION noetl.command_cancel_events(execution_id bigint, reason text,
                                                       cancelled_by text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
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

-- Sets the execution's open command rows CANCELLED after their command.cancelled events were
-- appended; latest_event_id is the newest event of each command.
CREATE OR REPLACE FUNCTION noetl.command_close_cancelled(execution_id bigint, reason text)
RETURNS integer
LANGUAGE plpgsql AS $$
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

-- POST /api/executions/{id}/cancel (api.md §7.6; dsl.md §6.9). Returns the ids cancelled, the
-- root first, then its descendants in id order; nothing when the root is unknown or already
-- terminal (the route answers 404 / already_completed), so a repeat is a no-op.
-- In this transaction, under the execution locks of the root and (cascade) all its
-- descendants by noetl.execution.parent_execution_id, taken in ascending id order: for each
-- execution that is not terminal, one command.cancelled per open command (rows CANCELLED),
-- then execution.cancelled (node_name "cancel", status CANCELLED, meta {reason, cancelled_by,
-- cascade, parent_cancel_id, actionable: true} mirrored in context; parent_cancel_id is the
-- root's id on descendants, null on the root), all in one append_events call, and
-- execution_save CANCELLED. Terminal descendants are skipped, not their subtrees.
-- Local keychain rows of each cancelled execution are deleted (api.md §10).
CREATE OR REPLACE FUNCTION noetl.cancel_executions(
    execution_id bigint,
    reason text DEFAULT 'User requested cancellation',
    cascade boolean DEFAULT true,
    cancelled_by text DEFAULT 'api'
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
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

-- POST /api/executions/{id}/finalize (api.md §7.6): one command.cancelled per open command
-- (rows CANCELLED), then playbook.failed with the reason as its error, under the execution
-- lock; execution_save FAILED. Returns 'finalized', 'already_completed' (an execution-terminal
-- event or status exists; nothing written) or 'not_found' (no execution row).
CREATE OR REPLACE FUNCTION noetl.finalize_execution(
    execution_id bigint,
    reason text DEFAULT 'Abandoned or timed out'
) RETURNS text
LANGUAGE plpgsql AS $$
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

-- POST /api/executions/cleanup (api.md §7.6): executions without an execution-terminal event
-- (status RUNNING or PAUSED) that started more than older_than_minutes ago, oldest first.
-- The route cancels each (cancel_executions without cascade) or, with dry_run, lists them.
CREATE OR REPLACE FUNCTION noetl.find_stuck_executions(older_than_minutes integer)
RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT x.execution_id
      FROM noetl.execution x
     WHERE x.status IN ('RUNNING', 'PAUSED')
       AND x.start_time < now() - make_interval(mins => older_than_minutes)
       AND NOT noetl.execution_is_terminal(x.execution_id)
     ORDER BY x.execution_id
$$;

-- GET /api/dashboard/stats (api.md §13), from the projector's read models only.
-- playbook_stats always equals the GROUP BY over execution_summary (envelope.md §4.4), so the
-- counters are sums over it and active = runs that are not terminal. as_of is the id time of
-- the newest event the projector folded (null before the first).
CREATE OR REPLACE FUNCTION noetl.dashboard_stats()
RETURNS TABLE (
    total_executions bigint,
    successful_executions bigint,
    failed_executions bigint,
    cancelled_executions bigint,
    active_workflows bigint,
    total_playbooks bigint,
    as_of timestamptz
)
LANGUAGE sql STABLE AS $$
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
