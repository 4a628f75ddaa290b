package delivery

import (
	"testing"

	"github.com/emersion/go-smtp"
)

func TestReplyResults(t *testing.T) {
	tests := []struct {
		name string
		got  result
		want result
	}{
		{"ok with enhanced", okResult("2.0.0 Ok: queued as ABC"), result{250, "2.0.0", "Ok: queued as ABC"}},
		{"ok without enhanced", okResult("queued"), result{250, "2.0.0", "queued"}},
		{"ok multi-line", okResult("2.6.0 line one\nline two"), result{250, "2.6.0", "line one line two"}},
		{"ok number-like text", okResult("25.0 percent"), result{250, "2.0.0", "25.0 percent"}},
		{"reply with enhanced", replyResult(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}),
			result{550, "5.1.1", "no"}},
		{"reply without enhanced", replyResult(&smtp.SMTPError{Code: 451, Message: "later"}), result{451, "4.0.0", "later"}},
		{"reply NoEnhancedCode", replyResult(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.NoEnhancedCode, Message: "x"}),
			result{554, "5.0.0", "x"}},
		{"reply mismatched class", replyResult(&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{5, 0, 0}, Message: "x"}),
			result{421, "4.0.0", "x"}},
		{"reply malformed subject clamped", replyResult(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1234, 1}, Message: "x"}),
			result{550, "5.0.0", "x"}},
		{"reply malformed detail clamped", replyResult(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 10000}, Message: "x"}),
			result{451, "4.0.0", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %+v, want %+v", tt.got, tt.want)
			}
		})
	}
}

func TestStatusPredicates(t *testing.T) {
	tests := []struct {
		code                 int
		delivered, permanent bool
	}{
		{250, true, false}, {251, true, false}, {421, false, false}, {450, false, false},
		{550, false, true}, {554, false, true}, {0, false, false},
	}
	for _, tt := range tests {
		s := RcptStatus{Code: tt.code}
		if s.Delivered() != tt.delivered || s.Permanent() != tt.permanent {
			t.Errorf("code %d: Delivered %v Permanent %v", tt.code, s.Delivered(), s.Permanent())
		}
	}
}
