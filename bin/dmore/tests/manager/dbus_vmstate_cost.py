#!/usr/bin/env python3
"""What carrying a console's state inside QEMU's own migration stream (dbus-vmstate) costs the VM.

Migrates the tiny test guest between two local QEMUs (over a unix socket, as libvirt does it:
pause-before-switchover on and answered at once) RUNS times per configuration, and prints the
VM's downtime (the source QEMU's STOP event to the destination's RESUME, QMP timestamps, one
clock) for: no dbus-vmstate object, and an object
whose helper hands over a state of each --sizes bytes. Each QEMU has its own private D-Bus bus
(dbus-daemon) and helper, as two hosts would. QEMU calls the source helper's Save() after the
source VM stopped and the destination helper's Load() before the destination VM runs: both
inside the VM's downtime.

The helper (`--helper BUS SIZE`) is this file too: a D-Bus client written on a bare socket
(Python standard library only) that owns org.qemu.VMState1 and exports /org/qemu/VMState1
with the property Id ("dmore") and the methods Save() -> ay (SIZE bytes) and Load(ay).

    dbus_vmstate_cost.py --kernel GUEST.elf --runs 10 --sizes 64,32768,524288
"""
import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

VMSTATE_NAME = "org.qemu.VMState1"
VMSTATE_PATH = "/org/qemu/VMState1"
ID = "dmore"


# --- D-Bus wire format (little endian), just what the helper needs ---------------------------

class Writer:
    def __init__(self):
        self.buf = bytearray()

    def align(self, n):
        self.buf += b"\0" * ((-len(self.buf)) % n)

    def byte(self, v):
        self.buf.append(v)

    def uint32(self, v):
        self.align(4)
        self.buf += struct.pack("<I", v)

    def string(self, v):
        b = v.encode()
        self.uint32(len(b))
        self.buf += b + b"\0"

    def signature(self, v):
        b = v.encode()
        self.byte(len(b))
        self.buf += b + b"\0"

    def bytes_array(self, data):
        self.uint32(len(data))
        self.buf += data


class Reader:
    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def align(self, n):
        self.pos += (-self.pos) % n

    def byte(self):
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def uint32(self):
        self.align(4)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return v

    def string(self):
        n = self.uint32()
        v = self.buf[self.pos:self.pos + n].decode()
        self.pos += n + 1
        return v

    def signature(self):
        n = self.byte()
        v = self.buf[self.pos:self.pos + n].decode()
        self.pos += n + 1
        return v

    def value(self, sig):
        if sig in ("s", "o"):
            return self.string()
        if sig == "g":
            return self.signature()
        if sig == "u":
            return self.uint32()
        if sig == "y":
            return self.byte()
        raise ValueError(f"header field of type {sig!r}")


FIELD_PATH, FIELD_INTERFACE, FIELD_MEMBER, FIELD_ERROR, FIELD_REPLY_SERIAL = 1, 2, 3, 4, 5
FIELD_DESTINATION, FIELD_SENDER, FIELD_SIGNATURE = 6, 7, 8
METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
FIELD_TYPES = {FIELD_PATH: "o", FIELD_INTERFACE: "s", FIELD_MEMBER: "s", FIELD_ERROR: "s",
               FIELD_REPLY_SERIAL: "u", FIELD_DESTINATION: "s", FIELD_SENDER: "s",
               FIELD_SIGNATURE: "g"}


def message(kind, serial, fields, body=b""):
    w = Writer()
    for b in (ord("l"), kind, 0, 1):
        w.byte(b)
    w.uint32(len(body))
    w.uint32(serial)
    at = len(w.buf)
    w.uint32(0)
    w.align(8)
    start = len(w.buf)
    for code, value in fields:
        w.align(8)
        w.byte(code)
        sig = FIELD_TYPES[code]
        w.signature(sig)
        {"o": w.string, "s": w.string, "u": w.uint32, "g": w.signature}[sig](value)
    struct.pack_into("<I", w.buf, at, len(w.buf) - start)
    w.align(8)
    return bytes(w.buf) + body


def parse(buf):
    """One message from the start of buf: (length, kind, serial, fields, body), or None."""
    if len(buf) < 16:
        return None
    body_len, serial, fields_len = struct.unpack_from("<III", buf, 4)
    header_end = 16 + fields_len
    header_end += (-header_end) % 8
    total = header_end + body_len
    if len(buf) < total:
        return None
    r = Reader(buf, 16)
    fields = {}
    while r.pos < 16 + fields_len:
        r.align(8)
        code = r.byte()
        fields[code] = r.value(r.signature())
    return total, buf[1], serial, fields, buf[header_end:total]


class Bus:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        uid = str(os.getuid()).encode().hex()
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
        line = self._line()
        if not line.startswith(b"OK"):
            sys.exit(f"helper: the bus refused us: {line!r}")
        self.sock.sendall(b"BEGIN\r\n")
        self.buf = b""
        self.serial = 0

    def _line(self):
        line = b""
        while not line.endswith(b"\r\n"):
            line += self.sock.recv(1)
        return line

    def send(self, kind, fields, body=b""):
        self.serial += 1
        self.sock.sendall(message(kind, self.serial, fields, body))

    def call_bus(self, member, signature=None, body=b""):
        fields = [(FIELD_PATH, "/org/freedesktop/DBus"), (FIELD_INTERFACE, "org.freedesktop.DBus"),
                  (FIELD_MEMBER, member), (FIELD_DESTINATION, "org.freedesktop.DBus")]
        if signature:
            fields.append((FIELD_SIGNATURE, signature))
        self.send(METHOD_CALL, fields, body)

    def messages(self):
        while True:
            got = parse(self.buf)
            if got is None:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                self.buf += data
                continue
            total, kind, serial, fields, body = got
            self.buf = self.buf[total:]
            yield kind, serial, fields, body


def helper(bus_path, size):
    state = bytes(i % 251 for i in range(size))
    bus = Bus(bus_path)
    bus.call_bus("Hello")
    w = Writer()
    w.string(VMSTATE_NAME)
    w.uint32(0)
    bus.call_bus("RequestName", "su", bytes(w.buf))
    print("ready", flush=True)
    for kind, serial, fields, body in bus.messages():
        if kind != METHOD_CALL:
            continue
        iface, member = fields.get(FIELD_INTERFACE), fields.get(FIELD_MEMBER)
        reply = [(FIELD_REPLY_SERIAL, serial), (FIELD_DESTINATION, fields.get(FIELD_SENDER, ""))]
        w = Writer()
        if (iface, member) == ("org.freedesktop.DBus.Properties", "Get"):
            w.signature("s")
            w.string(ID)
            bus.send(METHOD_RETURN, reply + [(FIELD_SIGNATURE, "v")], bytes(w.buf))
        elif (iface, member) == ("org.freedesktop.DBus.Properties", "GetAll"):
            w.uint32(0)
            w.align(8)
            start = len(w.buf)
            w.align(8)
            w.string("Id")
            w.signature("s")
            w.string(ID)
            struct.pack_into("<I", w.buf, 0, len(w.buf) - start)
            bus.send(METHOD_RETURN, reply + [(FIELD_SIGNATURE, "a{sv}")], bytes(w.buf))
        elif member == "Save":
            w.bytes_array(state)
            bus.send(METHOD_RETURN, reply + [(FIELD_SIGNATURE, "ay")], bytes(w.buf))
            print(f"saved {len(state)} bytes", flush=True)
        elif member == "Load":
            got = Reader(body).uint32()
            bus.send(METHOD_RETURN, reply)
            print(f"loaded {got} bytes", flush=True)
        elif member == "Ping":
            bus.send(METHOD_RETURN, reply)
        else:
            w.string(f"no method {iface}.{member} here")
            bus.send(ERROR, reply + [(FIELD_ERROR, "org.freedesktop.DBus.Error.UnknownMethod"),
                                     (FIELD_SIGNATURE, "s")], bytes(w.buf))


# --- the measurement ---------------------------------------------------------------------------

class Monitor:
    def __init__(self, path):
        for _ in range(500):
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.01)
        self.file = self.sock.makefile("rwb", buffering=0)
        self.events = []
        self.file.readline()
        self.execute("qmp_capabilities")

    def execute(self, cmd, **args):
        self.file.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            msg = json.loads(self.file.readline())
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise RuntimeError(f"{cmd}: {msg['error']['desc']}")
            else:
                return msg["return"]


def stamp(event):
    """An event's time, µs."""
    return event["timestamp"]["seconds"] * 1_000_000 + event["timestamp"]["microseconds"]


def start_host(d, name, size, kernel, incoming):
    """A private bus (and a helper on it if size is not None) and a QEMU, all under d/name."""
    h = os.path.join(d, name)
    os.mkdir(h)
    procs = []
    bus = os.path.join(h, "bus")
    procs.append(subprocess.Popen(["dbus-daemon", "--session", f"--address=unix:path={bus}",
                                   "--nofork", "--nopidfile"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    while not os.path.exists(bus):
        time.sleep(0.01)
    if size is not None:
        p = subprocess.Popen([sys.executable, __file__, "--helper", bus, str(size)],
                             stdout=subprocess.PIPE)
        procs.append(p)
        if p.stdout.readline().strip() != b"ready":
            raise RuntimeError("the helper did not start")
    qmp = os.path.join(h, "qmp.sock")
    cmd = ["qemu-system-x86_64", "-machine", "pc", "-nodefaults", "-display", "none",
           "-accel", "tcg", "-m", "128", "-kernel", kernel, "-append", "animate=1",
           "-qmp", f"unix:{qmp},server=on,wait=off", "-serial", "null"]
    if size is not None:
        cmd += ["-object", f"dbus-vmstate,id=dv,addr=unix:path={bus},id-list={ID}"]
    if incoming:
        cmd += ["-incoming", "defer"]
    procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
    helper_out = procs[1].stdout if size is not None else None
    return procs, Monitor(qmp), helper_out


def one_run(kernel, size):
    d = tempfile.mkdtemp(prefix="dmvs")
    procs = []
    try:
        src_procs, src, src_out = start_host(d, "a", size, kernel, False)
        procs += src_procs
        dst_procs, dst, dst_out = start_host(d, "b", size, kernel, True)
        procs += dst_procs
        uri = f"unix:{os.path.join(d, 'mig.sock')}"
        dst.execute("migrate-incoming", uri=uri)
        time.sleep(0.3)
        caps = [{"capability": c, "state": True} for c in ("events", "pause-before-switchover")]
        src.execute("migrate-set-capabilities", capabilities=caps)
        src.execute("migrate", uri=uri)
        answered = False
        while True:
            info = src.execute("query-migrate")
            status = info.get("status")
            if status == "pre-switchover" and not answered:
                src.execute("migrate-continue", state="pre-switchover")
                answered = True
            elif status == "completed":
                if size is not None:
                    # The helpers really carried the state: one Save here, one Load there.
                    saved, loaded = src_out.readline().strip(), dst_out.readline().strip()
                    want = (f"saved {size} bytes".encode(), f"loaded {size} bytes".encode())
                    if (saved, loaded) != want:
                        raise RuntimeError(f"helpers said {saved!r}, {loaded!r}")
                while not dst.execute("query-status")["running"]:
                    time.sleep(0.001)
                stop = next(e for e in src.events if e["event"] == "STOP")
                resume = next(e for e in dst.events if e["event"] == "RESUME")
                return (stamp(resume) - stamp(stop)) / 1000.0
            elif status in ("failed", "cancelled"):
                errs = b"".join(p.stderr.read() for p in procs
                                if p.stderr and p.poll() is not None)
                raise RuntimeError(f"migration {status}: {info.get('error-desc')} {errs!r}")
            time.sleep(0.001)
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helper", nargs=2, metavar=("BUS", "SIZE"))
    ap.add_argument("--kernel")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--sizes", default="64,32768,524288")
    a = ap.parse_args()
    if a.helper:
        return helper(a.helper[0], int(a.helper[1]))
    for size in [None] + [int(s) for s in a.sizes.split(",")]:
        downtimes = sorted(one_run(a.kernel, size) for _ in range(a.runs))
        label = "no dbus-vmstate" if size is None else f"dbus-vmstate, {size} B state"
        print(f"{label}: downtime ms min {downtimes[0]:.1f} median "
              f"{downtimes[len(downtimes) // 2]:.1f} max {downtimes[-1]:.1f}", flush=True)


if __name__ == "__main__":
    main()
