-- Partial updates merge the staged rows of a key column by column: each
-- column takes the value of the last row that carried it. An aggregate that
-- keeps the last value it is given (nulls included, so a carried null
-- wins), used as `sinkgate_last(col ORDER BY position) FILTER (WHERE
-- carried)`: constant memory per key and column, whatever the type (an
-- `array_agg` of every version would hit the 1 GB array limit on a busy key
-- and cannot aggregate arrays of different lengths).
CREATE FUNCTION sinkgate_last_step(anyelement, anyelement) RETURNS anyelement
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT $2';
CREATE AGGREGATE sinkgate_last(anyelement) (SFUNC = sinkgate_last_step, STYPE = anyelement);
