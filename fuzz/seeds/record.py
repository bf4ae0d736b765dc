#!/usr/bin/env python3
"""Records real RFB byte streams as fuzz seeds (run by hand; the outputs are committed).

  record.py qemu OUTDIR    QEMU's VNC server -> client: handshake and updates (ZRLE, Raw).
  record.py viewer OUTDIR  TigerVNC viewer -> server, under Xvfb, with keys and pointer moves.

Each stream is written whole (for the handshake targets) and split after the handshake (for
the message targets). A seed is the stream with one selector byte in front (see src/lib.rs):
0x60 = RGBX32_LE, RFB 3.8, chunks of 8 bytes.
"""
import os, socket, struct, subprocess, sys, tempfile, time

SEL = b"\x60"

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b

def drain(s, seconds):
    s.settimeout(0.2)
    out, end = b"", time.time() + seconds
    while time.time() < end:
        try:
            c = s.recv(65536)
        except socket.timeout:
            continue
        if not c:
            break
        out += c
    return out

def write(outdir, target, name, data):
    d = os.path.join(outdir, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(SEL + data)

def qemu(outdir, encodings, tag, area=None):
    tmp = tempfile.mkdtemp(prefix="rfb-seed-")
    sock = os.path.join(tmp, "vnc.sock")
    q = subprocess.Popen(["qemu-system-x86_64", "-display", "none", "-vnc", "unix:" + sock,
                          "-machine", "q35", "-m", "64", "-bios", "/usr/share/qemu/qboot.rom"],
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock):
            if time.time() > deadline:
                raise RuntimeError("no VNC socket")
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        hs = recv_exact(s, 12); s.sendall(b"RFB 003.008\n")
        n = recv_exact(s, 1); types = recv_exact(s, n[0]); hs += n + types
        s.sendall(b"\x01")
        hs += recv_exact(s, 4)           # SecurityResult
        s.sendall(b"\x01")               # ClientInit, shared
        init = recv_exact(s, 24); name = recv_exact(s, struct.unpack(">I", init[20:24])[0])
        hs += init + name
        s.sendall(struct.pack(">BBH", 2, 0, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings))
        w, h = area or struct.unpack(">HH", init[:4])
        s.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        msgs = drain(s, 2.0)
        for _ in range(3):
            s.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
            msgs += drain(s, 0.5)
        s.close()
        write(outdir, "client_handshake", f"qemu-{tag}", hs + msgs)
        write(outdir, "server_messages", f"qemu-{tag}", msgs)
        if 16 in encodings:
            write(outdir, "zrle_decode", f"qemu-{tag}", msgs)
        print(f"qemu {tag}: handshake {len(hs)} bytes, messages {len(msgs)} bytes")
    finally:
        q.kill(); q.wait()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)

def viewer(outdir):
    xvfb = subprocess.Popen(["Xvfb", ":55", "-screen", "0", "800x600x24"], stderr=subprocess.DEVNULL)
    lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0)); lst.listen(1)
    port = lst.getsockname()[1]
    env = dict(os.environ, DISPLAY=":55")
    time.sleep(0.5)
    v = subprocess.Popen(["vncviewer", "-SecurityTypes", "None", f"127.0.0.1::{port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lst.settimeout(20)
        s, _ = lst.accept()
        s.sendall(b"RFB 003.008\n")
        got = recv_exact(s, 12)
        s.sendall(b"\x01\x01")
        got += recv_exact(s, 1)
        s.sendall(struct.pack(">I", 0))
        got += recv_exact(s, 1)          # ClientInit
        w, h = 64, 48
        pf = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
        s.sendall(struct.pack(">HH", w, h) + pf + struct.pack(">I", 10) + b"dmore-seed")
        hs = got
        msgs = drain(s, 1.5)
        # Invite the extensions: a fence request and continuous-update support.
        s.sendall(struct.pack(">BxxxIB", 248, 0x80000000 | 3, 2) + b"hi" + b"\x96")
        # One full Raw update, so the viewer keeps asking.
        s.sendall(struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, w, h, 0) + b"\x40" * (w * h * 4))
        msgs += drain(s, 1.0)
        wid = subprocess.run(["xdotool", "search", "--name", "dmore-seed"], env=env,
                             capture_output=True, text=True).stdout.split()
        if wid:
            subprocess.run(["xdotool", "windowfocus", "--sync", wid[0]], env=env, capture_output=True)
            subprocess.run(["xdotool", "mousemove", "--window", wid[0], "10", "10", "click", "1"], env=env)
            subprocess.run(["xdotool", "type", "--delay", "20", "dm"], env=env)
            subprocess.run(["xdotool", "key", "Return", "shift+a"], env=env)
        msgs += drain(s, 1.5)
        s.close()
        write(outdir, "server_handshake", "tigervnc", hs + msgs)
        write(outdir, "client_messages", "tigervnc", msgs)
        print(f"viewer: handshake {len(hs)} bytes, messages {len(msgs)} bytes, window {wid}")
    finally:
        v.kill(); v.wait(); xvfb.kill(); xvfb.wait(); lst.close()

if __name__ == "__main__":
    what, outdir = sys.argv[1], sys.argv[2]
    if what == "qemu":
        # ZRLE, Raw, CopyRect, Cursor, DesktopSize, QEMU ext key, QEMU LED, pointer change, ExtDesktopSize
        qemu(outdir, [16, 0, 1, -239, -223, -258, -261, -257, -308], "zrle")
        qemu(outdir, [0, -223, -258], "raw", area=(32, 16))
    elif what == "viewer":
        viewer(outdir)
    else:
        sys.exit(__doc__)
