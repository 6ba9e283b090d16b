-- romerea-vo on PostgreSQL: roles, database and the UWS job-store schema.
--
-- Run once as a superuser (and again whenever you like: it is idempotent), e.g.
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 \
--        -v owner_password="$(cat owner.pw)" -v service_password="$(cat service.pw)" \
--        -f services/postgres/setup.sql
--
-- Variables (psql -v NAME=VALUE), all optional:
--   dbname            database to create or adjust              (default romerea)
--   owner_role        login role that ingests and owns the catalogue tables
--                                                               (default romerea_owner)
--   service_role      login role of `romerea-vo serve`          (default romerea_service)
--   owner_password, service_password   set these passwords     (default: leave as they are)
--   statement_timeout longest statement of the service role     (default 3600s, the TAP
--                     hard execution duration; the job store sets 30s for its own sessions)
--
-- What the service role may do: read the catalogue schemas the owner creates, make
-- temporary tables (TAP uploads), and own the schema romerea_uws where the shared job
-- store keeps its tables. It is no superuser and is in none of pg_read_server_files,
-- pg_write_server_files, pg_execute_server_program: no COPY to or from files or
-- programs, no pg_read_file. Its transactions are read-only by default; the job store
-- turns that off for its own sessions, and privileges (not the default) are what keep
-- the catalogue read-only. Do not install dblink, postgres_fdw or file_fdw in this
-- database. Re-run this file after ingesting into a new schema so that existing
-- tables are granted too (later ones are, by default privileges).

\set ON_ERROR_STOP on
\if :{?dbname}
\else
  \set dbname romerea
\endif
\if :{?owner_role}
\else
  \set owner_role romerea_owner
\endif
\if :{?service_role}
\else
  \set service_role romerea_service
\endif
\if :{?statement_timeout}
\else
  \set statement_timeout 3600s
\endif

-- roles ------------------------------------------------------------------------------
SELECT format('CREATE ROLE %I LOGIN', :'owner_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner_role') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'service_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'service_role') \gexec
ALTER ROLE :"owner_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
\if :{?owner_password}
  ALTER ROLE :"owner_role" PASSWORD :'owner_password';
\endif
\if :{?service_password}
  ALTER ROLE :"service_role" PASSWORD :'service_password';
\endif
-- in case someone granted them: the roles that reach the server's files and programs
SELECT format('REVOKE %I FROM %I', r.rolname, m.rolname)
  FROM pg_auth_members a
  JOIN pg_roles r ON r.oid = a.roleid
  JOIN pg_roles m ON m.oid = a.member
 WHERE r.rolname IN ('pg_read_server_files', 'pg_write_server_files',
                     'pg_execute_server_program', 'pg_read_all_data', 'pg_write_all_data')
   AND m.rolname = :'service_role' \gexec

-- database ---------------------------------------------------------------------------
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              :'dbname', :'owner_role', 'UTF8')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \gexec
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO :"service_role";

-- per-database settings of the service role: read-only by default, bounded statements
ALTER ROLE :"service_role" IN DATABASE :"dbname" SET default_transaction_read_only = on;
ALTER ROLE :"service_role" IN DATABASE :"dbname" SET statement_timeout = :'statement_timeout';
ALTER ROLE :"service_role" IN DATABASE :"dbname" SET idle_in_transaction_session_timeout = '10min';

\connect :"dbname"

-- pgSphere for the catalogue tables (only needed when they live here, not in DuckDB)
SELECT 'CREATE EXTENSION IF NOT EXISTS pg_sphere'
 WHERE EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_sphere') \gexec

-- nobody but the owner creates anything in public (PostgreSQL < 15 allowed everyone)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"service_role";

-- what the owner creates at ingest, the service role reads
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" GRANT USAGE ON SCHEMAS TO :"service_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" GRANT SELECT ON TABLES TO :"service_role";
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', nspname, :'service_role'),
       format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', nspname, :'service_role')
  FROM pg_namespace
 WHERE nspowner = :'owner_role'::regrole AND nspname <> 'public' \gexec

-- the UWS job store: the service role owns it and creates its tables on first start
CREATE SCHEMA IF NOT EXISTS romerea_uws AUTHORIZATION :"service_role";
ALTER SCHEMA romerea_uws OWNER TO :"service_role";
