-- Engine state and singleton leases (envelope.md §3.2, §4.1).

-- Upsert of the engine's execution row. A terminal status (COMPLETED, FAILED, CANCELLED)
-- never changes once stored, and neither does the error that came with it; end_time is set
-- by the first terminal save; last_event_id keeps the greater value (append_events bumps it
-- too). Null arguments keep the stored value. A new row gets pool 'default'
-- (NOETL_DEFAULT_POOL's default): executions are normally created with their pool at start.
-- Returns the stored status.
CREATE OR REPLACE FUNCTION noetl.execution_save(
    execution_id bigint,
    catalog_id bigint,
    parent_execution_id bigint,
    status text,
    state jsonb,
    last_event_id bigint,
    last_event_type text,
    last_node_name text,
    error text
) RETURNS text
LANGUAGE plpgsql AS $$
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

-- Singleton jobs (maintenance, command reaper) hold a lease row in noetl.runtime.
-- Acquire succeeds when the lease is free, expired or already the holder's (renewal).
-- Wall-clock time, not transaction time, so a long transaction cannot stretch a lease.
CREATE OR REPLACE FUNCTION noetl.lease_acquire(name text, holder text, ttl_s double precision)
RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Releases only the caller's own lease.
CREATE OR REPLACE FUNCTION noetl.lease_release(name text, holder text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE noetl.runtime r
       SET lease_holder = NULL, lease_until = NULL, updated_at = clock_timestamp()
     WHERE r.kind = 'lease' AND r.name = lease_release.name AND r.lease_holder = lease_release.holder;
    RETURN FOUND;
END
$$;
