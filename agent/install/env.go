package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Var is one environment variable for a launch script or unit.
type Var struct {
	Name  string
	Value string
}

// RayCopied lists the variables vLLM must forward into Ray actors (VLLM_RAY_EXTRA_ENV_VARS_TO_COPY
// names them). PYTHONPATH cannot travel that way: Ray actors are started before vLLM copies
// variables, so it has to come from `ray start`, the runtime_env, or `pmagent install`.
var RayCopied = []string{"PROFILEMATE_SOCKET", "PROFILEMATE_SESSION", "PROFILEMATE_PROFILERS",
	"PROFILEMATE_FLUSH_MS", "PROFILEMATE_OUTPUT_DIR", "PROFILEMATE_ARMED", "PROFILEMATE_HOST"}

// EnvOptions are the inputs of `pmagent env`.
type EnvOptions struct {
	ShimDir string // unpacked shim folder (holds sitecustomize.py and profilemate/)
	Socket  string // agent socket
	Session string // optional fixed session name
}

// Vars returns the variables that wire the shim into a process started by something else than
// `pmagent run`.
func Vars(o EnvOptions) []Var {
	vs := []Var{{"PYTHONPATH", o.ShimDir}, {"PROFILEMATE_SOCKET", o.Socket}}
	if o.Session != "" {
		vs = append(vs, Var{"PROFILEMATE_SESSION", o.Session})
	}
	vs = append(vs, Var{"VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", strings.Join(RayCopied, ",")})
	return vs
}

// Format renders vars as "sh" (export lines; PYTHONPATH keeps what the script already has),
// "systemd" (Environment= lines for a unit or drop-in) or "json" (one object).
func Format(vars []Var, format string) (string, error) {
	var b strings.Builder
	switch format {
	case "sh", "":
		for _, v := range vars {
			if v.Name == "PYTHONPATH" {
				fmt.Fprintf(&b, "export PYTHONPATH=%s\"${PYTHONPATH:+:$PYTHONPATH}\"\n", shQuote(v.Value))
				continue
			}
			fmt.Fprintf(&b, "export %s=%s\n", v.Name, shQuote(v.Value))
		}
	case "systemd":
		for _, v := range vars {
			// systemd unquotes "..." with C-style escapes; % starts a specifier.
			val := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%").Replace(v.Value)
			fmt.Fprintf(&b, "Environment=\"%s=%s\"\n", v.Name, val)
		}
	case "json":
		m := map[string]string{}
		for _, v := range vars {
			m[v.Name] = v.Value
		}
		out, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return "", err
		}
		b.Write(out)
		b.WriteByte('\n')
	default:
		return "", fmt.Errorf("unknown format %q (want sh, systemd or json)", format)
	}
	return b.String(), nil
}

func shQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./,:=@+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// DefaultCacheRoot is where unpacked shims live: $PROFILEMATE_CACHE, else the user cache folder
// (~/.cache/profilemate), else the temp folder.
func DefaultCacheRoot() string {
	if d := os.Getenv("PROFILEMATE_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "profilemate")
	}
	return filepath.Join(os.TempDir(), "profilemate-"+strconv.Itoa(os.Getuid()))
}

// ShimCache returns <root>/shim-<version>, unpacking it with unpack first when it is not there.
// The folder appears atomically (unpack into a temporary sibling, then rename), so concurrent
// callers and interrupted runs never leave a half-unpacked shim on a PYTHONPATH.
func ShimCache(root, version string, unpack func(dst string) error) (string, error) {
	if version == "" {
		return "", errors.New("shim cache: empty version")
	}
	dir := filepath.Join(root, "shim-"+version)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("shim cache: %w", err)
	}
	tmp, err := os.MkdirTemp(root, ".shim-"+version+"-")
	if err != nil {
		return "", fmt.Errorf("shim cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := unpack(tmp); err != nil {
		return "", fmt.Errorf("shim cache: unpack: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", fmt.Errorf("shim cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("shim cache: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Someone else finished first: theirs is as good as ours.
		if _, serr := os.Stat(filepath.Join(dir, ".complete")); serr == nil {
			return dir, nil
		}
		// A stale incomplete folder from an older layout: replace it.
		if rerr := os.RemoveAll(dir); rerr != nil {
			return "", fmt.Errorf("shim cache: %w", err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			return "", fmt.Errorf("shim cache: %w", err)
		}
	}
	return dir, nil
}
