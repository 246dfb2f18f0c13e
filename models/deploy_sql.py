"""``rowcast.deploy(...)``: deployments as one SQL call, and the one place they are validated.

Plain PL/pgSQL (no Python in the database). The CLI calls the same function, so a deployment made
with ``SELECT rowcast.deploy(...)`` and one made with ``rowcast deploy`` are checked by the same
code: the table must exist and have a primary key, the columns must exist and have a usable type,
the target must not be a feature and must fit the model's task. Refusals use SQLSTATE ``RC001``
with a message a person can act on. It also adds the table to rowcast's publication and creates
the view ``rowcast.<name>_scored``: every source row beside its latest prediction.
"""

from __future__ import annotations

CONFIG_DDL = """
CREATE TABLE IF NOT EXISTS rowcast.config (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS rowcast.models (name text PRIMARY KEY, task text NOT NULL,
                                           description text NOT NULL);
"""

DEPLOY_FUNCTION = r"""
CREATE OR REPLACE FUNCTION rowcast.deploy(
    p_name text, p_table text, p_target text,
    p_features text[] DEFAULT NULL, p_model text DEFAULT 'linear_regression')
RETURNS rowcast.deployments
LANGUAGE plpgsql AS $fn$
DECLARE
    v_ident text[] := parse_ident(p_table);
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
    v_join text;
    v_cols text;
BEGIN
    IF p_name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'deployment name %L must be lower-case letters, digits and _, starting with a letter '
            '(it names topics and the view rowcast.<name>_scored)', p_name);
    END IF;
    IF array_length(v_ident, 1) = 1 THEN
        v_schema := 'public'; v_table := v_ident[1];
    ELSE
        v_schema := v_ident[1]; v_table := v_ident[2];
    END IF;
    SELECT c.oid INTO v_oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = v_schema AND c.relname = v_table AND c.relkind IN ('r', 'p');
    IF v_oid IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001',
            MESSAGE = format('table %I.%I does not exist', v_schema, v_table);
    END IF;
    SELECT task INTO v_task FROM rowcast.models WHERE name = p_model;
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
    SELECT array_agg(a.attname::text ORDER BY a.attnum),
           array_agg(CASE
               WHEN t.typtype = 'e' THEN 'category'
               WHEN t.typname IN ('int2', 'int4', 'int8', 'float4', 'float8', 'numeric') THEN 'number'
               WHEN t.typname = 'bool' THEN 'boolean'
               WHEN t.typname IN ('text', 'varchar', 'bpchar') THEN 'category'
               WHEN t.typname = 'timestamp' THEN 'timestamp'
               ELSE 'unusable' END ORDER BY a.attnum)
      INTO v_names, v_kinds
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = v_oid AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT p_target = ANY (v_names) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target column %L is not in %I.%I; columns: %s', p_target, v_schema, v_table,
            array_to_string(v_names, ', '));
    END IF;
    v_target_kind := v_kinds[array_position(v_names, p_target)];
    IF NOT (v_target_kind = ANY (CASE v_task
            WHEN 'regression' THEN ARRAY['number']
            WHEN 'binary' THEN ARRAY['boolean', 'number']
            WHEN 'multiclass' THEN ARRAY['category', 'boolean', 'number']
            ELSE ARRAY['number', 'category', 'boolean', 'timestamp'] END)) THEN
        RAISE EXCEPTION USING ERRCODE = 'RC001', MESSAGE = format(
            'target %L is a %s column, which a %s model (%s) cannot learn',
            p_target, v_target_kind, v_task, p_model);
    END IF;
    v_features := coalesce(p_features, ARRAY(
        SELECT n FROM unnest(v_names, v_kinds) AS u(n, k)
         WHERE k <> 'unusable' AND n <> p_target AND NOT n = ANY (v_keys)));
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

    INSERT INTO rowcast.deployments AS d (name, schema_name, table_name, target, target_kind,
                                          features, model, key_columns)
    VALUES (p_name, v_schema, v_table, p_target, v_target_kind, v_feature_json, p_model,
            to_jsonb(v_keys))
    ON CONFLICT (name) DO UPDATE SET
        schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
        target = EXCLUDED.target, target_kind = EXCLUDED.target_kind,
        features = EXCLUDED.features, model = EXCLUDED.model,
        key_columns = EXCLUDED.key_columns, version = d.version + 1, updated_at = now()
    RETURNING * INTO v_row;

    SELECT value INTO v_pub FROM rowcast.config WHERE key = 'publication';
    IF v_pub IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
         WHERE pubname = v_pub AND schemaname = v_schema AND tablename = v_table) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', v_pub, v_schema, v_table);
    END IF;

    -- only the columns the deployment uses, so the view never blocks an unrelated DROP COLUMN
    SELECT string_agg(format('%L, t.%I', k, k), ', ') INTO v_join FROM unnest(v_keys) AS k;
    SELECT string_agg(format('t.%I', c), ', ') INTO v_cols FROM (
        SELECT DISTINCT ON (c) c, o FROM unnest(v_keys || p_target || v_features)
          WITH ORDINALITY AS u(c, o) ORDER BY c, o) AS cols(c, o);
    EXECUTE format('DROP VIEW IF EXISTS rowcast.%I', p_name || '_scored');
    EXECUTE format(
        'CREATE VIEW rowcast.%I AS SELECT %s, p.prediction AS rowcast_prediction, '
        'p.score AS rowcast_score, p.model_version AS rowcast_model_version, '
        'p.scored_at AS rowcast_scored_at FROM %I.%I t LEFT JOIN rowcast.predictions p '
        'ON p.deployment = %L AND p.source_schema = %L AND p.source_table = %L '
        'AND p.pk = jsonb_build_object(%s)',
        p_name || '_scored', v_cols, v_schema, v_table, p_name, v_schema, v_table, v_join);
    RETURN v_row;
END
$fn$;
"""

UNDEPLOY_FUNCTION = r"""
CREATE OR REPLACE FUNCTION rowcast.undeploy(p_name text)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    v_row rowcast.deployments;
    v_pub text;
BEGIN
    DELETE FROM rowcast.deployments WHERE name = p_name RETURNING * INTO v_row;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP VIEW IF EXISTS rowcast.%I', p_name || '_scored');
    -- the last deployment on a table takes the table out of the publication: no more events
    SELECT value INTO v_pub FROM rowcast.config WHERE key = 'publication';
    IF v_pub IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM rowcast.deployments
                        WHERE schema_name = v_row.schema_name AND table_name = v_row.table_name)
       AND EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = v_pub
                      AND schemaname = v_row.schema_name AND tablename = v_row.table_name) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %I.%I', v_pub, v_row.schema_name,
                       v_row.table_name);
    END IF;
    RETURN true;
END
$fn$;
"""
