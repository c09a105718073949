-- Text-agent tables (transforms/text_agent.py, beam_pipelines/text_agent.py).
-- PostgreSQL 15 dialect; the embedded DuckDB sink applies the same file with
-- JSONB read as JSON. Every statement is idempotent.

-- One row per agent turn. The first sixteen columns are the design
-- document's agent_turns table exactly (names, types, checks, key); the rest
-- are added: who/where (event_id, user_id, tenant_id, channel), model
-- details, content analysis, the price-book version that priced the row and
-- the factors behind each score.
CREATE TABLE IF NOT EXISTS agent_turns (
    session_id VARCHAR(100) NOT NULL,
    turn_id VARCHAR(100) NOT NULL,
    model VARCHAR(100),
    model_family VARCHAR(50),
    tokens_in INTEGER DEFAULT 0,
    tokens_out INTEGER DEFAULT 0,
    total_tokens INTEGER DEFAULT 0,
    tokens_per_second REAL DEFAULT 0,
    efficiency_score INTEGER CHECK (efficiency_score >= 0 AND efficiency_score <= 100),
    quality_score INTEGER CHECK (quality_score >= 0 AND quality_score <= 100),
    business_value_score INTEGER CHECK (business_value_score >= 0 AND business_value_score <= 100),
    sentiment VARCHAR(20),
    topics JSONB,
    estimated_cost_usd DECIMAL(10,6),
    transformation_metadata JSONB,
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
    event_id VARCHAR(100),
    user_id VARCHAR(100),
    tenant_id VARCHAR(100) NOT NULL DEFAULT 'default',
    channel VARCHAR(50),
    model_provider VARCHAR(50),
    latency_ms REAL,
    cached_tokens_in INTEGER DEFAULT 0,
    price_book_version VARCHAR(20),
    price_key VARCHAR(100),
    user_sentiment_compound REAL,
    response_sentiment VARCHAR(20),
    response_sentiment_compound REAL,
    language VARCHAR(8),
    response_language VARCHAR(8),
    keywords JSONB,
    tools_used JSONB,
    tool_success_rate REAL,
    lead_captured BOOLEAN,
    user_intent VARCHAR(100),
    previous_turns INTEGER,
    efficiency_factors JSONB,
    quality_factors JSONB,
    business_value_factors JSONB,
    pii_redactions JSONB,
    PRIMARY KEY (session_id, turn_id)
);

-- One row per conversation (session window of a session_id) and pane; the
-- upsert keeps the latest pane. See AggregateConversations for the windowing.
CREATE TABLE IF NOT EXISTS agent_conversations (
    session_id VARCHAR(100) NOT NULL,
    window_start TIMESTAMP WITH TIME ZONE NOT NULL,
    window_end TIMESTAMP WITH TIME ZONE NOT NULL,
    tenant_id VARCHAR(100),
    user_id VARCHAR(100),
    channel VARCHAR(50),
    turn_count INTEGER NOT NULL,
    first_turn_at TIMESTAMP WITH TIME ZONE,
    last_turn_at TIMESTAMP WITH TIME ZONE,
    duration_seconds REAL,
    tokens_in BIGINT,
    tokens_out BIGINT,
    total_tokens BIGINT,
    estimated_cost_usd DECIMAL(12,6),
    unpriced_turns INTEGER,
    mean_latency_ms REAL,
    max_latency_ms REAL,
    sentiment_first REAL,
    sentiment_last REAL,
    sentiment_mean REAL,
    sentiment_trend REAL,
    sentiment_slope REAL,
    topics JSONB,
    topic_counts JSONB,
    tools_used JSONB,
    tool_calls INTEGER,
    tool_successes INTEGER,
    tool_success_rate REAL,
    models JSONB,
    avg_quality_score REAL,
    avg_business_value_score REAL,
    max_business_value_score INTEGER,
    lead_captured BOOLEAN,
    pane_index INTEGER,
    is_final BOOLEAN,
    updated_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (session_id, window_start)
);

-- Usage and cost per tenant, model and UTC hour (event time). Upserted with
-- the hour's full aggregate on every pane, so replays are idempotent.
CREATE TABLE IF NOT EXISTS agent_billing_hourly (
    tenant_id VARCHAR(100) NOT NULL,
    model VARCHAR(100) NOT NULL,
    hour TIMESTAMP WITH TIME ZONE NOT NULL,
    model_family VARCHAR(50),
    model_provider VARCHAR(50),
    turns INTEGER NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    cached_tokens_in BIGINT,
    total_tokens BIGINT NOT NULL,
    estimated_cost_usd DECIMAL(14,6) NOT NULL,
    unpriced_turns INTEGER,
    price_book_versions JSONB,
    pane_index INTEGER,
    updated_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (tenant_id, model, hour)
);

-- Cost restatements: an archived turn re-priced under another price-book
-- version (python -m beam_pipelines.restate_costs). agent_turns is never
-- touched; one row per turn and target version.
CREATE TABLE IF NOT EXISTS agent_cost_restatements (
    session_id VARCHAR(100) NOT NULL,
    turn_id VARCHAR(100) NOT NULL,
    price_book_version VARCHAR(20) NOT NULL,
    event_id VARCHAR(100),
    tenant_id VARCHAR(100),
    model VARCHAR(100),
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    cached_tokens_in INTEGER,
    original_price_book_version VARCHAR(20),
    original_cost_usd DECIMAL(10,6),
    restated_cost_usd DECIMAL(10,6),
    difference_usd DECIMAL(10,6),
    price_key VARCHAR(100),
    restated_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (session_id, turn_id, price_book_version)
);

-- The design document's outcome fields (transforms/text_agent_outcomes.py),
-- added after the tables above first shipped, so existing databases get
-- them too. conversion_probability is a heuristic score in [0, 1], not a
-- calibrated probability; cost_per_interaction is USD per turn (a
-- conversation: over its priced turns); user_satisfaction is low | medium |
-- high, inferred from the user's messages.
ALTER TABLE agent_turns ADD COLUMN IF NOT EXISTS conversion_probability REAL;
ALTER TABLE agent_turns ADD COLUMN IF NOT EXISTS cost_per_interaction DECIMAL(10,6);
ALTER TABLE agent_turns ADD COLUMN IF NOT EXISTS user_satisfaction VARCHAR(10);
ALTER TABLE agent_conversations ADD COLUMN IF NOT EXISTS conversion_probability REAL;
ALTER TABLE agent_conversations ADD COLUMN IF NOT EXISTS cost_per_interaction DECIMAL(12,6);
ALTER TABLE agent_conversations ADD COLUMN IF NOT EXISTS user_satisfaction VARCHAR(10);
