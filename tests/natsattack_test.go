package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// quickstartPublishAllow is what auth.conf lets user publish to.
func quickstartPublishAllow(t testing.TB, user string) []string {
	t.Helper()
	for k, v := range quickstartPasswords {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(quickstartAuthConf(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte("include ./auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range opts.Users {
		if u.Username == user {
			if u.Permissions == nil || u.Permissions.Publish == nil {
				t.Fatalf("user %s may publish anywhere", user)
			}
			return u.Permissions.Publish.Allow
		}
	}
	t.Fatalf("no user %s in auth.conf", user)
	return nil
}

// storedMsg is one message of a stream as the admin reads it.
type storedMsg struct {
	Subject string
	Data    string
	KVOp    string
}

// snapshotStreams reads every message of every stream (as the admin).
func snapshotStreams(t testing.TB, js jetstream.JetStream) map[string]map[uint64]storedMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := map[string]map[uint64]storedMsg{}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		msgs := map[uint64]storedMsg{}
		for seq := uint64(1); ; {
			raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
			if err != nil {
				break
			}
			msgs[raw.Sequence] = storedMsg{Subject: raw.Subject, Data: string(raw.Data), KVOp: raw.Header.Get("KV-Operation")}
			seq = raw.Sequence + 1
		}
		out[name] = msgs
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// concreteSubject turns a publish permission into a subject to publish on.
func concreteSubject(pattern string) string {
	toks := strings.Split(pattern, ".")
	for i, tk := range toks {
		switch tk {
		case ">":
			toks[i] = "attack.zz"
		case "*":
			toks[i] = "zz"
		}
	}
	return strings.Join(toks, ".")
}

// TestNATSQuickstartDaemonsCannotDestroyMail: with the quickstart's
// auth.conf, the ingress and worker users try every header and API that
// removes, rolls up or multiplies stored messages (Nats-Rollup all and sub,
// KV purge markers, Nats-TTL, Nats-Schedule with and without a rollup,
// Nats-Schedule-Next purge, the purge, delete and update APIs) on every
// subject they may publish to and on every queued message's subject, and
// plain publishes and KV delete markers on every queued message's subject
// outside their grants; the queue (every stream, every message, byte for
// byte) is the same afterwards. docs/nats-security.md cites it.
func TestNATSQuickstartDaemonsCannotDestroyMail(t *testing.T) {
	url, _ := startQuickstartNATS(t)
	if out, err := runCtl(t, url, "bootstrap"); err != nil {
		t.Fatalf("mailfwdctl bootstrap: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := queue.Connect(ctx, queue.Config{URL: url, User: ctlUser, Password: password(ctlUser)})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	_, adminJS, _ := connectAs(t, url, ctlUser)

	// Mail in every state, and the refs of a multi-domain message.
	env := func(qid, domain string, parts int) *envelope.Envelope {
		return &envelope.Envelope{QueueID: qid, From: "a@client.test", Domain: domain, BodyKey: "body-" + qid,
			Recipients: []envelope.Recipient{{Addr: "x@" + domain}}, Arrived: time.Now().UTC(), Parts: parts, Size: 10}
	}
	if err := admin.Enqueue(ctx, []*envelope.Envelope{env("QREADY", "ready.victim.test", 1)}); err != nil {
		t.Fatal(err)
	}
	multi := "QMULTI"
	if err := admin.Enqueue(ctx, []*envelope.Envelope{env(multi, "a.victim.test", 2), env(multi, "b.victim.test", 2)}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Defer(ctx, env("QDEFER", "deferred.victim.test", 1), time.Now().Add(time.Hour), "v"); err != nil {
		t.Fatal(err)
	}
	if err := admin.MoveToHeld(ctx, env("QHELD", "held.victim.test", 1), "v"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Fail(ctx, env("QFAIL", "failed.victim.test", 1), "550 5.1.1 gone", "v"); err != nil {
		t.Fatal(err)
	}
	refs, err := adminJS.KeyValue(ctx, "MAIL_REFS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refs.Put(ctx, multi, []byte(`["a.victim.test","b.victim.test"]`)); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetHold(ctx, "hold.victim.test", "victim"); err != nil {
		t.Fatal(err)
	}

	before := snapshotStreams(t, adminJS)
	var victims []string
	streamOf := map[string]string{}
	for name, msgs := range before {
		for _, m := range msgs {
			victims = append(victims, m.Subject)
			streamOf[m.Subject] = name
		}
	}
	slices.Sort(victims)
	victims = slices.Compact(victims)
	if len(victims) < 7 {
		t.Fatalf("victims set up: %v", victims)
	}

	var accepted []string
	try := func(nc *nats.Conn, user, subj string, hdr nats.Header, what string) {
		m := nats.NewMsg(subj)
		m.Data = []byte(`{"qid":"ATTACK","domain":"attack.test","rcpts":[{"addr":"x@attack.test"}]}`)
		for k, vs := range hdr {
			m.Header[k] = vs
		}
		resp, err := nc.RequestMsg(m, 500*time.Millisecond)
		if err != nil {
			return // refused by permissions (no answer) or nobody listening
		}
		var ack struct {
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
			Stream string `json:"stream"`
		}
		if json.Unmarshal(resp.Data, &ack) == nil && ack.Error == nil && ack.Stream != "" {
			accepted = append(accepted, fmt.Sprintf("%s: %s on %s (stream %s)", user, what, subj, ack.Stream))
		}
	}
	api := func(nc *nats.Conn, user, subj string, body any) {
		b, _ := json.Marshal(body)
		resp, err := nc.Request(subj, b, 300*time.Millisecond)
		if err != nil {
			return
		}
		var r struct {
			Error *struct{} `json:"error"`
		}
		if json.Unmarshal(resp.Data, &r) == nil && r.Error == nil {
			accepted = append(accepted, fmt.Sprintf("%s: API %s %s", user, subj, b))
		}
	}
	at := time.Now().UTC().Format(time.RFC3339)
	for _, user := range []string{ingressUser, workerUser} {
		nc, _, _ := connectAs(t, url, user)
		var subjects []string
		for _, p := range quickstartPublishAllow(t, user) {
			if strings.HasPrefix(p, "$JS.API.") || strings.HasPrefix(p, "$JS.ACK.") || strings.HasPrefix(p, "$JS.FC.") {
				continue
			}
			subjects = append(subjects, concreteSubject(p))
			for _, v := range victims {
				if server.SubjectMatchesFilter(v, p) {
					subjects = append(subjects, v)
				}
			}
		}
		slices.Sort(subjects)
		subjects = slices.Compact(subjects)
		if len(subjects) == 0 {
			t.Fatalf("%s may publish to no stream subject", user)
		}
		for _, s := range subjects {
			try(nc, user, s, nats.Header{"Nats-Rollup": {"all"}}, "Nats-Rollup: all")
			try(nc, user, s, nats.Header{"Nats-Rollup": {"sub"}}, "Nats-Rollup: sub")
			try(nc, user, s, nats.Header{"KV-Operation": {"PURGE"}, "Nats-Rollup": {"sub"}}, "KV purge")
			if !strings.HasPrefix(s, "$KV."+shaping.BucketName+".") && !strings.HasPrefix(s, "$KV."+shaping.QuotaBucketName+".") {
				// The workers write the shaping state's keys with TTLs by
				// design (slot leases, suspensions), the ingress the sender
				// quotas' GCRA values; neither bucket holds mail.
				try(nc, user, s, nats.Header{"Nats-TTL": {"1s"}}, "Nats-TTL")
			}
			for _, target := range append([]string{concreteSubject("mail.ready.>")}, victims...) {
				if target == s {
					continue
				}
				try(nc, user, s, nats.Header{"Nats-Schedule": {"@every 1s"}, "Nats-Schedule-Target": {target}}, "Nats-Schedule @every 1s → "+target)
				try(nc, user, s, nats.Header{"Nats-Schedule": {"@at " + at}, "Nats-Schedule-Target": {target}, "Nats-Schedule-Rollup": {"sub"}},
					"Nats-Schedule @at now with Nats-Schedule-Rollup: sub → "+target)
				try(nc, user, s, nats.Header{"Nats-Schedule-Next": {"purge"}, "Nats-Scheduler": {target}}, "Nats-Schedule-Next: purge of "+target)
			}
		}
		// Subjects outside the user's grants (the refs and holds buckets for
		// the ingress, the holds for the workers, held and failed mail for
		// the ingress): a plain publish, a KV delete marker, must not land.
		allow := quickstartPublishAllow(t, user)
		for _, v := range victims {
			if slices.ContainsFunc(allow, func(p string) bool { return server.SubjectMatchesFilter(v, p) }) {
				continue
			}
			try(nc, user, v, nil, "plain publish outside the grants")
			try(nc, user, v, nats.Header{"KV-Operation": {"DEL"}}, "KV delete marker outside the grants")
		}
		for name, msgs := range before {
			api(nc, user, "$JS.API.STREAM.PURGE."+name, map[string]any{})
			for seq, m := range msgs {
				api(nc, user, "$JS.API.STREAM.PURGE."+name, map[string]any{"filter": m.Subject})
				api(nc, user, "$JS.API.STREAM.MSG.DELETE."+name, map[string]any{"seq": seq})
				break
			}
			api(nc, user, "$JS.API.STREAM.UPDATE."+name, map[string]any{"name": name, "allow_rollup_hdrs": true})
		}
	}
	// A schedule that got in fires within a second; give repeats time to multiply.
	time.Sleep(2500 * time.Millisecond)
	after := snapshotStreams(t, adminJS)

	for _, a := range accepted {
		t.Errorf("accepted: %s", a)
	}
	for name, msgs := range before {
		for seq, m := range msgs {
			got, ok := after[name][seq]
			switch {
			case !ok:
				t.Errorf("stream %s lost message %d (%s)", name, seq, m.Subject)
			case got != m:
				t.Errorf("stream %s message %d changed: %+v, was %+v", name, seq, got, m)
			}
		}
		if n, was := len(after[name]), len(msgs); n != was && name != "KV_"+shaping.BucketName && name != "KV_"+shaping.QuotaBucketName {
			t.Errorf("stream %s has %d messages after the attacks, had %d", name, n, was)
		}
	}
	// The queue as mailfwdctl sees it: the same envelopes.
	out, err := runCtl(t, url, "queue", "stats")
	if err != nil {
		t.Fatalf("queue stats: %v\n%s", err, out)
	}
	t.Logf("after the attacks:\n%s", out)
}
