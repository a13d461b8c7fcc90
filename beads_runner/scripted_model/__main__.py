"""`python -m beads_runner.scripted_model --script FILE [--port 0] [--port-file PATH]`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from beads_runner.scripted_model import ScriptedModelServer
from beads_runner.scripted_model.script import ScriptError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beads_runner.scripted_model",
                                     description="Serve a scripted OpenAI-compatible model.")
    parser.add_argument("--script", required=True, help="the script (JSON file)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--answer-log", help="append each answer (time, status, scenario) here, one JSON a line")
    args = parser.parse_args(argv)
    try:
        server = ScriptedModelServer(args.script, host=args.host, port=args.port, answer_log=args.answer_log)
    except ScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    if args.port_file:
        tmp = Path(args.port_file).with_suffix(".tmp")
        tmp.write_text(f"{server.port}\n", encoding="utf-8")
        tmp.replace(args.port_file)
    print(server.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
