-- Named queries of the server's maintenance loop (app/maintenance.py, envelope.md §4.6).

-- Is a system playbook registered, and is its latest top-level run (any version) still open
-- or started within the interval? Database time, so every server replica judges alike.
-- name: maintenance_due
SELECT EXISTS (SELECT 1 FROM noetl.catalog c
                WHERE c.path = %(path)s AND c.archived_at IS NULL) AS registered,
       coalesce(last.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED'), false) AS open,
       coalesce(last.start_time > now() - make_interval(secs => %(interval_s)s), false) AS recent
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (
        SELECT x.status, x.start_time
          FROM noetl.execution x
          JOIN noetl.catalog c ON c.catalog_id = x.catalog_id
         WHERE c.path = %(path)s
           AND x.parent_execution_id IS NULL
         ORDER BY x.execution_id DESC
         LIMIT 1) last ON true
