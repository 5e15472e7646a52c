"""Handlers of the sidecar end-to-end test (bin/tests/sidecar_e2e.rs)."""

import json
import os
import time


def double(payload):
    """A plain function."""
    return {**payload, "doubled": payload["n"] * 2}


class Model:
    """A class handler: the "model" loads once per runtime process."""

    loads = 0

    def __init__(self):
        Model.loads += 1
        self.weights = 10

    def predict(self, payload):
        return {**payload, "score": payload["doubled"] * self.weights, "model_loads": Model.loads}


def split(payload):
    """A generator: two outputs, and a route rewrite that adds `audit` after this actor."""
    route_next = yield ("GET", ".route.next")
    yield ("SET", ".route.next", ["audit"] + list(route_next))
    yield ("FLY", {"progress": 0.5})
    yield {**payload, "part": 0}
    yield {**payload, "part": 1}


def audit(payload):
    return {**payload, "audited": True}


class TransientError(ConnectionError):
    """Retryable by the test's rules."""


_seen = set()


def trouble(payload):
    """Fails the way payload["mode"] says, the first time it sees an envelope."""
    mode = payload.get("mode")
    first = payload["key"] not in _seen
    _seen.add(payload["key"])
    if mode == "flaky" and first:
        raise TransientError("model server reset the connection")
    if mode == "fatal":
        raise ValueError("this input can never be processed")
    if mode == "hang" and first:
        time.sleep(float(os.environ.get("E2E_HANG_S", "30")))
    return {**payload, "ok": True}


def noop(payload):
    return payload


def slow(payload):
    """10 ms of work, so a run lasts long enough to kill the runtime in the middle."""
    time.sleep(0.01)
    return payload


def tokens(payload):
    """A generator in the middle of a pipeline: streams tokens upstream, then passes on."""
    for word in ("hello", "from", "troupe"):
        yield ("FLY", {"token": word})
    yield {**payload, "said": "hello from troupe"}


def embed(payload):
    """A stand-in embedding of one chunk of a document; a poisoned chunk never embeds."""
    if payload.get("poison"):
        raise ValueError(f"chunk {payload['chunk']} of document {payload['doc']} cannot be embedded")
    text = payload["text"]
    return {"doc": payload["doc"], "chunk": payload["chunk"], "vector": [len(text), sum(map(ord, text)) % 997]}


def split_for_rejoin(payload):
    """Splits a document into its chunks, each marked for rejoin by the aggregator `join`."""
    origin = yield ("GET", ".id")
    count = payload["chunks"]
    poisoned = set(payload.get("poisoned", []))
    for i in range(count):
        yield (
            "SET",
            ".headers.x-asya-fan-in",
            {"actor": "join", "origin_id": origin, "slice_index": i, "slice_count": count},
        )
        yield {"doc": payload["doc"], "chunk": i, "text": f"chunk {i} of document {payload['doc']}", "poison": i in poisoned}


def merge_vectors(slices):
    """A merge handler: the list of a document's embedded chunks, in order, made one."""
    if any(s.get("poison_merge") for s in slices):
        raise ValueError(f"document {slices[0]['doc']} cannot be merged")
    return {"doc": slices[0]["doc"], "chunks": len(slices), "total": sum(s["vector"][0] for s in slices)}


def count_words(payload):
    """Counts words across envelopes in handler state, shared by every replica.

    Each word's value is {"n": count, "ids": [envelope ids counted]}, changed only by
    compare-and-set: replicas lose no update, and an envelope handled again (its sidecar
    killed after the handler ran) is not counted twice.
    """
    from troupe_runtime import state

    envelope_id = yield ("GET", ".id")
    words = {}
    for word in payload["text"].split():
        words[word] = words.get(word, 0) + 1
    for word, times in sorted(words.items()):
        key = f"words/{word}"
        seen = state.get_versioned(key)
        while True:
            value = json.loads(seen.value) if seen else {"n": 0, "ids": []}
            if envelope_id in value["ids"]:
                break
            value["n"] += times
            value["ids"].append(envelope_id)
            done, now = state.compare_and_set(key, seen.version if seen else None, json.dumps(value))
            if done:
                break
            seen = now
    yield payload


def notes(payload):
    """Uses handler state as files under an Asya state mount (/state/notes)."""
    name = payload["name"]
    path = f"/state/notes/{name}/today.txt"
    os.makedirs(f"/state/notes/{name}", exist_ok=True)
    with open(path, "w") as f:
        f.write(payload["text"])
    with open(path, "a") as f:
        f.write("!")
    try:
        with open(path, "x") as f:
            f.write("never")
        created_twice = True
    except FileExistsError:
        created_twice = False
    os.setxattr(path, "user.lang", b"en")
    result = {
        "read": open(path).read(),
        "size": os.stat(path).st_size,
        "is_dir": os.path.isdir(f"/state/notes/{name}"),
        "listing": os.listdir(f"/state/notes/{name}"),
        "root": name in os.listdir("/state/notes"),
        "lang": os.getxattr(path, "user.lang").decode(),
        "created_twice": created_twice,
    }
    os.unlink(path)
    result["exists_after_unlink"] = os.path.exists(path)
    return result
