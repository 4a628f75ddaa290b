// Package control answers operators' questions to running pods over NATS
// request/reply on the control subject, mailfwd.control.<command>: every
// ingress and worker subscribes (no queue group), so one request gathers a
// reply from each pod within a short window. Today's command is "version";
// the package also holds the build information every binary reports.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Subject prefix of the control commands; pods subscribe to Prefix + ".>".
const Prefix = "mailfwd.control"

// VersionSubject asks every pod for its Build.
const VersionSubject = Prefix + ".version"

// Version is the release, set at link time:
//
//	go build -ldflags "-X github.com/mailfwd/mailfwd/pkg/control.Version=v1.2.3"
//
// (make build and make image do). Without it the module version from the
// build information is used, "(devel)" for a plain go build.
var Version = ""

// FormatRawInline is the envelope form whose inline body follows the JSON
// as raw bytes (pkg/envelope). A worker that lists it in Build.Formats
// reads it; workers of earlier releases do not list anything, and drop such
// an envelope as undecodable, so writers use it only when every worker
// lists it (queue.WatchEnvelopeReaders).
const FormatRawInline = "raw-inline"

// Build is what a binary says about itself.
type Build struct {
	Component string    `json:"component"`
	Version   string    `json:"version"`
	Revision  string    `json:"revision,omitempty"`
	Modified  bool      `json:"modified,omitempty"`
	BuildTime string    `json:"build_time,omitempty"`
	GoVersion string    `json:"go_version"`
	Platform  string    `json:"platform"`
	Host      string    `json:"host,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	// Formats lists the envelope forms this binary reads besides the
	// base64 JSON every release reads.
	Formats []string `json:"envelope_formats,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// Local is this process's Build.
func Local(component string) Build {
	b := Build{Component: component, Version: Version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		Formats: []string{FormatRawInline}}
	if info, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.BuildTime = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	b.Host = podName()
	return b
}

func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

// Config says how a pod joins the control subject.
type Config struct {
	URL       string        // NATS URL(s), as the queue's
	Auth      []nats.Option // credentials, as the queue's (queue.Config.AuthOptions)
	Component string        // "ingress", "worker"
	Logger    *slog.Logger
}

// Serve answers control requests until ctx ends. It has its own NATS
// connection (reconnecting forever, like the queue's), so a control
// request never waits behind mail traffic, and a failure here never stops
// the pod: it is logged and the pod goes on without answering.
func Serve(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "control")
	self := Local("mailfwd-" + cfg.Component)
	self.Started = time.Now().UTC()
	opts := []nats.Option{
		nats.Name("mailfwd-" + cfg.Component + " control"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("control subject: NATS error (mailfwdctl version will not see this pod)", "err", err, "subject", Prefix+".>")
		}),
	}
	opts = append(opts, cfg.Auth...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		log.Warn("control subject: cannot connect; this pod will not answer mailfwdctl version", "err", err)
		<-ctx.Done()
		return nil
	}
	defer nc.Close()
	sub, err := nc.Subscribe(Prefix+".>", func(m *nats.Msg) { respond(m, self) })
	if err != nil {
		log.Warn("control subject: cannot subscribe; this pod will not answer mailfwdctl version", "err", err)
		<-ctx.Done()
		return nil
	}
	// A flood of requests is dropped by the subscription's pending limits
	// (slow consumer), never queued without bound.
	_ = sub.SetPendingLimits(256, 1<<20)
	<-ctx.Done()
	_ = sub.Unsubscribe()
	return nil
}

func respond(m *nats.Msg, self Build) {
	if m.Reply == "" {
		return
	}
	var v any
	switch strings.TrimPrefix(m.Subject, Prefix+".") {
	case "version":
		v = self
	default:
		v = Build{Component: self.Component, Host: self.Host, Error: fmt.Sprintf("unknown control command %q", m.Subject)}
	}
	b, _ := json.Marshal(v)
	_ = m.Respond(b)
}

// DefaultMaxReplies is the default bound on the replies Gather keeps.
const DefaultMaxReplies = 10000

// maxReply bounds the size of one reply Gather decodes; a Build is a few
// hundred bytes.
const maxReply = 64 << 10

// Gather sends one request on subject and collects the replies that arrive
// within wait, at most maxReplies (DefaultMaxReplies when 0). Oversized or
// undecodable replies are kept as entries with Error set, so a broken pod
// still shows up.
func Gather(ctx context.Context, nc *nats.Conn, subject string, wait time.Duration, maxReplies int) ([]Build, error) {
	if maxReplies <= 0 {
		maxReplies = DefaultMaxReplies
	}
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, fmt.Errorf("control: subscribe %s: %w", inbox, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, fmt.Errorf("control: request %s: %w", subject, err)
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, fmt.Errorf("control: request %s: %w", subject, err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	out := []Build{}
	for len(out) < maxReplies {
		select {
		case m := <-ch:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				// "No responders": no pod subscribes (none running, or none
				// allowed to subscribe to the control subject).
				return out, nil
			}
			var b Build
			switch {
			case len(m.Data) > maxReply:
				b.Error = fmt.Sprintf("reply of %d bytes ignored (more than %d)", len(m.Data), maxReply)
			case json.Unmarshal(m.Data, &b) != nil:
				b.Error = "undecodable reply"
			}
			out = append(out, b)
		case <-timer.C:
			return out, nil
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return out, nil
			}
			return out, ctx.Err()
		}
	}
	return out, nil
}
