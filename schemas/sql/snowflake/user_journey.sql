-- The design document's user-journey query, unmodified below this header:
-- event sequences of the last 30 days' sessions, most frequent first.
-- Runs on FRONTEND_EVENTS (schemas/warehouse.py); tests/pipeline/test_snowflake_fakesnow.py.
WITH user_sessions AS (
    SELECT 
        USER_ID,
        SESSION_ID,
        ARRAY_AGG(EVENT_TYPE ORDER BY TIMESTAMP) as event_sequence,
        COUNT(*) as event_count,
        DATEDIFF(second, MIN(TIMESTAMP), MAX(TIMESTAMP)) as session_duration
    FROM FRONTEND_EVENTS 
    WHERE TIMESTAMP >= DATEADD(day, -30, CURRENT_DATE())
    GROUP BY USER_ID, SESSION_ID
)
SELECT 
    event_sequence,
    COUNT(*) as frequency,
    AVG(event_count) as avg_events_per_session,
    AVG(session_duration) as avg_duration_seconds
FROM user_sessions
GROUP BY event_sequence
ORDER BY frequency DESC;
