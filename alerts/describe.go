package alerts

import (
	"fmt"

	"github.com/walletguard/walletguard/detector"
)

// describe writes the title, summary and recommended actions a support agent
// reads. The summary leads with the strongest finding's reason, which quotes
// the numbers (amounts, times, devices, the cause of a stuck retry).
func describe(a *Alert, h *detector.Hit) (title, summary string, actions []string) {
	subject := a.AccountID
	switch {
	case subject != "":
	case a.AppVersion != "":
		subject = "app version " + a.AppVersion
	default:
		subject = "merchant " + a.MerchantID
	}
	switch a.Category {
	case "theft":
		title = "Likely account takeover: " + subject
		actions = []string{
			"Do not unfreeze on the caller's word: verify the owner through a channel the attacker cannot reach (registered ID, in-app selfie check)",
			"Review recent security changes, new devices and new payees; revert what the owner did not do",
			"Ask the payments team to recall or hold the transfers listed in the evidence",
		}
		if a.Action == "freeze" {
			actions = append([]string{"The account is frozen: contact the owner on their registered phone number"}, actions...)
		}
	case "stuck_retry":
		title = fmt.Sprintf("Payment stuck retrying (%s): %s", orUnknown(a.Cause), subject)
		actions = []string{adviceFor(a.Cause), "If the user was charged, confirm no duplicate charge went through before they retry"}
	case "merchant_outage":
		title = fmt.Sprintf("Merchant outage: %s (%d users affected)", a.MerchantID, a.AffectedAccounts)
		actions = []string{
			"Tell affected users the merchant is having problems and to try later or pay another way; no action on their accounts is needed",
			"Contact the merchant's technical support and the payments team",
		}
	case "app_fault":
		title = fmt.Sprintf("App fault: payments failing in app version %s (%d users affected)", a.AppVersion, a.AffectedAccounts)
		actions = []string{
			"Tell affected users to update the app (or reinstall it) and retry; their accounts need no action",
			"Send the evidence to the mobile team: the error rate is far above this version's normal",
		}
	case "credential_stuffing":
		title = "Credential stuffing: " + h.Group
		actions = []string{
			"Accounts that logged in successfully from this source need a password reset and 2FA",
			"Ask the security team to block or rate-limit the source IP",
		}
	case "brute_force":
		title = "Repeated failed logins: " + subject
		actions = []string{"If the owner calls, help them reset the password and enable 2FA; otherwise no action"}
	case "impossible_travel":
		title = "Impossible travel: " + subject
		actions = []string{"Confirm with the owner whether both logins were theirs (VPNs cause this too); if not, reset the password"}
	case "velocity":
		title = "Burst of transactions: " + subject
		actions = []string{"Check whether the transactions are the owner's; step-up verification has been requested if the score was high"}
	default:
		title = "Unusual activity: " + subject
		actions = []string{"Review the evidence; confirm with the owner if anything looks unfamiliar"}
	}
	summary = h.Reason
	if a.Count > 1 {
		summary = fmt.Sprintf("%s (%d findings so far)", h.Reason, a.Count)
	}
	return title, summary, actions
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown cause"
	}
	return s
}

func adviceFor(cause string) string {
	switch cause {
	case "network":
		return "Tell the user to check their connection (switch between Wi-Fi and mobile data) and retry once"
	case "balance":
		return "Tell the user to top up or check the linked card, then retry"
	case "verification":
		return "Guide the user through identity verification (or check why the account is restricted)"
	case "limit":
		return "Explain the transaction limit and offer a limit review if eligible"
	case "merchant":
		return "The merchant is having problems: advise the user to wait or pay another way"
	case "app":
		return "Ask the user to update the app to the latest version"
	}
	return "Check the attempts' error codes with the payments team"
}
