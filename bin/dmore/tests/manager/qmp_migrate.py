#!/usr/bin/env python3
"""Migrates a QEMU VM the way a manager (libvirt) does, over plain QMP, knowing nothing of dmore.

Like libvirt: pause-before-switchover on, and `pre-switchover` answered with migrate-continue
at once; the `events` capability on or off (--events), or left as it is (--events default: a
bare `migrate`); the source QEMU ended afterwards. Unlike libvirt, if asked:
--pause-before-switchover off (QEMU switches over on its own, nothing to answer), and
--postcopy (`postcopy-ram` on both sides, RAM sent at MIB/s so that pre-copy cannot converge
under a dirtying guest, and `migrate-start-postcopy` once the first pass over RAM is done: the
destination VM runs while the rest of its RAM follows).
Python standard library only. Prints one line per step; exits 1 with the reason on failure.

    qmp_migrate.py --source SRC.sock --dest DST.sock --uri tcp:10.0.0.2:4444 --events on
    qmp_migrate.py ... --pause-before-switchover off
    qmp_migrate.py ... --postcopy 16
"""
import argparse
import json
import socket
import sys
import time


class Monitor:
    """One QMP connection: commands in order, events kept aside."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb", buffering=0)
        self.events = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{command}: {reply['error'].get('desc')}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, predicate, deadline):
        """Waits for an event for which predicate(event) is true."""
        while time.monotonic() < deadline:
            while self.events:
                event = self.events.pop(0)
                if predicate(event):
                    return event
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self._read()
            except socket.timeout:
                break
            finally:
                self.sock.settimeout(None)
            if "event" in msg:
                self.events.append(msg)
        raise RuntimeError("timed out waiting for an event")


def wait_status(src, wanted, events, deadline):
    """Waits until the source migration status is one of `wanted`, by event or by polling."""
    if events:
        src.wait_event(
            lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in wanted | {"failed", "cancelled"},
            deadline,
        )
    while time.monotonic() < deadline:
        status = src.execute("query-migrate").get("status")
        if status in wanted:
            return status
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"migration {status}")
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {wanted}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="the source QEMU's QMP socket")
    p.add_argument("--dest", required=True, help="the destination QEMU's QMP socket (-incoming defer)")
    p.add_argument("--uri", required=True, help="migration URI, e.g. tcp:10.0.0.2:4444")
    p.add_argument("--events", choices=["on", "off", "default"], default="on")
    p.add_argument("--pause-before-switchover", choices=["on", "off"], default="on")
    p.add_argument("--postcopy", type=int, metavar="MIB_S", help="switch to post-copy (see above)")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout
    src, dst = Monitor(args.source), Monitor(args.dest)
    if args.events == "default":
        caps = []
    else:
        caps = [{"capability": "events", "state": args.events == "on"}]
    if args.postcopy:
        caps.append({"capability": "postcopy-ram", "state": True})
    if caps:
        dst.execute("migrate-set-capabilities", capabilities=caps)
    dst.execute("migrate-incoming", uri=args.uri)
    # Whether MIGRATION events come is the source QEMU's business now: wait by polling alone
    # unless this script turned them on itself.
    events = args.events == "on"
    pause = args.pause_before_switchover == "on"
    src.execute(
        "migrate-set-capabilities",
        capabilities=caps + [{"capability": "pause-before-switchover", "state": pause}],
    )
    if args.postcopy:
        src.execute("migrate-set-parameters", **{"max-bandwidth": args.postcopy << 20})
    src.execute("migrate", uri=args.uri)
    print(f"migrating to {args.uri} (events {args.events}, pause-before-switchover "
          f"{args.pause_before_switchover}, post-copy {'on' if args.postcopy else 'off'})", flush=True)
    if args.postcopy:
        while src.execute("query-migrate").get("ram", {}).get("dirty-sync-count", 0) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the first pass over RAM never ended")
            time.sleep(0.01)
        src.execute("migrate-start-postcopy")
        print("first pass over RAM done: migrate-start-postcopy", flush=True)
    if pause:
        wait_status(src, {"pre-switchover"}, events, deadline)
        src.execute("migrate-continue", state="pre-switchover")
        print("pre-switchover answered with migrate-continue", flush=True)
    if args.postcopy:
        wait_status(src, {"postcopy-active", "completed"}, events, deadline)
        while dst.execute("query-status").get("status") != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the destination VM never ran in post-copy")
            time.sleep(0.005)
        info = src.execute("query-migrate")
        print(f"post-copy: the destination VM runs (source status {info.get('status')}, "
              f"{info.get('ram', {}).get('remaining')} bytes of RAM still on the source)", flush=True)
    wait_status(src, {"completed"}, events, deadline)
    info = src.execute("query-migrate")
    while dst.execute("query-status").get("status") != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the destination VM never ran")
        time.sleep(0.005)
    print(f"completed: total {info.get('total-time')} ms, downtime {info.get('downtime')} ms", flush=True)
    src.execute("quit")
    print("source QEMU ended", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the one line a test or an operator reads
        print(f"qmp_migrate: {e}", file=sys.stderr)
        sys.exit(1)
