-- Named queries of the SSE streams (api.md §7.7), loaded by core/queries.py.
-- Rows have the column set of the execution API's events_after query, so both become EventRows
-- through app.services.executions.event_row. Optional filters are "param IS NULL OR ...".

-- Does the execution exist (a row or an event), and its first execution-terminal event.
-- name: stream_head
SELECT k.known, t.event_id AS terminal_event_id, t.event_type AS terminal_event_type
  FROM (SELECT EXISTS (SELECT 1 FROM noetl.execution x WHERE x.execution_id = %(execution_id)s)
               OR EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = %(execution_id)s)
               AS known) k
  LEFT JOIN LATERAL (
        SELECT e.event_id, e.event_type
          FROM noetl.event e
         WHERE e.execution_id = %(execution_id)s
           AND e.event_type = ANY (%(terminal_types)s::text[])
         ORDER BY e.event_id
         LIMIT 1) t ON true

-- Events of one execution for the all-executions stream, after a notification. With a cursor
-- it reads after the cursor; without one (the stream has sent nothing of this execution yet)
-- it starts at the notifying statement's own rows: the notification names the statement's
-- highest id and its row count, and a statement's rows are the execution's newest at commit,
-- because ids are assigned under the execution lock.
-- name: stream_notified_events
SELECT e.execution_id, e.event_id, e.event_type, e.node_id, e.node_name, e.status,
       e.created_at, e.context, e.result, e.error, e.catalog_id, e.parent_execution_id,
       e.parent_event_id, e.duration
  FROM noetl.event e
 WHERE e.execution_id = %(execution_id)s
   AND e.event_id > coalesce(
         %(after_event_id)s::bigint,
         (SELECT min(s.event_id) - 1
            FROM (SELECT i.event_id
                    FROM noetl.event i
                   WHERE i.execution_id = %(execution_id)s
                     AND i.event_id <= %(notified_event_id)s
                   ORDER BY i.event_id DESC
                   LIMIT %(notified_count)s) s))
   AND (%(path)s::text IS NULL
        OR EXISTS (SELECT 1 FROM noetl.catalog c
                    WHERE c.catalog_id = e.catalog_id AND c.path = %(path)s::text))
   AND (%(event_types)s::text[] IS NULL
        OR e.event_type = ANY (%(event_types)s::text[])
        OR EXISTS (SELECT 1 FROM unnest(%(event_prefixes)s::text[]) p
                    WHERE starts_with(e.event_type, p)))
   AND (%(status)s::text IS NULL OR upper(e.status) = %(status)s::text)
 ORDER BY e.event_id
 LIMIT %(limit)s

-- Events of every execution after an id, oldest first, for resume and the safety re-read of the
-- all-executions stream. noetl.event has no index on event_id alone (it is partitioned by
-- execution), so the executions whose last event is newer come first, then their events
-- through the primary key.
-- name: stream_events_since
SELECT e.execution_id, e.event_id, e.event_type, e.node_id, e.node_name, e.status,
       e.created_at, e.context, e.result, e.error, e.catalog_id, e.parent_execution_id,
       e.parent_event_id, e.duration
  FROM noetl.execution x
  JOIN LATERAL (
        SELECT e.*
          FROM noetl.event e
         WHERE e.execution_id = x.execution_id
           AND e.event_id > %(after_event_id)s
           AND (%(path)s::text IS NULL
                OR EXISTS (SELECT 1 FROM noetl.catalog c
                            WHERE c.catalog_id = e.catalog_id AND c.path = %(path)s::text))
           AND (%(event_types)s::text[] IS NULL
                OR e.event_type = ANY (%(event_types)s::text[])
                OR EXISTS (SELECT 1 FROM unnest(%(event_prefixes)s::text[]) p
                            WHERE starts_with(e.event_type, p)))
           AND (%(status)s::text IS NULL OR upper(e.status) = %(status)s::text)
         ORDER BY e.event_id
         LIMIT %(limit)s) e ON true
 WHERE x.last_event_id > %(after_event_id)s
   AND (%(execution_ids)s::bigint[] IS NULL OR x.execution_id = ANY (%(execution_ids)s::bigint[]))
 ORDER BY e.event_id
 LIMIT %(limit)s
