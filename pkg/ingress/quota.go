package ingress

import (
	"context"
	"fmt"
	"sync"

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
// given back if the session ends without the message's 250. Only what the
// fleet state counted goes back to it: a message counted on the local
// share stays counted there (docs/quotas.md), even if NATS answers again by
// the time the transaction ends.
type charge struct {
	quotas []policy.Quota // every quota taken, in the order of Quotas.For
	fleet  []bool         // quotas[i] was counted in the fleet state (MAIL_QUOTAS)
}

// covers reports whether c holds exactly one message of each of quotas
// (the same keys and limits), all counted in the fleet state: a new
// transaction may take it over as it is. A message counted on a local
// share is not taken over (the fleet may answer again and say the quota is
// spent).
func (c *charge) covers(quotas []policy.Quota) bool {
	if c == nil || len(c.quotas) != len(quotas) {
		return false
	}
	for i, q := range quotas {
		if c.quotas[i].Key != q.Key || c.quotas[i].Limit != q.Limit || !c.fleet[i] {
			return false
		}
	}
	return true
}

// quotaHold is the session's charge. A transaction abandoned before its
// 250 (RSET, a new MAIL FROM, every recipient refused, a failed DATA)
// leaves its charge here, and the next MAIL FROM of the same sender and
// user takes it over without a round trip: a client looping MAIL FROM /
// RSET costs one take and one give-back per session, not two writes per
// loop (docs/quotas.md). What is still held goes back when the session
// ends (Logout) or when a MAIL FROM counts against other quotas.
//
// Each count is recorded here as soon as its take succeeds, never after a
// later one, and Logout (which may run on another goroutine: a forced
// close, a panic in a command) marks the hold ended: a take that
// completes after that goes straight back. So a session that ends between
// two takes gives back the first.
type quotaHold struct {
	mu    sync.Mutex
	ch    *charge
	ended bool
}

// swap replaces the held charge with ch and returns the old one (for the
// caller to give back); once the session ended it holds nothing and ch
// comes back with the old one.
func (h *quotaHold) swap(ch *charge) (old, refused *charge) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old = h.ch
	if h.ended {
		h.ch = nil
		return old, ch
	}
	h.ch = ch
	return old, nil
}

// add records q, just taken, on ch; false: ch is no longer the session's
// (it ended), the caller gives q back.
func (h *quotaHold) add(ch *charge, q policy.Quota, fleet bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch != ch {
		return false
	}
	ch.quotas = append(ch.quotas, q)
	ch.fleet = append(ch.fleet, fleet)
	return true
}

// drop forgets ch if it is the session's (returns whether it was).
func (h *quotaHold) drop(ch *charge) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch != ch {
		return false
	}
	h.ch = nil
	return true
}

// end marks the session over and returns what it held.
func (h *quotaHold) end() *charge {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ended = true
	ch := h.ch
	h.ch = nil
	return ch
}

// counted: the transaction's message got its 250 and counts.
func (h *quotaHold) counted() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ch = nil
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
	var quotas []policy.Quota
	var domain, user string
	if !rules.Empty() {
		if from != "" {
			if a, err := address.Parse(from); err == nil {
				domain = a.ASCII
			}
		}
		if ss.user != nil {
			user = ss.user.Name
		}
		quotas = rules.For(domain, user)
	}
	ss.quota.mu.Lock()
	held := ss.quota.ch
	reuse := held.covers(quotas)
	ss.quota.mu.Unlock()
	if reuse {
		return nil // the abandoned transaction's count, taken over
	}
	if len(quotas) == 0 {
		old, _ := ss.quota.swap(nil)
		ss.giveBack(old)
		return nil
	}
	ch := &charge{}
	old, gone := ss.quota.swap(ch)
	ss.giveBack(old)
	if gone != nil {
		return nil // the session has ended: take nothing (go-smtp closes it)
	}
	ctx := context.Background()
	for _, q := range quotas {
		wait, refused, local := qc.Rates.Take(ctx, q.Key, q.Limit.Paces())
		if wait <= 0 {
			if !ss.quota.add(ch, q, !local) && !local {
				qc.Rates.Give(ctx, q.Key, q.Limit.Paces()) // the session ended meanwhile
			}
			continue
		}
		if ss.quota.drop(ch) {
			ss.giveBack(ch)
		}
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
	return nil
}

// giveBack returns what a charge counted in the fleet state to its quotas.
func (ss *session) giveBack(ch *charge) {
	if ch == nil {
		return
	}
	for i, q := range ch.quotas {
		if ch.fleet[i] {
			ss.s.cfg.Quotas.Rates.Give(context.Background(), q.Key, q.Limit.Paces())
		}
	}
}
