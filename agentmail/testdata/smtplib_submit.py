"""An independent submission client for agentmail's end-to-end test: Python's smtplib.

Usage: smtplib_submit.py HOST PORT USER PASSWORD FROM TO MESSAGE_FILE [CAFILE]
With CAFILE the session uses STARTTLS and verifies the server against it first.
Prints one JSON object: {"ok": bool, "code": int, "error": str, "auth_offered": bool}.
"""
import json
import smtplib
import ssl
import sys


def main():
    host, port, user, password, mail_from, rcpt, path = sys.argv[1:8]
    cafile = sys.argv[8] if len(sys.argv) > 8 else ""
    with open(path, "rb") as f:
        msg = f.read()
    res = {"ok": False, "code": 0, "error": "", "auth_offered": False}
    s = smtplib.SMTP(host, int(port), local_hostname="client.example.com", timeout=30)
    try:
        s.ehlo()
        res["auth_offered_before_tls"] = s.has_extn("auth")
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.check_hostname = False
            s.starttls(context=ctx)
            s.ehlo()
        res["auth_offered"] = s.has_extn("auth")
        s.login(user, password)  # smtplib picks AUTH PLAIN from what the server offers
        s.sendmail(mail_from, [rcpt], msg)
        res["ok"] = True
    except smtplib.SMTPResponseException as e:
        res["code"], res["error"] = e.smtp_code, e.smtp_error.decode("utf-8", "replace")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        res["code"], res["error"] = code, text.decode("utf-8", "replace")
    except smtplib.SMTPException as e:
        res["error"] = str(e)
    finally:
        try:
            s.quit()
        except Exception:
            pass
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
