-- Stuck payments in the last 7 days by merchant, likely cause and app version:
-- where users see "retrying", and why. One row per (merchant, cause, version).
SELECT
    merchant_id,
    cause,
    app_version,
    count() AS stuck_payments,
    uniqExact(account_id) AS users
FROM
(
    SELECT
        alert_id,
        argMax(merchant_id, version) AS merchant_id,
        argMax(cause, version) AS cause,
        argMax(app_version, version) AS app_version,
        argMax(account_id, version) AS account_id
    FROM walletguard.alerts FINAL
    WHERE category = 'stuck_retry' AND created_at >= now() - INTERVAL 7 DAY
    GROUP BY alert_id
)
GROUP BY merchant_id, cause, app_version
ORDER BY stuck_payments DESC, merchant_id, cause
LIMIT 50
