package policy

import (
	"errors"
	"fmt"
	"github.com/mailfwd/mailfwd/pkg/route"
	"strings"
)

// maxReplyText bounds error texts so a reply line stays well under the
// 512-octet SMTP limit.
const maxReplyText = 400

// errSpec is a parsed error action: access "ERROR:...", legacy access
// "550 text", virtusertable "error:...".
type errSpec struct {
	Reply       Reply
	EnhExplicit bool // the enhanced status was written, not derived from the code
}

// namedStatus are sendmail's error mailer status names (virtusertable
// "error:nouser" and friends), with the reply each stands for.
var namedStatus = map[string]Reply{
	"nouser":      {550, "5.1.1", "User unknown"},
	"nohost":      {550, "5.1.2", "Host unknown"},
	"noperm":      {550, "5.7.1", "Permission denied"},
	"unavailable": {550, "5.0.0", "Service unavailable"},
	"tempfail":    {450, "4.0.0", "Try again later"},
}

// parseErrorSpec parses the part after "ERROR:" / "error:". Accepted forms:
//
//	5.7.1:text            code derived from the class (550 / 450)
//	5.7.1:550 text        sendmail's ERROR:D.S.N:XXX text
//	5.7.1:"550 text"
//	"550 text"            enhanced status derived (5.0.0 / 4.0.0)
//	550 5.7.1 text
//	nouser [550] [text]   only when named is true (virtusertable)
func parseErrorSpec(s string, named bool, defText string) (errSpec, error) {
	s = strings.TrimSpace(s)
	if named {
		name, rest := fields(s)
		if n, ok := namedStatus[strings.ToLower(name)]; ok {
			e := errSpec{Reply: n, EnhExplicit: true}
			rest, err := unquote(rest)
			if err != nil {
				return errSpec{}, err
			}
			code, rest := cutCode(rest)
			if code != 0 {
				if code/100 != n.Code/100 {
					return errSpec{}, fmt.Errorf("reply code %d does not match error:%s (%d)", code, name, n.Code)
				}
				e.Reply.Code = code
			}
			if enh, text := cutEnhancedWord(rest); enh != "" {
				if enh[0] != e.Reply.Enhanced[0] {
					return errSpec{}, fmt.Errorf("enhanced status %s does not match error:%s (%d)", enh, name, n.Code)
				}
				e.Reply.Enhanced, rest = enh, text
			}
			if rest != "" {
				e.Reply.Text = rest
			}
			return e, checkText(e.Reply.Text)
		}
	}
	if enh, rest, ok := strings.Cut(s, ":"); ok && route.ValidStatus(enh) {
		rest, err := unquote(strings.TrimSpace(rest))
		if err != nil {
			return errSpec{}, err
		}
		code, text := cutCode(rest)
		switch {
		case code == 0 && enh[0] == '5':
			code = 550
		case code == 0:
			code = 450
		case code/100 != int(enh[0]-'0'):
			return errSpec{}, fmt.Errorf("reply code %d does not match enhanced status %s", code, enh)
		}
		if text == "" {
			text = defText
		}
		return errSpec{Reply: Reply{Code: code, Enhanced: enh, Text: text}, EnhExplicit: true}, checkText(text)
	}
	u, err := unquote(s)
	if err != nil {
		return errSpec{}, err
	}
	code, rest := cutCode(u)
	if code == 0 {
		return errSpec{}, fmt.Errorf("%q has no reply code: write 550 text, \"550 5.7.1 text\" or 5.7.1:text", s)
	}
	e := errSpec{Reply: Reply{Code: code}}
	if enh, text := cutEnhancedWord(rest); enh != "" {
		if int(enh[0]-'0') != code/100 {
			return errSpec{}, fmt.Errorf("enhanced status %s does not match reply code %d", enh, code)
		}
		e.Reply.Enhanced, e.EnhExplicit, rest = enh, true, text
	} else {
		e.Reply.Enhanced = fmt.Sprintf("%d.0.0", code/100)
	}
	if rest == "" {
		rest = defText
	}
	e.Reply.Text = rest
	return e, checkText(rest)
}

// accessText is the canonical access-map form of the error.
func (e errSpec) accessText() string {
	if e.EnhExplicit {
		return fmt.Sprintf("ERROR:%s:%d %s", e.Reply.Enhanced, e.Reply.Code, e.Reply.Text)
	}
	return fmt.Sprintf("ERROR:%d %s", e.Reply.Code, e.Reply.Text)
}

func checkText(t string) error {
	if len(t) > maxReplyText {
		return fmt.Errorf("error text longer than %d characters", maxReplyText)
	}
	return nil
}

func unquote(s string) (string, error) {
	if !strings.HasPrefix(s, `"`) {
		return s, nil
	}
	if len(s) < 2 || !strings.HasSuffix(s, `"`) {
		return "", errors.New("unbalanced quote in error text")
	}
	return strings.TrimSpace(s[1 : len(s)-1]), nil
}

// cutCode splits a leading SMTP reply code 4xx/5xx followed by a blank or
// the end; code is 0 when s does not start with one.
func cutCode(s string) (code int, rest string) {
	if len(s) < 3 || (s[0] != '4' && s[0] != '5') || !isDigit(s[1]) || !isDigit(s[2]) {
		return 0, s
	}
	if len(s) > 3 && s[3] != ' ' && s[3] != '\t' {
		return 0, s
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), strings.TrimSpace(s[3:])
}

// cutEnhancedWord splits a leading "D.S.N" word followed by a blank or the end.
func cutEnhancedWord(s string) (enh, rest string) {
	w, r := fields(s)
	if !route.ValidStatus(w) {
		return "", s
	}
	return w, r
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
