package config

import (
	"fmt"
	"strings"
)

// composeVars are the variables docker-compose.yml itself reads: the
// passwords of the bundled databases' admin and of the roles cdc run logs
// in as.
var composeVars = []struct{ name, help string }{
	{"SOURCE_ADMIN_PASSWORD", "password of the bundled source database's admin (postgres); cdc migrate uses it"},
	{"CHAT_ADMIN_PASSWORD", "password of the bundled chat database's admin (postgres); cdc migrate uses it"},
	{"CDC_SOURCE_PASSWORD", "password of cdc_source, the role cdc run reads the source as (REPLICATION, SELECT on users)"},
	{"CDC_CHAT_PASSWORD", "password of cdc_chat, the role cdc run writes chat as"},
}

// ComposeEnvExample renders .env.example: the passwords docker compose
// itself reads. They stay with compose: the cdc containers get only the
// DSNs built from them, not the file.
func ComposeEnvExample() string {
	var b strings.Builder
	b.WriteString(`# Copy to .env and set every password (cdc refuses the example's change-me).
# docker compose reads this file itself; the cdc containers never see it:
# they get the DSNs built from these passwords, and cdc's own settings from
# cdc.env (see cdc.env.example).

`)
	for _, v := range composeVars {
		fmt.Fprintf(&b, "# %s\n%s=change-me\n", v.help, v.name)
	}
	return b.String()
}

// EnvExample renders cdc.env.example: every cdc variable with its default
// (commented out: the default applies) and one line of meaning. A test
// keeps the file equal to this.
func EnvExample() string {
	var b strings.Builder
	b.WriteString(`# cdc's settings. Copy to cdc.env for docker compose (both cdc containers
# read it), or to .env when running cdc yourself (cdc reads .env from its
# working directory). An empty or commented-out variable takes its default.
# In docker-compose.yml the two DSNs are built from .env's passwords; set
# them here when running cdc without compose.
`)
	for _, v := range Vars {
		fmt.Fprintf(&b, "\n# %s\n", v.Help)
		if v.Default == "" {
			fmt.Fprintf(&b, "#%s=\n", v.Name)
			continue
		}
		fmt.Fprintf(&b, "#%s=%s\n", v.Name, v.Default)
	}
	return b.String()
}
