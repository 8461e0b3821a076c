"""TVM RPC server of an emulated board: runs *inside* the emulated root (aarch64 Python under qemu-user).

It imports only TVM (the board has no harness installed). TVM's own `tvm.exec.rpc_server` starts its
listener in a `PopenWorker` (a new `sys.executable` process), which qemu-user cannot exec without
binfmt_misc; this runs the same listener (`PopenRPCServerState`) in-process, and sessions fork as usual.
It also registers `harness.board_info`, which tells the harness that the board is emulated, and can
simulate a board that drops off mid-run (`--drop-after S`: the whole board dies S seconds into its first
session), to exercise the harness's retry on another board.

Usage: python board_server.py --host H --port P --tracker HOST:PORT --key KEY --name NAME
"""

import argparse
import json
import logging
import os
import platform
import signal
import threading

import tvm
from tvm.rpc.server import PopenRPCServerState


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracker", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--drop-after", type=float, help="fault injection: die this long into the first session")
    args = parser.parse_args()
    info = json.dumps({"emulated": True, "name": args.name, "machine": platform.machine(),
                       "tvm": tvm.__version__})

    def board_info() -> str:  # called by the harness at the start of each session (in the session process)
        if args.drop_after is not None:
            drop = threading.Timer(args.drop_after, os.killpg, (os.getpgid(0), signal.SIGKILL))
            drop.daemon = True
            drop.start()
        return info

    tvm.register_global_func("harness.board_info", board_info)
    logging.basicConfig(level=logging.INFO)
    host, port = args.tracker.rsplit(":", 1)
    state = PopenRPCServerState(args.host, args.port, args.port + 1, tracker_addr=(host, int(port)), key=args.key,
                                custom_addr=args.host)
    state.thread.join()


if __name__ == "__main__":
    main()
