package myelindeploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The settings a Complement homeserver starts with. Each one is given twice, with the same value:
// as a MYELIN_* environment variable (the deployer builds a clean environment, so nothing
// MYELIN_* is inherited from the test process) and as a line of a generated TOML file passed with
// --config. The file makes the settings reach Myelin even where it filters an environment
// variable out, and lets `myelin check-config` say precisely whether Myelin knows a key (unknown
// keys in a file are always errors).

// setting is one config key: its dotted path and its value as a TOML literal.
type setting struct {
	key  string // e.g. "registration.enabled"
	toml string // e.g. `true`, `"hs1"`, `{ "hs1" = "127.0.0.2:8448" }`
}

func str(key, value string) setting { return setting{key, strconv.Quote(value)} }
func lit(key, value string) setting { return setting{key, value} }

// envName is the MYELIN_* variable for a key: `__` between levels.
func (s setting) envName() string {
	return "MYELIN_" + strings.ToUpper(strings.ReplaceAll(s.key, ".", "__"))
}

// envValue is the variable's value: strings bare, everything else as the TOML literal (figment
// parses it the same way).
func (s setting) envValue() string {
	if v, err := strconv.Unquote(s.toml); err == nil && strings.HasPrefix(s.toml, `"`) {
		return v
	}
	return s.toml
}

// A group of settings that belong together: either Myelin accepts all of them or the group is
// left out.
type envGroup struct {
	name string
	// Required groups must be accepted by `myelin check-config`; optional groups are probed and
	// dropped (with a log line) when this Myelin does not know their keys yet.
	required bool
	settings func(s *server) []setting
}

// envGroups lists every group, in the order they are applied.
//
// Groups other than "core" are probed with `myelin check-config` once per test package and only
// passed on when accepted, because Myelin exits 2 on an unknown key: a deployer newer than the
// binary it runs still starts it. Keys are named as in crates/service/src/config.rs (and
// ../docker-entrypoint.sh); check the probe's log line ("accepted") in a run with
// COMPLEMENT_DEBUG=1 after renaming one.
var envGroups = []envGroup{
	{name: "core", required: true, settings: func(s *server) []setting {
		return []setting{
			str("server_name", s.name),
			str("data_dir", s.dataDir),
			str("listen.client", s.ip+":8008"),
			str("listen.federation", s.ip+":8448"),
			// Complement sends federation and key paths to the client port too
			// (TestUnknownEndpoints), as Synapse's one listener serves them.
			lit("listen.federation_on_client", "true"),
			str("tls.certificate", s.certPath),
			str("tls.private_key", s.keyPath),
			lit("http.shutdown_grace_period_secs", "2"),
			str("log.filter", s.d.logFilter()),
		}
	}},
	// Open registration with m.login.dummy and Synapse's shared-secret admin registration
	// (Complement's client signs with the secret "complement").
	{name: "registration", settings: func(s *server) []setting {
		return []setting{
			lit("registration.enabled", "true"),
			str("registration.shared_secret", "complement"),
		}
	}},
	// The cheapest argon2 Myelin accepts: tests register thousands of users.
	{name: "passwords", settings: func(s *server) []setting {
		return []setting{
			lit("passwords.memory_kib", "8"),
			lit("passwords.iterations", "1"),
			lit("passwords.parallelism", "1"),
		}
	}},
	// Trust the run's CA for outbound federation TLS.
	{name: "federation.trusted_ca_files", settings: func(s *server) []setting {
		return []setting{lit("federation.trusted_ca_files", "["+strconv.Quote(s.d.caPath)+"]")}
	}},
	// Loopback destinations are private addresses; allow them.
	{name: "federation.allow_private_addresses", settings: func(s *server) []setting {
		return []setting{lit("federation.allow_private_addresses", "true")}
	}},
	// hs1, hs2, ... and Complement's own federation servers (host.docker.internal on any port,
	// listening on 127.0.0.1) without DNS, SRV or well-known.
	{name: "federation.destination_overrides", settings: func(s *server) []setting {
		return []setting{lit("federation.destination_overrides", s.d.destinationOverrides())}
	}},
	// Rate limits off (Myelin's defaults allow one login or registration a second per address).
	{name: "rate_limits", settings: func(s *server) []setting {
		return []setting{lit("rate_limits.enabled", "false")}
	}},
	// The legacy unauthenticated /_matrix/media/{v3,r0} download, thumbnail and config
	// endpoints, which many tests still use (off by default in Myelin).
	{name: "media.legacy", settings: func(s *server) []setting {
		return []setting{lit("media.legacy_endpoints", "true")}
	}},
	// URL previews on, reaching the loopback web servers tests start on the host Complement
	// runs on (TestUrlPreview), which no DNS knows.
	{name: "media.url_preview", settings: func(s *server) []setting {
		return []setting{
			lit("media.url_preview.enabled", "true"),
			lit("media.url_preview.allow_private_addresses", "true"),
			lit("media.url_preview.host_overrides", fmt.Sprintf("{%q = %q}", s.d.cfg.HostnameRunningComplement, "127.0.0.1")),
		}
	}},
	// Rooms created without a version are version 10, the version Complement's tests are
	// written against (Synapse's long-standing default): TestPowerLevels and others put the
	// creator in the power levels' `users`, which version 12 forbids. Tests of version 12 ask for
	// it by name; Myelin's own default stays the spec's 12.
	{name: "rooms.default_room_version", settings: func(s *server) []setting {
		return []setting{str("rooms.default_room_version", "10")}
	}},
}

// probeResult remembers, per test package process, which groups this Myelin binary accepts.
var (
	probeOnce   sync.Once
	probeErr    error
	probeGroups map[string]bool
	probeLog    []string
)

// probe runs `myelin --config FILE check-config` with the core group plus each other group in
// turn. It needs one server's values to fill in the settings; the answers do not depend on them.
func probe(s *server) (map[string]bool, []string, error) {
	probeOnce.Do(func() {
		probeGroups = map[string]bool{}
		var core []setting
		for _, g := range envGroups {
			if g.required {
				core = append(core, g.settings(s)...)
			}
		}
		if out, err := checkConfig(s, core); err != nil {
			probeErr = fmt.Errorf("myelin check-config rejects the core settings: %v: %s", err, out)
			return
		}
		for _, g := range envGroups {
			if g.required {
				probeGroups[g.name] = true
				continue
			}
			out, err := checkConfig(s, append(append([]setting(nil), core...), g.settings(s)...))
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

func checkConfig(s *server, settings []setting) (string, error) {
	path := filepath.Join(s.dataDir, "..", "probe.toml")
	if err := writeTOML(path, settings); err != nil {
		return "", err
	}
	defer os.Remove(path)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.d.binary, "--config", path, "check-config")
	cmd.Env = baseEnv(nil)
	cmd.Dir = s.dataDir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

func writeTOML(path string, settings []setting) error {
	var b strings.Builder
	b.WriteString("# Written by complement/myelindeploy for one Complement homeserver.\n")
	for _, st := range settings {
		fmt.Fprintf(&b, "%s = %s\n", st.key, st.toml)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// serverSettings are the settings of every group this Myelin accepts.
func serverSettings(s *server) ([]setting, error) {
	accepted, _, err := probe(s)
	if err != nil {
		return nil, err
	}
	var settings []setting
	for _, g := range envGroups {
		if accepted[g.name] {
			settings = append(settings, g.settings(s)...)
		}
	}
	return settings, nil
}

// serverEnv is the environment one server starts with: the settings as MYELIN_* variables, then
// COMPLEMENT_SHARE_ENV_PREFIX variables (prefix removed), which win.
func serverEnv(s *server, settings []setting) []string {
	vars := map[string]string{}
	for _, st := range settings {
		vars[st.envName()] = st.envValue()
	}
	if prefix := s.d.cfg.EnvVarsPropagatePrefix; prefix != "" {
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, prefix) {
				k, v, _ := strings.Cut(strings.TrimPrefix(kv, prefix), "=")
				vars[k] = v
			}
		}
	}
	return baseEnv(vars)
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
