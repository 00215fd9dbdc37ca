package myelindeploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/matrix-org/complement/config"
)

// server is one hsN: its files, addresses and (while running) its process.
type server struct {
	d        *Deployment
	name     string
	ip       string
	dataDir  string
	certPath string
	keyPath  string
	logPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	paused bool
}

func newServer(d *Deployment, name, ip string) (*server, error) {
	dir := filepath.Join(d.rootDir, name)
	s := &server{
		d:        d,
		name:     name,
		ip:       ip,
		dataDir:  filepath.Join(dir, "data"),
		certPath: filepath.Join(dir, "tls.crt"),
		keyPath:  filepath.Join(dir, "tls.key"),
		logPath:  filepath.Join(dir, "myelin.log"),
	}
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return nil, err
	}
	if err := writeLeafCertificate(d.cfg, name, ip, s.certPath, s.keyPath); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *server) baseURL() string { return "http://" + s.ip + ":8008" }
func (s *server) fedHost() string { return s.ip + ":8448" }

func (s *server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// start spawns `myelin serve` and waits for GET /_matrix/client/versions to answer 200.
func (s *server) start(timeout time.Duration) error {
	settings, err := serverSettings(s)
	if err != nil {
		return err
	}
	configPath := filepath.Join(s.dataDir, "..", "complement.toml")
	if err := writeTOML(configPath, settings); err != nil {
		return err
	}
	env := serverEnv(s, settings)
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "---- myelindeploy: starting %s at %s ----\n", s.name, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(s.d.binary, "--config", configPath, "serve")
	cmd.Env = env
	cmd.Dir = s.dataDir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group (a terminal's ^C reaches the test binary, which cleans up), and killed
	// with the test binary if it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		logFile.Close()
		return fmt.Errorf("%s is already running", s.name)
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		logFile.Close()
		return fmt.Errorf("spawning %s: %w", s.d.binary, err)
	}
	exited := make(chan struct{})
	s.cmd, s.exited, s.paused = cmd, exited, false
	s.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()

	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	httpClient := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			s.mu.Lock()
			if s.cmd == cmd {
				s.cmd = nil
			}
			s.mu.Unlock()
			return fmt.Errorf("myelin exited during start-up (%s); its log:\n%s", cmd.ProcessState, s.mustLogTail(16*1024))
		default:
		}
		res, err := httpClient.Get(s.baseURL() + "/_matrix/client/versions")
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v (last: %v); its log:\n%s", timeout, errOrStatus(err, res), s.mustLogTail(16*1024))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func errOrStatus(err error, res *http.Response) string {
	if err != nil {
		return err.Error()
	}
	return res.Status
}

// stop asks the process to shut down (SIGTERM) and kills it if it has not within 10 s.
func (s *server) stop() error {
	s.mu.Lock()
	cmd, exited, paused := s.cmd, s.exited, s.paused
	s.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s is not running", s.name)
	}
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	s.mu.Lock()
	if s.cmd == cmd {
		s.cmd, s.paused = nil, false
	}
	s.mu.Unlock()
	return nil
}

// kill ends the process at once (the deployment is being thrown away).
func (s *server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.paused = nil, false
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
	}
}

func (s *server) pause() error   { return s.signal(syscall.SIGSTOP, true) }
func (s *server) unpause() error { return s.signal(syscall.SIGCONT, false) }

func (s *server) signal(sig syscall.Signal, paused bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("%s is not running", s.name)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return err
	}
	s.paused = paused
	return nil
}

// logTail returns the last max bytes of the server's log (across restarts).
func (s *server) logTail(max int64) (string, bool) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %s)", err), false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %s)", err), false
	}
	truncated := st.Size() > max
	if truncated {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b), truncated
}

func (s *server) mustLogTail(max int64) string {
	text, _ := s.logTail(max)
	return text
}

// writeCA writes the run's CA certificate, for the outbound trust setting (federation.trusted_ca_files).
func writeCA(root string, cfg *config.Complement) (string, error) {
	pemBytes, err := cfg.CACertificateBytes()
	if err != nil {
		return "", err
	}
	path := filepath.Join(root, "ca.crt")
	return path, os.WriteFile(path, pemBytes, 0o644)
}

// writeLeafCertificate issues a certificate for hsN (and its IP) signed by the run's CA.
func writeLeafCertificate(cfg *config.Complement, name, ip, certPath, keyPath string) error {
	if cfg.CACertificate == nil || cfg.CAPrivateKey == nil {
		return errors.New("Complement's config has no CA")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	now := time.Now()
	template := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Myelin Complement"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{name},
		IPAddresses:           []net.IP{net.ParseIP(ip)},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, cfg.CACertificate, &key.PublicKey, cfg.CAPrivateKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

type roundTripper struct{ d *Deployment }

func (rt *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Hostname()
	u := *req.URL
	if host == rt.d.cfg.HostnameRunningComplement {
		u.Host = "127.0.0.1"
		if p := req.URL.Port(); p != "" {
			u.Host = net.JoinHostPort("127.0.0.1", p)
		}
	} else {
		s, ok := rt.d.servers[host]
		if !ok {
			return nil, fmt.Errorf("myelindeploy: RoundTripper: unknown host '%s'", host)
		}
		u.Host = s.fedHost()
	}
	u.Scheme = "https"
	out := req.Clone(req.Context())
	out.URL = &url.URL{}
	*out.URL = u
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{ServerName: host, InsecureSkipVerify: true}, //nolint:gosec // as Complement's Docker deployment
		DialContext:       (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableKeepAlives: true,
	}
	return transport.RoundTrip(out)
}
