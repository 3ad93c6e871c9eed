-- Named queries of the execution API (api.md §7, §8.1-§8.3, §13), loaded by core/queries.py.
-- Every value is a bound parameter; an optional filter is "param IS NULL OR ...".

-- ---------------------------------------------------------------- event rows (api.md §7.3)

-- Events of one execution after a cursor, oldest first (SSE replay, resume, safety re-read).
-- name: events_after
SELECT e.execution_id, e.event_id, e.event_type, e.node_id, e.node_name, e.status,
       e.created_at, e.context, e.result, e.error, e.catalog_id, e.parent_execution_id,
       e.parent_event_id, e.duration
  FROM noetl.event e
 WHERE e.execution_id = %(execution_id)s
   AND e.event_id > %(after_event_id)s
 ORDER BY e.event_id
 LIMIT %(limit)s

-- ---------------------------------------------------------------- the engine's transactions

-- Ids for the engine, minted by the database (envelope.md §1).
-- name: snowflake_ids
SELECT noetl.snowflake_id() AS id FROM generate_series(1, %(n)s)

-- name: event_ingest
SELECT noetl.event_ingest(%(execution_id)s, %(events)s, %(outcomes)s, %(cached_position)s,
                          %(drive)s) AS result

-- name: engine_load
SELECT noetl.engine_load(%(execution_id)s, %(cached_position)s) AS result

-- name: engine_apply
SELECT noetl.engine_apply(%(execution_id)s, %(events)s, %(commands)s, %(state)s, %(status)s,
                          %(error)s) AS result

-- name: execute_start
SELECT noetl.execute_start(%(execution_id)s, %(catalog_id)s, %(pool)s, %(parent_execution_id)s,
                           %(dedup_key)s, %(dedup_window_s)s, %(events)s, %(commands)s,
                           %(state)s, %(status)s, %(error)s) AS result

-- ---------------------------------------------------------------- commands (api.md §8.3)

-- name: claim_command
SELECT * FROM noetl.claim_command(%(event_id)s, %(worker_id)s, %(lease_s)s, %(stale_s)s,
                                  %(hard_timeout_s)s, %(locality)s)

-- name: get_command
SELECT * FROM noetl.get_command(%(event_id)s, %(lease_s)s)

-- The command a posted command.claimed names (api.md §8.1 step 4).
-- name: command_event_id
SELECT c.event_id FROM noetl.command c
 WHERE c.execution_id = %(execution_id)s AND c.command_id = %(command_id)s

-- Reaper (worker-protocol.md §6): the singleton lease, then the re-notification.
-- name: lease_acquire
SELECT noetl.lease_acquire(%(name)s, %(holder)s, %(ttl_s)s) AS acquired

-- name: lease_release
SELECT noetl.lease_release(%(name)s, %(holder)s) AS released

-- name: command_renotify_run
SELECT noetl.command_renotify(%(pending_after_s)s, %(lease_s)s, %(stale_s)s,
                              %(hard_timeout_s)s, %(limit)s) AS renotified

-- ---------------------------------------------------------------- executions (api.md §7)

-- Everything the status derivation of api.md §7.4 reads, in one row; every column is null
-- for an unknown execution (no row, no event).
-- name: execution_get
SELECT q.id AS execution_id,
       x.execution_id IS NOT NULL AS has_row,
       coalesce(x.catalog_id, l.catalog_id) AS catalog_id,
       coalesce(x.parent_execution_id, l.parent_execution_id) AS parent_execution_id,
       x.status AS row_status, x.start_time AS row_start_time, x.error AS row_error,
       c.path, c.version,
       t.event_type AS terminal_type, t.created_at AS terminal_at, t.error AS terminal_error,
       l.event_id AS latest_id, l.event_type AS latest_type, l.status AS latest_status,
       l.created_at AS latest_at, l.error AS latest_error, l.node_name AS latest_node,
       f.created_at AS first_at,
       EXISTS (SELECT 1 FROM noetl.command o
                WHERE o.execution_id = q.id AND o.status IN ('PENDING', 'CLAIMED', 'RUNNING'))
           AS has_open_commands,
       EXISTS (SELECT 1 FROM noetl.event k
                WHERE k.execution_id = q.id AND k.event_type = 'execution.cancelled')
           AS cancelled
  FROM (SELECT %(execution_id)s::bigint AS id) q
  LEFT JOIN noetl.execution x ON x.execution_id = q.id
  LEFT JOIN LATERAL (
        SELECT e.event_type, e.created_at, e.error FROM noetl.event e
         WHERE e.execution_id = q.id
           AND e.event_type IN ('playbook.completed', 'workflow.completed', 'playbook.failed',
                                'workflow.failed', 'execution.cancelled')
         ORDER BY e.event_id LIMIT 1) t ON true
  LEFT JOIN LATERAL (
        SELECT e.event_id, e.event_type, e.status, e.created_at, e.error, e.node_name,
               e.catalog_id, e.parent_execution_id
          FROM noetl.event e WHERE e.execution_id = q.id
         ORDER BY e.event_id DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (
        SELECT e.created_at FROM noetl.event e WHERE e.execution_id = q.id
         ORDER BY e.event_id LIMIT 1) f ON true
  LEFT JOIN noetl.catalog c ON c.catalog_id = coalesce(x.catalog_id, l.catalog_id)

-- name: execution_events_count
SELECT count(*)::bigint AS total
  FROM noetl.event e
 WHERE e.execution_id = %(execution_id)s
   AND (%(since_event_id)s::bigint IS NULL OR e.event_id > %(since_event_id)s)
   AND (%(event_type)s::text IS NULL OR e.event_type = %(event_type)s)

-- Newest first (api.md §7.1).
-- name: execution_events_page
SELECT e.execution_id, e.event_id, e.event_type, e.node_id, e.node_name, e.status,
       e.created_at, e.context, e.result, e.error, e.catalog_id, e.parent_execution_id,
       e.parent_event_id, e.duration
  FROM noetl.event e
 WHERE e.execution_id = %(execution_id)s
   AND (%(since_event_id)s::bigint IS NULL OR e.event_id > %(since_event_id)s)
   AND (%(event_type)s::text IS NULL OR e.event_type = %(event_type)s)
 ORDER BY e.event_id DESC
 LIMIT %(limit)s OFFSET %(offset)s

-- The stored engine state and the events after its position, read without the lock (one
-- statement: one snapshot). For the status route.
-- name: execution_state_read
SELECT x.state,
       (SELECT coalesce(jsonb_agg(noetl.event_envelope(e) ORDER BY e.event_id), '[]'::jsonb)
          FROM noetl.event e
         WHERE e.execution_id = x.execution_id
           AND e.event_id > coalesce((x.state ->> 'position')::bigint, 0)) AS events
  FROM noetl.execution x
 WHERE x.execution_id = %(execution_id)s

-- The list reads the projector's read model (api.md §7.4): rules 1 and 4 only.
-- name: executions_list_timeout
SELECT set_config('statement_timeout', %(timeout_ms)s::text, true) AS set

-- name: executions_list
SELECT s.execution_id, s.catalog_id, s.parent_execution_id, s.status, s.started_at,
       s.ended_at, s.error, c.path, c.version
  FROM noetl.execution_summary s
  LEFT JOIN noetl.catalog c ON c.catalog_id = s.catalog_id
 ORDER BY s.started_at DESC, s.execution_id DESC
 LIMIT %(limit)s OFFSET %(offset)s

-- name: cancel_executions
SELECT t AS execution_id
  FROM noetl.cancel_executions(%(execution_id)s, %(reason)s, %(cascade)s, %(cancelled_by)s) AS t

-- name: finalize_execution
SELECT noetl.finalize_execution(%(execution_id)s, %(reason)s) AS outcome

-- name: find_stuck_executions
SELECT t AS execution_id FROM noetl.find_stuck_executions(%(older_than_minutes)s) AS t

-- name: dashboard_stats
SELECT * FROM noetl.dashboard_stats()

-- ---------------------------------------------------------------- event batches (api.md §8.2)

-- name: accept_event_batch
SELECT noetl.accept_event_batch(%(execution_id)s, %(request_id)s, %(idempotency_key)s,
                                %(body_sha256)s, %(catalog_id)s, %(pool)s, %(events)s,
                                %(outcomes)s, %(max_queue)s) AS result

-- name: event_batch_take
SELECT noetl.event_batch_take(%(execution_id)s, %(request_id)s, %(holder)s) AS taken

-- name: event_batch_finish
SELECT noetl.event_batch_finish(%(execution_id)s, %(request_id)s, %(commands_generated)s,
                                %(error_code)s, %(message)s) AS done

-- name: event_batch_status
SELECT b.execution_id, b.request_id, b.state, b.error_code, b.message, b.commands_generated,
       b.idempotency_key, b.updated_at
  FROM noetl.event_batch b
 WHERE b.request_id = %(request_id)s
 ORDER BY b.execution_id
 LIMIT 1

-- Accepted batches nobody is processing (a crashed or busy acceptor), oldest first.
-- name: event_batch_pending
SELECT b.execution_id, b.request_id
  FROM noetl.event_batch b
 WHERE b.state = 'accepted' AND b.updated_at < now() - make_interval(secs => %(idle_s)s)
 ORDER BY b.created_at
 LIMIT %(limit)s
