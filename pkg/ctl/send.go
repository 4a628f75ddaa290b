package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/config"
)

// newSend is sendmail -v for mailfwd: submit one message over SMTP and show
// the dialog.
func newSend(g *globals) *cobra.Command {
	var server, from, subject, bodyFile, helo string
	var to []string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "send --to ADDR [--to ADDR…] [--from ADDR] [--body-file FILE|-]",
		Short: "Submit a test message over SMTP and show the dialog (sendmail -v)",
		Example: `  mailfwdctl send --server 127.0.0.1:2525 --from me@example.com --to you@example.net
  echo "hello" | mailfwdctl send --to +4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs --body-file -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(to) == 0 {
				return usageError("at least one --to is required")
			}
			var body []byte
			switch bodyFile {
			case "":
				body = []byte("This is a test message sent by mailfwdctl.\r\n")
			case "-":
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return err
				}
				body = b
			default:
				b, err := os.ReadFile(bodyFile)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				body = b
			}
			msg := compose(from, to, subject, body)
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			var transcript io.Writer
			if !quiet {
				transcript = g.out
			}
			qid, err := send(ctx, server, helo, from, to, msg, transcript)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "queued as %s\n", qid)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "127.0.0.1:2525", "SMTP server host:port")
	f.StringVar(&from, "from", "postmaster@"+config.MailDomain(), "envelope sender (\"\" for the null sender)")
	f.StringArrayVar(&to, "to", nil, "recipient (repeatable)")
	f.StringVar(&subject, "subject", "mailfwd test message", "Subject: header")
	f.StringVar(&bodyFile, "body-file", "", "message text (a complete message if it starts with headers), - for stdin")
	f.StringVar(&helo, "helo", config.Hostname(), "EHLO name")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not print the SMTP dialog")
	return cmd
}

// compose adds From/To/Subject/Date/Message-ID headers unless body already
// starts with a header block.
func compose(from string, to []string, subject string, body []byte) []byte {
	body = bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	if looksLikeHeaders(body) {
		return body
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%d.mailfwdctl@%s>\r\n\r\n",
		from, "<"+strings.Join(to, ">, <")+">", subject, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), config.Hostname())
	b.Write(body)
	if !bytes.HasSuffix(body, []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func looksLikeHeaders(b []byte) bool {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	name, _, ok := bytes.Cut(line, []byte(":"))
	return ok && len(name) > 0 && !bytes.ContainsAny(name, " \t")
}

func send(ctx context.Context, server, helo, from string, to []string, msg []byte, transcript io.Writer) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w (is the ingress running? `make run` starts one on 127.0.0.1:2525)", server, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.DebugWriter = transcript
	if err := c.Hello(helo); err != nil {
		return "", rejected("EHLO", err)
	}
	opts := &smtp.MailOptions{}
	for _, r := range append([]string{from}, to...) {
		if hasNonASCII(r) {
			opts.UTF8 = true
		}
	}
	if hasNonASCII(string(msg)) {
		opts.Body = smtp.Body8BitMIME
	}
	if err := c.Mail(from, opts); err != nil {
		return "", rejected("MAIL FROM", err)
	}
	var refused []string
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			refused = append(refused, fmt.Sprintf("<%s>: %v", r, err))
		}
	}
	if len(refused) == len(to) {
		return "", &ExitError{Code: ExitRejected, Err: fmt.Errorf("every recipient refused: %s", strings.Join(refused, "; "))}
	}
	w, err := c.Data()
	if err != nil {
		return "", rejected("DATA", err)
	}
	if _, err := w.Write(msg); err != nil {
		return "", fmt.Errorf("sending data: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", rejected("end of DATA", err)
	}
	_ = c.Quit()
	qid := resp.StatusText
	if i := strings.LastIndex(qid, " "); i >= 0 {
		qid = qid[i+1:]
	}
	if len(refused) > 0 {
		return qid, &ExitError{Code: ExitRejected, Err: fmt.Errorf("queued as %s, but some recipients were refused: %s", qid, strings.Join(refused, "; "))}
	}
	return qid, nil
}

func rejected(stage string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &ExitError{Code: ExitRejected, Err: fmt.Errorf("%s refused: %d %d.%d.%d %s", stage, se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)}
	}
	return fmt.Errorf("%s: %w", stage, err)
}

func hasNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return true
		}
	}
	return false
}
