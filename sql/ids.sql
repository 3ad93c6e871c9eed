-- Ids and time (envelope.md §1). Applied first: column defaults call noetl.snowflake_id().

CREATE SCHEMA IF NOT EXISTS noetl;

-- Only the low 12 bits are used, so wrap-around never matters.
CREATE SEQUENCE noetl.snowflake_seq;

-- id = (ms - 2024-01-01) << 22 | node << 12 | seq.
-- Two ids collide only if they share millisecond and sequence value. The sequence repeats a
-- value only after 4096 draws, so each id is stamped with the exact millisecond in which its
-- nextval ran: the clock is read before and after, and a draw that straddles a millisecond
-- boundary (or was preempted across one) is drawn again. Ids are then unique unless 4096 are
-- drawn in one millisecond.
-- The per-session guard (custom setting noetl._last_snowflake) keeps ids strictly increasing
-- per connection: when the sequence wraps within the session's last millisecond it waits
-- for the next one; if the clock went back it keeps the last millisecond, like the Python
-- generator. (A rolled-back transaction also rolls the setting back; its ids were never
-- stored.)
CREATE OR REPLACE FUNCTION noetl.snowflake_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
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

CREATE OR REPLACE FUNCTION noetl.snowflake_time(id bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT timestamptz '2024-01-01 00:00:00+00' + (id >> 22) * interval '1 millisecond'
$$;

-- Smallest id of that millisecond (node 0, sequence 0): the lower bound for id range scans.
CREATE OR REPLACE FUNCTION noetl.snowflake_floor(ts timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (floor(extract(epoch FROM ts) * 1000)::bigint - 1704067200000) << 22
$$;

-- The one timestamp format every role emits: UTC, 'Z', exactly six fractional digits.
-- to_char is only STABLE in general; this pattern uses nothing locale- or zone-dependent.
CREATE OR REPLACE FUNCTION noetl.rfc3339(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
