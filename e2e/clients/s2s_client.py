"""An XMPP client on a real server, driven by xmppfed's tests.

Logs in, then runs the steps given as JSON on the command line against a peer
on the gateway's domain, and prints one JSON object with what it observed.
Steps: "message", "disco_domain", "disco_user", "ping_domain", "subscribe",
"vcard". Exit code 0 when every step completed, 1 otherwise.
"""
import asyncio
import json
import ssl
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, peer, steps, timeout):
        super().__init__(jid, password)
        self.peer = peer
        self.steps = steps
        self.timeout = timeout
        self.results = {}
        self.ok = False
        self.messages = asyncio.Queue()
        self.subscribed = asyncio.Queue()
        for plugin in ("xep_0030", "xep_0199", "xep_0054"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence_subscribed", lambda p: self.subscribed.put_nowait(p))
        self.add_event_handler("presence_available", self.on_available)
        self.add_event_handler("connection_failed", self.on_failed)
        self.add_event_handler("failed_auth", self.on_failed)

    def on_failed(self, *args):
        self.results["error"] = "connection or login failed"
        self.disconnect()

    def on_available(self, presence):
        if presence["from"].bare == self.peer:
            self.results.setdefault("presence", []).append(
                {"from": str(presence["from"]), "show": presence["show"], "status": presence["status"]}
            )

    async def start(self, _event):
        try:
            self.send_presence()
            await self.get_roster()
            domain = self.peer.split("@")[-1]
            for step in self.steps:
                await self.run_step(step, domain)
            self.ok = True
        except (IqError, IqTimeout, asyncio.TimeoutError) as e:
            self.results["error"] = f"{type(e).__name__}: {getattr(e, 'iq', e)}"
        finally:
            self.disconnect()

    async def run_step(self, step, domain):
        t = self.timeout
        if step == "message":
            self.send_message(mto=self.peer, mbody="hello from the XMPP side", mtype="chat")
            msg = await asyncio.wait_for(self.messages.get(), t)
            self.results["message"] = {"from": str(msg["from"]), "body": msg["body"], "type": msg["type"]}
        elif step == "disco_domain":
            info = await self.plugin["xep_0030"].get_info(jid=domain, timeout=t)
            self.results["disco_domain"] = sorted(info["disco_info"]["features"])
        elif step == "disco_user":
            info = await self.plugin["xep_0030"].get_info(jid=self.peer, timeout=t)
            self.results["disco_user"] = [list(i) for i in info["disco_info"]["identities"]]
        elif step == "ping_domain":
            rtt = await self.plugin["xep_0199"].ping(jid=domain, timeout=t)
            self.results["ping_domain"] = rtt is not None
        elif step == "subscribe":
            self.send_presence(pto=self.peer, ptype="subscribe")
            p = await asyncio.wait_for(self.subscribed.get(), t)
            self.results["subscribed"] = str(p["from"])
        elif step == "vcard":
            iq = await self.plugin["xep_0054"].get_vcard(jid=self.peer, timeout=t)
            self.results["vcard_fn"] = iq["vcard_temp"]["FN"]
        else:
            raise ValueError(f"unknown step {step}")


def main():
    jid, password, host, port, peer, steps = sys.argv[1:7]
    client = Client(jid, password, peer, json.loads(steps), timeout=20)
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    # c2s on the test server is plain: what the tests exercise is s2s.
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    client.connect(host, int(port))
    client.loop.run_until_complete(client.disconnected)
    print(json.dumps({"ok": client.ok, **client.results}))
    sys.exit(0 if client.ok else 1)


if __name__ == "__main__":
    main()
