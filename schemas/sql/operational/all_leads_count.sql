-- The design document's "before" lead count, unmodified below this header:
-- every stored lead (the all_leads view, schemas/sql/020_marketo.sql).
SELECT COUNT(*) FROM all_leads;
