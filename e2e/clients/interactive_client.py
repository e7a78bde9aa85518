"""A long-lived XMPP client on a real server, driven by xmppfed's tests.

Reads one JSON command per line on stdin and prints one JSON event per line
on stdout, so a test can act and wait for what the gateway does:
  {"cmd": "subscribe" | "unsubscribe", "to": JID}
  {"cmd": "presence", "show": "away"|"dnd"|"xa"|"chat"|"", "status": TEXT}
  {"cmd": "unavailable"}
  {"cmd": "vcard", "jid": JID}          -> {"event": "vcard", ...} or {"event": "error", ...}
  {"cmd": "set_vcard", "fn": TEXT, "title": TEXT, "photo_type": MIME, "photo_b64": B64}
  {"cmd": "message", "to": JID, "body": TEXT, "id": ID}   (with an XEP-0184
      receipt request and an XEP-0359 origin-id equal to the id)
  {"cmd": "burst", "to": JID, "count": N, "prefix": P}   (N such messages, ids P0…)
  {"cmd": "chat_state", "to": JID, "state": "composing"|"paused"|"active"|"inactive"|"gone"}
      (an XEP-0085 standalone notification)
  {"cmd": "resend_unacked"}   (every message sent without a receipt yet, in order)
  {"cmd": "quit"}
Events: online, presence (every presence stanza received, with its type,
show, status and XEP-0153 photo hash), message (every message stanza: type,
id, body, origin-id, receipt it carries, XEP-0085 chat state, error
condition and text), vcard,
vcard_set, sent, resent, error.
Subscription requests to this user are approved (slixmpp's auto_authorize).
"""
import asyncio
import base64
import json
import ssl
import sys
import threading
import time

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from xml.etree import ElementTree as ET

UPDATE_NS = "vcard-temp:x:update"
RECEIPTS_NS = "urn:xmpp:receipts"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
SID_NS = "urn:xmpp:sid:0"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def emit(obj):
    print(json.dumps(obj), flush=True)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # xep_0184 answers receipt requests (as most clients do).
        for plugin in ("xep_0030", "xep_0054", "xep_0184"):
            self.register_plugin(plugin)
        self.auto_authorize = True
        self.auto_subscribe = False
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("presence", self.on_presence)
        self.register_handler(Callback("any message", MatchXPath("{jabber:client}message"), self.on_message))
        # id -> (to, body), in the order sent; ids acknowledged by a receipt.
        self.sent = {}
        self.acked = set()
        self.sent_at = {}
        self.add_event_handler("connection_failed", lambda *a: emit({"event": "error", "error": "connection failed"}))
        self.add_event_handler("failed_auth", lambda *a: emit({"event": "error", "error": "login failed"}))

    def on_presence(self, p):
        photo = p.xml.find(f"{{{UPDATE_NS}}}x/{{{UPDATE_NS}}}photo")
        emit({
            "event": "presence",
            "from": str(p["from"]),
            "type": p["type"],
            "show": p["show"],
            "status": p["status"],
            "photo": None if photo is None else (photo.text or ""),
        })

    def on_message(self, m):
        x = m.xml
        received = x.find(f"{{{RECEIPTS_NS}}}received")
        origin = x.find(f"{{{SID_NS}}}origin-id")
        error = x.find("{jabber:client}error")
        condition = text = None
        if error is not None:
            for child in error:
                if child.tag.startswith(f"{{{STANZAS_NS}}}"):
                    name = child.tag.split("}")[1]
                    if name == "text":
                        text = child.text
                    else:
                        condition = name
        latency = None
        if received is not None:
            rid = received.get("id")
            self.acked.add(rid)
            if rid in self.sent_at:
                latency = (time.monotonic() - self.sent_at.pop(rid)) * 1000
        body = x.find("{jabber:client}body")
        state = next((c.tag.split("}")[1] for c in x if c.tag.startswith(f"{{{CHATSTATES_NS}}}")), None)
        emit({
            "event": "message",
            "from": str(m["from"]),
            "type": m["type"],
            "id": m["id"],
            "body": None if body is None else body.text,
            "origin_id": None if origin is None else origin.get("id"),
            "received": None if received is None else received.get("id"),
            "chat_state": state,
            "error": condition,
            "error_text": text,
            "latency_ms": latency,
        })

    def send_chat(self, to, body, mid):
        m = self.make_message(mto=to, mbody=body, mtype="chat")
        m["id"] = mid
        m.xml.append(ET.Element(f"{{{RECEIPTS_NS}}}request"))
        m.xml.append(ET.Element(f"{{{SID_NS}}}origin-id", {"id": mid}))
        self.sent[mid] = (to, body)
        self.sent_at.setdefault(mid, time.monotonic())
        m.send()

    async def start(self, _event):
        self.send_presence()
        await self.get_roster()
        emit({"event": "online"})

    async def run(self, cmd):
        try:
            await self.run_inner(cmd)
        except (IqError, IqTimeout) as e:
            emit({"event": "error", "cmd": cmd["cmd"], "error": f"{type(e).__name__}",
                  "condition": e.iq["error"]["condition"] if isinstance(e, IqError) else "timeout"})

    async def run_inner(self, cmd):
        c = cmd["cmd"]
        if c in ("subscribe", "unsubscribe"):
            self.send_presence(pto=cmd["to"], ptype=c)
        elif c == "presence":
            self.send_presence(pshow=cmd.get("show") or None, pstatus=cmd.get("status") or None)
        elif c == "unavailable":
            self.send_presence(ptype="unavailable")
        elif c == "vcard":
            iq = await self.plugin["xep_0054"].get_vcard(jid=cmd["jid"], timeout=20)
            v = iq["vcard_temp"]
            emit({"event": "vcard", "jid": cmd["jid"], "fn": v["FN"], "title": v["TITLE"],
                  "xml": str(v)})
        elif c == "set_vcard":
            v = self.plugin["xep_0054"].make_vcard()
            v["FN"] = cmd["fn"]
            if cmd.get("title"):
                v["TITLE"] = cmd["title"]
            if cmd.get("photo_b64"):
                v["PHOTO"]["TYPE"] = cmd["photo_type"]
                v["PHOTO"]["BINVAL"] = base64.b64decode(cmd["photo_b64"])
            await self.plugin["xep_0054"].publish_vcard(v, timeout=20)
            emit({"event": "vcard_set"})
        elif c == "message":
            self.send_chat(cmd["to"], cmd["body"], cmd["id"])
            emit({"event": "sent", "count": 1})
        elif c == "burst":
            for i in range(cmd["count"]):
                self.send_chat(cmd["to"], f"{cmd['prefix']}{i}", f"{cmd['prefix']}{i}")
                if i % 50 == 49:
                    # Let the socket drain now and then.
                    await asyncio.sleep(0)
            emit({"event": "sent", "count": cmd["count"]})
        elif c == "chat_state":
            m = self.make_message(mto=cmd["to"], mtype="chat")
            m.xml.append(ET.Element(f"{{{CHATSTATES_NS}}}{cmd['state']}"))
            m.send()
            emit({"event": "sent", "count": 1})
        elif c == "resend_unacked":
            pending = [(mid, to, body) for mid, (to, body) in self.sent.items() if mid not in self.acked]
            for mid, to, body in pending:
                self.send_chat(to, body, mid)
            emit({"event": "resent", "count": len(pending)})
        elif c == "quit":
            self.disconnect()
        else:
            emit({"event": "error", "error": f"unknown command {c}"})


def main():
    jid, password, host, port = sys.argv[1:5]
    client = Client(jid, password)
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    # c2s on the test server is plain: what the tests exercise is s2s.
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    loop = client.loop

    def read_commands():
        for line in sys.stdin:
            line = line.strip()
            if line:
                cmd = json.loads(line)
                asyncio.run_coroutine_threadsafe(client.run(cmd), loop)
        # stdin closed: the test is gone.
        loop.call_soon_threadsafe(client.disconnect)

    threading.Thread(target=read_commands, daemon=True).start()
    client.connect(host, int(port))
    loop.run_until_complete(client.disconnected)
    emit({"event": "offline"})


if __name__ == "__main__":
    main()
