-- Per rule, last 7 days: how often it fired, how many accounts it froze, and
-- how many of those support unfroze afterwards (likely false positives).
-- A freeze belongs to the rule that asked for it, else to the top-scoring rule.
SELECT
    rule_id,
    hits,
    frozen,
    unfrozen_by_support,
    round(unfrozen_by_support / greatest(frozen, 1), 3) AS likely_false_positive_share
FROM
(
    SELECT rule_id, count() AS hits
    FROM walletguard.decisions FINAL
    ARRAY JOIN rule_ids AS rule_id
    WHERE ts >= now() - INTERVAL 7 DAY
    GROUP BY rule_id
)
ANY LEFT JOIN
(
    SELECT rule_id, count() AS frozen, sum(unfrozen_at > frozen_at) AS unfrozen_by_support
    FROM
    (
        SELECT account_id, rule_id, frozen_at
        FROM
        (
            SELECT decision_id, account_id, at AS frozen_at
            FROM walletguard.actions FINAL
            WHERE action = 'freeze' AND origin = 'auto'
        )
        ANY INNER JOIN
        (
            SELECT
                decision_id,
                if(has(rule_actions, 'freeze'),
                   rule_ids[indexOf(rule_actions, 'freeze')],
                   rule_ids[indexOf(rule_scores, arrayReduce('max', rule_scores))]) AS rule_id
            FROM walletguard.decisions FINAL
            WHERE length(rule_ids) > 0
        ) USING decision_id
    )
    ANY LEFT JOIN
    (
        SELECT account_id, max(at) AS unfrozen_at
        FROM walletguard.actions FINAL
        WHERE action = 'unfreeze' AND origin = 'manual'
        GROUP BY account_id
    ) USING account_id
    GROUP BY rule_id
) USING rule_id
ORDER BY frozen DESC, hits DESC, rule_id
