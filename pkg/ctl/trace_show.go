package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
)

// Bounds of trace show, whatever the input: a log line longer than
// maxShowLine is skipped (counted), and at most maxShowSessions sessions get
// a short number (later ones are shown by their id).
const (
	maxShowLine     = 256 << 10
	maxShowSessions = 1 << 16
	maxShowField    = 40 // characters of the source column
)

func newTraceShow(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show [ID]",
		Short: "Print the records of a trace from the pods' logs (standard input) as a transcript",
		Long: `Read the daemons' logs on standard input (text or JSON, as kubectl logs --prefix or
journalctl print them) and print the records of trace ID (of every trace without ID),
one line each: time, pod, session number, and what happened. C: is what the client
(the worker, for a destination trace) sent, S: what the server answered. Connects that
got no session (refused, timed out, skipped after a failure) and reused pooled
connections are spelled out. Control characters from the peers are shown escaped.
Exit code 4 when the input holds no record of the trace.`,
		Example: `  kubectl logs -l app.kubernetes.io/name=mailfwd --prefix --tail=-1 | mailfwdctl trace show lab
  journalctl -u 'mailfwd-*' --since -1h | mailfwdctl trace show lab`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			n, long, err := showTrace(cmd.InOrStdin(), g.out, id)
			if err != nil {
				return err
			}
			if long > 0 {
				fmt.Fprintf(g.errOut, "mailfwdctl: %d input lines longer than %d bytes skipped\n", long, maxShowLine)
			}
			if n == 0 {
				what := "any trace"
				if id != "" {
					what = "trace " + id
				}
				return &ExitError{Code: ExitNotFound, Err: fmt.Errorf("no records of %s in the input (pipe the pods' logs in: kubectl logs -l app.kubernetes.io/name=mailfwd --prefix --tail=-1)", what)}
			}
			return nil
		},
	}
}

// showTrace prints the trace records of id (any when "") found in the log
// lines of in; it returns how many it printed and how many lines it
// skipped as too long.
func showTrace(in io.Reader, out io.Writer, id string) (printed, long int, err error) {
	br := bufio.NewReaderSize(in, 64<<10)
	bw := bufio.NewWriter(out)
	defer bw.Flush()
	sessions := map[string]int{}
	var line []byte
	skipping := false
	for {
		chunk, rerr := br.ReadSlice('\n')
		switch {
		case skipping:
		case len(line)+len(chunk) > maxShowLine:
			skipping, line = true, line[:0]
			long++
		default:
			line = append(line, chunk...)
		}
		if errors.Is(rerr, bufio.ErrBufferFull) {
			continue
		}
		if !skipping && len(line) > 0 {
			if rec, ok := parseTraceRecord(line); ok && (id == "" || rec["trace"] == id) {
				writeTraceRecord(bw, rec, sessions)
				printed++
			}
		}
		line, skipping = line[:0], false
		if rerr == io.EOF {
			return printed, long, nil
		}
		if rerr != nil {
			return printed, long, rerr
		}
	}
}

// parseTraceRecord reads one log line (slog text or JSON, after a prefix
// such as kubectl's "[pod/NAME/CONTAINER] " or journalctl's) and returns
// its fields when it is an SMTP trace record; "source" is the prefix.
func parseTraceRecord(line []byte) (map[string]string, bool) {
	s := strings.TrimRight(string(line), "\r\n")
	if !strings.Contains(s, "smtp trace") {
		return nil, false
	}
	var rec map[string]string
	var prefix string
	// slog's text form quotes a value with '"' in it, so `{"` starts JSON.
	j, t := strings.Index(s, `{"`), strings.Index(s, "time=")
	if j >= 0 && (t < 0 || j < t) {
		i := j
		prefix = s[:i]
		var m map[string]any
		if json.Unmarshal([]byte(s[i:]), &m) != nil {
			return nil, false
		}
		rec = make(map[string]string, len(m))
		for k, v := range m {
			switch v := v.(type) {
			case string:
				rec[k] = v
			case nil:
			default:
				b, _ := json.Marshal(v)
				rec[k] = string(b)
			}
		}
	} else if t >= 0 {
		i := t
		prefix = s[:i]
		var ok bool
		if rec, ok = parseLogfmt(s[i:]); !ok {
			return nil, false
		}
	} else {
		return nil, false
	}
	if !strings.HasPrefix(rec["msg"], "smtp trace") {
		return nil, false
	}
	rec["source"] = sourceOf(prefix, rec["component"])
	return rec, true
}

// parseLogfmt reads slog's text form: key=value pairs, values quoted as
// strconv.Quote does when they need it.
func parseLogfmt(s string) (map[string]string, bool) {
	rec := map[string]string{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			return nil, false
		}
		key := s[:eq]
		s = s[eq+1:]
		if strings.HasPrefix(s, `"`) {
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, false
			}
			v, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil, false
			}
			rec[key] = v
			s = s[end+1:]
			continue
		}
		end := strings.IndexByte(s, ' ')
		if end < 0 {
			end = len(s)
		}
		rec[key] = s[:end]
		s = s[end:]
	}
	return rec, true
}

// sourceOf names the process a record came from: the pod of kubectl's
// --prefix, the unit of journalctl's, else the component.
func sourceOf(prefix, component string) string {
	p := strings.TrimSpace(prefix)
	if strings.HasPrefix(p, "[pod/") && strings.HasSuffix(p, "]") {
		p = strings.TrimPrefix(strings.TrimSuffix(p, "]"), "[pod/")
		if i := strings.IndexByte(p, '/'); i >= 0 {
			p = p[:i]
		}
	} else if f := strings.Fields(p); len(f) > 0 {
		p = strings.TrimSuffix(f[len(f)-1], ":")
	}
	if p == "" {
		p = component
	}
	if p == "" {
		p = "-"
	}
	p = printable(p)
	if utf8.RuneCountInString(p) > maxShowField {
		p = string([]rune(p)[:maxShowField])
	}
	return p
}

func writeTraceRecord(w io.Writer, rec map[string]string, sessions map[string]int) {
	at := rec["time"]
	if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
		at = t.Format("15:04:05.000")
	}
	sess := "-"
	if id := rec["session"]; id != "" {
		n, ok := sessions[id]
		if !ok && len(sessions) < maxShowSessions {
			n = len(sessions) + 1
			sessions[id] = n
		}
		sess = "#" + strconv.Itoa(n)
		if n == 0 {
			sess = id
		}
	}
	fmt.Fprintf(w, "%s  %s  %s  %s\n", printable(at), rec["source"], printable(sess), printable(describeTraceRecord(rec)))
}

// describeTraceRecord is the human form of one record.
func describeTraceRecord(r map[string]string) string {
	peer := strings.TrimSpace(r["peer_name"] + " " + r["peer"])
	switch r["msg"] {
	case "smtp trace":
		who := "S"
		if r["from"] == "client" {
			who = "C"
		}
		return who + ": " + r["line"]
	case "smtp trace: session start":
		s := "session start, " + r["side"] + " " + peer
		if r["reused"] == "true" {
			s += ", over a pooled connection (earlier transactions on it, not recorded: " + r["transactions_before"] + ")"
		}
		if r["with_bodies"] == "true" {
			s += ", with message bodies"
		}
		return s
	case "smtp trace: session end":
		return fmt.Sprintf("session end: %s lines recorded, %s not recorded, %s body bytes redacted",
			r["lines"], r["lines_not_recorded"], r["body_bytes_redacted"])
	case "smtp trace: reusing a pooled connection":
		return "reusing the pooled connection: transaction " + r["transaction"]
	case "smtp trace: TLS established":
		return strings.TrimSpace("TLS established: " + r["tls_version"] + " " + r["cipher"] + " " + r["server_name"])
	case "smtp trace: connect failed":
		return "CONNECT FAILED to " + peer + ": " + r["err"]
	case "smtp trace: not connecting, the address failed a moment ago":
		return "NOT CONNECTING to " + peer + " until " + r["retry_after"] + ", it failed a moment ago: " + r["err"]
	case "smtp trace: connection given up":
		return "CONNECTION GIVEN UP: " + r["status"]
	}
	return strings.TrimPrefix(r["msg"], "smtp trace: ")
}

// printable escapes what a terminal would act on (peers' bytes reach the
// logs): control and other non-graphic characters, invalid UTF-8.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsGraphic(r) && r != ' ' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}
