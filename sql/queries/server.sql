-- Named queries of the server role (api.md), loaded by core/queries.py.
-- Every value is a bound parameter; an optional filter is "param IS NULL OR ...".

-- ---------------------------------------------------------------- health (api.md §5)

-- name: select_one
SELECT 1 AS one

-- name: schema_revision
SELECT version_num FROM noetl.alembic_version

-- name: event_default_has_rows
SELECT EXISTS (SELECT 1 FROM noetl.event_default) AS has_rows

-- ---------------------------------------------------------------- catalog (api.md §6)

-- name: catalog_register
SELECT r.catalog_id, r.version
  FROM noetl.catalog_register(%(path)s, %(kind)s, %(content)s, %(payload)s, NULL, %(meta)s) r

-- name: catalog_get
SELECT * FROM noetl.catalog_get(%(catalog_id)s)

-- name: catalog_latest
SELECT * FROM noetl.catalog_latest(%(path)s)

-- name: catalog_version
SELECT * FROM noetl.catalog_version(%(path)s, %(version)s)

-- The whole response body, rendered by Postgres: `{"entries": [CatalogEntry, ...]}`.
-- Agents: kind agent, or a truthy meta.agent or payload.metadata.agent (api.md §6.1).
-- name: catalog_list
SELECT json_build_object('entries', coalesce(json_agg(json_build_object(
           'catalog_id', c.catalog_id::text,
           'path', c.path,
           'version', c.version,
           'kind', c.kind,
           'content', c.content,
           'layout', c.layout,
           'payload', c.payload,
           'meta', c.meta,
           'created_at', noetl.rfc3339(c.created_at),
           'archived_at', noetl.rfc3339(c.archived_at))
         ORDER BY c.created_at DESC, c.catalog_id DESC), '[]'::json))::text AS body
  FROM noetl.catalog c
 WHERE (%(kind)s::text IS NULL OR lower(c.kind) = %(kind)s)
   AND (%(path)s::text IS NULL OR c.path = %(path)s)
   AND (%(include_archived)s OR c.archived_at IS NULL)
   AND (NOT %(agent_only)s
        OR c.kind = 'agent'
        OR lower(c.meta ->> 'agent') IN ('true', '1', 'yes', 'on')
        OR lower(c.payload #>> '{metadata,agent}') IN ('true', '1', 'yes', 'on'))
   AND (%(capabilities)s::text[] IS NULL
        OR (jsonb_typeof(c.meta -> 'capabilities') = 'array'
            AND (c.meta -> 'capabilities') ?| %(capabilities)s::text[]))

-- Rows a delete would archive, locked so the list matches what catalog_archive changes.
-- name: catalog_archive_targets
SELECT c.catalog_id, c.version
  FROM noetl.catalog c
 WHERE c.path = %(path)s
   AND (%(version)s::integer IS NULL OR c.version = %(version)s)
   AND c.archived_at IS NULL
 ORDER BY c.version
   FOR UPDATE

-- name: catalog_archive
SELECT noetl.catalog_archive(%(path)s, %(version)s::integer) AS changed

-- name: catalog_restore_targets
SELECT c.catalog_id, c.version
  FROM noetl.catalog c
 WHERE c.path = %(path)s
   AND (%(version)s::integer IS NULL OR c.version = %(version)s)
   AND c.archived_at IS NOT NULL
 ORDER BY c.version
   FOR UPDATE

-- name: catalog_restore
SELECT noetl.catalog_restore(%(path)s, %(version)s::integer) AS changed

-- name: catalog_exists
SELECT EXISTS (SELECT 1 FROM noetl.catalog c WHERE c.catalog_id = %(catalog_id)s) AS found

-- ---------------------------------------------------------------- credentials (api.md §9)

-- name: credential_put
INSERT INTO noetl.credential AS c (name, type, data_encrypted, meta, tags, description)
VALUES (%(name)s, %(type)s, %(data_encrypted)s, %(meta)s, %(tags)s, %(description)s)
ON CONFLICT (name) DO UPDATE SET
    type = EXCLUDED.type,
    data_encrypted = EXCLUDED.data_encrypted,
    meta = EXCLUDED.meta,
    tags = EXCLUDED.tags,
    description = EXCLUDED.description,
    updated_at = now()
RETURNING c.id, c.name, c.type, c.meta, c.tags, c.description, c.created_at, c.updated_at

-- name: credential_list
SELECT c.id, c.name, c.type, c.meta, c.tags, c.description, c.created_at, c.updated_at
  FROM noetl.credential c
 WHERE (%(type)s::text IS NULL OR c.type = %(type)s)
   AND (%(q)s::text IS NULL
        OR strpos(lower(c.name), lower(%(q)s)) > 0
        OR strpos(lower(coalesce(c.description, '')), lower(%(q)s)) > 0)
 ORDER BY c.name

-- An all-digit identifier is tried as an id first, then as a name (api.md §9).
-- name: credential_get
SELECT c.id, c.name, c.type, c.meta, c.tags, c.description, c.created_at, c.updated_at,
       c.data_encrypted
  FROM noetl.credential c
 WHERE c.id = %(id)s OR c.name = %(name)s
 ORDER BY (c.id IS NOT DISTINCT FROM %(id)s) DESC
 LIMIT 1

-- Compare-and-set, so a concurrent put is never overwritten by an old value re-sealed.
-- name: credential_reseal
UPDATE noetl.credential c
   SET data_encrypted = %(sealed)s
 WHERE c.id = %(id)s AND c.data_encrypted = %(plain)s

-- name: credential_delete
DELETE FROM noetl.credential d
 WHERE d.id = (SELECT c.id FROM noetl.credential c
                WHERE c.id = %(id)s OR c.name = %(name)s
                ORDER BY (c.id IS NOT DISTINCT FROM %(id)s) DESC
                LIMIT 1)
RETURNING d.id, d.name

-- The execution's catalog entry and its playbook keychain section (dsl.md §2).
-- name: execution_keychain
SELECT x.catalog_id, c.payload -> 'keychain' AS keychain
  FROM noetl.execution x
  LEFT JOIN noetl.catalog c ON c.catalog_id = x.catalog_id
 WHERE x.execution_id = %(execution_id)s

-- ---------------------------------------------------------------- keychain (api.md §10)

-- name: keychain_put
INSERT INTO noetl.keychain AS k (
    cache_key, keychain_name, catalog_id, credential_type, cache_type, scope_type,
    execution_id, parent_execution_id, data_encrypted, renew_config, expires_at, auto_renew)
VALUES (%(cache_key)s, %(keychain_name)s, %(catalog_id)s, %(credential_type)s, %(cache_type)s,
        %(scope_type)s, %(execution_id)s, %(parent_execution_id)s, %(data_encrypted)s,
        %(renew_config)s, coalesce(%(expires_at)s, now() + make_interval(secs => %(ttl_seconds)s)),
        %(auto_renew)s)
ON CONFLICT (cache_key) DO UPDATE SET
    keychain_name = EXCLUDED.keychain_name,
    catalog_id = EXCLUDED.catalog_id,
    credential_type = EXCLUDED.credential_type,
    cache_type = EXCLUDED.cache_type,
    scope_type = EXCLUDED.scope_type,
    execution_id = EXCLUDED.execution_id,
    parent_execution_id = EXCLUDED.parent_execution_id,
    data_encrypted = EXCLUDED.data_encrypted,
    renew_config = EXCLUDED.renew_config,
    expires_at = EXCLUDED.expires_at,
    auto_renew = EXCLUDED.auto_renew,
    created_at = now(),
    accessed_at = now(),
    access_count = 0
RETURNING k.expires_at, extract(epoch FROM k.expires_at - now())::float8 AS ttl_seconds

-- Counts the access. An expired row is found only when it renews itself (auto_renew).
-- name: keychain_get
UPDATE noetl.keychain k
   SET access_count = k.access_count + 1, accessed_at = now()
 WHERE k.cache_key = %(cache_key)s
   AND (k.expires_at > now() OR k.auto_renew)
RETURNING k.*, k.expires_at <= now() AS expired,
          greatest(extract(epoch FROM k.expires_at - clock_timestamp()), 0)::float8 AS ttl_left

-- Compare-and-set, as credential_reseal.
-- name: keychain_reseal
UPDATE noetl.keychain k
   SET data_encrypted = %(data_encrypted)s, renew_config = %(renew_config)s
 WHERE k.cache_key = %(cache_key)s
   AND k.data_encrypted = %(old_data_encrypted)s
   AND k.renew_config IS NOT DISTINCT FROM %(old_renew_config)s::text

-- name: keychain_delete
DELETE FROM noetl.keychain k WHERE k.cache_key = %(cache_key)s RETURNING k.cache_key

-- name: keychain_list
SELECT k.keychain_name, k.cache_key, k.credential_type, k.cache_type, k.scope_type,
       k.execution_id, k.expires_at, k.expires_at <= now() AS expired, k.auto_renew,
       k.access_count, k.accessed_at, k.created_at
  FROM noetl.keychain k
 WHERE k.catalog_id = %(catalog_id)s
 ORDER BY k.keychain_name, k.cache_key

-- The first unexpired row of the given keys, in the order given (credential alias lookup).
-- name: keychain_first_live
SELECT k.cache_key, k.keychain_name, k.credential_type, k.data_encrypted, k.created_at,
       k.accessed_at
  FROM noetl.keychain k
 WHERE k.cache_key = ANY (%(keys)s::text[]) AND k.expires_at > now()
 ORDER BY array_position(%(keys)s::text[], k.cache_key)
 LIMIT 1

-- ---------------------------------------------------------------- worker pool (api.md §8.4)

-- name: runtime_register
INSERT INTO noetl.runtime AS r (kind, name, uri, status, labels, runtime, capacity, heartbeat)
VALUES ('worker_pool', %(name)s, %(uri)s, %(status)s, %(labels)s, %(runtime)s, %(capacity)s, now())
ON CONFLICT (kind, name) DO UPDATE SET
    uri = EXCLUDED.uri,
    status = EXCLUDED.status,
    labels = EXCLUDED.labels,
    runtime = EXCLUDED.runtime,
    capacity = EXCLUDED.capacity,
    heartbeat = now(),
    updated_at = now()
RETURNING r.runtime_id

-- name: runtime_heartbeat
UPDATE noetl.runtime r
   SET heartbeat = now(), status = 'ready', updated_at = now()
 WHERE r.kind = 'worker_pool' AND r.name = %(name)s
RETURNING r.runtime_id

-- Offline, and the worker's open commands re-notified in the same transaction.
-- name: runtime_deregister
SELECT d.runtime_id, d.renotified FROM noetl.runtime_deregister(%(name)s) d

-- A pool silent for offline_s shows as offline; the stored row is not changed.
-- name: runtime_list
SELECT * FROM (
    SELECT r.name, r.runtime,
           CASE WHEN r.heartbeat < now() - make_interval(secs => %(offline_s)s) THEN 'offline'
                ELSE r.status END AS status,
           r.capacity, r.labels, r.heartbeat, r.created_at, r.updated_at
      FROM noetl.runtime r
     WHERE r.kind = 'worker_pool'
       AND (%(runtime)s::text IS NULL OR r.runtime ->> 'type' = %(runtime)s)
) s
 WHERE (%(status)s::text IS NULL OR s.status = %(status)s)
 ORDER BY s.name

-- ---------------------------------------------------------------- vars (api.md §8.5)

-- variables: a JSON array of {var_name, var_value, var_type, source_step}
-- name: vars_set
INSERT INTO noetl.transient AS t (execution_id, var_name, var_type, var_value, source_step)
SELECT %(execution_id)s, v.var_name, v.var_type, coalesce(v.var_value, 'null'::jsonb), v.source_step
  FROM jsonb_to_recordset(%(variables)s::jsonb)
       AS v(var_name text, var_type text, var_value jsonb, source_step text)
ON CONFLICT (execution_id, var_name) DO UPDATE SET
    var_type = EXCLUDED.var_type,
    var_value = EXCLUDED.var_value,
    source_step = EXCLUDED.source_step
RETURNING t.var_name

-- name: vars_list
SELECT t.var_name, t.var_value, t.var_type, t.source_step, t.created_at, t.accessed_at,
       t.access_count
  FROM noetl.transient t
 WHERE t.execution_id = %(execution_id)s
 ORDER BY t.var_name

-- name: var_get
UPDATE noetl.transient t
   SET access_count = t.access_count + 1, accessed_at = now()
 WHERE t.execution_id = %(execution_id)s AND t.var_name = %(var_name)s
RETURNING t.var_name, t.var_value, t.var_type, t.source_step, t.created_at, t.accessed_at,
          t.access_count

-- name: var_delete
DELETE FROM noetl.transient t
 WHERE t.execution_id = %(execution_id)s AND t.var_name = %(var_name)s
RETURNING t.var_name

-- name: vars_delete
WITH gone AS (
    DELETE FROM noetl.transient t WHERE t.execution_id = %(execution_id)s RETURNING 1
)
SELECT count(*)::integer AS deleted FROM gone

-- ---------------------------------------------------------------- internal (api.md §11)

-- name: outbox_pending
SELECT s.pending FROM noetl.outbox_stats() s

-- Rejected items of the HTTP door land beside the projector's own, with stream 'http'.
-- name: project_events
SELECT p.inserted, p.duplicate, p.rejected FROM noetl.project_events(%(events)s::jsonb) p

-- name: projector_reject_add
SELECT noetl.projector_reject_add(
    'http', %(consumer)s, %(stream_seq)s::bigint[], %(subject)s::text[], %(msg_id)s::text[],
    %(execution_id)s::bigint[], %(event_id)s::bigint[], %(reason)s::text[], %(error)s::text[],
    %(deliveries)s::integer[], %(headers)s::jsonb[], %(body)s::bytea[]) AS added
