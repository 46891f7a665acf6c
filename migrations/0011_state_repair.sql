-- A stored state chunk found corrupted (its content no longer hashes to its
-- name) is marked: the store then reports it missing, so the next save
-- uploads it again, and that upload replaces the bad content.
ALTER TABLE state_chunks ADD COLUMN corrupted_at timestamptz;
