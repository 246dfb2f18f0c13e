-- rowcast.undeploy(name): the deployment, its view and its table's place in the publication go
CREATE OR REPLACE FUNCTION rowcast.undeploy(p_name text)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    v_row rowcast.deployments;
    v_pub text;
    v_schema text;
    v_table text;
BEGIN
    DELETE FROM rowcast.deployments WHERE name = p_name RETURNING * INTO v_row;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP VIEW IF EXISTS rowcast.%I', p_name || '_scored');
    DELETE FROM rowcast.pending_labels WHERE deployment = p_name;
    DELETE FROM rowcast.backfill_requests WHERE deployment = p_name;
    DELETE FROM rowcast.model_versions WHERE deployment = p_name;
    DELETE FROM rowcast.model_control WHERE deployment = p_name;
    -- its challengers and operations settings go; its model events stay (history)
    DELETE FROM rowcast.challengers WHERE deployment = p_name;
    DELETE FROM rowcast.model_operations WHERE deployment = p_name;
    DELETE FROM rowcast.shadow_predictions WHERE deployment = p_name;
    -- the last deployment reading a table takes it out of the publication: no more events
    SELECT value INTO v_pub FROM rowcast.config WHERE key = 'publication';
    FOR v_schema, v_table IN
        SELECT v_row.schema_name, v_row.table_name
        UNION SELECT v_row.labels->>'schema', v_row.labels->>'table' WHERE v_row.labels IS NOT NULL
    LOOP
        IF v_pub IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM rowcast.deployments d
                            WHERE (d.schema_name = v_schema AND d.table_name = v_table)
                               OR (d.labels->>'schema' = v_schema AND d.labels->>'table' = v_table))
           AND EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = v_pub
                          AND schemaname = v_schema AND tablename = v_table) THEN
            EXECUTE format('ALTER PUBLICATION %I DROP TABLE %I.%I', v_pub, v_schema, v_table);
        END IF;
    END LOOP;
    RETURN true;
END
$fn$;
