package ingress

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

// dkimSigning says whether this session's message may be signed at all,
// and for which From: addresses (nil: any with a key).
func (ss *session) dkimSigning() (allow func(addr string) bool, ok bool) {
	if ss.user != nil {
		return ss.user.MaySend, true
	}
	if containsAddr(ss.s.cfg.DKIMSignNetworks, ss.client.Addr) ||
		ss.s.cfg.DKIMSignRelayClients && ss.s.cfg.Policy.RelayClient(ss.client) {
		return nil, true
	}
	return nil, false
}
