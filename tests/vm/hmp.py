#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Send HMP commands to a QEMU monitor on a unix socket and print the answers:
    hmp.py SOCKET COMMAND...
(qemu-guest.sh dumps a hung nested guest's vCPUs and LAPICs with it)."""
import socket, sys, time
def hmp(path, cmds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(5)
    out = b""
    def drain():
        nonlocal out
        try:
            while True:
                d = s.recv(65536)
                if not d: break
                out += d
        except socket.timeout:
            pass
    drain()
    for c in cmds:
        s.sendall(c.encode() + b"\n")
        time.sleep(1)
        drain()
    return out.decode(errors="replace")
print(hmp(sys.argv[1], sys.argv[2:]))
