-- A running conversion's pace, as its progress lines show it (phase, rows done, rows/s, the
-- estimated seconds left, the throttle's pause and what stretched it, the replicas' lag),
-- written with the copy's batches and every few seconds of the verification, so `partman
-- status` from another terminal says how fast it goes and why; updated_at says as of when.
ALTER TABLE conversion ADD COLUMN pace jsonb;
