"""A minimal terminal chat over any edgekit language bundle (GGUF today; the same code for every engine).

    python apps/chat.py out/            # after: edgekit export ... -o out

Needs only the bundle's runtime extra (e.g. ``pip install 'edgekit[gguf]'``), not torch.  The built-in
model was trained on Python source, so "chat" with it means: type the start of some code.
"""

from __future__ import annotations

import argparse
import sys

import edgekit
from edgekit.runtimes import SamplingParams, StreamResult


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    session = edgekit.load(args.bundle)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=40, top_p=0.95)
    print(f"{args.bundle} on {session.engine}; empty line to quit", file=sys.stderr)
    try:
        while True:
            prompt = input("> ")
            if not prompt:
                break
            result = StreamResult()
            for piece in session.stream(prompt, params, result):
                print(piece, end="", flush=True)
            print(f"\n[{result.timing.decode_tps:.0f} tok/s]", file=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        session.close()


if __name__ == "__main__":
    main()
