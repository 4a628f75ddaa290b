#!/usr/bin/env python3
"""Sends one message with Python's smtplib, as an application would.

Used by tests/clientlib_test.go (issue 19 item 3). Arguments come as JSON on
stdin: host, port, cafile, user, password, from, to (a list), message (the
whole message as text). STARTTLS and AUTH when user is set. Recipients the
server refuses with 4xx (the recipient limit) are sent again in a second
transaction, as nodemailer does. Prints JSON: the refused dict of each
transaction.
"""
import json
import smtplib
import ssl
import sys

a = json.load(sys.stdin)
out = {"transactions": []}
rcpts = a["to"]
with smtplib.SMTP(a["host"], a["port"], local_hostname="client.test", timeout=60) as s:
    if a.get("user"):
        ctx = ssl.create_default_context(cafile=a["cafile"])
        ctx.check_hostname = False  # the certificate names mx.mailfwd.test, the test dials 127.0.0.1
        s.starttls(context=ctx)
        s.login(a["user"], a["password"])
    while rcpts:
        refused = s.sendmail(a["from"], rcpts, a["message"].encode("utf-8"))
        out["transactions"].append({"sent": len(rcpts), "refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}})
        again = [r for r, (code, _) in refused.items() if 400 <= code < 500]
        if len(again) == len(rcpts):
            break
        rcpts = again
json.dump(out, sys.stdout)
