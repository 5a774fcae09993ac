package rules

import (
	"errors"
	"fmt"
	"testing"
)

func TestKinds(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		kind     error
		other    error
		wantText string
	}{
		{name: "invalid", err: Invalidf("entry %q escapes", "../x"), kind: ErrInvalid, other: ErrOverLimit, wantText: `entry "../x" escapes`},
		{name: "over limit", err: OverLimitf("%d entries", 3), kind: ErrOverLimit, other: ErrInvalid, wantText: "3 entries"},
		{name: "wrapped", err: fmt.Errorf("context: %w", Invalidf("bad")), kind: ErrInvalid, other: ErrOverLimit, wantText: "context: bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, tt.kind) || errors.Is(tt.err, tt.other) {
				t.Errorf("%v: kind not told apart", tt.err)
			}
			if tt.err.Error() != tt.wantText {
				t.Errorf("message %q, want %q", tt.err, tt.wantText)
			}
		})
	}
}
