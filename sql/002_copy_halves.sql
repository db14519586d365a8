-- The full-speed copy's two halves each keep an exact cursor, so a resumed copy deletes nothing.
-- upper_from: where the upper half begins (keys above it; NULL: the copy is one range, last_key
-- its cursor); upper_key: the upper half's cursor (NULL: none of it copied yet), while last_key is
-- the lower half's. exact_cursor is set by the versions that keep them: a conversion begun by an
-- earlier one kept a single low-watermark cursor, so resuming it first deletes what lies beyond.
ALTER TABLE conversion
    ADD COLUMN upper_from   text[],
    ADD COLUMN upper_key    text[],
    ADD COLUMN exact_cursor boolean NOT NULL DEFAULT false;
