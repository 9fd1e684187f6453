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

// EnvExample renders .env.example: the compose file's passwords, then every
// cdc variable with its default (commented out: the default applies) and
// one line of meaning. A test keeps the file equal to this.
func EnvExample() string {
	var b strings.Builder
	b.WriteString(`# Copy to .env and edit. cdc reads .env from its working directory;
# docker compose reads it for the variables below and passes it to cdc.
# An empty or commented-out variable takes its default.

# --- docker-compose.yml --------------------------------------------------
`)
	for _, v := range composeVars {
		fmt.Fprintf(&b, "# %s\n%s=change-me\n", v.help, v.name)
	}
	b.WriteString(`
# --- cdc -------------------------------------------------------------------
# In docker-compose.yml the two DSNs are built from the passwords above;
# set them here when running cdc without compose.
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
