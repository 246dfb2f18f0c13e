-- rowcast.undeploy(name): the deployment, its view and its table's place in the publication go
CREATE OR REPLACE FUNCTION rowcast.undeploy(p_name text)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    v_row rowcast.deployments;
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
    PERFORM rowcast._unpublish_unused(v_row.schema_name, v_row.table_name);
    PERFORM rowcast._unpublish_unused(v_row.labels->>'schema', v_row.labels->>'table');
    RETURN true;
END
$fn$;
