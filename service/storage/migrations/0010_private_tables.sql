-- api_tokens (the hashes of the plant's API tokens) is for heatrec's own role alone. A deployment grants its
-- read-only reporting role (grafana) SELECT on every table, now and through default privileges, which reached this
-- table too when 0001 made it: revoke every privilege on it held by anyone but its owner. The owner may (the
-- grants are its own, also those an administrator made on its behalf); no superuser needed.
DO $$
DECLARE
    holder oid;
BEGIN
    FOR holder IN
        SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'api_tokens'::regclass AND a.grantee <> c.relowner
    LOOP
        IF holder = 0 THEN
            REVOKE ALL ON TABLE api_tokens FROM PUBLIC;
        ELSE
            EXECUTE format('REVOKE ALL ON TABLE api_tokens FROM %I', pg_get_userbyid(holder));
        END IF;
    END LOOP;
END
$$;
