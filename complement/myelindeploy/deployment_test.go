package myelindeploy

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/complement/config"
	"github.com/matrix-org/complement/helpers"
)

// These tests drive the deployer itself against a real Myelin binary:
//
//	cd complement && MYELIN_COMPLEMENT_BINARY=/var/tmp/myelin-target/debug/myelin go test ./myelindeploy
//
// Without MYELIN_COMPLEMENT_BINARY they are skipped.

func testConfig(t *testing.T) *config.Complement {
	t.Helper()
	if os.Getenv(BinaryEnv) == "" {
		t.Skipf("set %s to a Myelin binary to run the deployer tests", BinaryEnv)
	}
	cfg := &config.Complement{
		BaseImageURI:              os.Getenv(BinaryEnv),
		SpawnHSTimeout:            30 * time.Second,
		HostnameRunningComplement: "host.docker.internal",
		PackageNamespace:          "myelindeploy",
	}
	if err := cfg.GenerateCA(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func versionsStatus(t *testing.T, d *Deployment, hs string) int {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	res, err := c.Get(d.servers[hs].baseURL() + "/_matrix/client/versions")
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

func TestDeployLifecycle(t *testing.T) {
	cfg := testConfig(t)
	dep := Deploy(t, 2, cfg).(*Deployment)
	defer dep.Destroy(t)

	for _, hs := range []string{"hs1", "hs2"} {
		if got := versionsStatus(t, dep, hs); got != 200 {
			t.Fatalf("%s: /versions answered %d", hs, got)
		}
		if got := dep.GetFullyQualifiedHomeserverName(t, hs); string(got) != hs {
			t.Fatalf("server name %q, want %q", got, hs)
		}
	}
	slot := fmt.Sprintf("127.0.%d.", dep.slot)
	if dep.servers["hs1"].ip != slot+"2" || dep.servers["hs2"].ip != slot+"3" {
		t.Fatalf("addresses %s, %s", dep.servers["hs1"].ip, dep.servers["hs2"].ip)
	}

	// Federation listener: TLS with a certificate for hs1 from the run's CA, via the round tripper.
	res, err := (&http.Client{Transport: dep.RoundTripper(), Timeout: 5 * time.Second}).Get("https://hs1/_matrix/key/v2/server")
	if err != nil {
		t.Fatalf("federation key request through the round tripper: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("federation key request: %d", res.StatusCode)
	}

	// Pause: requests hang; unpause: they work again.
	dep.PauseServer(t, "hs1")
	if got := versionsStatus(t, dep, "hs1"); got != 0 {
		t.Fatalf("paused hs1 answered %d", got)
	}
	dep.UnpauseServer(t, "hs1")
	if got := versionsStatus(t, dep, "hs1"); got != 200 {
		t.Fatalf("unpaused hs1 answered %d", got)
	}

	// Stop/start keeps the data directory; so does Restart.
	registered := registrationWorks(t, dep)
	var alice = struct{ user, password string }{}
	if registered {
		c := dep.Register(t, "hs1", helpers.RegistrationOpts{LocalpartSuffix: "alice", Password: "correct horse battery"})
		alice.user, alice.password = c.UserID, c.Password
	}
	dep.StopServer(t, "hs1")
	if got := versionsStatus(t, dep, "hs1"); got != 0 {
		t.Fatalf("stopped hs1 answered %d", got)
	}
	dep.StartServer(t, "hs1")
	if err := dep.Restart(t); err != nil {
		t.Fatal(err)
	}
	for _, hs := range []string{"hs1", "hs2"} {
		if got := versionsStatus(t, dep, hs); got != 200 {
			t.Fatalf("%s after restart: /versions answered %d", hs, got)
		}
	}
	if registered {
		existing := dep.UnauthenticatedClient(t, "hs1")
		existing.UserID, existing.Password = alice.user, alice.password
		c := dep.Login(t, "hs1", existing, helpers.LoginOpts{Password: alice.password})
		if c.UserID != alice.user || c.AccessToken == "" {
			t.Fatalf("login after restart: %q %q", c.UserID, c.AccessToken)
		}
	}
	if !strings.HasPrefix(dep.ContainerID(t, "hs1"), "myelin-") {
		t.Fatalf("ContainerID %q", dep.ContainerID(t, "hs1"))
	}
}

// registrationWorks says whether this Myelin accepts the registration settings (older binaries
// do not have them; the lifecycle test then skips the account part).
func registrationWorks(t *testing.T, d *Deployment) bool {
	t.Helper()
	accepted, _, err := probe(d.servers["hs1"])
	if err != nil {
		t.Fatal(err)
	}
	if !accepted["registration"] {
		t.Log("this Myelin has no registration settings; not checking accounts across restarts")
	}
	return accepted["registration"]
}

func TestTwoDeploymentsAtOnceGetDifferentSlots(t *testing.T) {
	cfg := testConfig(t)
	a := Deploy(t, 1, cfg).(*Deployment)
	defer a.Destroy(t)
	b := Deploy(t, 1, cfg).(*Deployment)
	defer b.Destroy(t)
	if a.servers["hs1"].ip == b.servers["hs1"].ip {
		t.Fatalf("both deployments on %s", a.servers["hs1"].ip)
	}
	if got := versionsStatus(t, b, "hs1"); got != 200 {
		t.Fatalf("second deployment: /versions answered %d", got)
	}
}

func TestSettingsAsEnvAndTOML(t *testing.T) {
	s := str("registration.shared_secret", `a "quoted" secret`)
	if s.envName() != "MYELIN_REGISTRATION__SHARED_SECRET" || s.envValue() != `a "quoted" secret` {
		t.Fatalf("%s=%s", s.envName(), s.envValue())
	}
	l := lit("passwords.memory_kib", "8")
	if l.envName() != "MYELIN_PASSWORDS__MEMORY_KIB" || l.envValue() != "8" || l.toml != "8" {
		t.Fatalf("%s=%s (%s)", l.envName(), l.envValue(), l.toml)
	}
}
