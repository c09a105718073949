-- Core analytics tables (PostgreSQL 15 dialect; the embedded DuckDB sink
-- applies the same file with JSONB read as JSON). Every statement is
-- idempotent so the sinks can apply it on start-up.

-- Lead records from Marketo, scored.
CREATE TABLE IF NOT EXISTS marketo_leads (
    lead_id INTEGER PRIMARY KEY,
    email VARCHAR(255) NOT NULL,
    full_name VARCHAR(200),
    company VARCHAR(255),
    lead_source VARCHAR(100),
    email_domain VARCHAR(100),
    lead_quality_score INTEGER CHECK (lead_quality_score >= 0 AND lead_quality_score <= 100),
    geographic_info JSONB,
    transformation_metadata JSONB,
    created_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITH TIME ZONE
);

-- One row per accepted frontend event. The first twelve columns are the
-- design document's; the rest are attribution and context kept for analysts.
CREATE TABLE IF NOT EXISTS frontend_analytics (
    event_id VARCHAR(100) UNIQUE,
    session_id VARCHAR(100),
    event_type VARCHAR(50) NOT NULL,
    page_category VARCHAR(50),
    device_type VARCHAR(20),
    browser VARCHAR(50),
    user_segment VARCHAR(50),
    engagement_score INTEGER CHECK (engagement_score >= 0 AND engagement_score <= 100),
    conversion_stage VARCHAR(50),
    quality_score INTEGER CHECK (quality_score >= 0 AND quality_score <= 100),
    transformation_metadata JSONB,
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
    user_id VARCHAR(100),
    os VARCHAR(50),
    page_url TEXT,
    referrer_source VARCHAR(50),
    utm_source VARCHAR(100),
    utm_medium VARCHAR(100),
    utm_campaign VARCHAR(200),
    country VARCHAR(8)
);

-- One row per session window (see transforms/sessions.py for the windowing).
CREATE TABLE IF NOT EXISTS frontend_sessions (
    session_id VARCHAR(100) NOT NULL,
    window_start TIMESTAMP WITH TIME ZONE NOT NULL,
    window_end TIMESTAMP WITH TIME ZONE NOT NULL,
    user_id VARCHAR(100),
    event_count INTEGER NOT NULL,
    first_event_at TIMESTAMP WITH TIME ZONE,
    last_event_at TIMESTAMP WITH TIME ZONE,
    duration_seconds REAL,
    page_count INTEGER,
    widget_opens INTEGER,
    messages INTEGER,
    conversions INTEGER,
    furthest_stage VARCHAR(50),
    avg_engagement_score REAL,
    max_engagement_score INTEGER,
    pane_index INTEGER,
    updated_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (session_id, window_start)
);

-- Dead letters from every pipeline: nothing is dropped silently.
CREATE TABLE IF NOT EXISTS failed_events (
    failure_id VARCHAR(64) PRIMARY KEY,
    pipeline VARCHAR(30) NOT NULL,
    stage VARCHAR(50) NOT NULL,
    error_class VARCHAR(100) NOT NULL,
    error_message TEXT,
    raw_payload TEXT,
    source_topic VARCHAR(255),
    source_partition INTEGER,
    source_offset BIGINT,
    pipeline_version VARCHAR(20),
    received_at TIMESTAMP WITH TIME ZONE
);
