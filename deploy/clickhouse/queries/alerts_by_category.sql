-- Alerts of the last 7 days by category: how many, how many acknowledged and
-- resolved, and the median minutes to acknowledge.
SELECT
    category,
    count() AS alerts,
    countIf(is_acked) AS acknowledged,
    countIf(last_status = 'resolved') AS resolved,
    round(quantileIf(0.5)(ack_seconds, is_acked) / 60, 1) AS median_minutes_to_ack
FROM
(
    SELECT
        alert_id,
        argMax(category, version) AS category,
        argMax(status, version) AS last_status,
        min(created_at) AS created,
        max(acknowledged_at) AS ack_at,
        ack_at > toDateTime(0) AS is_acked,
        toInt64(toUInt32(ack_at)) - toInt64(toUInt32(created)) AS ack_seconds
    FROM walletguard.alerts FINAL
    WHERE created_at >= now() - INTERVAL 7 DAY
    GROUP BY alert_id
)
GROUP BY category
ORDER BY alerts DESC, category
