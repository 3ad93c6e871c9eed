-- Undoes the foundation revision: drops every object in schema noetl except
-- noetl.alembic_version, which alembic still needs while it downgrades. The schema stays.
DO $$
DECLARE
    r record;
BEGIN
    -- CASCADE reports every dependent it takes along; that is expected here.
    PERFORM set_config('client_min_messages', 'warning', true);
    FOR r IN
        SELECT c.oid::regclass AS rel, c.relkind
          FROM pg_class c
         WHERE c.relnamespace = 'noetl'::regnamespace
           AND c.relkind IN ('v', 'm')
    LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE',
                       CASE r.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, r.rel);
    END LOOP;

    -- Partitions go with their parent, identity sequences and triggers with their table.
    FOR r IN
        SELECT c.oid::regclass AS rel
          FROM pg_class c
         WHERE c.relnamespace = 'noetl'::regnamespace
           AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition
           AND c.relname <> 'alembic_version'
    LOOP
        EXECUTE format('DROP TABLE IF EXISTS %s CASCADE', r.rel);
    END LOOP;

    FOR r IN
        SELECT p.oid::regprocedure AS proc, p.prokind
          FROM pg_proc p
         WHERE p.pronamespace = 'noetl'::regnamespace
         ORDER BY p.prokind = 'a' DESC
    LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE',
                       CASE r.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE'
                                      ELSE 'FUNCTION' END, r.proc);
    END LOOP;

    FOR r IN
        SELECT c.oid::regclass AS rel
          FROM pg_class c
         WHERE c.relnamespace = 'noetl'::regnamespace
           AND c.relkind = 'S'
    LOOP
        EXECUTE format('DROP SEQUENCE IF EXISTS %s CASCADE', r.rel);
    END LOOP;

    -- Free-standing types (none today); row types of tables are already gone.
    FOR r IN
        SELECT t.oid::regtype AS typ
          FROM pg_type t
         WHERE t.typnamespace = 'noetl'::regnamespace
           AND t.typtype IN ('c', 'e', 'd', 'r', 'm')
           AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    LOOP
        EXECUTE format('DROP TYPE IF EXISTS %s CASCADE', r.typ);
    END LOOP;
END
$$;
