package health

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// shutdownGrace is how long open requests may take once ctx ends.
const shutdownGrace = 5 * time.Second

// Server serves a Monitor over HTTP: /healthz (the process is alive),
// /readyz (200 only while streaming and caught up), /stats (JSON),
// /metrics (Prometheus) and a status page at /.
type Server struct {
	// WebConfig, when set before Serve, is a web configuration file in the
	// format Prometheus exporters use (WEB_CONFIG_FILE): TLS and basic
	// authentication, served by prometheus/exporter-toolkit. "" serves
	// plain HTTP.
	WebConfig string

	mon *Monitor
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds addr (HTTP_ADDR) for mon. The error for an address that
// cannot be bound (a port in use) names HTTP_ADDR.
func Listen(addr string, mon *Monitor, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR %s: cannot listen (%w); set HTTP_ADDR to a free host:port, or stop what holds it", addr, err)
	}
	s := &Server{mon: mon, ln: ln, log: log.With("component", "http")}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Addr is the bound address, with the actual port when HTTP_ADDR asked
// for port 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends, then shuts down gracefully: it stops
// accepting and gives open requests shutdownGrace to finish.
func (s *Server) Serve(ctx context.Context) error {
	addr := s.ln.Addr().String()
	base, _ := BaseURL(addr)
	s.log.Info("http listening", "addr", addr, "status_page", base+"/")
	errc := make(chan error, 1)
	go func() {
		if s.WebConfig == "" {
			errc <- s.srv.Serve(s.ln)
			return
		}
		errc <- web.Serve(s.ln, s.srv, &web.FlagConfig{WebConfigFile: &s.WebConfig}, s.log)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve HTTP on %s: %w", s.ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shut down HTTP server: %w", err)
	}
	return nil
}

// Handler routes the endpoints.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /stats", s.stats)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.mon.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /{$}", s.page)
	return secureHeaders(mux)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	ok, why := ready(s.mon.Health())
	if !ok {
		plain(w, http.StatusServiceUnavailable, "not ready: "+why)
		return
	}
	plain(w, http.StatusOK, "ready")
}

func (s *Server) stats(w http.ResponseWriter, _ *http.Request) {
	body, err := json.MarshalIndent(s.mon.Stats(time.Now()), "", "  ")
	if err != nil {
		http.Error(w, "encode stats: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}

//go:embed page.html
var pageHTML []byte

// pageCSP allows the page exactly its own inline script and style (by
// hash) and requests to this server.
var pageCSP = "default-src 'none'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; " +
	"script-src " + inlineHash(pageHTML, "<script>", "</script>") + "; style-src " + inlineHash(pageHTML, "<style>", "</style>")

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", pageCSP)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(pageHTML)
}

// inlineHash is the CSP source for the content between start and end.
func inlineHash(doc []byte, start, end string) string {
	i := bytes.Index(doc, []byte(start))
	j := bytes.Index(doc, []byte(end))
	if i < 0 || j < i {
		panic("health: page.html lacks " + start)
	}
	sum := sha256.Sum256(doc[i+len(start) : j])
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func plain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}
