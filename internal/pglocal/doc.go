// Package pglocal runs a throw-away local PostgreSQL server for tests, the
// `cdc dev` command and benchmarks.
//
// Start initialises a cluster with initdb (or reuses an existing one), runs
// the postgres binary directly as a child process listening on 127.0.0.1 and
// a private unix socket directory, and waits until it accepts connections.
// The server is configured with wal_level=logical so that logical replication
// works out of the box.
//
// Layout under the root directory (Options.Dir or a fresh temp dir):
//
//	root/data          PGDATA (mode 0700)
//	root/sock          unix_socket_directories
//	root/postgres.log  server output when Options.Log is nil
//
// PostgreSQL refuses to run as root. When the current process is root, the
// directories are handed to the "postgres" user and initdb and postgres run
// with that user's credentials.
//
// The server process is put in its own process group, so a terminal Ctrl-C
// does not reach it, and on Linux it receives SIGQUIT (immediate shutdown)
// if the process that started it dies. Always call Server.Stop, for example
// from t.Cleanup.
//
// BinDir locates the server binaries: $PG_BIN, then PATH, then the usual
// installation directories such as /usr/lib/postgresql/*/bin.
package pglocal
