-- Accounts frozen automatically: the first takeover signal (a theft rule
-- firing) before the freeze, and the minutes between them. Long times mean
-- rules that see the chain late.
SELECT
    account_id,
    first_signal_at,
    frozen_at,
    round((toUInt32(frozen_at) - toUInt32(first_signal_at)) / 60, 1) AS minutes_to_freeze
FROM
(
    SELECT account_id, min(at) AS frozen_at
    FROM walletguard.actions FINAL
    WHERE action = 'freeze' AND origin = 'auto'
    GROUP BY account_id
)
ANY INNER JOIN
(
    SELECT account_id, min(ts) AS first_signal_at
    FROM walletguard.decisions FINAL
    WHERE has(rule_categories, 'theft')
    GROUP BY account_id
) USING account_id
WHERE first_signal_at <= frozen_at
ORDER BY minutes_to_freeze DESC, account_id
