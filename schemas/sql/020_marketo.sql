-- Marketo source (beam_pipelines.marketo_extract, beam_pipelines.marketo).

-- Columns beside the design document's marketo_leads: the cross-source view
-- (engagement, probability, action), each score factor's contribution, the
-- email domain's class and the keyed email token used for identity joins.
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS email_domain_class VARCHAR(20);
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS email_token VARCHAR(40);
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS score_factors JSONB;
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS engagement_level VARCHAR(20);
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS conversion_probability DOUBLE PRECISION;
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS recommended_action VARCHAR(50);
ALTER TABLE marketo_leads ADD COLUMN IF NOT EXISTS engagement JSONB;

-- The extractor's durable high-water mark, one row per extraction name.
-- high_water_mark only ever grows, and only after Kafka acknowledged every
-- record read up to it.
CREATE TABLE IF NOT EXISTS marketo_extract_state (
    name VARCHAR(100) PRIMARY KEY,
    high_water_mark TIMESTAMP WITH TIME ZONE,
    page_token TEXT,
    records_published BIGINT DEFAULT 0,
    last_status VARCHAR(40),
    last_reason TEXT,
    last_stats JSONB,
    updated_at TIMESTAMP WITH TIME ZONE
);

-- Every lead the Marketo source delivered and the pipeline stored, whatever
-- its score: the population the design document counts before qualification
-- (SELECT COUNT(*) FROM all_leads), of which lead_quality_score > 80 are the
-- qualified ones. Leads refused by validation are in failed_events instead.
CREATE OR REPLACE VIEW all_leads AS
SELECT lead_id, email, full_name, company, lead_source, email_domain,
       lead_quality_score, engagement_level, conversion_probability,
       recommended_action, created_at, updated_at
FROM marketo_leads;
