-- Duration histogram helpers for noetl.playbook_stats (envelope.md §3.2, §4.1).
-- Buckets are upper-bound inclusive (Prometheus "le"); 17 bounds plus one overflow bucket,
-- so a histogram is a bigint[] of 18 counts, index 0 .. 17.

CREATE OR REPLACE FUNCTION noetl.duration_bounds() RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{100,250,500,1000,2500,5000,10000,30000,60000,120000,300000,600000,1800000,3600000,10800000,43200000,86400000}'::bigint[]
$$;

-- 0-based bucket index; 17 is the overflow bucket.
CREATE OR REPLACE FUNCTION noetl.duration_bucket(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(
        (SELECT b.i::integer - 1
           FROM unnest(noetl.duration_bounds()) WITH ORDINALITY AS b(upper_ms, i)
          WHERE ms <= b.upper_ms
          ORDER BY b.i
          LIMIT 1),
        17)
$$;

-- Quantile q (0..1) of a histogram: linear interpolation inside the bucket that holds the
-- rank; the overflow bucket has no upper bound, so it answers its lower bound.
-- Null for an empty histogram.
CREATE OR REPLACE FUNCTION noetl.hist_quantile(hist bigint[], q double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
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

-- Element-wise sum; arrays of different length are padded with zeros.
CREATE OR REPLACE FUNCTION noetl.hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i), '{}')
      FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
$$;

-- STRICT state function with no initial value: the first non-null array is the start state,
-- and an aggregate over no rows (or only nulls) is null.
CREATE AGGREGATE noetl.hist_sum(bigint[]) (
    SFUNC = noetl.hist_add,
    STYPE = bigint[],
    COMBINEFUNC = noetl.hist_add,
    PARALLEL = SAFE
);
