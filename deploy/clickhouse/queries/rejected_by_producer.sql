-- Records rejected as invalid in the last 7 days, by fault and producer: which
-- field each app build or channel gets wrong, for how many accounts, since
-- when, with one detail. `walletguard dlq` shows the records themselves and
-- exports them to fix and send again.
SELECT
    reason,
    field,
    event_type,
    app_version,
    channel,
    count() AS records,
    uniqExact(record_key) AS accounts,
    min(rejected_at) AS first_rejected,
    max(rejected_at) AS last_rejected,
    any(detail) AS example
FROM walletguard.rejected FINAL
WHERE rejected_at >= now() - INTERVAL 7 DAY
GROUP BY reason, field, event_type, app_version, channel
ORDER BY records DESC, reason, field
