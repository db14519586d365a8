-- An archive attempt records its object's key before it uploads ('uploading'), so an attempt
-- killed mid-upload, or given up because rows arrived after its upload, is retried under the same
-- key (overwriting its own object) instead of leaving it behind under another name.
ALTER TABLE archive DROP CONSTRAINT archive_state_check;
ALTER TABLE archive ADD CONSTRAINT archive_state_check
    CHECK (state IN ('uploading', 'uploaded', 'verified', 'manifest', 'removed'));
