-- The design document's user-experience query, unmodified below this header
-- (its inline comments left out): events of the last 24 hours per user
-- segment and funnel stage. PostgreSQL and the embedded DuckDB file;
-- tests/pipeline/test_design_queries.py, tests/integration/test_frontend_services.py.
SELECT 
  user_segment,
  AVG(engagement_score) as engagement,
  conversion_stage,
  COUNT(*) as users
FROM frontend_analytics 
WHERE timestamp >= NOW() - INTERVAL '24 hours'
GROUP BY user_segment, conversion_stage;
