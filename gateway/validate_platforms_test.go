package gateway

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// StartBuild refuses platforms the farm cannot build, and several without
// --push, with InvalidArgument naming why.
func TestValidateSpecPlatforms(t *testing.T) {
	for _, tt := range []struct {
		platforms []string
		push      bool
		ok        bool
	}{
		{nil, false, true},
		{[]string{"linux/arm64"}, false, true},
		{[]string{"linux/amd64", "linux/arm64"}, true, true},
		{[]string{"linux/amd64", "linux/arm64"}, false, false},
		{[]string{"windows/amd64"}, true, false},
		{[]string{"linux/x86_64"}, true, false}, // not as the rules spell it
		{[]string{"linux/arm64", "linux/arm64"}, true, false},
	} {
		err := validateSpec(&kilnv1.BuildSpec{Tags: []string{"127.0.0.1:5000/a/b:1"}, Push: tt.push, Platforms: tt.platforms})
		if tt.ok != (err == nil) || (err != nil && status.Code(err) != codes.InvalidArgument) {
			t.Errorf("platforms %v push %v: %v", tt.platforms, tt.push, err)
		}
	}
}
