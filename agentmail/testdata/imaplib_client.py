"""An independent IMAP client for agentmail's end-to-end test: Python's imaplib.

Usage: imaplib_client.py HOST PORT USER APP_PASSWORD WEB_PASSWORD [CAFILE]
With CAFILE the session starts with STARTTLS and verifies the server against it.
Prints one JSON object per step; the Go test checks them.
"""
import imaplib
import json
import re
import ssl
import sys


def out(step, **kw):
    kw["step"] = step
    print(json.dumps(kw), flush=True)


def connect(host, port, cafile):
    c = imaplib.IMAP4(host, port, timeout=30)
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = False
        c.starttls(ssl_context=ctx)
    return c


def main():
    host, port, user, app_pw, web_pw = sys.argv[1:6]
    cafile = sys.argv[6] if len(sys.argv) > 6 else ""
    port = int(port)

    c = connect(host, port, cafile)
    try:
        c.login(user, web_pw)
        out("web_login", ok=True)
    except imaplib.IMAP4.error as e:
        out("web_login", ok=False, err=str(e))
    c.logout()

    c = connect(host, port, cafile)
    typ, _ = c.login(user, app_pw)
    out("login", ok=typ == "OK")

    typ, data = c.list()
    names = [re.search(rb'"/" (.*)$', d).group(1).decode().strip('"') for d in data]
    out("list", mailboxes=names)

    typ, data = c.select("support")
    validity = c.response("UIDVALIDITY")[1][0].decode()
    out("select", ok=typ == "OK", exists=int(data[0]), uidvalidity=int(validity))

    typ, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
    bodies = [d[1].decode("utf-8", "replace") for d in data if isinstance(d, tuple)]
    uids = [int(re.search(rb"UID (\d+)", d[0]).group(1)) for d in data if isinstance(d, tuple)]
    out("fetch", ok=typ == "OK", uids=uids, bodies=bodies)

    typ, data = c.search(None, "UNSEEN")
    out("search_unseen", ok=typ == "OK", seqs=[int(x) for x in data[0].split()])

    typ, data = c.fetch("1", "(BODY[TEXT])")
    out("fetch_text", ok=typ == "OK", text=[d[1].decode("utf-8", "replace") for d in data if isinstance(d, tuple)])

    typ, data = c.fetch("1", "(FLAGS)")
    out("flags", ok=typ == "OK", flags=data[0].decode())

    typ, data = c.select("support", readonly=True)  # EXAMINE
    try:
        typ, data = c.store("1", "-FLAGS", "(\\Seen)")
        out("store_examine", ok=typ == "OK", text=str(data))
    except imaplib.IMAP4.error as e:
        out("store_examine", ok=False, err=str(e))

    try:
        typ, data = c.append("support", None, None, b"From: x@example.com\r\nSubject: x\r\n\r\nx\r\n")
        out("append", ok=typ == "OK", text=str(data))
    except imaplib.IMAP4.error as e:
        out("append", ok=False, err=str(e))

    try:
        typ, data = c.create("Sent")
        out("create", ok=typ == "OK", text=str(data))
    except imaplib.IMAP4.error as e:
        out("create", ok=False, err=str(e))

    try:
        typ, data = c.select("billing")
        out("select_other", ok=typ == "OK", text=str(data))
    except imaplib.IMAP4.error as e:
        out("select_other", ok=False, err=str(e))

    c.logout()
    out("done", ok=True)


if __name__ == "__main__":
    main()
