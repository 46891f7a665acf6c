-- Failover fencing (docs/DESIGN.md, "Database failures").
--
-- PostgreSQL starts a new timeline when a standby is promoted or a backup is
-- restored to a point in time. What the old timeline committed last may be
-- missing on the new one (an asynchronous standby lags): decided
-- checkpoints, staged batches, even attempts. A processor that goes on in
-- its epoch would build on what is gone, so an epoch is valid only on the
-- timeline it began on; its processors are fenced and start a new attempt,
-- which resumes from what the new primary holds.

-- The server's current timeline (the first 8 hex digits of its WAL file
-- name). A standby has none to offer: reached during a failover, before the
-- address moves to the new primary, it refuses like a read-only server
-- (sinkgate answers 503, and the client retries).
CREATE FUNCTION sinkgate_timeline() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF pg_is_in_recovery() THEN
    RAISE EXCEPTION 'this database server is a standby: sinkgate needs the primary'
      USING ERRCODE = 'read_only_sql_transaction';
  END IF;
  RETURN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint;
END $$;

-- The timeline each job's current epoch began on.
ALTER TABLE jobs ADD COLUMN epoch_timeline bigint NOT NULL DEFAULT sinkgate_timeline();

-- The newest timeline an epoch was issued on. The first attempt on a new
-- timeline moves epoch_seq far ahead: epochs the old timeline issued but
-- the new one never heard of (a lost attempt whose processor still runs)
-- are then below every new epoch, and fenced.
CREATE TABLE last_epoch_timeline (timeline bigint NOT NULL);
INSERT INTO last_epoch_timeline VALUES (sinkgate_timeline());
