package config_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/myusta/cdc/internal/config"
)

// TestReadme_ListsEveryVariable keeps the README's configuration table true:
// every variable appears in it with its default.
func TestReadme_ListsEveryVariable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, v := range config.Vars {
		def := "—"
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		row := "| `" + v.Name + "` | " + def + " |"
		if !strings.Contains(readme, row) {
			t.Errorf("README's configuration table lacks the row %q", row)
		}
	}
}

var update = flag.Bool("update", false, "rewrite .env.example from the variables")

// TestEnvExample_ListsEveryVariable keeps .env.example equal to what
// EnvExample renders from the variables (go test ./internal/config -update
// rewrites it).
func TestEnvExample_ListsEveryVariable(t *testing.T) {
	const path = "../../.env.example"
	want := config.EnvExample()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf(".env.example is out of date: run go test ./internal/config -run TestEnvExample -update")
	}
	for _, v := range config.Vars {
		if !strings.Contains(want, "#"+v.Name+"=") {
			t.Errorf(".env.example lacks %s", v.Name)
		}
	}
}
