-- Views for operators in psql (envelope.md §3.2). Nothing in the code reads them.

-- Events of the last hour, newest first. Scans every partition: meant for eyes, not code.
CREATE VIEW noetl.v_recent_events AS
SELECT e.event_id,
       e.execution_id,
       e.created_at,
       e.event_type,
       e.node_name,
       e.status,
       e.command_id,
       e.worker_id,
       e.duration,
       left(e.error, 200) AS error
  FROM noetl.event e
 WHERE e.event_id >= noetl.snowflake_floor(now() - interval '1 hour')
 ORDER BY e.event_id DESC
 LIMIT 1000;

-- Open commands, oldest first, with how long they have waited.
CREATE VIEW noetl.v_pending_commands AS
SELECT c.execution_id,
       c.command_id,
       c.event_id,
       c.step_name,
       c.tool_kind,
       c.pool,
       c.status,
       c.attempts,
       c.worker_id,
       c.created_at,
       now() - c.created_at AS age,
       c.claimed_at,
       c.heartbeat_at,
       c.notify_count,
       c.notified_at
  FROM noetl.command c
 WHERE c.status IN ('PENDING', 'CLAIMED', 'RUNNING')
 ORDER BY c.created_at;

-- Outbox rows waiting for JetStream, per kind and lane.
CREATE VIEW noetl.v_outbox_backlog AS
SELECT o.kind,
       o.lane,
       count(*) AS pending,
       count(*) FILTER (WHERE o.available_at <= now()) AS due,
       count(*) FILTER (WHERE o.attempts > 0) AS retrying,
       max(o.attempts) AS max_attempts,
       min(o.created_at) AS oldest_created_at,
       round(extract(epoch FROM now() - min(o.created_at)), 3) AS oldest_seconds
  FROM noetl.event_outbox o
 GROUP BY o.kind, o.lane
 ORDER BY o.kind, o.lane;

-- Both kinds of dead letter, newest first: outbox rows that could not be published and
-- stream messages the projector rejected.
CREATE VIEW noetl.v_dead_letters AS
SELECT 'outbox'::text AS source,
       d.outbox_id::text AS dead_key,
       d.execution_id,
       d.source_id AS event_id,
       d.kind,
       coalesce(d.subject, d.msg_id) AS subject,
       d.reason,
       left(d.last_error, 500) AS error,
       d.attempts,
       d.dead_at
  FROM noetl.event_outbox_dead d
UNION ALL
SELECT 'projector'::text,
       r.stream || ':' || r.stream_seq,
       r.execution_id,
       r.event_id,
       'event'::text,
       r.subject,
       r.reason,
       left(r.error, 500),
       r.deliveries,
       r.received_at
  FROM noetl.projector_reject r
 ORDER BY dead_at DESC;
