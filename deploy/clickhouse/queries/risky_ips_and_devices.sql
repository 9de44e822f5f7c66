-- IPs and devices failing logins across many accounts in the last 7 days
-- (credential stuffing), with the accounts they got into.
SELECT *
FROM
(
    SELECT
        'ip' AS kind,
        ip AS id,
        uniqExactIf(account_id, result = 'failure') AS accounts_failed,
        countIf(result = 'failure') AS failures,
        uniqExactIf(account_id, result = 'success') AS accounts_entered
    FROM walletguard.events FINAL
    WHERE type = 'login' AND ip != '' AND ts >= now() - INTERVAL 7 DAY
    GROUP BY ip
    HAVING accounts_failed >= 5
    UNION ALL
    SELECT
        'device' AS kind,
        device_id AS id,
        uniqExactIf(account_id, result = 'failure') AS accounts_failed,
        countIf(result = 'failure') AS failures,
        uniqExactIf(account_id, result = 'success') AS accounts_entered
    FROM walletguard.events FINAL
    WHERE type = 'login' AND device_id != '' AND ts >= now() - INTERVAL 7 DAY
    GROUP BY device_id
    HAVING accounts_failed >= 5
)
ORDER BY accounts_failed DESC, kind, id
LIMIT 20
