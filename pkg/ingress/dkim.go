package ingress

import "github.com/mailfwd/mailfwd/pkg/dkim"

// DKIM signing is for mail the ingress can vouch for (issue 19 item 1; the
// model is OpenDKIM's InternalHosts and SigningTable, with SMTP AUTH users
// as its authenticated clients):
//
//   - a session authenticated by SMTP AUTH: signed when its user may send
//     as every From: address (smtpauth.User.MaySend, the users file's
//     senders), whatever network it comes from;
//   - otherwise a client in Config.DKIMSignNetworks, or, with
//     Config.DKIMSignRelayClients, a client the policy lets relay anywhere
//     by itself (Policy.RelayClient): any From: domain with a key;
//   - nobody else. A client that may only send to To: RELAY domains (mail
//     coming in from elsewhere) is never signed.
//
// The key is the From: domain's (dkim.Keys.For); a message with more than
// one From: field is not signed (dkim.Signer).

// dkimSigning says whether this session's message is to be signed with
// keys (none: never), and for which From: addresses (nil: any with a key).
func (ss *session) dkimSigning(keys *dkim.Keys) (allow func(addr string) bool, ok bool) {
	switch {
	case keys.Len() == 0:
		return nil, false
	case ss.user != nil:
		return ss.user.MaySend, true
	case containsAddr(ss.s.cfg.DKIMSignNetworks, ss.client.Addr),
		ss.s.cfg.DKIMSignRelayClients && ss.s.cfg.Policy.RelayClient(ss.client):
		return nil, true
	}
	ss.s.log.Debug(ss.qid+": not DKIM-signed: the client is neither authenticated nor in --dkim-signing-networks", "queue_id", ss.qid, "client", ss.client.Addr)
	return nil, false
}
