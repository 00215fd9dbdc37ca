package myelindeploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// settings are the MYELIN_* variables a Complement homeserver starts with. The deployer builds a
// clean environment from them (nothing MYELIN_* is inherited from the test process), so what a
// server runs with is exactly what this file says.

// A group of MYELIN_* variables that belong together: either Myelin accepts all of them or the
// group is left out.
type envGroup struct {
	name string
	// Required groups must be accepted by `myelin check-config`; optional groups are probed and
	// dropped (with a log line) when this Myelin does not know their keys yet.
	required bool
	vars     func(s *server) map[string]string
}

// envGroups lists every group, in the order they are applied.
//
// KEYS TO ADD WHEN MYELIN GROWS THEM: the groups marked "future" name keys that do not exist in
// Myelin's config yet (see crates/service/src/config.rs). They are probed with
// `myelin check-config` once per test package and only passed on when accepted, because Myelin
// exits 2 on an unknown key inside a known section. When Myelin gains the real key, fix the name
// here if it differs, and check the probe log line ("accepted") in a Complement run.
var envGroups = []envGroup{
	{name: "core", required: true, vars: func(s *server) map[string]string {
		return map[string]string{
			"MYELIN_SERVER_NAME":                      s.name,
			"MYELIN_DATA_DIR":                         s.dataDir,
			"MYELIN_LISTEN__CLIENT":                   s.ip + ":8008",
			"MYELIN_LISTEN__FEDERATION":               s.ip + ":8448",
			"MYELIN_TLS__CERTIFICATE":                 s.certPath,
			"MYELIN_TLS__PRIVATE_KEY":                 s.keyPath,
			"MYELIN_HTTP__SHUTDOWN_GRACE_PERIOD_SECS": "2",
			"MYELIN_LOG__FILTER":                      s.d.logFilter(),
		}
	}},
	// Open registration with m.login.dummy and Synapse's shared-secret admin registration
	// (Complement's client signs with the secret "complement").
	{name: "registration", vars: func(s *server) map[string]string {
		return map[string]string{
			"MYELIN_REGISTRATION__ENABLED":       "true",
			"MYELIN_REGISTRATION__SHARED_SECRET": "complement",
		}
	}},
	// The cheapest argon2 Myelin accepts: tests register thousands of users.
	{name: "passwords", vars: func(s *server) map[string]string {
		return map[string]string{
			"MYELIN_PASSWORDS__MEMORY_KIB":  "8",
			"MYELIN_PASSWORDS__ITERATIONS":  "1",
			"MYELIN_PASSWORDS__PARALLELISM": "1",
		}
	}},
	// future: trust the run's CA for outbound federation TLS.
	{name: "federation.ca (future)", vars: func(s *server) map[string]string {
		return map[string]string{"MYELIN_FEDERATION__EXTRA_CA_CERTIFICATES": s.d.caPath}
	}},
	// future: loopback destinations are private addresses; allow them.
	{name: "federation.allow_private_addresses (future)", vars: func(s *server) map[string]string {
		return map[string]string{"MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES": "true"}
	}},
	// future: hs1, hs2, ... and Complement's own federation servers (host.docker.internal on
	// any port) without DNS, SRV or well-known. The value is a TOML inline table, which figment
	// parses from an environment variable.
	{name: "federation.destination_overrides (future)", vars: func(s *server) map[string]string {
		return map[string]string{"MYELIN_FEDERATION__DESTINATION_OVERRIDES": s.d.destinationOverrides()}
	}},
	// future: rate limits off.
	{name: "rate_limits (future)", vars: func(s *server) map[string]string {
		return map[string]string{"MYELIN_RATE_LIMITS__ENABLED": "false"}
	}},
	// future: the legacy unauthenticated /_matrix/media/v3 download endpoints, which many tests
	// still use.
	{name: "media.legacy (future)", vars: func(s *server) map[string]string {
		return map[string]string{"MYELIN_MEDIA__LEGACY_UNAUTHENTICATED_ENDPOINTS": "true"}
	}},
}

// probeResult remembers, per test package process, which groups this Myelin binary accepts.
var (
	probeOnce   sync.Once
	probeErr    error
	probeGroups map[string]bool
	probeLog    []string
)

// probe runs `myelin check-config` with the core group plus each other group in turn. It needs
// one server's values to fill in the variables; the answers do not depend on them.
func probe(s *server) (map[string]bool, []string, error) {
	probeOnce.Do(func() {
		probeGroups = map[string]bool{}
		core := map[string]string{}
		for _, g := range envGroups {
			if g.required {
				for k, v := range g.vars(s) {
					core[k] = v
				}
			}
		}
		if out, err := checkConfig(s.d.binary, s.dataDir, core); err != nil {
			probeErr = fmt.Errorf("myelin check-config rejects the core settings: %v: %s", err, out)
			return
		}
		for _, g := range envGroups {
			if g.required {
				probeGroups[g.name] = true
				continue
			}
			env := map[string]string{}
			for k, v := range core {
				env[k] = v
			}
			for k, v := range g.vars(s) {
				env[k] = v
			}
			out, err := checkConfig(s.d.binary, s.dataDir, env)
			probeGroups[g.name] = err == nil
			if err == nil {
				probeLog = append(probeLog, fmt.Sprintf("config group %q: accepted", g.name))
			} else {
				probeLog = append(probeLog, fmt.Sprintf("config group %q: not accepted by this Myelin, left out (%s)", g.name, strings.TrimSpace(out)))
			}
		}
	})
	return probeGroups, probeLog, probeErr
}

func checkConfig(binary, dir string, vars map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "check-config")
	cmd.Env = baseEnv(vars)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// serverEnv is the environment one server starts with.
func serverEnv(s *server) ([]string, error) {
	accepted, _, err := probe(s)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for _, g := range envGroups {
		if !accepted[g.name] {
			continue
		}
		for k, v := range g.vars(s) {
			vars[k] = v
		}
	}
	// COMPLEMENT_SHARE_ENV_PREFIX: pass chosen host variables through, prefix removed, last.
	if prefix := s.d.cfg.EnvVarsPropagatePrefix; prefix != "" {
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, prefix) {
				k, v, _ := strings.Cut(strings.TrimPrefix(kv, prefix), "=")
				vars[k] = v
			}
		}
	}
	return baseEnv(vars), nil
}

// baseEnv keeps only the few host variables a process needs, never any MYELIN_* or RUST_LOG
// from the test process, and adds vars.
func baseEnv(vars map[string]string) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "LANG", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "RUST_BACKTRACE=1", "NO_COLOR=1")
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}
