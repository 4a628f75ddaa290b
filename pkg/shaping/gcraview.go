package shaping

import "time"

// PaceState is what one pace of a GCRA value holds at a moment, for an
// operator's view (mailfwdctl quota status).
type PaceState struct {
	Used   int           // events counted and not paid back yet (the debt in whole intervals, rounded up)
	Left   int           // events the pace admits now, one after the other
	FullAt time.Time     // when all Burst events are available again (zero: now)
	NextIn time.Duration // until the next event fits (0: now)
}

// ReadTATs reads a GCRA value of n paces: the time each one is paid off
// (zero: no debt). Unreadable fields are zero.
func ReadTATs(val []byte, n int) []time.Time { return parseTATs(val, n) }

// State is p's state at now for a value whose theoretical arrival time is
// tat, as Take decides on it.
func (p Pace) State(tat, now time.Time) PaceState {
	burst := max(p.Burst, 1)
	if p.Rate <= 0 {
		return PaceState{}
	}
	debt := tat.Sub(now)
	if debt <= 0 {
		return PaceState{Left: burst}
	}
	iv, tol := p.interval(), p.tolerance()
	st := PaceState{FullAt: tat}
	if debt > tol {
		st.NextIn = debt - tol
	} else {
		st.Left = min(int((tol-debt)/iv)+1, burst)
	}
	st.Used = burst - st.Left
	return st
}
