-- ``rowcast.deploy(...)``: deployments as one SQL call, and the one place they are validated.
-- 
-- Plain PL/pgSQL (no Python in the database). The CLI calls the same function, so a deployment made
-- with ``SELECT rowcast.deploy(...)`` and one made with ``rowcast deploy`` are checked by the same
-- code: the table must exist and have a primary key, the columns must exist and have a usable type,
-- the target must not be a feature and must fit the model's task, the table's Kafka topic must
-- not be (or collide with) another's (rowcast._check_table_topic). Refusals use SQLSTATE ``RC001``
-- with a message a person can act on. It also adds the table to rowcast's publication and creates
-- the view ``rowcast.<name>_scored``: every source row beside its latest prediction.
-- A ``module:factory`` model must come from a module ROWCAST_CUSTOM_MODEL_MODULES allows: SQL
-- cannot read the environment, so ``rowcast init`` stores that list in rowcast.config
-- ('custom_model_modules', comma-separated) and this checks it by models/catalog.py's rule.

-- '[schema.]table' as the user wrote it (quotes allowed) -> schema, table, oid; one message when
-- it does not exist, for the scored table and the labels table alike
CREATE OR REPLACE FUNCTION rowcast._resolve_table(
    p_ident text, p_what text, OUT schema_name text, OUT table_name text, OUT table_oid oid)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_ident text[];
BEGIN
    BEGIN
        v_ident := parse_ident(p_ident);
    EXCEPTION WHEN invalid_parameter_value THEN
        -- names with capitals, dashes or spaces must be quoted as SQL quotes them
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %L is not a valid name: if that is the table''s exact name, quote it as SQL does: '
            '%s (in a shell: ''%s'')', p_what, p_ident, quote_ident(p_ident),
            quote_ident(p_ident));
    END;
    IF array_length(v_ident, 1) > 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %L: give it as table or schema.table (rowcast works in the current database)',
            p_what, p_ident);
    END IF;
    IF array_length(v_ident, 1) = 1 THEN
        schema_name := 'public'; table_name := v_ident[1];
    ELSE
        schema_name := v_ident[1]; table_name := v_ident[2];
    END IF;
    -- rowcast's own tables would feed back (each prediction a new row to score, its key nesting
    -- the last one's); the catalogs cannot be published
    IF schema_name IN ('rowcast', 'pg_catalog', 'information_schema') OR schema_name LIKE 'pg\_%' THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I cannot be deployed on: rowcast does not watch its own tables or the system '
            'catalogs', p_what, schema_name, table_name);
    END IF;
    SELECT c.oid INTO table_oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = schema_name AND c.relname = table_name AND c.relkind IN ('r', 'p');
    IF table_oid IS NULL AND EXISTS (
            SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = schema_name AND c.relname = table_name) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I is not a table (a view, materialized view or foreign table): only a '
            'table''s changes are streamed; deploy on the table it reads', p_what, schema_name,
            table_name);
    END IF;
    IF table_oid IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001',
            MESSAGE = format('%s %I.%I does not exist', p_what, schema_name, table_name);
    END IF;
    IF (SELECT relispartition FROM pg_class WHERE oid = table_oid) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I is a partition of %s: deploy on that table (rowcast''s publication sends '
            'a partition''s changes as its partitioned table''s)', p_what, schema_name,
            table_name, (SELECT inhparent::regclass::text FROM pg_inherits
                          WHERE inhrelid = table_oid LIMIT 1));
    END IF;
    IF (SELECT relpersistence FROM pg_class WHERE oid = table_oid) <> 'p' THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I is unlogged (or temporary): PostgreSQL writes no WAL for it, so none of '
            'its changes can reach rowcast; ALTER TABLE %I.%I SET LOGGED', p_what, schema_name,
            table_name, schema_name, table_name);
    END IF;
END
$fn$;

-- A finite timestamptz as the CDC source prints it (connectors/pgtypes.py, as java.time's ISO
-- formatter does): UTC, 6 fractional digits, years counted astronomically (1 BC = 0000,
-- 44 BC = -0043) and a sign beyond 4 digits (+12345). to_char's YYYY alone printed 4713 BC as
-- 4713 and year 12345 without its sign, so the _scored view missed such rows' predictions.
CREATE OR REPLACE FUNCTION rowcast._iso_utc(p_value timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT CASE
    WHEN y BETWEEN 1 AND 9999 THEN lpad(y::text, 4, '0')
    WHEN y > 9999 THEN '+' || y::text
    WHEN y = -1 THEN '0000'  -- 1 BC: PostgreSQL has no year 0, the ISO calendar does
    ELSE '-' || lpad((-1 - y)::text, 4, '0')
END || to_char(u, '-MM-DD"T"HH24:MI:SS.US"Z"')
FROM (SELECT p_value AT TIME ZONE 'UTC' AS u) AS utc,
     LATERAL (SELECT extract(year FROM utc.u)::bigint AS y) AS year
$fn$;

-- The canonical primary key of a row, computed in SQL: the same JSON the CDC source puts on
-- Kafka and the sink stores in rowcast.predictions.pk (rowcast.core.keys documents the encoding;
-- connectors/pgtypes.py produces it on the Python side). One expression per key column type,
-- independent of the session's TimeZone, DateStyle and bytea_output, so the _scored view,
-- reconcile and backfill --missing-only match keys whoever runs them. p_expr is the column as
-- SQL (e.g. 't."id"'); the type OIDs are those pgtypes chooses its decoders by.
CREATE OR REPLACE FUNCTION rowcast._key_value_sql(p_type oid, p_expr text)
RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT CASE
    -- integers, floats (NaN and infinities become strings in both), booleans: JSON as they are
    WHEN p_type IN (16, 20, 21, 23, 26, 700, 701) THEN format('to_jsonb(%s)', p_expr)
    WHEN p_type = 17 THEN format(  -- bytea: base64 without the line breaks encode() adds
        'to_jsonb(translate(encode(%s, ''base64''), E''\n'', ''''))', p_expr)
    WHEN p_type = 1082 THEN format(  -- date: days since 1970-01-01
        'CASE WHEN isfinite(%1$s) THEN to_jsonb(%1$s - DATE ''1970-01-01'') '
        'ELSE to_jsonb(%1$s::text) END', p_expr)
    WHEN p_type = 1114 THEN format(  -- timestamp: microseconds since the epoch
        'CASE WHEN isfinite(%1$s) THEN to_jsonb((extract(epoch FROM %1$s) * 1000000)::bigint) '
        'ELSE to_jsonb(%1$s::text) END', p_expr)
    WHEN p_type = 1184 THEN format(  -- timestamptz: ISO text in UTC, always 6 fractional digits
        'CASE WHEN isfinite(%1$s) THEN to_jsonb(rowcast._iso_utc(%1$s)) '
        'ELSE to_jsonb(%1$s::text) END', p_expr)
    WHEN p_type = 1083 THEN format(  -- time: microseconds since midnight
        'to_jsonb((extract(epoch FROM %s) * 1000000)::bigint)', p_expr)
    WHEN p_type = 1266 THEN format(  -- timetz: HH:MM:SS.ffffffZ in UTC
        'to_jsonb(to_char(DATE ''2000-01-01'' + (%s AT TIME ZONE ''UTC'')::time, '
        '''HH24:MI:SS.US"Z"''))', p_expr)
    WHEN p_type = 1186 THEN format(  -- interval: microseconds, a month as 365.25/12 days
        'to_jsonb(((extract(year FROM %1$s) * 12 + extract(month FROM %1$s)) * 2629800000000 '
        '+ extract(day FROM %1$s) * 86400000000 + extract(hour FROM %1$s) * 3600000000 '
        '+ extract(minute FROM %1$s) * 60000000 + extract(microseconds FROM %1$s))::bigint)',
        p_expr)
    -- numeric, text, varchar, char (blank-padded), uuid, enums, domains and the rest: the text
    -- of the type's output function, exactly what pgoutput sends (numeric 1.50 stays "1.50");
    -- concat() rather than ::text, which trims char(n), and rather than format('%s'), whose %
    -- a client library would take for a placeholder
    ELSE format('to_jsonb(concat(%s))', p_expr)
END
$fn$;

-- jsonb_build_object('<column>', <canonical value>, ...) over the primary key of p_table for a
-- row aliased p_alias: the one SQL expression of a row's key (view, reconcile, backfill)
CREATE OR REPLACE FUNCTION rowcast._key_sql(p_table oid, p_alias text)
RETURNS text LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_parts text;
BEGIN
    SELECT string_agg(format('%L, %s', a.attname, rowcast._key_value_sql(
                                 a.atttypid, format('%I.%I', p_alias, a.attname))),
                      ', ' ORDER BY k.ord) INTO v_parts
      FROM pg_index i
      JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = p_table AND i.indisprimary;
    IF v_parts IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'table %s has no primary key: rowcast keys predictions by it', p_table::regclass);
    END IF;
    RETURN format('jsonb_build_object(%s)', v_parts);
END
$fn$;

DROP FUNCTION IF EXISTS rowcast.deploy(text, text, text, text[], text);
-- each column of a table with the feature kind rowcast reads it as (``unusable`` where none;
-- ``generated`` for a generated column, which logical replication does not send), in order
CREATE OR REPLACE FUNCTION rowcast._column_kinds(p_oid oid, OUT names text[], OUT kinds text[])
LANGUAGE sql STABLE AS $fn$
    SELECT array_agg(a.attname::text ORDER BY a.attnum),
           array_agg(CASE
               WHEN a.attgenerated <> '' THEN 'generated'
               WHEN t.typtype = 'e' THEN 'category'
               WHEN t.typname IN ('int2', 'int4', 'int8', 'float4', 'float8', 'numeric') THEN 'number'
               WHEN t.typname = 'bool' THEN 'boolean'
               WHEN t.typname IN ('text', 'varchar', 'bpchar') THEN 'category'
               WHEN t.typname IN ('timestamp', 'timestamptz') THEN 'timestamp'
               ELSE 'unusable' END ORDER BY a.attnum)
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = p_oid AND a.attnum > 0 AND NOT a.attisdropped
$fn$;

-- A table's change topic as core/settings.py names it (source_topic, _topic_safe): every character
-- outside [A-Za-z0-9._-] becomes '_', one per character. Kafka holds no two topics that are equal
-- once '.' reads as '_' (it refuses the second), so tables are compared by the fold of their
-- topic: safe(schema) || '.' || safe(table) with '.' as '_' (the prefix is common to all).
CREATE OR REPLACE FUNCTION rowcast._topic_safe(p_name text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $fn$
SELECT regexp_replace(p_name, '[^A-Za-z0-9._-]', '_', 'g')
$fn$;

CREATE OR REPLACE FUNCTION rowcast._topic_fold(p_schema text, p_table text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $fn$
SELECT replace(rowcast._topic_safe(p_schema) || '.' || rowcast._topic_safe(p_table), '.', '_')
$fn$;

-- Every table a deployment reads: the one it scores ('table') and its labels table ('labels
-- table'), with the deployment's name (rowcast._check_table_topic, _check_name_topics and
-- connectors/registry.py's status checks)
CREATE OR REPLACE FUNCTION rowcast._deployment_tables(
    OUT what text, OUT schema_name text, OUT table_name text, OUT deployment text)
RETURNS SETOF record LANGUAGE sql STABLE AS $fn$
SELECT 'table', d.schema_name, d.table_name, d.name FROM rowcast.deployments d
UNION ALL
SELECT 'labels table', d.labels->>'schema', d.labels->>'table', d.name
  FROM rowcast.deployments d WHERE d.labels IS NOT NULL
$fn$;

-- Refuses (RC001) a table deployment p_name would read (p_what: 'table' or 'labels table') whose
-- change topic would mix with, or be refused by Kafka beside, another topic: a deployment's own
-- predictions or labels topic (<prefix>.predictions.<name>: the sink and the learner read every
-- topic under those prefixes), or the change topic of another table a deployment reads
-- (p_other, the deployment's other table, counts too). Kafka's refusal stopped the source and
-- the worker, and so every deployment; a shared topic mixed two tables' rows.
CREATE OR REPLACE FUNCTION rowcast._check_table_topic(
    p_name text, p_what text, p_schema text, p_table text,
    p_other_what text DEFAULT NULL, p_other_schema text DEFAULT NULL,
    p_other_table text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_safe text := rowcast._topic_safe(p_schema);
    v_fold text := rowcast._topic_fold(p_schema, p_table);
    v_topic text := '<prefix>.' || v_safe || '.' || rowcast._topic_safe(p_table);
    v_hit record;
BEGIN
    IF v_safe IN ('predictions', 'labels') OR starts_with(v_safe, 'predictions.')
       OR starts_with(v_safe, 'labels.') THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I cannot be deployed on: its change topic %s would be read as a '
            'deployment''s %s topic (<prefix>.%s.<deployment>); move it to another schema',
            p_what, p_schema, p_table, v_topic, split_part(v_safe, '.', 1),
            split_part(v_safe, '.', 1));
    END IF;
    SELECT u.what, u.schema_name, u.table_name, u.deployment INTO v_hit
      FROM (SELECT * FROM rowcast._deployment_tables()
            UNION ALL
            SELECT p_other_what, p_other_schema, p_other_table, NULL
             WHERE p_other_schema IS NOT NULL) AS u
     WHERE rowcast._topic_fold(u.schema_name, u.table_name) = v_fold
       AND (u.schema_name, u.table_name) IS DISTINCT FROM (p_schema, p_table)
     ORDER BY u.deployment NULLS FIRST
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I and %s %I.%I%s would share one Kafka change topic (%s): rename one of them',
            p_what, p_schema, p_table, v_hit.what, v_hit.schema_name, v_hit.table_name,
            CASE WHEN v_hit.deployment IS NULL THEN ''
                 ELSE format(' (deployment %L)', v_hit.deployment) END,
            CASE WHEN rowcast._topic_safe(v_hit.schema_name) || '.'
                      || rowcast._topic_safe(v_hit.table_name) = v_safe || '.'
                      || rowcast._topic_safe(p_table)
                 THEN 'both ' || v_topic
                 ELSE format('%s and <prefix>.%s.%s: Kafka reads ''.'' and ''_'' alike', v_topic,
                             rowcast._topic_safe(v_hit.schema_name),
                             rowcast._topic_safe(v_hit.table_name)) END);
    END IF;
    SELECT n.name, n.kind INTO v_hit
      FROM (SELECT name FROM rowcast.deployments UNION SELECT p_name) AS n0(name),
           LATERAL (VALUES (n0.name, 'predictions'), (n0.name, 'labels')) AS n(name, kind)
     WHERE n.kind || '_' || n.name = v_fold
     ORDER BY n.name, n.kind DESC
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            '%s %I.%I: its change topic %s and the %s topic <prefix>.%s.%s of deployment %L '
            'are one topic to Kafka, which reads ''.'' and ''_'' alike: rename the table, or '
            'choose another name for that deployment', p_what, p_schema, p_table, v_topic,
            v_hit.kind, v_hit.kind, v_hit.name, v_hit.name);
    END IF;
END
$fn$;

-- Refuses (RC001) a deployment name whose predictions or labels topic Kafka cannot hold beside
-- the change topic of a table some deployment reads (see rowcast._check_table_topic)
CREATE OR REPLACE FUNCTION rowcast._check_name_topics(p_name text)
RETURNS void LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_hit record;
BEGIN
    SELECT k.kind, u.what, u.schema_name, u.table_name, u.deployment INTO v_hit
      FROM rowcast._deployment_tables() AS u,
           (VALUES ('predictions'), ('labels')) AS k(kind)
     WHERE rowcast._topic_fold(u.schema_name, u.table_name) = k.kind || '_' || p_name
     ORDER BY k.kind DESC, u.deployment
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'deployment name %L: its %s topic <prefix>.%s.%s and the change topic of %s %I.%I '
            '(deployment %L) are one topic to Kafka, which reads ''.'' and ''_'' alike: choose '
            'another name', p_name, v_hit.kind, v_hit.kind, p_name, v_hit.what,
            v_hit.schema_name, v_hit.table_name, v_hit.deployment);
    END IF;
END
$fn$;

-- The last deployment reading a table takes it out of the publication: no more events
-- (rowcast.undeploy, and rowcast.deploy moving a name to another table)
CREATE OR REPLACE FUNCTION rowcast._unpublish_unused(p_schema text, p_table text)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    v_pub text;
BEGIN
    SELECT value INTO v_pub FROM rowcast.config WHERE key = 'publication';
    IF v_pub IS NOT NULL AND p_schema IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM rowcast.deployments d
                        WHERE (d.schema_name = p_schema AND d.table_name = p_table)
                           OR (d.labels->>'schema' = p_schema AND d.labels->>'table' = p_table))
       AND EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = v_pub
                      AND schemaname = p_schema AND tablename = p_table) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %I.%I', v_pub, p_schema, p_table);
    END IF;
END
$fn$;

DROP FUNCTION IF EXISTS rowcast.deploy(text, text, text, text[], text, text, text, text);
-- p_backfill: the rows already in the table are scored too (those without a prediction), as
-- `rowcast deploy` does; a function cannot reach Kafka, so it leaves a request in
-- rowcast.backfill_requests that the running source serves
CREATE OR REPLACE FUNCTION rowcast.deploy(
    p_name text, p_table text, p_target text,
    p_features text[] DEFAULT NULL, p_model text DEFAULT 'linear_regression',
    p_labels_table text DEFAULT NULL, p_labels_key text DEFAULT NULL,
    p_labels_column text DEFAULT NULL, p_backfill boolean DEFAULT true)
RETURNS rowcast.deployments
LANGUAGE plpgsql AS $fn$
DECLARE
    v_schema text;
    v_table text;
    v_oid oid;
    v_task text;
    v_keys text[];
    v_names text[];
    v_kinds text[];
    v_target_kind text;
    v_features text[];
    v_feature_json jsonb := '[]';
    v_col text;
    v_kind text;
    v_pub text;
    v_row rowcast.deployments;
    v_old rowcast.deployments;
    v_cols text;
    v_labels jsonb;
    v_lschema text;
    v_ltable text;
    v_loid oid;
    v_lcolumn text := coalesce(p_labels_column, p_target);
    v_ltype oid;
    v_ktype oid;
    v_module text;
    v_allowed text[];
BEGIN
    -- a NULL would slip past the checks below (a comparison with NULL is never true) and end as
    -- a raw error, or none; name the argument instead
    IF p_name IS NULL OR p_table IS NULL OR p_target IS NULL OR p_model IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = CASE
            WHEN p_name IS NULL THEN 'p_name must not be NULL: give the deployment''s name'
            WHEN p_table IS NULL THEN 'p_table must not be NULL: give the table to score, as table '
                                      'or schema.table'
            WHEN p_target IS NULL THEN 'p_target must not be NULL: give the column holding the '
                                       'label to learn'
            ELSE 'p_model must not be NULL: give a model of the catalog (SELECT name FROM '
                 'rowcast.models) or a custom module:factory' END;
    END IF;
    -- at most 56 characters: rowcast.<name>_scored must fit PostgreSQL's 63-byte identifiers
    -- (longer names were cut, and two deployments could end with one view)
    IF p_name !~ '^[a-z][a-z0-9_]{0,55}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'deployment name %L must be 1 to 56 lower-case letters, digits and _, starting with '
            'a letter (it names topics and the view rowcast.<name>_scored, which PostgreSQL '
            'limits to 63 bytes)', p_name);
    END IF;
    SELECT r.schema_name, r.table_name, r.table_oid INTO v_schema, v_table, v_oid
      FROM rowcast._resolve_table(p_table, 'table') r;
    SELECT task INTO v_task FROM rowcast.models WHERE name = p_model;
    IF v_task IS NULL AND p_model ~ '^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$' THEN
        -- module:factory: the worker imports it, so only from a module the operator allowed
        -- (the list ``rowcast init`` stored): the module itself or a submodule of it
        v_module := split_part(p_model, ':', 1);
        SELECT coalesce(array_agg(m ORDER BY o), '{}') INTO v_allowed
          FROM rowcast.config c,
               unnest(string_to_array(c.value, ',')) WITH ORDINALITY AS u(m, o)
         WHERE c.key = 'custom_model_modules' AND m <> '';
        IF NOT EXISTS (SELECT 1 FROM unnest(v_allowed) AS a(m)
                        WHERE v_module = m OR starts_with(v_module, m || '.')) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'custom model %L: module %L is not allowed here; the operator lists the modules '
                'custom models may come from in ROWCAST_CUSTOM_MODEL_MODULES (now: %s, as stored '
                'by the last rowcast init)', p_model, v_module,
                coalesce(nullif(array_to_string(v_allowed, ', '), ''), 'none'));
        END IF;
        v_task := 'custom';
    END IF;
    IF v_task IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'unknown model %L; the catalog has: %s', p_model,
            (SELECT string_agg(name, ', ' ORDER BY name) FROM rowcast.models));
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO v_keys
      FROM pg_index i
      JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = v_oid AND i.indisprimary;
    IF v_keys IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'table %I.%I has no primary key: rowcast keys predictions by it, and a published '
            'table without one makes the application''s own UPDATEs and DELETEs fail',
            v_schema, v_table);
    END IF;
    SELECT k.names, k.kinds INTO v_names, v_kinds FROM rowcast._column_kinds(v_oid) k;
    IF p_labels_table IS NOT NULL THEN
        SELECT r.schema_name, r.table_name, r.table_oid INTO v_lschema, v_ltable, v_loid
          FROM rowcast._resolve_table(p_labels_table, 'labels table') r;
    END IF;
    IF p_labels_table IS NOT NULL AND v_loid <> v_oid THEN
        -- labels come from the labels table alone: the target is its column there (by
        -- default), which the scored table need not have, and a scored-table column of that
        -- name is never read
        SELECT k.kinds[array_position(k.names, v_lcolumn)] INTO v_target_kind
          FROM rowcast._column_kinds(v_loid) k;
        IF v_target_kind IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'labels column %L is not in %I.%I (--labels-column names it; default: the '
                'target)', v_lcolumn, v_lschema, v_ltable);
        END IF;
    ELSIF p_target = ANY (v_names) THEN
        v_target_kind := v_kinds[array_position(v_names, p_target)];
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target column %L is not in %I.%I; columns: %s (labels kept in another table: '
            'name it with --labels-table, p_labels_table)', p_target, v_schema, v_table,
            array_to_string(v_names, ', '));
    END IF;
    IF v_target_kind = 'generated' THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target %L is a generated column, which PostgreSQL''s logical replication does not '
            'send: no change would carry it; use a stored column', p_target);
    END IF;
    IF NOT (v_target_kind = ANY (CASE v_task
            WHEN 'regression' THEN ARRAY['number']
            WHEN 'binary' THEN ARRAY['boolean', 'number']
            WHEN 'multiclass' THEN ARRAY['category', 'boolean', 'number']
            WHEN 'custom' THEN ARRAY['number', 'category', 'boolean']
            ELSE ARRAY['number', 'category', 'boolean', 'timestamp'] END)) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target %L is a %s column, which a %s model (%s) cannot learn',
            p_target, v_target_kind, v_task, p_model);
    END IF;
    IF array_position(p_features, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001',
            MESSAGE = 'p_features must not contain NULL: give feature column names, or NULL for all';
    END IF;
    v_features := coalesce(p_features, ARRAY(
        SELECT n FROM unnest(v_names, v_kinds) AS u(n, k)
         WHERE k NOT IN ('unusable', 'generated') AND n <> p_target
           AND NOT n = ANY (v_keys)));
    IF cardinality(v_features) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001',
            MESSAGE = format('deployment %L needs at least one feature column', p_name);
    END IF;
    IF p_target = ANY (v_features) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target %L is also listed as a feature: a model that sees its answer learns nothing',
            p_target);
    END IF;
    FOREACH v_col IN ARRAY v_features LOOP
        IF NOT v_col = ANY (v_names) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'feature column %L is not in %I.%I', v_col, v_schema, v_table);
        END IF;
        v_kind := v_kinds[array_position(v_names, v_col)];
        IF v_kind = 'generated' THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'feature column %L is a generated column, which PostgreSQL''s logical '
                'replication does not send: use the columns it is computed from', v_col);
        END IF;
        IF v_kind = 'unusable' THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001',
                MESSAGE = format('feature column %L has a type rowcast cannot use yet', v_col);
        END IF;
        IF v_feature_json @> jsonb_build_array(jsonb_build_array(v_col, v_kind)) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001',
                MESSAGE = format('feature column %L is listed twice', v_col);
        END IF;
        v_feature_json := v_feature_json || jsonb_build_array(jsonb_build_array(v_col, v_kind));
    END LOOP;

    IF p_labels_table IS NOT NULL THEN
        -- labels arrive later in another table: its row's p_labels_key names the scored row
        SELECT r.schema_name, r.table_name, r.table_oid INTO v_lschema, v_ltable, v_loid
          FROM rowcast._resolve_table(p_labels_table, 'labels table') r;
        IF v_loid = v_oid THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE =
                'the labels table is the scored table itself: leave --labels-table out, '
                'labels set on the row (at insert or by a later UPDATE) are learned already';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = v_loid AND indisprimary) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'labels table %I.%I has no primary key', v_lschema, v_ltable);
        END IF;
        IF p_labels_key IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'a labels table needs --labels-key: the column of %I.%I that holds the scored '
                'row''s %s', v_lschema, v_ltable, array_to_string(v_keys, ', '));
        END IF;
        IF cardinality(v_keys) <> 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'a labels table needs %I.%I to have a one-column primary key (it has %s)',
                v_schema, v_table, array_to_string(v_keys, ', '));
        END IF;
        SELECT atttypid INTO v_ltype FROM pg_attribute
         WHERE attrelid = v_loid AND attname = p_labels_key AND attnum > 0 AND NOT attisdropped;
        SELECT atttypid INTO v_ktype FROM pg_attribute
         WHERE attrelid = v_oid AND attname = v_keys[1];
        IF v_ltype IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'labels key column %L is not in %I.%I', p_labels_key, v_lschema, v_ltable);
        END IF;
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = v_loid AND attgenerated <> ''
                      AND attname IN (p_labels_key, v_lcolumn) AND NOT attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'the labels key or labels column of %I.%I is a generated column, which '
                'PostgreSQL''s logical replication does not send: use a stored column',
                v_lschema, v_ltable);
        END IF;
        IF v_ltype <> v_ktype THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'labels key %I.%I.%I is %s but the primary key %I of %I.%I is %s: they must match',
                v_lschema, v_ltable, p_labels_key, format_type(v_ltype, NULL), v_keys[1],
                v_schema, v_table, format_type(v_ktype, NULL));
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = v_loid
                          AND attname = v_lcolumn AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
                'labels column %L is not in %I.%I (--labels-column names it; default: the target)',
                v_lcolumn, v_lschema, v_ltable);
        END IF;
        v_labels := jsonb_build_object('schema', v_lschema, 'table', v_ltable,
                                       'key', p_labels_key, 'column', v_lcolumn);
    ELSIF p_labels_key IS NOT NULL OR p_labels_column IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001',
            MESSAGE = '--labels-key and --labels-column need --labels-table';
    END IF;

    -- tables whose change topics would mix with, or be refused by Kafka beside, another's
    PERFORM rowcast._check_name_topics(p_name);
    PERFORM rowcast._check_table_topic(p_name, 'table', v_schema, v_table);
    IF v_labels IS NOT NULL THEN
        PERFORM rowcast._check_table_topic(p_name, 'labels table', v_lschema, v_ltable,
                                           'table', v_schema, v_table);
    END IF;

    SELECT * INTO v_old FROM rowcast.deployments WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        -- a new deployment under a name undeployed earlier: that incarnation's predictions
        -- (kept by undeploy) are not this one's; the view and the missing-only backfill would
        -- take them for its own
        DELETE FROM rowcast.predictions WHERE deployment = p_name;
    ELSIF (v_old.schema_name, v_old.table_name) IS DISTINCT FROM (v_schema, v_table) THEN
        -- the name moves to another table: its predictions of the old one are nobody's
        DELETE FROM rowcast.predictions WHERE deployment = p_name
           AND source_schema = v_old.schema_name AND source_table = v_old.table_name;
    END IF;
    INSERT INTO rowcast.deployments AS d (name, schema_name, table_name, target, target_kind,
                                          features, model, key_columns, labels)
    VALUES (p_name, v_schema, v_table, p_target, v_target_kind, v_feature_json, p_model,
            to_jsonb(v_keys), v_labels)
    ON CONFLICT (name) DO UPDATE SET
        schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
        target = EXCLUDED.target, target_kind = EXCLUDED.target_kind,
        features = EXCLUDED.features, model = EXCLUDED.model,
        key_columns = EXCLUDED.key_columns, labels = EXCLUDED.labels,
        version = d.version + 1, updated_at = now()
    RETURNING * INTO v_row;
    -- features kept for labels not yet seen were built for the old definition
    DELETE FROM rowcast.pending_labels WHERE deployment = p_name;
    IF p_backfill THEN
        INSERT INTO rowcast.backfill_requests (deployment) VALUES (p_name)
        ON CONFLICT (deployment) DO UPDATE SET requested_at = now();
    END IF;

    -- the tables the name read before and no deployment reads now leave the publication
    IF v_old.name IS NOT NULL THEN
        PERFORM rowcast._unpublish_unused(v_old.schema_name, v_old.table_name);
        PERFORM rowcast._unpublish_unused(v_old.labels->>'schema', v_old.labels->>'table');
    END IF;
    SELECT value INTO v_pub FROM rowcast.config WHERE key = 'publication';
    IF v_pub IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
         WHERE pubname = v_pub AND schemaname = v_schema AND tablename = v_table) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', v_pub, v_schema, v_table);
    END IF;
    IF v_pub IS NOT NULL AND v_labels IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
         WHERE pubname = v_pub AND schemaname = v_lschema AND tablename = v_ltable) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', v_pub, v_lschema, v_ltable);
    END IF;

    -- only the columns the deployment uses, so the view never blocks an unrelated DROP COLUMN;
    -- in the table's own column order, then rowcast's columns
    SELECT string_agg(format('t.%I', a.attname), ', ' ORDER BY a.attnum) INTO v_cols
      FROM pg_attribute a
     WHERE a.attrelid = v_oid AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname::text = ANY (v_keys || p_target || v_features);
    EXECUTE format('DROP VIEW IF EXISTS rowcast.%I', p_name || '_scored');
    EXECUTE format(
        'CREATE VIEW rowcast.%I AS SELECT %s, p.prediction AS rowcast_prediction, '
        'p.score AS rowcast_score, p.model_version AS rowcast_model_version, '
        'p.scored_at AS rowcast_scored_at FROM %I.%I t LEFT JOIN rowcast.predictions p '
        'ON p.deployment = %L AND p.source_schema = %L AND p.source_table = %L '
        'AND p.pk = %s',
        p_name || '_scored', v_cols, v_schema, v_table, p_name, v_schema, v_table,
        rowcast._key_sql(v_oid, 't'));
    RETURN v_row;
END
$fn$;
