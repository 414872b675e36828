DROP TRIGGER publish_tokens_revision ON publish_tokens;
DROP FUNCTION publish_tokens_bump_revision();
ALTER TABLE publish_tokens
    DROP COLUMN revision,
    DROP COLUMN allow_priority_override;
