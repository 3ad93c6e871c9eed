-- Outbox relay (envelope.md §2.6, §4.1, §6): the functions the publisher calls.
-- Nothing is ever marked "in flight": a claim holds row and lane locks for its transaction
-- only, so a crashed publisher releases everything and the next claim republishes.

-- A prefix of s of at most max_bytes of UTF-8 that never splits a character. Each step drops
-- a quarter of the excess in characters (a character is 1 to 4 bytes), so it ends within
-- 3 bytes of the longest such prefix.
CREATE OR REPLACE FUNCTION noetl.outbox_cut_bytes(s text, max_bytes integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v text := left(s, max_bytes);
BEGIN
    WHILE octet_length(v) > max_bytes LOOP
        v := left(v, length(v) - (octet_length(v) - max_bytes + 3) / 4);
    END LOOP;
    RETURN v;
END
$$;

-- The slimmed stream envelope of §2.6: context and result dropped, meta cut to its routing
-- keys, error cut to 8 KiB, and a payload_ref pointing at the full row in noetl.event.
CREATE OR REPLACE FUNCTION noetl.outbox_slim(payload jsonb, execution_id bigint, event_id bigint,
                                             full_bytes integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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

-- Claims one batch for the caller's transaction (§4.1, §6.1).
--
-- Lanes are visited from a random start; a lane with due rows is taken with a transaction
-- advisory try-lock, so one publisher at a time owns a lane and publishes its rows in
-- outbox_id order (per-execution order, since an execution always maps to one lane).
-- Rows are taken FOR UPDATE SKIP LOCKED until `limit` rows or `batch_max_bytes` of body
-- (at least one row). Bodies longer than `max_body_bytes` are slimmed; rows still too long
-- move to noetl.event_outbox_dead (reason too_large) and come back with dead = true and a
-- null body, only to be counted.
CREATE OR REPLACE FUNCTION noetl.outbox_claim("limit" integer, max_body_bytes integer,
                                              batch_max_bytes bigint, server_url text)
RETURNS TABLE (outbox_id bigint, execution_id bigint, kind text, subject text, msg_id text,
               headers jsonb, body text, slimmed boolean, dead boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
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

-- Settles a claimed batch in the claim's transaction (§4.1, §6.2).
-- published: [{execution_id, outbox_id}] acked rows, deleted.
-- failed: [{execution_id, outbox_id, error, class}] with class transient, too_large or
-- permanent. The two non-transient classes and a transient failure that reaches
-- max_attempts move to the dead table; other transient failures back off exponentially
-- from the old attempts count.
CREATE OR REPLACE FUNCTION noetl.outbox_complete(published jsonb, failed jsonb,
                                                 max_attempts integer,
                                                 retry_base_s double precision,
                                                 retry_max_s double precision)
RETURNS TABLE (deleted integer, retried integer, dead integer)
LANGUAGE plpgsql AS $$
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

-- Moves dead rows back into the outbox (every dead row when outbox_ids is null), with a
-- fresh attempts count, due at once, and wakes the publishers. The rows keep their
-- outbox_id and msg_id, so JetStream still drops a copy it stored within its window.
CREATE OR REPLACE FUNCTION noetl.outbox_requeue_dead(outbox_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- Gauges (§8): rows waiting, rows due now, age of the oldest row (0 when empty), dead rows.
CREATE OR REPLACE FUNCTION noetl.outbox_stats()
RETURNS TABLE (pending bigint, due bigint, oldest_seconds double precision, dead bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           count(*) FILTER (WHERE o.available_at <= now()),
           coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0),
           (SELECT count(*) FROM noetl.event_outbox_dead)
      FROM noetl.event_outbox o
$$;

-- Rows waiting per kind, for noetl_publisher_outbox_pending{kind}; both kinds always listed.
CREATE OR REPLACE FUNCTION noetl.outbox_pending_by_kind()
RETURNS TABLE (kind text, pending bigint)
LANGUAGE sql STABLE AS $$
    SELECT k.kind, count(o.outbox_id)
      FROM (VALUES ('event'), ('command')) AS k(kind)
      LEFT JOIN noetl.event_outbox o ON o.kind = k.kind
     GROUP BY k.kind
$$;
