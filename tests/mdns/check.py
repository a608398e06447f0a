"""Runs on the "other host" of tests/mdns/run.sh: resolves the snaprtcd advertisement with
python-zeroconf and with avahi-browse, then, after the orchestrator stops the daemon (it writes
"TERMED" on stdin), checks that the service is withdrawn within 3 seconds.

Prints PASS/FAIL lines; exits non-zero on the first failure."""

import subprocess
import sys
import threading
import time

from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

TYPE = "_snaprtc._tcp.local."
want_instance, want_port, want_addr, want_auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
WANT_TXT = {"path": "/snaprtc-hub", "whep": "/whep", "auth": want_auth}


def fail(msg):
    print(f"FAIL {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"PASS {msg}", flush=True)


class Listener(ServiceListener):
    def __init__(self):
        self.added = threading.Event()
        self.removed = threading.Event()
        self.name = None

    def add_service(self, zc, type_, name):
        if name.startswith(want_instance + "."):
            self.name = name
            self.added.set()

    def remove_service(self, zc, type_, name):
        if name == self.name:
            self.removed.set()

    def update_service(self, zc, type_, name):
        pass


def check_txt(txt, who):
    for k, v in WANT_TXT.items():
        if txt.get(k) != v:
            fail(f"{who}: TXT {k}={txt.get(k)!r}, want {v!r} (all: {txt})")
    if not txt.get("id") or len(txt["id"]) < 8:
        fail(f"{who}: TXT id missing or short: {txt}")
    if not txt.get("v"):
        fail(f"{who}: TXT v missing: {txt}")


zc = Zeroconf(interfaces=["10.77.0.2"])
listener = Listener()
ServiceBrowser(zc, TYPE, listener)
if not listener.added.wait(10):
    fail("zeroconf: no _snaprtc._tcp instance named %r within 10 s" % want_instance)
info = zc.get_service_info(TYPE, listener.name, timeout=5000)
if info is None:
    fail("zeroconf: could not resolve " + listener.name)
txt = {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()}
addrs = info.parsed_addresses()
if info.port != want_port:
    fail(f"zeroconf: port {info.port}, want {want_port}")
if want_addr not in addrs:
    fail(f"zeroconf: addresses {addrs}, want {want_addr}")
check_txt(txt, "zeroconf")
ok(f"zeroconf resolved {listener.name} host={info.server} port={info.port} addrs={addrs} txt={txt}")
device_id = txt["id"]

# The RTSP server beside it ([rtsp] enabled): same instance, port 8554, TXT path.
RTSP_TYPE = "_rtsp._tcp.local."
rinfo = zc.get_service_info(RTSP_TYPE, f"{want_instance}.{RTSP_TYPE}", timeout=5000)
if rinfo is None:
    fail(f"zeroconf: no {want_instance}.{RTSP_TYPE}")
rtxt = {k.decode(): (v.decode() if v is not None else None) for k, v in rinfo.properties.items()}
if rinfo.port != 8554 or rtxt.get("path") != "/stream" or want_addr not in rinfo.parsed_addresses():
    fail(f"zeroconf: {RTSP_TYPE} port {rinfo.port} txt {rtxt} addrs {rinfo.parsed_addresses()}")
ok(f"zeroconf resolved {want_instance}.{RTSP_TYPE} port={rinfo.port} txt={rtxt}")

# avahi-browse: -r resolve, -p parsable, -t terminate after the cache dump. Its daemon may need
# a moment to see the announcement, so ask again for up to 10 s.
deadline = time.monotonic() + 10
line = None
while time.monotonic() < deadline and line is None:
    out = subprocess.run(["avahi-browse", "-rpt", "_snaprtc._tcp"], capture_output=True, text=True, timeout=20).stdout
    for l in out.splitlines():
        f = l.split(";")
        if f[0] == "=" and f[2] == "IPv4" and f[3] == want_instance:
            line = f
    if line is None:
        time.sleep(0.5)
if line is None:
    fail("avahi-browse did not resolve %r: %s" % (want_instance, out))
# =;iface;proto;name;type;domain;host;address;port;"k=v" "k=v"...
atxt = {}
for item in line[9].split('" "'):
    k, _, v = item.strip('"').partition("=")
    atxt[k] = v
if line[7] != want_addr or int(line[8]) != want_port:
    fail(f"avahi-browse: address {line[7]} port {line[8]}, want {want_addr} {want_port}")
check_txt(atxt, "avahi-browse")
if atxt["id"] != device_id:
    fail(f"avahi-browse id {atxt['id']} != zeroconf id {device_id}")
ok(f"avahi-browse resolved {line[3]} host={line[6]} addr={line[7]} port={line[8]} txt={atxt}")

print("READY-FOR-TERM", flush=True)
if sys.stdin.readline().strip() != "TERMED":
    fail("orchestrator went away")
t0 = time.monotonic()
if not listener.removed.wait(3):
    fail("zeroconf: service still present 3 s after SIGTERM")
ok(f"zeroconf saw the goodbye {time.monotonic() - t0:.2f} s after SIGTERM")
# avahi-browse -t prints its cache ("+") and then the removals it sees ("-"): what is left after
# both is what avahi still believes exists.
while True:
    out = subprocess.run(["avahi-browse", "-pt", "_snaprtc._tcp"], capture_output=True, text=True, timeout=20).stdout
    present = set()
    for l in out.splitlines():
        f = l.split(";")
        if len(f) > 3 and f[3] == want_instance:
            (present.add if f[0] == "+" else present.discard)((f[1], f[2]))
    if not present:
        break
    if time.monotonic() - t0 > 3:
        fail("avahi-browse still lists the service 3 s after SIGTERM: " + out)
    time.sleep(0.2)
ok(f"avahi-browse dropped it {time.monotonic() - t0:.2f} s after SIGTERM")
zc.close()
