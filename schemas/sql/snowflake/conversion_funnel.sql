-- The design document's conversion-funnel query, unmodified below this header:
-- sessions per funnel stage over the last 7 days and the stage-to-stage rate.
-- Runs on FRONTEND_EVENTS (schemas/warehouse.py); tests/pipeline/test_snowflake_fakesnow.py.
SELECT 
    funnel_stage,
    COUNT(DISTINCT SESSION_ID) as unique_sessions,
    LAG(COUNT(DISTINCT SESSION_ID)) OVER (ORDER BY funnel_stage) as previous_stage,
    CASE 
        WHEN LAG(COUNT(DISTINCT SESSION_ID)) OVER (ORDER BY funnel_stage) > 0
        THEN COUNT(DISTINCT SESSION_ID) / LAG(COUNT(DISTINCT SESSION_ID)) OVER (ORDER BY funnel_stage)
        ELSE NULL 
    END as conversion_rate
FROM (
    SELECT SESSION_ID,
           CASE 
               WHEN EVENT_TYPE = 'page_view' THEN 1
               WHEN EVENT_TYPE = 'widget_open' THEN 2
               WHEN EVENT_TYPE = 'user_message' THEN 3
               WHEN EVENT_TYPE = 'product_interest' THEN 4
               WHEN EVENT_TYPE = 'conversion' THEN 5
           END as funnel_stage
    FROM FRONTEND_EVENTS
    WHERE TIMESTAMP >= DATEADD(day, -7, CURRENT_DATE())
) funnel_events
GROUP BY funnel_stage
ORDER BY funnel_stage;
