package bus

import (
	"context"
	"errors"
	"testing"
	"time"
)

type key struct{}

func TestWithoutDeadlineKeepsValuesAndCancellation(t *testing.T) {
	parent, cancelParent := context.WithTimeout(context.WithValue(t.Context(), key{}, "tenant-a"), time.Hour)
	ctx, cancel := WithoutDeadline(parent)
	defer cancel()

	if _, ok := ctx.Deadline(); ok {
		t.Fatal("the context still has a deadline")
	}
	if got := ctx.Value(key{}); got != "tenant-a" {
		t.Fatalf("value = %v, want tenant-a", got)
	}
	if ctx.Err() != nil {
		t.Fatalf("ended before its parent: %v", ctx.Err())
	}
	cancelParent()
	<-ctx.Done() // the parent's end reaches it; the test's deadline catches a hang
	if !errors.Is(context.Cause(ctx), context.Canceled) {
		t.Fatalf("cause = %v, want the parent's", context.Cause(ctx))
	}
}

func TestWithoutDeadlineCancelFuncEndsIt(t *testing.T) {
	ctx, cancel := WithoutDeadline(t.Context())
	cancel()
	if ctx.Err() == nil {
		t.Fatal("cancel did not end the context")
	}
}
