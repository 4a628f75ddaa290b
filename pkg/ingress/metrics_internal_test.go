package ingress

import (
	"fmt"
	"testing"
)

// A refusal by the client's share is told apart from one by the whole
// in-flight budget (what budgetSpent counts).
func TestInFlightLimitNames(t *testing.T) {
	for err, want := range map[error]string{
		errClientShare: "in_flight_bytes_per_client",
		fmt.Errorf("%w: context deadline exceeded", errNoBufferSpace): "in_flight_bytes",
	} {
		if got := inFlightLimit(err); got != want {
			t.Errorf("inFlightLimit(%v) = %q, want %q", err, got, want)
		}
	}
}
