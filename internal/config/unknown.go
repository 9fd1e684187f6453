package config

import (
	"fmt"

	"slices"
	"strings"

	"github.com/agnivade/levenshtein"
)

// unknownNames describes the names that look meant for cdc but are none
// of its variables, each with the closest one: every unknown .env key
// (a typo there is otherwise silently ignored), and environment variables
// within two edits of a variable's name (CHAT_DATABSE_URL).
func (l *Loader) unknownNames() []string {
	if l.src.Names == nil {
		return nil
	}
	dotenv, environ := l.src.Names()
	known := make([]string, len(Vars))
	for i, v := range Vars {
		known[i] = v.Name
	}
	// .env entries docker-compose.yml reads, not cdc.
	compose := []string{"COMPOSE_PROJECT_NAME"}
	for _, v := range composeVars {
		compose = append(compose, v.name)
	}
	var out []string
	warn := func(where, name string, always bool) {
		if slices.Contains(known, name) || slices.Contains(compose, name) {
			return
		}
		best, dist := closest(name, known)
		switch {
		case dist <= 2:
			out = append(out, fmt.Sprintf("%s sets %s, which is not a cdc variable: did you mean %s?", where, name, best))
		case always:
			out = append(out, fmt.Sprintf("%s sets %s, which is not a cdc variable (cdc help config lists them)", where, name))
		}
	}
	slices.Sort(dotenv)
	for _, n := range dotenv {
		warn(".env", n, true)
	}
	slices.Sort(environ)
	for _, n := range environ {
		if !slices.Contains(dotenv, n) {
			warn("the environment", n, false)
		}
	}
	return out
}

// closest is the name in names nearest to s by edit distance, and the
// distance.
func closest(s string, names []string) (string, int) {
	best, dist := "", 1<<30
	for _, n := range names {
		if d := levenshtein.ComputeDistance(strings.ToUpper(s), n); d < dist {
			best, dist = n, d
		}
	}
	return best, dist
}
