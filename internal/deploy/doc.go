// Package deploy holds the tests of the deployment files at the
// repository's root (docker-compose.yml, Dockerfile, .env.example, deploy/):
// there is no Docker engine on the build machines, so the files are parsed
// and checked against the code's configuration instead of run.
package deploy
