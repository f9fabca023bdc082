-- pgbench script for the Postgres ceiling beside rotor's history writes (scripts/bench.sh
-- postgres): one transaction appends 64 publications to one of 8 channels the way rotor's
-- writer does (stream top moved, rows inserted, rows past the history size deleted).
\set ch random(0, 7)
BEGIN;
UPDATE rotor_streams SET top_offset = top_offset + 64 WHERE channel = 'chat:' || :ch RETURNING top_offset AS top \gset
INSERT INTO rotor_publications (channel, "offset", data, time_ms, expires_at)
  SELECT 'chat:' || :ch, :top - 64 + g,
         '{"i":1,"text":"benchmark payload of about a hundred bytes, like a chat message or a price tick"}',
         0, now() + interval '10 minutes'
  FROM generate_series(1, 64) g
  ON CONFLICT (channel, "offset") DO UPDATE SET data = EXCLUDED.data;
DELETE FROM rotor_publications WHERE channel = 'chat:' || :ch AND "offset" <= :top - 1000;
END;
