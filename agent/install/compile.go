package install

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// compileProg compiles each source named on its command line into the byte-code file this
// interpreter itself looks for (importlib.util.cache_from_source: __pycache__/<stem>.<cache tag>.pyc,
// e.g. cpython-311) and prints that path, one per line. py_compile writes atomically and ignores
// PYTHONDONTWRITEBYTECODE, so hosts that set it still get byte-code. With "missing" first, sources
// whose byte-code file already exists are skipped (the versioned shim cache never changes).
const compileProg = `import sys, os, py_compile, importlib.util
args = sys.argv[1:]
missing = bool(args) and args[0] == "missing"
if missing:
    args = args[1:]
for src in args:
    dst = importlib.util.cache_from_source(src)
    if not (missing and os.path.exists(dst)):
        py_compile.compile(src, cfile=dst, doraise=True)
    print(dst)
`

// Compile writes byte-code for the given .py files (absolute paths) with python, so that
// interpreter loads them without compiling at every start (hosts with PYTHONDONTWRITEBYTECODE=1
// or read-only installs never write it themselves). It returns the .pyc paths, absolute, in the
// order of files. onlyMissing keeps byte-code files that already exist. Errors: python missing or
// failing, or a source that does not compile under it (the message carries python's stderr).
func Compile(python string, files []string, onlyMissing bool) ([]string, error) {
	if len(files) == 0 {
		return nil, nil
	}
	args := []string{"-I", "-c", compileProg}
	if onlyMissing {
		args = append(args, "missing")
	}
	cmd := exec.Command(python, append(args, files...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			lines := strings.Split(msg, "\n")
			err = fmt.Errorf("%w: %s", err, lines[len(lines)-1])
		}
		return nil, fmt.Errorf("compile byte-code with %s: %w", python, err)
	}
	// A .pth of that environment may print first: the answer is the last len(files) lines.
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) < len(files) {
		return nil, fmt.Errorf("compile byte-code with %s: unexpected answer %q", python, out)
	}
	return lines[len(lines)-len(files):], nil
}

// CompileTree compiles every .py file under dir (an unpacked shim cache folder) for each python
// that lacks its byte-code there. Byte-code of several interpreters lives side by side
// (__pycache__/<stem>.cpython-39.pyc, .cpython-311.pyc, ...). Errors: as Compile, per python.
func CompileTree(dir string, pythons []string) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".py") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("compile byte-code: %w", err)
	}
	var errs []string
	for _, py := range pythons {
		if _, err := Compile(py, files, true); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// Interpreters returns the Python interpreters a command will most likely run under, for
// CompileTree: explicit (a --python flag) when given, else the interpreter named by argv0's "#!"
// line (vllm, ray and other console scripts) or argv0 itself when it is a python, else python3 on
// PATH. lookPath is exec.LookPath with the command's PATH. Never errors: an empty result means
// none was found.
func Interpreters(explicit []string, argv0 string, lookPath func(string) (string, error)) []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if p == "" {
			return
		}
		if !strings.ContainsRune(p, filepath.Separator) {
			lp, err := lookPath(p)
			if err != nil {
				return
			}
			p = lp
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range explicit {
		add(p)
	}
	if len(out) > 0 {
		return out
	}
	if argv0 != "" {
		full := argv0
		if !strings.ContainsRune(argv0, filepath.Separator) {
			full, _ = lookPath(argv0)
		}
		if strings.HasPrefix(filepath.Base(full), "python") {
			add(full)
		} else if interp := shebangPython(full); interp != "" {
			add(interp)
		}
	}
	if len(out) == 0 {
		add("python3")
	}
	return out
}

// shebangPython returns the python a script's "#!" line names ("#!/venv/bin/python3",
// "#!/usr/bin/env python3"), or "".
func shebangPython(script string) string {
	if script == "" {
		return ""
	}
	f, err := openLimited(script, 256)
	if err != nil || !bytes.HasPrefix(f, []byte("#!")) {
		return ""
	}
	line, _, _ := bytes.Cut(f[2:], []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) == 0 {
		return ""
	}
	if filepath.Base(fields[0]) == "env" {
		fields = fields[1:]
		for len(fields) > 0 && strings.HasPrefix(fields[0], "-") {
			fields = fields[1:]
		}
		if len(fields) == 0 {
			return ""
		}
	}
	if !strings.HasPrefix(filepath.Base(fields[0]), "python") {
		return ""
	}
	return fields[0]
}

// openLimited returns at most n bytes from the start of the file at p.
func openLimited(p string, n int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}
