-- Publish tokens: whether `priority=` may raise a feed above the token's own
-- priority (default: it may only lower it), and a revision that every change
-- to the row bumps, so nodes can tell that the row their live feeds were
-- judged against is no longer current (also for changes made by hand).
ALTER TABLE publish_tokens
    ADD COLUMN allow_priority_override BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;

CREATE FUNCTION publish_tokens_bump_revision() RETURNS trigger AS $$
BEGIN
    NEW.revision := OLD.revision + 1;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER publish_tokens_revision
    BEFORE UPDATE ON publish_tokens
    FOR EACH ROW EXECUTE FUNCTION publish_tokens_bump_revision();
