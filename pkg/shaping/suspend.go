package shaping

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Suspension is a destination suspended fleet-wide by a reply rule (key
// "s." + the destination's key, expiring with the suspension).
type Suspension struct {
	Dest  string    `json:"destination"` // "d.example.com", "h.relay.example.net"
	Until time.Time `json:"until"`
	Why   string    `json:"why"`
	By    string    `json:"by"`
}

// Name is the destination as operators write it.
func (s Suspension) Name() string { return DestName(s.Dest) }

// DestName turns a destination key back into its written form.
func DestName(key string) string {
	if h, ok := strings.CutPrefix(key, string(KindHost)+"."); ok {
		return "[" + strings.ReplaceAll(h, "_", ":") + "]"
	}
	return strings.TrimPrefix(key, string(KindDomain)+".")
}

// DestKey is the key of a destination written as in the shaping key:
// "example.com" or "[relay.example.net]".
func DestKey(name string) (string, error) {
	if strings.HasPrefix(name, "[") {
		if !strings.HasSuffix(name, "]") || len(name) < 3 {
			return "", fmt.Errorf("bad next hop %q (want [host] or [IP])", name)
		}
		return string(KindHost) + "." + HostKey(name), nil
	}
	d := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(name, "."), "."))
	if d == "" || strings.ContainsAny(d, " *>[]:") {
		return "", fmt.Errorf("bad destination %q", name)
	}
	return string(KindDomain) + "." + d, nil
}

// maxWhy bounds the reply text kept with a suspension.
const maxWhy = 200

// Suspend suspends dest for d fleet-wide (a longer suspension already in
// force stays). It returns the suspension in force.
func (s *Shaper) Suspend(ctx context.Context, destKey string, d time.Duration, why string) (Suspension, error) {
	if len(why) > maxWhy {
		why = why[:maxWhy]
	}
	sp := Suspension{Dest: destKey, Until: s.cfg.Now().Add(d).UTC().Truncate(time.Second), Why: why, By: s.cfg.Owner}
	s.noteSuspension(sp)
	if s.b == nil {
		return sp, nil
	}
	val, _ := json.Marshal(sp)
	key := "s." + destKey
	for range casRetries {
		octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		old, rev, err := s.b.Get(octx, key)
		if err == nil {
			var cur Suspension
			if json.Unmarshal(old, &cur) == nil && !cur.Until.Before(sp.Until) {
				cancel()
				return cur, nil
			}
			_, err = s.b.Swap(octx, key, val, rev, d)
		} else if errors.Is(err, ErrNotFound) {
			_, err = s.b.Create(octx, key, val, d)
		}
		cancel()
		switch {
		case err == nil:
			return sp, nil
		case errors.Is(err, ErrExists), errors.Is(err, ErrChanged):
			continue
		default:
			return sp, err
		}
	}
	return sp, errors.New("shaping: suspension kept changing")
}

// Confirm asks the fleet state whether sp still holds: false when it was
// lifted (mailfwdctl shaping resume) or expired, which the watch may not
// have brought yet; the local view forgets it then. Without the state (nil
// bucket, unreachable) the local view stands.
func (s *Shaper) Confirm(ctx context.Context, sp Suspension) bool {
	if !s.cfg.Now().Before(sp.Until) {
		return false
	}
	if s.b == nil {
		return true
	}
	octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	_, _, err := s.b.Get(octx, "s."+sp.Dest)
	if !errors.Is(err, ErrNotFound) {
		return true
	}
	s.mu.Lock()
	if cur, ok := s.suspended[sp.Dest]; ok && cur.Until.Equal(sp.Until) {
		delete(s.suspended, sp.Dest)
	}
	s.mu.Unlock()
	return false
}

// Resume lifts dest's suspension; false if it had none.
func Resume(ctx context.Context, b Bucket, destKey string) (bool, error) {
	if _, _, err := b.Get(ctx, "s."+destKey); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, b.Delete(ctx, "s."+destKey, 0)
}

// noteSuspension records sp in the local view (the watch brings the
// fleet's).
func (s *Shaper) noteSuspension(sp Suspension) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.suspended[sp.Dest] = sp
}

// SuspendedDomain returns the suspension in force for a recipient domain
// (or one of its parents), if any.
func (s *Shaper) SuspendedDomain(domain string) (Suspension, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.suspended) == 0 {
		return Suspension{}, false
	}
	now := s.cfg.Now()
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	for {
		if sp, ok := s.suspended[string(KindDomain)+"."+d]; ok && now.Before(sp.Until) {
			return sp, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return Suspension{}, false
		}
		d = d[i+1:]
	}
}

// suspendedKey returns the suspension of a destination key in force.
func (s *Shaper) suspendedKey(key string) (Suspension, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp, ok := s.suspended[key]
	return sp, ok && s.cfg.Now().Before(sp.Until)
}

// watchSuspensions keeps the local view of the fleet's suspensions until
// ctx ends.
func (s *Shaper) watchSuspensions(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.b.Watch(ctx, "s.", func(key string, val []byte) {
			dest := strings.TrimPrefix(key, "s.")
			var seen *Suspension
			s.mu.Lock()
			if val == nil {
				delete(s.suspended, dest)
			} else {
				var sp Suspension
				if json.Unmarshal(val, &sp) == nil {
					sp.Dest = dest
					s.suspended[dest] = sp
					seen = &sp
				}
			}
			n := len(s.suspended)
			s.mu.Unlock()
			if seen != nil {
				s.log.Debug("destination suspension seen", "destination", seen.Name(), "until", seen.Until, "by", seen.By)
			}
			s.reportSuspended(n)
		})
		if ctx.Err() == nil {
			s.log.Warn("watching destination suspensions failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// reportSuspended updates the suspension gauge: destinations with a rule
// by name, the others as "other".
func (s *Shaper) reportSuspended(int) {
	if s.cfg.Metrics == nil {
		return
	}
	s.mu.Lock()
	now := s.cfg.Now()
	byDest := map[string]float64{}
	for k, sp := range s.suspended {
		if !now.Before(sp.Until) {
			continue
		}
		label := "other"
		if s.cfg.Rules != nil && s.cfg.Rules().Named(k) {
			label = DestName(k)
		}
		byDest[label]++
	}
	s.mu.Unlock()
	s.cfg.Metrics.Suspended(byDest)
}
