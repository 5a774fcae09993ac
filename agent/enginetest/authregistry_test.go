package enginetest

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"testing"
)

// TestAuthRegistryWantsCredentials checks that the registry AuthRegistry
// starts lets in its user with the right password and nobody else.
func TestAuthRegistryWantsCredentials(t *testing.T) {
	const user = "kiln"
	secret := make([]byte, 16)
	rand.Read(secret)
	password := hex.EncodeToString(secret)
	addr := AuthRegistry(t, user, password)

	tests := []struct {
		name           string
		user, password string // no user sends no credentials
		want           int
	}{
		{name: "no credentials", want: http.StatusUnauthorized},
		{name: "right password", user: user, password: password, want: http.StatusOK},
		{name: "wrong password", user: user, password: password + "-wrong", want: http.StatusUnauthorized},
		{name: "wrong user", user: user + "-wrong", password: password, want: http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/v2/", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.user != "" {
				req.SetBasicAuth(tt.user, tt.password)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("GET /v2/: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("GET /v2/ answered %s, want %d", resp.Status, tt.want)
			}
		})
	}
}
