package pglocal

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
)

// errNoBinaries is returned by BinDir when no PostgreSQL installation is found.
var errNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found; " +
	"install them with: apt-get install -y postgresql (Debian/Ubuntu) or brew install postgresql@15 (macOS), or set PG_BIN")

// binGlobs are well-known installation directories searched after PATH, in
// addition to /usr/lib/postgresql/*/bin (Debian/Ubuntu).
var binGlobs = []string{
	"/usr/lib/postgresql/*/bin",          // Debian, Ubuntu
	"/usr/pgsql-*/bin",                   // RHEL, Fedora (PGDG)
	"/opt/homebrew/opt/postgresql@*/bin", // Homebrew, Apple silicon
	"/usr/local/opt/postgresql@*/bin",    // Homebrew, Intel
}

var versionRE = regexp.MustCompile(`(\d+)(?:\.(\d+))?`)

// BinDir returns the directory holding the initdb and postgres binaries.
//
// It uses $PG_BIN if set, then the directory of initdb found on PATH (with
// symlinks resolved), then the highest version among the usual installation
// directories such as /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("find postgres binaries: PG_BIN=%s does not contain initdb and postgres", dir)
		}
		return filepath.Clean(dir), nil
	}
	for _, name := range []string{"initdb", "postgres"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if p, err = filepath.Abs(p); err != nil {
			continue
		}
		if dir := filepath.Dir(p); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	var candidates []string
	for _, pattern := range binGlobs {
		matches, _ := filepath.Glob(pattern)
		candidates = append(candidates, matches...)
	}
	sort.SliceStable(candidates, func(i, j int) bool {
		return versionLess(installVersion(candidates[j]), installVersion(candidates[i]))
	})
	for _, dir := range candidates {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", errNoBinaries
}

// hasServerBinaries reports whether dir holds executable initdb and postgres.
func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		if runtime.GOOS == "windows" {
			name += ".exe"
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || (runtime.GOOS != "windows" && fi.Mode()&0o111 == 0) {
			return false
		}
	}
	return true
}

// installVersion extracts the major and minor version from the name of the
// directory above bin, e.g. /usr/lib/postgresql/15/bin -> [15 0].
func installVersion(binDir string) [2]int {
	m := versionRE.FindAllStringSubmatch(filepath.Base(filepath.Dir(binDir)), -1)
	if len(m) == 0 {
		return [2]int{}
	}
	last := m[len(m)-1]
	major, _ := strconv.Atoi(last[1])
	minor, _ := strconv.Atoi(last[2])
	return [2]int{major, minor}
}

func versionLess(a, b [2]int) bool {
	if a[0] != b[0] {
		return a[0] < b[0]
	}
	return a[1] < b[1]
}

// BinDirFor returns the bin directory of PostgreSQL major version major:
// $PG_BIN_<major> if set, else the directory .ci/install-pg installs it in
// ($XDG_CACHE_HOME/cdc/pg/<major>/bin, ~/.cache/cdc/pg/<major>/bin or
// /var/cache/cdc/pg/<major>/bin), else a usual installation directory of
// that version such as /usr/lib/postgresql/<major>/bin.
func BinDirFor(major int) (string, error) {
	env := fmt.Sprintf("PG_BIN_%d", major)
	if dir := os.Getenv(env); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("find postgres %d binaries: %s=%s does not contain initdb and postgres", major, env, dir)
		}
		return filepath.Clean(dir), nil
	}
	var candidates []string
	cache := os.Getenv("XDG_CACHE_HOME")
	if home, err := os.UserHomeDir(); cache == "" && err == nil {
		cache = filepath.Join(home, ".cache")
	}
	if cache != "" {
		candidates = append(candidates, filepath.Join(cache, "cdc", "pg", strconv.Itoa(major), "bin"))
	}
	candidates = append(candidates, filepath.Join("/var/cache/cdc/pg", strconv.Itoa(major), "bin"))
	for _, pattern := range binGlobs {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if installVersion(m)[0] == major {
				candidates = append(candidates, m)
			}
		}
	}
	for _, dir := range candidates {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL %d server binaries not found: run .ci/install-pg (Linux x86-64) or set %s", major, env)
}
