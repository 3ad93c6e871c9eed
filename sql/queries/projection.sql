-- Named queries of the projection (envelope.md §7): the projector role and the server's
-- POST /api/internal/events/project share them. Loaded by core/queries.py.

-- name: select_one
SELECT 1 AS one

-- One batch of canonical envelopes: (inserted, duplicate, rejected [{index, reason}]).
-- name: project_events
SELECT inserted, duplicate, rejected FROM noetl.project_events(%(events)s::jsonb)

-- name: projector_reject_add
SELECT noetl.projector_reject_add(
    %(stream)s, %(consumer)s, %(stream_seq)s::bigint[], %(subject)s::text[], %(msg_id)s::text[],
    %(execution_id)s::bigint[], %(event_id)s::bigint[], %(reason)s::text[], %(error)s::text[],
    %(deliveries)s::integer[], %(headers)s::jsonb[], %(body)s::bytea[]
) AS added

-- Full envelopes of slimmed stream bodies, read from the primary.
-- name: event_envelopes
SELECT execution_id, event_id, envelope
  FROM noetl.event_envelopes(%(execution_ids)s::bigint[], %(event_ids)s::bigint[])

-- name: lease_acquire
SELECT noetl.lease_acquire(%(name)s, %(holder)s, %(ttl_s)s) AS acquired

-- name: lease_release
SELECT noetl.lease_release(%(name)s, %(holder)s) AS released

-- name: event_partition_ensure
SELECT noetl.event_partition_ensure(%(months_ahead)s) AS created

-- name: playbook_report
SELECT * FROM noetl.playbook_report(%(date_from)s, %(date_to)s)
