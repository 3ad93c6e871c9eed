-- Catalog functions (envelope.md §4.1). Parameter names are the spec's, so callers may use
-- named notation; inside the bodies they are qualified with the function name.
-- Every change notifies noetl_catalog so server processes drop the path from their cache;
-- NOTIFY is delivered at commit.

-- The path lock serialises registers of one path, and the version is read after the lock
-- is granted (a fresh snapshot per statement under READ COMMITTED), so concurrent registers
-- get consecutive versions. Archived rows count: a version number is never reused.
CREATE OR REPLACE FUNCTION noetl.catalog_register(
    path text, kind text, content text, payload jsonb, layout jsonb, meta jsonb
) RETURNS TABLE (catalog_id bigint, version integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_version integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_register.path));
    INSERT INTO noetl.resource (name) VALUES (catalog_register.kind) ON CONFLICT (name) DO NOTHING;
    SELECT coalesce(max(c.version), 0) + 1 INTO v_version
      FROM noetl.catalog c WHERE c.path = catalog_register.path;
    RETURN QUERY
    INSERT INTO noetl.catalog AS c (path, version, kind, content, payload, layout, meta)
    VALUES (catalog_register.path, v_version, catalog_register.kind, catalog_register.content,
            catalog_register.payload, catalog_register.layout, catalog_register.meta)
    RETURNING c.catalog_id, c.version;
    PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_register.path)));
END
$$;

-- By id, archived or not.
CREATE OR REPLACE FUNCTION noetl.catalog_get(catalog_id bigint) RETURNS SETOF noetl.catalog
LANGUAGE sql STABLE AS $$
    SELECT * FROM noetl.catalog c WHERE c.catalog_id = catalog_get.catalog_id
$$;

-- Highest version that is not archived.
CREATE OR REPLACE FUNCTION noetl.catalog_latest(path text) RETURNS SETOF noetl.catalog
LANGUAGE sql STABLE AS $$
    SELECT * FROM noetl.catalog c
     WHERE c.path = catalog_latest.path AND c.archived_at IS NULL
     ORDER BY c.version DESC
     LIMIT 1
$$;

-- That version, archived or not.
CREATE OR REPLACE FUNCTION noetl.catalog_version(path text, version integer)
RETURNS SETOF noetl.catalog
LANGUAGE sql STABLE AS $$
    SELECT * FROM noetl.catalog c
     WHERE c.path = catalog_version.path AND c.version = catalog_version.version
$$;

-- A null version archives every version of the path. Returns rows changed.
CREATE OR REPLACE FUNCTION noetl.catalog_archive(path text, version integer)
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_changed integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_archive.path));
    UPDATE noetl.catalog c
       SET archived_at = now()
     WHERE c.path = catalog_archive.path
       AND (catalog_archive.version IS NULL OR c.version = catalog_archive.version)
       AND c.archived_at IS NULL;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_changed > 0 THEN
        PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_archive.path)));
    END IF;
    RETURN v_changed;
END
$$;

-- A null version restores every version of the path. Returns rows changed.
CREATE OR REPLACE FUNCTION noetl.catalog_restore(path text, version integer)
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_changed integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1313817857, hashtext(catalog_restore.path));
    UPDATE noetl.catalog c
       SET archived_at = NULL
     WHERE c.path = catalog_restore.path
       AND (catalog_restore.version IS NULL OR c.version = catalog_restore.version)
       AND c.archived_at IS NOT NULL;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_changed > 0 THEN
        PERFORM pg_notify('noetl_catalog', format('{"path":%s}', to_json(catalog_restore.path)));
    END IF;
    RETURN v_changed;
END
$$;
