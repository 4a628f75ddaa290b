package ctl

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"slices"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mailfwd/mailfwd/pkg/events"
)

// kubeUser is who the API server says we are (SelfSubjectReview, Kubernetes
// ≥ 1.28), else the kubeconfig's user name for the context in use.
func kubeUser(ctx context.Context, cs coreClient, kf *kubeFlags) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil && r.Status.UserInfo.Username != "" {
		return r.Status.UserInfo.Username
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kf.kubeconfig
	raw, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kf.context}).RawConfig()
	if err == nil {
		name := kf.context
		if name == "" {
			name = raw.CurrentContext
		}
		if c := raw.Contexts[name]; c != nil && c.AuthInfo != "" {
			return "kubeconfig:" + c.AuthInfo
		}
	}
	return "unknown"
}

// localUser names the operating-system user, for writes to a local policy
// directory.
func localUser() string {
	if u, err := user.Current(); err == nil {
		return "local:" + u.Username
	}
	return "local:uid" + fmt.Sprint(os.Getuid())
}

// changedKeys lists the keys whose contents differ.
func changedKeys(before, after map[string][]byte) []string {
	var out []string
	for k, v := range after {
		if string(before[k]) != string(v) {
			out = append(out, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// auditPolicy logs a policy, user or DKIM write (one line on stderr) and,
// when a NATS URL is configured (--nats-url or MAILFWD_NATS_URL), publishes
// it as an audit event; a NATS that cannot be reached is a warning, the
// write stands.
func (g *globals) auditPolicy(ctx context.Context, action, actor, where string, keys []string, detail string) {
	ev := events.Event{Type: events.Audit, Time: time.Now().UTC(), Actor: actor, Action: action,
		Target: where + " keys=" + strings.Join(keys, ","), Matched: len(keys), Detail: detail}
	fmt.Fprintln(g.errOut, ev.Line())
	if !g.natsConfigured {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := g.connectQueue(ctx)
	if err != nil {
		fmt.Fprintf(g.errOut, "warning: the audit event was not published: %v\n", err)
		return
	}
	defer q.Close()
	p := events.NewPublisher(events.PublisherConfig{Source: "mailfwdctl"})
	if err := q.StartEvents(p, 0); err != nil {
		fmt.Fprintf(g.errOut, "warning: the audit event was not published: %v\n", err)
		return
	}
	p.Emit(ev)
	p.Close(ctx)
	if p.Dropped() > 0 {
		fmt.Fprintf(g.errOut, "warning: the audit event was not published (the event stream did not take it)\n")
	}
}

// actionOf names a command for the audit trail: "policy.set", "users.add".
func actionOf(cmd interface{ CommandPath() string }) string {
	p := strings.Fields(cmd.CommandPath())
	if len(p) > 1 {
		p = p[1:]
	}
	return strings.Join(p, ".")
}
