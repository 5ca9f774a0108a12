"""The generic API with your own state: posts (title, likes) replicated over loopback multicast.

    python examples/posts_with_likes.py
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
from typing import NamedTuple

from grapevine import Publisher, Subscriber, UpdateKind


class Post(NamedTuple):
    title: str
    likes: int


class PostModel:
    """Leaf = Post. Delta = ("new", title) or ("like",). Wire: b"N" + title, b"L"."""

    def new_leaf(self) -> Post:
        return Post("", 0)

    def apply(self, leaf: Post, delta: tuple[str, ...]) -> Post:
        return Post(delta[1], 0) if delta[0] == "new" else leaf._replace(likes=leaf.likes + 1)

    def encode_delta(self, delta: tuple[str, ...]) -> bytes:
        return b"N" + delta[1].encode() if delta[0] == "new" else b"L"

    def decode_delta(self, payload: memoryview) -> tuple[str, ...]:
        data = bytes(payload)
        return ("new", data[1:].decode()) if data[:1] == b"N" else ("like",)

    def encode_leaf(self, leaf: Post) -> bytes:
        return struct.pack("<I", leaf.likes) + leaf.title.encode()

    def decode_leaf(self, payload: memoryview) -> Post:
        return Post(bytes(payload[4:]).decode(), struct.unpack_from("<I", payload)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", default="239.255.71.2")
    parser.add_argument("--port", type=int, default=47101)
    args = parser.parse_args()
    plan = {1: ("Hello, multicast", 3), 2: ("Snapshots are underrated", 5), 3: ("TTL 0", 1)}
    seen: dict[int, int] = {}
    done = threading.Event()

    def show(leaf_id: int, kind: UpdateKind, post: Post | None, delta: object) -> None:
        if post is not None:
            print(f"post {leaf_id} {post.title!r}: {post.likes} likes", flush=True)
            seen[leaf_id] = post.likes
            if all(seen.get(i) == likes for i, (_, likes) in plan.items()):
                done.set()

    endpoint = {"group": args.group, "port": args.port}
    with Subscriber(PostModel(), **endpoint) as sub:
        for leaf_id in plan:
            sub.on_leaf(leaf_id, show)
        with Publisher(PostModel(), **endpoint) as pub:
            for leaf_id, (title, likes) in plan.items():
                pub.publish(leaf_id, ("new", title))
                for _ in range(likes):
                    pub.publish(leaf_id, ("like",))
            if not (sub.wait_synced(timeout=5) and done.wait(timeout=5)):
                print("the replica did not catch up", flush=True)
                return 1
            with sub.locked() as replica:
                print("replica:", dict(replica.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
