package ident

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Table
		err  string
	}{
		{in: "users", want: Table{"public", "users"}},
		{in: "USERS", want: Table{"public", "users"}},
		{in: " app . Users ", want: Table{"app", "users"}},
		{in: `public."Users"`, want: Table{"public", "Users"}},
		{in: `"My Schema"."user"`, want: Table{"My Schema", "user"}},
		{in: `"a""b".t`, want: Table{`a"b`, "t"}},
		{in: `"a.b"`, want: Table{"public", "a.b"}},
		{in: "Ünïcode", want: Table{"public", "Ünïcode"}}, // non-ASCII letters are not folded
		{in: "t$1", want: Table{"public", "t$1"}},
		{in: "a.b.c", err: "3 dotted parts"},
		{in: `""`, err: "may not be empty"},
		{in: `"open`, err: "unterminated"},
		{in: "1users", err: "unexpected"},
		{in: "users;drop", err: "unexpected"},
		{in: "", err: "missing"},
		{in: "a." + strings.Repeat("x", 64), err: "at most 63"},
	} {
		got, err := ParseTable(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseTable(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseTable(%q) = %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
		// The display form reads back as the same table.
		if back, err := ParseTable(got.String()); err != nil || back != got {
			t.Errorf("ParseTable(%q.String() = %q) = %#v, %v", tc.in, got.String(), back, err)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList(`id, "firstName",LastName , profile_picture AS avatar_url,"e-mail" as "Email",, `, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapped{{"id", "id"}, {"firstName", "firstName"}, {"lastname", "lastname"},
		{"profile_picture", "avatar_url"}, {"e-mail", "Email"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v\nwant %#v", got, want)
	}
	for in, msg := range map[string]string{
		"a, a":           "twice",
		"a AS c, b AS c": "two columns to c",
		"a b":            "separate names with commas",
		"a AS":           "missing",
		`"as" AS x`:      "",
		"as":             "",
	} {
		_, err := ParseList(in, true)
		if msg == "" {
			if err != nil {
				t.Errorf("ParseList(%q): %v", in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseList(%q) error = %v; want %q", in, err, msg)
		}
	}
	if _, err := ParseList("a AS b", false); err == nil || !strings.Contains(err.Error(), "only allowed") {
		t.Errorf("mapping accepted where it is not allowed: %v", err)
	}
}

func TestDisplay(t *testing.T) {
	for in, want := range map[string]string{
		"users": "users", "Users": `"Users"`, "first name": `"first name"`, `a"b`: `"a""b"`,
		"_x$1": "_x$1", "1x": `"1x"`, "$x": `"$x"`, "ünï": `"ünï"`,
	} {
		if got := Display(in); got != want {
			t.Errorf("Display(%q) = %s; want %s", in, got, want)
		}
		if back, err := ParseName(Display(in)); err != nil || back != in {
			t.Errorf("ParseName(Display(%q)) = %q, %v", in, back, err)
		}
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"users", `"Users"`, `"a""b"`, "x$", `""`, "ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, err := ParseName(s)
		if err != nil {
			return
		}
		if back, err := ParseName(Display(name)); err != nil || back != name {
			t.Fatalf("%q -> %q -> %q, %v", s, name, Display(name), err)
		}
		if back, err := ParseName(Quote(name)); err != nil || back != name {
			t.Fatalf("%q -> %q -> %q, %v", s, name, Quote(name), err)
		}
	})
}
