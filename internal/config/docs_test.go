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

var update = flag.Bool("update", false, "rewrite .env.example and cdc.env.example from the variables")

// TestEnvExample_ListsEveryVariable keeps cdc.env.example (every cdc
// variable) and .env.example (compose's passwords) equal to what
// EnvExample and ComposeEnvExample render (go test ./internal/config
// -update rewrites them).
func TestEnvExample_ListsEveryVariable(t *testing.T) {
	want := config.EnvExample()
	for path, text := range map[string]string{"../../cdc.env.example": want, "../../.env.example": config.ComposeEnvExample()} {
		if *update {
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != text {
			t.Fatalf("%s is out of date: run go test ./internal/config -run TestEnvExample -update", path)
		}
	}
	for _, v := range config.Vars {
		if !strings.Contains(want, "#"+v.Name+"=") {
			t.Errorf("cdc.env.example lacks %s", v.Name)
		}
	}
}
