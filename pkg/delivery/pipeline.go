package delivery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// maxPipelinedRcpts bounds the RCPTs of one pipelined group: the replies
// are read only once the whole group (and, with BDAT, the body) is written,
// so they must fit in the socket buffers between the two sides (500
// replies of up to ~100 bytes, plus one per 64 KiB chunk, stay well under
// Linux's default 128 KiB receive buffer); a message with more recipients
// goes one command per round trip. The ingress's --max-recipients default
// is 100.
const maxPipelinedRcpts = 500

// pipelining reports whether transactions on cn are pipelined.
func (c *Client) pipelining(cn *conn) bool {
	ok, _ := cn.sc.Extension("PIPELINING")
	return ok && !c.cfg.NoPipelining
}

// chunking reports whether bodies on cn go as BDAT chunks (only together
// with pipelining: MAIL, the RCPTs and the body in one round trip).
func (c *Client) chunking(cn *conn) bool {
	ok, _ := cn.sc.Extension("CHUNKING")
	return ok && !c.cfg.NoChunking
}

// transactPipelined runs the transaction as one group of commands (RFC
// 2920): MAIL, every RCPT and DATA in one write, then the body after the
// 354; or, when the remote offers CHUNKING, MAIL, the RCPTs and the body
// as BDAT chunks, the replies read once the last chunk is sent.
//
// A recipient's outcome is taken from its own reply only while the replies
// can be attributed: after a lost connection or a malformed reply the
// recipients whose replies were not read are deferred (4.4.2); when the
// remote sends replies that do not fit the group (more replies than
// commands, a 2xx to DATA, a 3xx to RCPT), none of the replies can be
// trusted and every recipient is deferred; the connection is dropped in
// both cases.
func (c *Client) transactPipelined(ctx context.Context, cn *conn, t *tx, opts *smtp.MailOptions) (reusable, stale bool) {
	msg := t.msg
	var send []int // the recipients sent, by index in msg.Recipients
	to := make([]string, 0, len(msg.Recipients))
	for i, rcpt := range msg.Recipients {
		if strings.ContainsAny(rcpt, "\r\n") {
			t.set(i, invalidRcpt)
			continue
		}
		send = append(send, i)
		to = append(to, rcpt)
	}
	if len(send) == 0 {
		return true, false
	}
	// MAIL, the RCPTs and DATA (or the BDAT chunks) are answered after one
	// write: each reply gets the budget of MaxReplyBytes.
	cn.sc.ReplyStart = cn.wire.renew
	defer func() { cn.sc.ReplyStart = nil }()
	if c.chunking(cn) {
		return c.transactBdat(ctx, cn, t, opts, send, to)
	}
	r, w, err := cn.sc.MailPipelined(msg.From, opts, to)
	if done, reusable, stale := c.applyReplies(ctx, cn, t, send, r, err, "DATA"); done {
		return reusable, stale
	}
	return c.sendData(ctx, cn, t, w), false
}

// transactBdat sends the body as BDAT chunks pipelined with MAIL and the
// RCPTs; the remote reads and discards the chunks when it refused MAIL or
// every RCPT. DataStarted is called before anything is sent.
func (c *Client) transactBdat(ctx context.Context, cn *conn, t *tx, opts *smtp.MailOptions, send []int, to []string) (reusable, stale bool) {
	name, msg := cn.hop.Name, t.msg
	bw, err := cn.sc.MailBdat(msg.From, opts, to)
	if err != nil {
		t.setRest(lostResult(ctx, name, "MAIL FROM", err))
		return false, false
	}
	if msg.DataStarted != nil {
		msg.DataStarted()
	}
	deadline := time.Now().Add(c.cfg.DataTimeout)
	cn.sc.SubmissionTimeout = c.cfg.DataTimeout
	defer func() { cn.sc.SubmissionTimeout = c.cfg.DataTimeout }()
	rc, res, ok := c.writeBody(ctx, name, msg, bw)
	if rc != nil {
		defer rc.Close()
	}
	if !ok {
		t.setRest(res)
		return false, false
	}
	cn.sc.SubmissionTimeout = max(time.Until(deadline), time.Millisecond)
	r, err := bw.Close()
	if done, reusable, stale := c.applyReplies(ctx, cn, t, send, r, err, "end of BDAT"); done {
		return reusable, stale
	}
	res = okResult(r.Text)
	t.setRest(res)
	t.out.Reply = res.Text
	return true, false
}

// applyReplies records the replies of a pipelined group. done reports that
// the transaction is over (the caller returns reusable and stale); when it
// is not, MAIL and at least one RCPT were accepted and so was the body's
// command (DATA's 354, or the last BDAT chunk's 250).
func (c *Client) applyReplies(ctx context.Context, cn *conn, t *tx, send []int, r *smtp.PipelineReplies, err error, dataStep string) (done, reusable, stale bool) {
	name := cn.hop.Name
	if r == nil {
		r = &smtp.PipelineReplies{}
	}
	if errors.Is(err, smtp.ErrPipelineReply) {
		// Which reply belongs to which command is unknown: no outcome
		// read is trusted, every recipient sent is deferred.
		res := result{Enhanced: "4.5.0", Text: fmt.Sprintf("Protocol error with %s: %v; connection dropped.", name, err)}
		for _, i := range send {
			t.set(i, res)
		}
		return true, false, false
	}
	if r.Read == 0 && err != nil {
		res, _ := stepError(ctx, name, "MAIL FROM", err)
		if cn.reused && ctx.Err() == nil {
			cn.msgs--
			return true, false, true
		}
		t.setRest(res)
		return true, false, false
	}
	if r.Mail != nil {
		res, _ := stepError(ctx, name, "MAIL FROM", r.Mail)
		t.setRest(res)
		// No transaction was opened: nothing to reset.
		return true, err == nil && res.Code != 421, false
	}
	var closing *result // a 421: the remote closes the connection
	accepted := 0
	for k, e := range r.Rcpt {
		if e == nil {
			accepted++
			continue
		}
		res, _ := stepError(ctx, name, "RCPT TO", e)
		t.set(send[k], res)
		if res.Code == 421 && closing == nil {
			closing = &res
		}
	}
	if err != nil {
		// The exchange broke off: the recipients whose replies were read
		// keep them; the others (and the accepted ones) are deferred.
		step := "RCPT TO"
		if len(r.Rcpt) == len(send) {
			step = dataStep
		}
		if closing != nil {
			t.setRest(*closing)
		} else {
			t.setRest(lostResult(ctx, name, step, err))
		}
		return true, false, false
	}
	if closing != nil {
		t.setRest(*closing)
		return true, false, false
	}
	if r.Data != nil {
		res, _ := stepError(ctx, name, dataStep, r.Data)
		if accepted > 0 {
			t.setRest(res)
			t.out.Reply = res.Text
		}
		return true, res.Code != 421 && cn.reset(c.cfg.HeloName) == nil, false
	}
	return false, false, false
}
