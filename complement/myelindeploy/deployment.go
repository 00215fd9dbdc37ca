// Package myelindeploy runs Complement's homeservers as Myelin processes on loopback addresses,
// through Complement's custom-deployment hook (complement.WithDeployment). No Docker is needed.
//
// Each hsN of a deployment gets its own temporary data directory (SQLite), the address
// 127.0.S.(N+1) (S is a slot, 0 unless two deployments are alive at once) with the client API on
// :8008 (plain HTTP) and federation on :8448 (TLS, a certificate for hsN signed with the run's
// CA), and is configured only through MYELIN_* variables (see config.go).
//
// The run script copies this package into a git-ignored copy of the Complement module, as
// github.com/matrix-org/complement/myelindeploy, and makes each test package's TestMain pass
// WithDeployment(myelindeploy.Deploy) and WithCleanup(myelindeploy.Cleanup).
package myelindeploy

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/complement"
	"github.com/matrix-org/complement/client"
	"github.com/matrix-org/complement/config"
	"github.com/matrix-org/complement/ct"
	"github.com/matrix-org/complement/helpers"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// BinaryEnv names the Myelin binary when set; otherwise COMPLEMENT_BASE_IMAGE carries its path
// (Complement insists that variable is non-empty).
const BinaryEnv = "MYELIN_COMPLEMENT_BINARY"

// Deployment is one test's set of Myelin processes.
type Deployment struct {
	cfg      *config.Complement
	binary   string
	slot     int
	rootDir  string
	caPath   string
	servers  map[string]*server
	names    []string
	counter  atomic.Int64
	mu       sync.Mutex
	released bool
}

var _ complement.Deployment = (*Deployment)(nil)

// Live deployments, so that Cleanup can stop whatever a panicking test left behind, and so that
// two deployments alive at the same time get different address slots.
var (
	liveMu sync.Mutex
	live   = map[int]*Deployment{}
)

// Deploy starts numServers Myelin processes named hs1..hsN and waits until each answers
// GET /_matrix/client/versions with 200, or fails the test.
func Deploy(t ct.TestLike, numServers int, cfg *config.Complement) complement.Deployment {
	t.Helper()
	binary := os.Getenv(BinaryEnv)
	if binary == "" {
		binary = cfg.BaseImageURI
	}
	if st, err := os.Stat(binary); err != nil || st.IsDir() {
		ct.Fatalf(t, "myelindeploy: the Myelin binary %q does not exist (set %s or COMPLEMENT_BASE_IMAGE to its path)", binary, BinaryEnv)
	}
	d := &Deployment{cfg: cfg, binary: binary, servers: map[string]*server{}}
	liveMu.Lock()
	for live[d.slot] != nil || !slotFree(d.slot, numServers) {
		d.slot++
	}
	live[d.slot] = d
	liveMu.Unlock()

	root, err := os.MkdirTemp("", "myelin-complement-")
	if err != nil {
		d.release()
		ct.Fatalf(t, "myelindeploy: temp dir: %s", err)
	}
	d.rootDir = root
	if d.caPath, err = writeCA(root, cfg); err != nil {
		d.release()
		ct.Fatalf(t, "myelindeploy: %s", err)
	}
	for i := 1; i <= numServers; i++ {
		name := fmt.Sprintf("hs%d", i)
		s, err := newServer(d, name, fmt.Sprintf("127.0.%d.%d", d.slot, i+1))
		if err != nil {
			d.Destroy(t)
			ct.Fatalf(t, "myelindeploy: %s: %s", name, err)
		}
		d.servers[name] = s
		d.names = append(d.names, name)
	}
	if _, lines, err := probe(d.servers["hs1"]); err != nil {
		d.Destroy(t)
		ct.Fatalf(t, "myelindeploy: %s", err)
	} else if cfg.DebugLoggingEnabled {
		for _, l := range lines {
			t.Logf("myelindeploy: %s", l)
		}
	}
	started := time.Now()
	// Start them together: each start is mostly waiting for the process to come up.
	errs := make([]error, len(d.names))
	var wg sync.WaitGroup
	for i, name := range d.names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.servers[name].start(cfg.SpawnHSTimeout)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			d.printLogs(t)
			d.Destroy(t)
			ct.Fatalf(t, "myelindeploy: starting %s: %s", d.names[i], err)
		}
	}
	t.Logf("myelindeploy: %d server(s) up in %v", numServers, time.Since(started).Round(time.Millisecond))
	return d
}

// Cleanup stops every process still alive at the end of a test package (for TestMain's
// WithCleanup).
func Cleanup(*config.Complement) {
	liveMu.Lock()
	ds := make([]*Deployment, 0, len(live))
	for _, d := range live {
		ds = append(ds, d)
	}
	liveMu.Unlock()
	for _, d := range ds {
		d.destroy()
	}
}

// slotFree says whether no other process (another Complement run, say) listens on the slot's
// addresses. Deployments of this process are tracked in live.
func slotFree(slot, numServers int) bool {
	if slot > 250 {
		return true // give up looking; starting will fail with a clear "address in use"
	}
	for i := 1; i <= numServers; i++ {
		for _, port := range []string{"8008", "8448"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.%d.%d", slot, i+1), port))
			if err != nil {
				return false
			}
			ln.Close()
		}
	}
	return true
}

func (d *Deployment) release() {
	liveMu.Lock()
	defer liveMu.Unlock()
	if !d.released && live[d.slot] == d {
		delete(live, d.slot)
	}
	d.released = true
}

func (d *Deployment) logFilter() string {
	if d.cfg.DebugLoggingEnabled {
		return "debug"
	}
	return "info"
}

// destinationOverrides is the TOML inline table for the
// federation.destination_overrides key: every hsN of this deployment, and the host Complement's
// own federation servers run on.
func (d *Deployment) destinationOverrides() string {
	var parts []string
	for i := 1; i <= 9; i++ {
		parts = append(parts, fmt.Sprintf("%q = %q", fmt.Sprintf("hs%d", i), fmt.Sprintf("127.0.%d.%d:8448", d.slot, i+1)))
	}
	parts = append(parts, fmt.Sprintf("%q = %q", d.cfg.HostnameRunningComplement, "127.0.0.1"))
	return "{" + strings.Join(parts, ", ") + "}"
}

func (d *Deployment) server(t ct.TestLike, hsName, what string) *server {
	t.Helper()
	s, ok := d.servers[hsName]
	if !ok {
		ct.Fatalf(t, "myelindeploy.%s: HS name '%s' not found", what, hsName)
	}
	return s
}

func (d *Deployment) newClient(t ct.TestLike, s *server, opts client.CSAPIOpts) *client.CSAPI {
	opts.BaseURL = s.baseURL()
	opts.Client = client.NewLoggedClient(t, s.name, nil)
	opts.SyncUntilTimeout = 5 * time.Second
	opts.Debug = d.cfg.DebugLoggingEnabled
	return client.NewCSAPI(opts)
}

// GetFullyQualifiedHomeserverName returns hsN itself: the servers are literally named hs1, hs2.
func (d *Deployment) GetFullyQualifiedHomeserverName(t ct.TestLike, hsName string) spec.ServerName {
	t.Helper()
	d.server(t, hsName, "GetFullyQualifiedHomeserverName")
	return spec.ServerName(hsName)
}

func (d *Deployment) UnauthenticatedClient(t ct.TestLike, hsName string) *client.CSAPI {
	t.Helper()
	return d.newClient(t, d.server(t, hsName, "UnauthenticatedClient"), client.CSAPIOpts{})
}

func (d *Deployment) Register(t ct.TestLike, hsName string, opts helpers.RegistrationOpts) *client.CSAPI {
	t.Helper()
	s := d.server(t, hsName, "Register")
	password := opts.Password
	if password == "" {
		password = "complement_meets_min_password_req"
	}
	c := d.newClient(t, s, client.CSAPIOpts{Password: password})
	localpart := fmt.Sprintf("user-%v", d.counter.Add(1))
	if opts.LocalpartSuffix != "" {
		localpart += "-" + opts.LocalpartSuffix
	}
	var userID, accessToken, deviceID string
	if opts.IsAdmin {
		userID, accessToken, deviceID = c.RegisterSharedSecret(t, localpart, password, opts.IsAdmin)
	} else {
		userID, accessToken, deviceID = c.RegisterUser(t, localpart, password)
	}
	c.UserID, c.AccessToken, c.DeviceID = userID, accessToken, deviceID
	return c
}

func (d *Deployment) Login(t ct.TestLike, hsName string, existing *client.CSAPI, opts helpers.LoginOpts) *client.CSAPI {
	t.Helper()
	s := d.server(t, hsName, "Login")
	localpart, _, err := gomatrixserverlib.SplitID('@', existing.UserID)
	if err != nil {
		ct.Fatalf(t, "myelindeploy.Login: existing client has invalid user ID '%s': %s", existing.UserID, err)
	}
	c := d.newClient(t, s, client.CSAPIOpts{Password: existing.Password})
	if opts.Password != "" {
		c.Password = opts.Password
	}
	var userID, accessToken, deviceID string
	if opts.DeviceID == "" {
		userID, accessToken, deviceID = c.LoginUser(t, localpart, opts.Password)
	} else {
		userID, accessToken, deviceID = c.LoginUser(t, localpart, opts.Password, client.WithDeviceID(opts.DeviceID))
	}
	c.UserID, c.AccessToken, c.DeviceID = userID, accessToken, deviceID
	return c
}

// AppServiceUser: Myelin has no application services yet, and Deploy(t, n) deployments never
// have one registered, so there is no token to hand out.
func (d *Deployment) AppServiceUser(t ct.TestLike, hsName, appServiceUserID string) *client.CSAPI {
	t.Helper()
	d.server(t, hsName, "AppServiceUser")
	ct.Fatalf(t, "myelindeploy.AppServiceUser: no application service is registered on %s (user %s)", hsName, appServiceUserID)
	return nil
}

// Restart stops every server and starts it again on the same data directory and addresses, so
// clients keep working.
func (d *Deployment) Restart(t ct.TestLike) error {
	t.Helper()
	for _, name := range d.names {
		s := d.servers[name]
		if err := s.stop(); err != nil {
			t.Errorf("myelindeploy.Restart: stopping %s: %s", name, err)
			return err
		}
		if err := s.start(d.cfg.SpawnHSTimeout); err != nil {
			t.Errorf("myelindeploy.Restart: starting %s: %s", name, err)
			return err
		}
	}
	return nil
}

func (d *Deployment) StopServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StopServer %s", hsName)
	if err := d.server(t, hsName, "StopServer").stop(); err != nil {
		ct.Fatalf(t, "StopServer: %s", err)
	}
}

func (d *Deployment) StartServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StartServer %s", hsName)
	s := d.server(t, hsName, "StartServer")
	if s.running() {
		ct.Fatalf(t, "StartServer: %s is not stopped", hsName)
	}
	if err := s.start(d.cfg.SpawnHSTimeout); err != nil {
		ct.Fatalf(t, "StartServer: %s", err)
	}
}

func (d *Deployment) PauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("PauseServer %s", hsName)
	if err := d.server(t, hsName, "PauseServer").pause(); err != nil {
		ct.Fatalf(t, "PauseServer: %s", err)
	}
}

func (d *Deployment) UnpauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("UnpauseServer %s", hsName)
	if err := d.server(t, hsName, "UnpauseServer").unpause(); err != nil {
		ct.Fatalf(t, "UnpauseServer: %s", err)
	}
}

// ContainerID has no container to name; it returns "myelin-<pid>" of the current process.
func (d *Deployment) ContainerID(t ct.TestLike, hsName string) string {
	t.Helper()
	return fmt.Sprintf("myelin-%d", d.server(t, hsName, "ContainerID").pid())
}

// Destroy prints the servers' logs when the test failed (or COMPLEMENT_ALWAYS_PRINT_SERVER_LOGS
// is 1), kills the processes and removes their data.
func (d *Deployment) Destroy(t ct.TestLike) {
	t.Helper()
	if t.Failed() || d.cfg.AlwaysPrintServerLogs {
		d.printLogs(t)
	}
	d.destroy()
}

func (d *Deployment) destroy() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.servers {
		s.kill()
	}
	if d.rootDir != "" && os.Getenv("MYELIN_COMPLEMENT_KEEP_DATA") != "1" {
		_ = os.RemoveAll(d.rootDir)
	}
	d.release()
}

// maxLogBytes is how much of each server's log a failed test prints (the end of it).
const maxLogBytes = 64 * 1024

func (d *Deployment) printLogs(t ct.TestLike) {
	names := append([]string(nil), d.names...)
	sort.Strings(names)
	for _, name := range names {
		text, truncated := d.servers[name].logTail(maxLogBytes)
		note := ""
		if truncated {
			note = fmt.Sprintf(" (last %d bytes)", maxLogBytes)
		}
		t.Logf("============ server logs: %s%s ============\n%s\n============ end of %s logs ============", name, note, text, name)
	}
}

func (d *Deployment) GetConfig() *config.Complement { return d.cfg }

// RoundTripper sends requests for https://hsN to that server's federation listener and
// requests for Complement's own host to 127.0.0.1. Complement's federation client does not
// check certificates (it signs its requests instead), like the Docker deployment.
func (d *Deployment) RoundTripper() http.RoundTripper { return &roundTripper{d: d} }

// Network: no container network; everything is on loopback.
func (d *Deployment) Network() string { return "" }
