-- Each enforced rule's matches in the latest hour of decisions against the
-- same hour a day before, by app version and event type, with the accounts
-- matched: what WalletguardRuleHitsSurging asks about. A surge from one app
-- version is a producer sending a field differently; spread over versions,
-- a rule change or an attack (docs/runbook.md).
WITH (SELECT max(ts) FROM walletguard.decisions) AS latest
SELECT
    rule,
    app_version,
    event_type,
    countIf(ts > latest - 3600) AS last_hour,
    countIf(ts > latest - 90000 AND ts <= latest - 86400) AS same_hour_yesterday,
    uniqExactIf(account_id, ts > latest - 3600) AS accounts_last_hour
FROM walletguard.decisions FINAL
ARRAY JOIN rule_ids AS rule
WHERE ts > latest - 90000
GROUP BY rule, app_version, event_type
HAVING last_hour > 0
ORDER BY last_hour DESC, rule, app_version, event_type
