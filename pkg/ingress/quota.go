package ingress

import (
	"context"
	"fmt"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Quotas are the sender quotas the ingress enforces (docs/quotas.md): per
// sender domain and per SMTP AUTH user, counted in accepted messages for
// the whole ingress fleet.
type Quotas struct {
	// Rules returns the quotas in force (the policy's quota key over the
	// --sender-quota/--user-quota defaults; hot-reloaded).
	Rules func() *policy.Quotas
	// Rates keeps the counts: in the NATS bucket MAIL_QUOTAS shared by
	// every ingress, or a local share while it cannot be reached.
	Rates   *shaping.Rates
	Metrics *telemetry.QuotaMetrics // nil: none
}

// charge is a transaction's hold on its quotas: one message of each,
// given back if the transaction ends without a 250. Only what the fleet
// state counted goes back to it: a message counted on the local share
// stays counted there (docs/quotas.md), even if NATS answers again by the
// time the transaction ends.
type charge struct {
	quotas []policy.Quota // counted in the fleet state (MAIL_QUOTAS)
}

// takeQuotas counts the transaction MAIL FROM starts against the quotas of
// its sender domain and AUTH user, or refuses it with 450 4.7.1 naming the
// quota that is spent. A message counts once, whatever its recipients.
func (ss *session) takeQuotas(from string) error {
	qc := ss.s.cfg.Quotas
	if qc == nil || qc.Rules == nil || qc.Rates == nil {
		return nil
	}
	rules := qc.Rules()
	if rules.Empty() {
		return nil
	}
	var domain, user string
	if from != "" {
		if a, err := address.Parse(from); err == nil {
			domain = a.ASCII
		}
	}
	if ss.user != nil {
		user = ss.user.Name
	}
	quotas := rules.For(domain, user)
	if len(quotas) == 0 {
		return nil
	}
	ctx := context.Background()
	ch := &charge{}
	for _, q := range quotas {
		wait, refused, local := qc.Rates.Take(ctx, q.Key, q.Limit.Paces())
		if wait <= 0 {
			if !local {
				ch.quotas = append(ch.quotas, q)
			}
			continue
		}
		ss.giveBack(ch)
		if refused < 0 { // the state was too busy to say: count it as the rate
			refused = 0
			if q.Limit.Rate == 0 {
				refused = 1
			}
		}
		kind, limit := "Sender", q.Limit.Describe(refused)
		if q.User {
			kind = "User"
		}
		ss.s.log.Info("MAIL refused: "+kind+" quota exceeded", "client", ss.client.Addr.String(), "from", from, "user", user,
			"quota", q.Rule, "counted", q.Name, "limit", limit, "next_in", wait.Round(1e6).String(), "local_share", local)
		qc.Metrics.Refused(q.Rule)
		return Reject(450, "4.7.1", fmt.Sprintf("%s quota %s exceeded (%s), try again later", kind, q.Name, limit))
	}
	ss.quota.Store(ch)
	return nil
}

// giveBack returns an unfinished transaction's messages to its quotas.
func (ss *session) giveBack(ch *charge) {
	if ch == nil {
		return
	}
	for _, q := range ch.quotas {
		ss.s.cfg.Quotas.Rates.Give(context.Background(), q.Key, q.Limit.Paces())
	}
}
