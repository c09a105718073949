-- The design document's "after" lead count, unmodified below this header:
-- leads scored above 80 (transforms/marketo_scoring.py).
SELECT COUNT(*) FROM marketo_leads 
WHERE lead_quality_score > 80;
