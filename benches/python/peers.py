"""The 3-step pipeline of trivial handlers in Dramatiq and in Celery, on RabbitMQ.

Run by ``troupe-bench-python --peers`` (benches/src/python.rs), which runs the same
pipeline through Troupe's sidecars and prints the rows side by side; it can run alone:

    python3 benches/python/peers.py --url amqp://guest:guest@127.0.0.1:5672/%2f -n 5000

Installs Dramatiq and Celery into a throwaway virtual environment of its own (removed at
the end) and re-runs itself there. For each peer: one worker process per step with 8
threads (the concurrency the sidecars get), started and warmed up first; then ``n``
messages enqueued at once to step 1; each step sends its input on to the next; step 3
sends to a sink queue that no worker consumes, whose depth says when all arrived. The
guarantees match Troupe's: publishes confirmed by the broker, messages acked after the
handler (and its send) finished. Prints one JSON object per peer: envelopes/s and the
workers' CPU seconds per 1,000 envelopes (every process of each worker's tree, from
``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ["dramatiq[rabbitmq]==2.*", "celery==5.*"]
STEPS = ("step1", "step2", "step3")
TICKS = os.sysconf("SC_CLK_TCK")


# -- the peers' pipelines (imported by their workers) -------------------------------------

def dramatiq_app():
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    prefix = os.environ["PEERS_PREFIX"]
    broker = RabbitmqBroker(url=os.environ["PEERS_URL"], confirm_delivery=True)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=f"{prefix}-sink", max_retries=0)
    def sink(payload):
        pass

    @dramatiq.actor(queue_name=f"{prefix}-step3", max_retries=0)
    def step3(payload):
        sink.send(payload)

    @dramatiq.actor(queue_name=f"{prefix}-step2", max_retries=0)
    def step2(payload):
        step3.send(payload)

    @dramatiq.actor(queue_name=f"{prefix}-step1", max_retries=0)
    def step1(payload):
        step2.send(payload)

    return broker, step1


def celery_app():
    from celery import Celery

    prefix = os.environ["PEERS_PREFIX"]
    app = Celery("peers", broker=os.environ["PEERS_URL"])
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        task_acks_late=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        task_routes={f"peers.{name}": {"queue": f"{prefix}-{name}"} for name in (*STEPS, "sink")},
    )

    @app.task(name="peers.sink")
    def sink(payload):
        pass

    @app.task(name="peers.step3")
    def step3(payload):
        sink.delay(payload)

    @app.task(name="peers.step2")
    def step2(payload):
        step3.delay(payload)

    @app.task(name="peers.step1")
    def step1(payload):
        step2.delay(payload)

    return app, step1


# -- measuring -------------------------------------------------------------------------------

def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every process below it."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def sink_depth(url: str, queue: str) -> int:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def delete(url: str, queues: list[str]) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
    finally:
        connection.close()


def wait_for(url: str, queue: str, count: int, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if sink_depth(url, queue) >= count:
                return True
        except Exception:  # noqa: BLE001 - the queue may not exist yet
            pass
        time.sleep(0.05)
    return False


def run_peer(peer: str, url: str, n: int, threads: int) -> dict:
    prefix = f"peers-{peer}-{os.getpid()}"
    env = dict(os.environ, PEERS_PREFIX=prefix, PEERS_URL=url, PYTHONPATH=str(HERE))
    os.environ.update(PEERS_PREFIX=prefix, PEERS_URL=url)
    queues = [f"{prefix}-{s}" for s in (*STEPS, "sink")]
    if peer == "dramatiq":
        # Dramatiq also keeps a delay and a dead-letter queue per queue.
        extra = [f"{q}.{suffix}" for q in queues for suffix in ("DQ", "XQ")]
        _, step1 = dramatiq_app()

        def send(i):
            step1.send({"i": i})

        def worker(queue):
            return [sys.executable, "-m", "dramatiq", "peers_worker_dramatiq", "--processes", "1",
                    "--threads", str(threads), "--queues", queue]
    else:
        extra = []
        _, step1 = celery_app()

        def send(i):
            step1.delay({"i": i})

        def worker(queue):
            return [sys.executable, "-m", "celery", "-A", "peers_worker_celery", "worker",
                    "--pool", "threads", "--concurrency", str(threads), "--queues", queue,
                    "--hostname", f"{queue}@%h",
                    "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"]

    workers = [
        subprocess.Popen(worker(f"{prefix}-{s}"), env=env, cwd=HERE,
                         stdout=subprocess.DEVNULL, stderr=None if os.environ.get("PEERS_DEBUG") else subprocess.DEVNULL,
                         start_new_session=True)
        for s in STEPS
    ]
    try:
        send(-1)  # warm-up: every worker up and through its first message
        if not wait_for(url, f"{prefix}-sink", 1, 120):
            raise RuntimeError(f"{peer}: the warm-up message did not get through in 120 s")
        cpu0 = sum(tree_cpu(w.pid) for w in workers)
        start = time.monotonic()
        for i in range(n):
            send(i)
        if not wait_for(url, f"{prefix}-sink", n + 1, 600):
            raise RuntimeError(f"{peer}: not all {n} messages reached the sink in 600 s")
        elapsed = time.monotonic() - start
        cpu = sum(tree_cpu(w.pid) for w in workers) - cpu0
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.wait()
        delete(url, queues + extra)
    return {
        "peer": peer,
        "envelopes": n,
        "per_s": round(n / elapsed, 1),
        "cpu_s_per_1000": round(cpu * 1000 / n, 3),
    }


def in_venv(keep: str | None) -> int:
    """Creates the throwaway environment, installs the peers, and re-runs this script."""
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="troupe-peers-"))
    try:
        python = folder / "bin" / "python"
        if not python.exists():
            venv.create(folder, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEERS],
                       check=True)
        return subprocess.run([str(python), __file__, *sys.argv[1:]],
                              env=dict(os.environ, PEERS_IN_VENV="1")).returncode
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("-n", "--envelopes", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8, help="worker threads per step")
    parser.add_argument("--peer", action="append", choices=["dramatiq", "celery"],
                        help="which peers (default both)")
    parser.add_argument("--venv", help="keep the environment in this folder (default: a temporary one)")
    args = parser.parse_args()
    if not os.environ.get("PEERS_IN_VENV"):
        return in_venv(args.venv)
    for peer in args.peer or ["dramatiq", "celery"]:
        print(json.dumps(run_peer(peer, args.url, args.envelopes, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
