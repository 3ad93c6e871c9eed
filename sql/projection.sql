-- Projection (envelope.md §4.4, §7.3): project_events and the read-model folds, the
-- projector's dead-letter writer, the slimmed-envelope lookup and playbook_report.

-- The text of a JSON id (a string ^[0-9]{1,19}$ or an integer number) in 1..2^63-1, else
-- null: noetl.jsonb_to_id's answer with one simple regex and no numeric cast, because
-- project_events reads six ids per event and this is among its hottest expressions.
CREATE OR REPLACE FUNCTION noetl.projection_id(t text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN length(t) BETWEEN 1 AND 19 AND t !~ '[^0-9]'
         AND (length(t) < 19 OR t COLLATE "C" <= '9223372036854775807')
        THEN nullif(t::bigint, 0)
    END
$$;

-- Why an element of project_events is skipped, or null when it is valid (§2.1 types and
-- limits), from its fields as jsonb_to_record read them (ids as text; null: absent or JSON
-- null). The input is meant to be canonical already (the shared normaliser ran), so this is
-- the safety net for every other caller. Tests run before casts, so only a timestamp that
-- matches the shape but not the calendar can still raise (SQLSTATE 22008); callers isolate
-- such an element by halving the batch (§7.4).
CREATE OR REPLACE FUNCTION noetl.projection_invalid(
    kind text, event_id text, execution_id text, catalog_id text, parent_event_id text,
    parent_execution_id text, prev_event_id text, event_type jsonb, node_id jsonb,
    node_name jsonb, node_type jsonb, status jsonb, context jsonb, result jsonb, meta jsonb,
    error jsonb, duration jsonb, worker_id jsonb, created_at jsonb, tenant_id jsonb,
    organization_id jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
$$;

-- Terminal status of an execution-level event type (§2.4), else null.
CREATE OR REPLACE FUNCTION noetl.execution_terminal_status(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE event_type
        WHEN 'playbook.completed' THEN 'COMPLETED'
        WHEN 'workflow.completed' THEN 'COMPLETED'
        WHEN 'playbook.failed' THEN 'FAILED'
        WHEN 'workflow.failed' THEN 'FAILED'
        WHEN 'execution.cancelled' THEN 'CANCELLED'
    END
$$;

-- Terminal status a command event gives its step_run (§4.4), else null.
CREATE OR REPLACE FUNCTION noetl.step_terminal_status(event_type text, status text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN event_type = 'command.completed' THEN 'COMPLETED'
        WHEN event_type IN ('command.failed', 'call.error') THEN 'FAILED'
        WHEN event_type = 'command.cancelled' THEN 'CANCELLED'
        WHEN event_type = 'call.done' AND status = 'COMPLETED' THEN 'COMPLETED'
        WHEN event_type = 'call.done' AND status IN ('FAILED', 'ERROR') THEN 'FAILED'
    END
$$;

-- Rank of a command event: PENDING 0 < CLAIMED 1 < RUNNING 2 < terminal 3. Any other event
-- of the command counts as PENDING: it proves the command exists, nothing more.
CREATE OR REPLACE FUNCTION noetl.step_rank(event_type text, status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN noetl.step_terminal_status(event_type, status) IS NOT NULL THEN 3
        WHEN event_type IN ('command.started', 'command.heartbeat') THEN 2
        WHEN event_type = 'command.claimed' THEN 1
        ELSE 0
    END
$$;

-- project_events(events) → (inserted, duplicate, rejected), envelope.md §7.3.
--
-- * No execution locks (the server's append path is never blocked by projection). The event
--   rows need no lock at all (conflict-ignored inserts); the read models are folded under a
--   projection lock per execution, advisory key (1313817859, hashint8(execution_id)), taken
--   in ascending order before any of their rows is read, so two projectors that overlap
--   (scaling, the HTTP door) fold one execution one after the other and every merge sees the
--   other's rows. Read-model rows are then written in key order.
-- * Every fold is a merge that ignores order and repetition (§4.4):
--   execution_summary merges the batch's per-execution aggregates into the stored row
--   (minimum and maximum ids decide whose values win); step_run is recomputed from noetl.event
--   for every command the batch touches (the log is the truth, and it holds every event of the
--   batch by then); playbook_stats takes minus the old and plus the new contribution of every
--   summary row that changed, so it always equals the GROUP BY over execution_summary.
-- * "Value of the event with the lowest/highest id" is read with DISTINCT ON, not ordered
--   aggregates, which would sort once per group and aggregate.
CREATE OR REPLACE FUNCTION noetl.project_events(events jsonb)
RETURNS TABLE (inserted integer, duplicate integer, rejected jsonb)
LANGUAGE plpgsql
-- The plans do not depend on the values (a JSON array is always "100 rows" to the planner),
-- and planning these statements costs more than running them on a batch: plan them once.
SET plan_cache_mode = force_generic_plan
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

-- Projector dead letters (§7.4), one row per array element; a redelivered reject adds nothing.
CREATE OR REPLACE FUNCTION noetl.projector_reject_add(
    stream text, consumer text, stream_seq bigint[], subject text[], msg_id text[],
    execution_id bigint[], event_id bigint[], reason text[], error text[], deliveries integer[],
    headers jsonb[], body bytea[]
) RETURNS integer
LANGUAGE sql AS $$
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

-- Full envelopes of stored events, for slimmed stream bodies (§2.6, §7.2): the projector of
-- another database reads them from the primary.
CREATE OR REPLACE FUNCTION noetl.event_envelopes(execution_ids bigint[], event_ids bigint[])
RETURNS TABLE (execution_id bigint, event_id bigint, envelope jsonb)
LANGUAGE sql STABLE AS $$
    SELECT e.execution_id, e.event_id, noetl.event_envelope(e)
      FROM unnest(execution_ids, event_ids) AS k(execution_id, event_id)
      JOIN noetl.event e ON e.execution_id = k.execution_id AND e.event_id = k.event_id
$$;

-- Per-playbook report over [from, to] (§4.1): every version of a path summed; a catalog id
-- the target has no catalog row for is reported alone with path null. Success rate and
-- quantiles are over terminal runs.
CREATE OR REPLACE FUNCTION noetl.playbook_report(date_from date, date_to date)
RETURNS TABLE (path text, catalog_ids bigint[], runs bigint, completed bigint, failed bigint,
               cancelled bigint, running bigint, success_rate double precision,
               p50_ms double precision, p95_ms double precision, mean_ms double precision)
LANGUAGE sql STABLE AS $$
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
